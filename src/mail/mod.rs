//! From a rendered digest to bytes at a relay.
//!
//! - [`qp`]: quoted-printable bodies, encoded line by line with memory of
//!   the lines a run shares;
//! - [`message`]: the MIME message and its headers (digests and the
//!   confirmation email alike);
//! - [`dkim`]: DKIM signatures (relaxed/relaxed, RSA and Ed25519);
//! - [`seal`]: the message as it goes out, signed on threads of their own;
//! - [`outbox`]: `.eml` files instead of a relay;
//! - [`smtp`]: our own SMTP connections (TCP_NODELAY, TLS, pipelining) and
//!   how a reply is classified;
//! - [`relays`]: which relay each connection goes to, by weight, and
//!   around a relay that keeps failing;
//! - [`sender`]: one worker's way out, either of the two.

pub mod dkim;
pub mod message;
pub mod outbox;
pub mod qp;
pub mod relays;
pub mod seal;
pub mod sender;
pub mod smtp;

pub use dkim::{Algorithm, DkimKey};
pub use message::{
    ListHeaders, MessageMeta, Rendered, build_message, list_id, message_id, one_line,
};
pub use outbox::write_eml;
pub use qp::{BodyEncoder, EncodedBodies, encode_body};
pub use relays::{Relays, short_pools};
pub use seal::{Outgoing, Sealer};
pub use sender::Sender;
pub use smtp::{SendError, check_relay};
