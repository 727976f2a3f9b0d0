//! Typed settings: `config/default.toml`, then `--config FILE` (or
//! `GAZETTE_CONFIG`), then `GAZETTE__SECTION__KEY` environment variables,
//! later sources overriding earlier ones. Every problem is reported with
//! the file (and line) or the environment variable it came from.
//!
//! [`load`] reads the sources (the environment is passed in); each section
//! has a file of its own with its keys as written, its typed settings and
//! its validator ([`database`], [`mail`], [`smtp`], [`web`], [`delivery`],
//! [`digests`], [`feeds`], [`dkim`], [`api`], [`bounces`], [`log`]); [`check`] is what the validators share: where a key came
//! from, and the error listing every problem.

mod admin;
mod api;
mod bounces;
mod check;
mod database;
mod delivery;
mod digests;
mod dkim;
mod feeds;
mod load;
mod log;
mod mail;
mod settings;
mod smtp;
mod web;

pub use self::admin::AdminSettings;
pub use self::api::ApiSettings;
pub use self::bounces::BounceSettings;
pub use self::check::{ConfigError, parse_duration};
pub use self::database::{DatabaseSettings, redact_url};
pub use self::delivery::DeliverySettings;
pub use self::digests::{Digest, Schedule};
pub use self::feeds::Feed;
pub use self::load::{DEFAULT_FILE, ENV_PREFIX, SNS_TEST_ENDPOINT, load, load_from};
pub use self::log::{LogFormat, LogSettings};
pub use self::mail::{MailSettings, TransportKind};
pub use self::settings::Settings;
pub use self::smtp::{Relay, SmtpSettings, TlsMode};
pub use self::web::{ForwardedHeader, IpRange, TokenKey, WebSettings};
pub use crate::domain::Secret;
