//! The settings the rest of the program uses: validated and typed.

use std::path::PathBuf;

use super::admin::AdminSettings;
use super::api::ApiSettings;
use super::bounces::BounceSettings;
use super::database::DatabaseSettings;
use super::delivery::DeliverySettings;
use super::digests::Digest;
use super::feeds::Feed;
use super::log::LogSettings;
use super::mail::MailSettings;
use super::smtp::{Relay, SmtpSettings};
use super::web::WebSettings;

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub mail: MailSettings,
    /// The relay of `[smtp]`, or the first of `[[relays]]`.
    pub smtp: SmtpSettings,
    /// Every relay, with its share of the deliveries: those of
    /// `[[relays]]`, or the one of `[smtp]` (never empty).
    pub relays: Vec<Relay>,
    pub web: WebSettings,
    pub templates_dir: PathBuf,
    pub delivery: DeliverySettings,
    pub log: LogSettings,
    pub admin: AdminSettings,
    pub digests: Vec<Digest>,
    /// The feeds `gazette run` polls.
    pub feeds: Vec<Feed>,
    /// The DKIM keys every message is signed with (`[[dkim]]`), in order.
    pub dkim: Vec<crate::mail::DkimKey>,
    /// The ingest API.
    pub api: ApiSettings,
    /// Bounces and complaints.
    pub bounces: BounceSettings,
    /// The sources that were read, in order, for messages.
    pub sources: Vec<String>,
}

impl Settings {
    pub fn feed(&self, name: &str) -> Option<&Feed> {
        self.feeds.iter().find(|f| f.name == name)
    }

    pub fn digest(&self, name: &str) -> Option<&Digest> {
        self.digests.iter().find(|d| d.name.as_str() == name)
    }

    /// The digest named `name`, or an error listing the configured ones.
    pub fn require_digest(&self, name: &str) -> anyhow::Result<&Digest> {
        self.digest(name).ok_or_else(|| {
            let known: Vec<&str> = self.digests.iter().map(|d| d.name.as_str()).collect();
            anyhow::anyhow!(
                "no digest named `{name}` in the configuration ({}); configured: {}",
                self.sources.join(", "),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}
