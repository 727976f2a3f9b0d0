//! The message as a MIME parser reads it, and SMTP over TLS.

mod dkim;
mod message;
mod tls;
