//! The message as a MIME parser reads it, SMTP over TLS, and deliveries
//! spread over several relays.

mod dkim;
mod message;
mod relays;
mod tls;
