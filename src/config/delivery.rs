//! `[delivery]`: workers, rate, claims, leases and retries.

use std::time::Duration;

use serde::Deserialize;

use super::check::{Problems, parse_duration};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDelivery {
    concurrency: u32,
    rate_per_second: f64,
    batch_size: u32,
    lease_secs: u64,
    max_attempts: u32,
    retry_base_ms: u64,
    retry_max_ms: u64,
    keep_ledger: String,
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self {
            concurrency: 0,
            rate_per_second: 0.0,
            batch_size: 200,
            lease_secs: 300,
            max_attempts: 8,
            retry_base_ms: 30_000,
            retry_max_ms: 3_600_000,
            keep_ledger: "30d".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Workers, each with its own SMTP connection: messages in flight.
    pub concurrency: usize,
    /// Messages per second across this process's workers; `None`: unlimited.
    pub rate_per_second: Option<f64>,
    pub batch_size: u32,
    pub lease: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How long the ledger keeps a finished run's rows before they are
    /// folded into the run's counts; `None` (`forever`): never folded.
    pub keep_ledger: Option<Duration>,
}

/// `pool_size` is `smtp.pool_size`: the connections the workers share.
pub(super) fn validate(
    d: &RawDelivery,
    pool_size: u32,
    problems: &mut Problems,
) -> Option<DeliverySettings> {
    let before = problems.list.len();
    if d.batch_size == 0 {
        problems.key("delivery.batch_size", "must be at least 1");
    }
    if d.max_attempts == 0 {
        problems.key("delivery.max_attempts", "must be at least 1");
    }
    if d.concurrency > pool_size && pool_size > 0 {
        problems.key(
            "delivery.concurrency",
            format!(
                "{} workers need {} SMTP connections but smtp.pool_size is {pool_size}: raise smtp.pool_size or set concurrency = 0 (one worker per connection)",
                d.concurrency, d.concurrency
            ),
        );
    }
    if !(d.rate_per_second.is_finite() && d.rate_per_second >= 0.0) {
        problems.key(
            "delivery.rate_per_second",
            "must be 0 (unlimited) or a positive number",
        );
    }
    if d.lease_secs == 0 {
        problems.key("delivery.lease_secs", "must be at least 1");
    }
    let keep_ledger = match d.keep_ledger.trim() {
        "forever" => None,
        text => match parse_duration(text) {
            Ok(keep) => Some(keep),
            Err(e) => {
                problems.key("delivery.keep_ledger", format!("{e}, or `forever`"));
                None
            }
        },
    };
    if problems.list.len() > before {
        return None;
    }
    Some(DeliverySettings {
        concurrency: if d.concurrency == 0 {
            pool_size as usize
        } else {
            d.concurrency as usize
        },
        rate_per_second: (d.rate_per_second > 0.0).then_some(d.rate_per_second),
        batch_size: d.batch_size,
        lease: Duration::from_secs(d.lease_secs),
        max_attempts: d.max_attempts,
        retry_base: Duration::from_millis(d.retry_base_ms),
        retry_max: Duration::from_millis(d.retry_max_ms.max(d.retry_base_ms)),
        keep_ledger,
    })
}
