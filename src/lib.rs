//! Gazette, a newsletter digest mailer.
//!
//! A tour of the code, in the order a digest travels:
//! - [`config`]: typed settings from `config/*.toml` and `GAZETTE__…`
//!   variables, validated at start-up with the file and key in every error.
//! - [`domain`]: values parsed once at the edge (`EmailAddress`, `DigestName`).
//! - [`store`]: the one `Store` API over SQLite (embedded) and Postgres.
//! - [`import`]: article (JSON/NDJSON) and subscriber (CSV) files, checked
//!   whole before anything is stored.
//! - [`scheduler`]: each digest's cron slots in its own time zone.
//! - [`delivery`]: planning a run and the workers that drain its ledger.
//! - [`render`]: minijinja templates → subject, HTML and text.
//! - [`mail`]: the MIME message and the transports (SMTP, outbox).
//! - [`app`]: the commands, as the command line runs them.

pub mod app;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod import;
pub mod mail;
pub mod render;
pub mod schedule;
pub mod store;
pub mod web;
