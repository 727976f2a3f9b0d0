//! Bounces and complaints, so that dead addresses and readers who press
//! "spam" are never mailed again:
//!
//! - [`verp`]: the return path that names each delivery, signed;
//! - [`report`]: reading a message that came back (DSN, ARF, or anything
//!   else, ignored);
//! - [`webhook`]: the relays' JSON reports (Gazette's own, Postmark's,
//!   Amazon SES's);
//! - [`sns`]: Amazon SNS's deliveries, which carry SES's: their signature
//!   and subscription confirmations;
//! - [`record`] (here): a report applied to the store, the metrics, and
//!   the sentence that says what was done.

pub mod report;
pub mod sns;
pub mod verp;
pub mod webhook;

use anyhow::Result;

use crate::config::Settings;
use crate::domain::{BounceKind, BounceSource, SubscriberStatus, abbreviate};
use crate::metrics::{BounceLabels, Metrics};
use crate::store::{BounceLimits, BounceOutcome, BounceReport, Store, Timestamp};

pub use self::verp::{Named, ReturnPath};

/// The limits of `[bounces]`.
pub fn limits(settings: &Settings) -> BounceLimits {
    BounceLimits {
        hard: settings.bounces.hard_limit,
        soft: settings.bounces.soft_limit,
    }
}

/// Where a report is recorded and counted.
#[derive(Clone, Copy)]
pub struct Ledger<'a> {
    pub store: &'a Store,
    pub metrics: &'a Metrics,
    pub limits: BounceLimits,
}

/// Records a report against the delivery `named` and says what was done,
/// with the reader's address abbreviated (`b…@example.org`).
pub async fn record(
    to: Ledger<'_>,
    named: Named,
    kind: BounceKind,
    source: BounceSource,
    reason: &str,
) -> Result<String> {
    let Some(email) = to.store.subscriber_email(named.subscriber_id).await? else {
        return Ok("ignored: the reader it names was removed".into());
    };
    let who = abbreviate(&email);
    let report = BounceReport {
        subscriber_id: named.subscriber_id,
        run_id: named.run_id,
        kind,
        source,
        reason,
        received_at: Timestamp::now(),
    };
    let outcome = to.store.record_bounce(&report, to.limits).await?;
    let what = match kind {
        BounceKind::Hard => format!("hard bounce for {who}"),
        BounceKind::Soft => format!("soft bounce for {who}"),
        BounceKind::Complaint => format!("complaint from {who}"),
    };
    let sentence = match outcome {
        BounceOutcome::Duplicate => {
            format!("duplicate: {what} was already recorded for this delivery")
        }
        BounceOutcome::Recorded { status, changed } => {
            to.metrics
                .bounces
                .get_or_create(&BounceLabels {
                    kind: kind.to_string(),
                    source: source.to_string(),
                })
                .inc();
            match (status, changed) {
                (SubscriberStatus::Bounced, true) => {
                    format!("{what} recorded: {who} is bounced and will not be mailed again")
                }
                (SubscriberStatus::Unsubscribed, true) => {
                    format!("{what} recorded: {who} is unsubscribed")
                }
                _ => format!("{what} recorded"),
            }
        }
    };
    tracing::info!(
        subscriber = named.subscriber_id,
        run = named.run_id,
        %kind,
        %source,
        "{sentence}"
    );
    Ok(sentence)
}
