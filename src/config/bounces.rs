//! `[bounces]`: the return path that names each delivery (VERP), how many
//! bounces stop a reader's mail, and the relays' webhook.

use std::fmt;

use serde::Deserialize;

use super::check::Problems;
use crate::domain::{EmailAddress, Secret};

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBounces {
    return_path: String,
    hard_limit: i64,
    soft_limit: i64,
    webhook_token: String,
    sns_topic_arns: Vec<String>,
}

impl Default for RawBounces {
    fn default() -> Self {
        Self {
            return_path: String::new(),
            hard_limit: 1,
            soft_limit: 3,
            webhook_token: String::new(),
            sns_topic_arns: Vec::new(),
        }
    }
}

impl fmt::Debug for RawBounces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawBounces")
            .field("return_path", &self.return_path)
            .field("sns_topic_arns", &self.sns_topic_arns)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct BounceSettings {
    /// `bounces@news.example.org`: each message's envelope sender becomes
    /// `bounces+TOKEN@news.example.org`. `None`: the From address, as before.
    pub return_path: Option<EmailAddress>,
    /// Hard bounces that make a reader bounced.
    pub hard_limit: u32,
    /// Digests in a row that soft-bounced that make a reader bounced.
    pub soft_limit: u32,
    /// The bearer token of `POST /webhooks/bounces`; `None`: no webhook.
    pub webhook_token: Option<Secret>,
    /// The Amazon SNS topics whose messages the webhook takes; empty: any
    /// topic (the token and the signature still have to be right).
    pub sns_topic_arns: Vec<String>,
    /// Tests only (`GAZETTE_TEST_SNS_ENDPOINT`): where Amazon SNS's hosts
    /// are reached instead, over plain HTTP.
    #[doc(hidden)]
    pub sns_test_endpoint: Option<String>,
}

impl Default for BounceSettings {
    fn default() -> Self {
        Self {
            return_path: None,
            hard_limit: 1,
            soft_limit: 3,
            webhook_token: None,
            sns_topic_arns: Vec::new(),
            sns_test_endpoint: None,
        }
    }
}

impl BounceSettings {
    /// Whether Gazette acts on bounces on its own (the relay's refusals
    /// of a mailbox that does not exist): once `[bounces]` has a
    /// `return_path` or a `webhook_token`. Without either, a refused
    /// recipient only fails its delivery, as before.
    pub fn enabled(&self) -> bool {
        self.return_path.is_some() || self.webhook_token.is_some()
    }
}

/// A shorter token is refused: it could be guessed.
const TOKEN_MIN: usize = 24;

pub(super) fn validate(raw: &RawBounces, problems: &mut Problems) -> Option<BounceSettings> {
    let mut ok = true;
    let return_path = match raw.return_path.trim() {
        "" => None,
        text => {
            match EmailAddress::parse(text) {
                Ok(address)
                    if address
                        .as_str()
                        .split('@')
                        .next()
                        .is_some_and(|l| !l.contains('+')) =>
                {
                    Some(address)
                }
                Ok(_) => {
                    problems.key(
                    "bounces.return_path",
                    format!("`{text}` has a `+` in its local part: Gazette adds `+TOKEN` there itself"),
                );
                    ok = false;
                    None
                }
                Err(e) => {
                    problems.key("bounces.return_path", e.to_string());
                    ok = false;
                    None
                }
            }
        }
    };
    let mut limit = |key: &str, value: i64| -> u32 {
        match u32::try_from(value) {
            Ok(n) if (1..=1000).contains(&n) => n,
            _ => {
                problems.key(key, format!("{value} is not a number from 1 to 1000"));
                ok = false;
                1
            }
        }
    };
    let hard_limit = limit("bounces.hard_limit", raw.hard_limit);
    let soft_limit = limit("bounces.soft_limit", raw.soft_limit);
    let token = raw.webhook_token.trim();
    let webhook_token = if token.is_empty() {
        None
    } else if token.chars().count() < TOKEN_MIN {
        problems.key(
            "bounces.webhook_token",
            format!(
                "the token is {} characters long; use at least {TOKEN_MIN} (for example the output of `openssl rand -hex 32`)",
                token.chars().count()
            ),
        );
        ok = false;
        None
    } else if !token.chars().all(|c| c.is_ascii_graphic()) {
        problems.key(
            "bounces.webhook_token",
            "the token must be printable ASCII without spaces (it travels in an HTTP header)",
        );
        ok = false;
        None
    } else {
        Some(Secret::new(token))
    };
    let mut sns_topic_arns = Vec::new();
    for (i, arn) in raw.sns_topic_arns.iter().enumerate() {
        let arn = arn.trim();
        if is_topic_arn(arn) {
            sns_topic_arns.push(arn.to_string());
        } else {
            problems.key(
                "bounces.sns_topic_arns",
                format!(
                    "entry {}, `{arn}`, is not an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)",
                    i + 1
                ),
            );
            ok = false;
        }
    }
    ok.then_some(BounceSettings {
        return_path,
        hard_limit,
        soft_limit,
        webhook_token,
        sns_topic_arns,
        sns_test_endpoint: None,
    })
}

/// `arn:PARTITION:sns:REGION:ACCOUNT:NAME`, as `aws sns list-topics` shows.
fn is_topic_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    matches!(
        parts.as_slice(),
        ["arn", partition, "sns", region, account, name]
            if partition.starts_with("aws")
                && !region.is_empty()
                && account.len() == 12
                && account.chars().all(|c| c.is_ascii_digit())
                && !name.is_empty()
    )
}
