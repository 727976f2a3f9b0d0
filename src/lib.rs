//! Gazette, a newsletter digest mailer.
//!
//! A tour of the code, in the order a digest travels. Each room is a
//! folder with a file per concern; no two modules import each other.
//!
//! - [`config`]: typed settings from `config/*.toml` and `GAZETTE__…`
//!   variables, one file per section with its validator; every error names
//!   the file (or variable) and the key.
//! - [`domain`]: values parsed once at the edge (`EmailAddress`,
//!   `DigestName`, `Secret`) and the states of subscribers, runs and
//!   deliveries.
//! - [`store`]: the one `Store` API over SQLite (embedded) and Postgres,
//!   one file per aggregate: articles, subscribers, runs, the ledger, the
//!   readers' links, confirmation emails, feeds, the process lock.
//! - [`import`]: article (JSON/NDJSON) and subscriber (CSV) files, checked
//!   whole before anything is stored.
//! - [`feeds`]: RSS and Atom feeds polled for articles: the conditional
//!   GET with its limits, parsing, sanitizing their HTML, the backoff.
//! - [`schedule`]: each digest's cron slots in its own time zone, and what
//!   one tick of the daemon does.
//! - [`delivery`]: planning a run, the loop that drains it, the workers,
//!   the outcome writer, the retry policies, and the confirmation emails.
//! - [`render`]: minijinja templates → subject, HTML and text; the
//!   once-per-shape fast path in `render/fast.rs`.
//! - [`mail`]: quoted-printable, the MIME message, DKIM signatures (signed
//!   on threads of their own, `mail/seal.rs`), the outbox, and SMTP on
//!   our own connections (`mail/smtp/`: connect, pipelined session, reply
//!   classes).
//! - [`bounces`]: the signed return path (VERP), bounce and complaint
//!   reports by mail (DSN, ARF) and by webhook, and what they stop.
//! - [`metrics`]: what `/metrics` on the admin port shows, kept by the
//!   code that knows it.
//! - [`web`]: the readers' pages (subscribe, confirm, unsubscribe,
//!   preferences, web view, archive) and their security layers; the
//!   ingest API for a CMS.
//! - [`app`]: the commands, one file per command family, as `main.rs`
//!   calls them.

pub mod app;
pub mod bounces;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod errors;
pub mod feeds;
pub mod import;
pub mod mail;
pub mod metrics;
pub mod render;
pub mod schedule;
pub mod store;
pub mod web;
