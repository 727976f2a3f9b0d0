//! Bounces and complaints: the store's records and the readers' state
//! (`store`), messages that come back through `gazette bounces ingest`
//! (`ingest`), refusals at RCPT during a send (`smtp`), and the relays'
//! webhook (`webhook`), with Amazon SES's notifications through SNS
//! (`ses`).

mod ingest;
mod ses;
mod smtp;
mod store;
mod webhook;

/// `[bounces]` with a return path.
pub const WITH_RETURN_PATH: &str = "\n[bounces]\nreturn_path = \"bounces@news.example.org\"\n";
