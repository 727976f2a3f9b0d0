//! The message as a MIME parser reads it, and SMTP over TLS.

mod message;
mod tls;
