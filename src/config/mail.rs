//! `[mail]`: the sender, and where messages go.

use std::path::PathBuf;

use lettre::message::Mailbox;
use serde::Deserialize;

use super::check::Problems;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Write one `.eml` file per message into `mail.outbox_dir`.
    Outbox,
    /// Deliver over SMTP to `[smtp]`.
    Smtp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMail {
    transport: TransportKind,
    pub(super) outbox_dir: PathBuf,
    from: String,
}

impl Default for RawMail {
    fn default() -> Self {
        Self {
            transport: TransportKind::Outbox,
            outbox_dir: "outbox".into(),
            from: "Gazette <digest@example.org>".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct MailSettings {
    pub transport: TransportKind,
    pub outbox_dir: PathBuf,
    pub from: Mailbox,
}

impl MailSettings {
    /// The name the emails and pages go by: the sender's name, or Gazette.
    pub fn site_name(&self) -> String {
        self.from.name.clone().unwrap_or_else(|| "Gazette".into())
    }
}

pub(super) fn validate(raw: &RawMail, problems: &mut Problems) -> Option<MailSettings> {
    let from = match raw.from.parse::<Mailbox>() {
        Ok(m) if !AsRef::<str>::as_ref(&m.email).is_ascii() => {
            problems.key(
                "mail.from",
                format!(
                    "`{}`: the address has non-ASCII characters; use its ASCII form (for a domain, its punycode `xn--…` form)",
                    raw.from
                ),
            );
            return None;
        }
        Ok(m) => m,
        Err(e) => {
            problems.key(
                "mail.from",
                format!(
                    "`{}` is not a valid sender ({e}); write `Name <address@example.org>`",
                    raw.from
                ),
            );
            return None;
        }
    };
    Some(MailSettings {
        transport: raw.transport,
        outbox_dir: raw.outbox_dir.clone(),
        from,
    })
}
