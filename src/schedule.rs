//! Cron slots per digest, computed in the digest's own time zone.
//!
//! tokio-cron-scheduler only ticks, in UTC, once a minute: it keeps a fixed
//! UTC offset for time-zoned jobs (wrong after a daylight-saving change) and
//! does not replay missed ticks. So each tick asks, for every digest, which
//! slot is due now in its IANA zone, and the store's unique (digest, slot)
//! key makes every tick, restart and replica idempotent.

use anyhow::Result;
use chrono::{DateTime, Timelike, Utc};
use tracing::{error, info, warn};

use crate::config::Digest;
use crate::delivery::{self, Engine};
use crate::errors::chain;
use crate::store::{PlanOutcome, Store, Timestamp};

/// The latest slot of `digest` at or before `now`.
pub fn latest_slot(digest: &Digest, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // croner keeps the fraction of a second it is given: without it, every
    // instant of a slot finds the same slot, and so the same run key.
    let local = whole_second(now).with_timezone(&digest.timezone);
    digest
        .schedule
        .cron
        .find_previous_occurrence(&local, true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The slot after `now` (for logs and `gazette check`).
pub fn next_slot(digest: &Digest, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = whole_second(now).with_timezone(&digest.timezone);
    digest
        .schedule
        .cron
        .find_next_occurrence(&local, false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// How long until the next slot of any digest that falls between two of
/// the daemon's minute ticks (a 6-field schedule with seconds): the daemon
/// wakes for it then, so the slot fires on its second.
pub fn until_next_off_minute_slot(
    digests: &[Digest],
    now: DateTime<Utc>,
) -> Option<std::time::Duration> {
    digests
        .iter()
        .filter_map(|d| next_slot(d, now))
        .filter(|t| t.second() != 0)
        .min()
        .map(|t| (t - now).to_std().unwrap_or_default())
}

fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    t.with_nanosecond(0).unwrap_or(t)
}

/// What a tick decided for one digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The latest slot is recent enough: plan it (again: harmless).
    Plan(DateTime<Utc>),
    /// The latest slot is older than `catch_up`: record it as missed.
    Missed(DateTime<Utc>),
    /// The schedule never fires.
    Nothing,
}

pub fn decide(digest: &Digest, now: DateTime<Utc>) -> Decision {
    let Some(slot) = latest_slot(digest, now) else {
        return Decision::Nothing;
    };
    let late = (now - slot).to_std().unwrap_or_default();
    if late <= digest.catch_up {
        Decision::Plan(slot)
    } else {
        Decision::Missed(slot)
    }
}

/// One tick: plans each digest's due slot. `now` is injected so tests can
/// drive the clock.
pub async fn reconcile(
    store: &Store,
    digests: &[Digest],
    now: DateTime<Utc>,
) -> Vec<(String, anyhow::Result<Option<PlanOutcome>>)> {
    let mut results = Vec::new();
    let paused = match store.paused_digests().await {
        Ok(paused) => paused,
        Err(e) => {
            // (Nothing is planned without knowing what is paused.)
            for digest in digests {
                results.push((
                    digest.name.to_string(),
                    Err(anyhow::anyhow!("{}", chain(&e))),
                ));
            }
            return results;
        }
    };
    for digest in digests {
        let is_paused = digest.paused || paused.iter().any(|p| p == digest.name.as_str());
        let result = match decide(digest, now) {
            Decision::Plan(slot) | Decision::Missed(slot) if is_paused => store
                .record_missed(&digest.name, Timestamp::from(slot), Timestamp::from(now))
                .await
                .map(|recorded| {
                    if recorded {
                        info!(digest = %digest.name, slot = %slot, "paused: the slot is recorded as missed, not sent");
                    }
                    None
                }),
            Decision::Plan(slot) => delivery::plan(store, digest, slot, now).await.map(Some),
            Decision::Missed(slot) => store
                .record_missed(&digest.name, Timestamp::from(slot), Timestamp::from(now))
                .await
                .map(|recorded| {
                    if recorded {
                        warn!(
                            digest = %digest.name,
                            slot = %slot,
                            catch_up = ?digest.catch_up,
                            "slot missed (found too late to send): recorded as missed, not sent"
                        );
                    }
                    None
                }),
            Decision::Nothing => Ok(None),
        };
        results.push((digest.name.to_string(), result));
    }
    results
}

/// What starting the daemon now does for a digest: `gazette check` and
/// the daemon's start-up log both say it, from this.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outlook {
    pub at_start: AtStart,
    /// The first slot after now.
    pub next: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtStart {
    /// A slot missed while the daemon was stopped, within `catch_up`: sent
    /// at once.
    CatchUp(DateTime<Utc>),
    /// The digest has never run: the slot before now is passed over, and
    /// the first digest goes out at the next slot.
    FirstStart(DateTime<Utc>),
    /// Nothing to send before the next slot.
    Nothing,
    /// Paused (`paused = true`, or `gazette pause`): nothing is sent until
    /// it is resumed, and then from its next slot.
    Paused,
}

/// What starting now would do for `digest`.
pub async fn outlook(store: &Store, digest: &Digest, now: DateTime<Utc>) -> Result<Outlook> {
    let paused = digest.paused
        || store
            .paused_digests()
            .await?
            .iter()
            .any(|p| p == digest.name.as_str());
    let at_start = match decide(digest, now) {
        _ if paused => AtStart::Paused,
        Decision::Nothing => AtStart::Nothing,
        Decision::Plan(slot) | Decision::Missed(slot) if !store.has_runs(&digest.name).await? => {
            AtStart::FirstStart(slot)
        }
        Decision::Plan(slot) => {
            match store
                .run_for_slot(&digest.name, Timestamp::from(slot))
                .await?
            {
                None => AtStart::CatchUp(slot),
                Some(_) => AtStart::Nothing,
            }
        }
        Decision::Missed(_) => AtStart::Nothing,
    };
    Ok(Outlook {
        at_start,
        next: next_slot(digest, now),
    })
}

impl Outlook {
    /// In words, with times in the digest's zone.
    pub fn describe(&self, digest: &Digest) -> String {
        let local = |t: DateTime<Utc>| t.with_timezone(&digest.timezone).to_rfc3339();
        let next = self.next.map_or_else(|| "never".to_string(), local);
        match self.at_start {
            AtStart::CatchUp(slot) => format!(
                "next {next}; the slot of {} was missed while stopped and is sent at start",
                local(slot)
            ),
            AtStart::FirstStart(slot) => format!(
                "next {next}; never run: the slot of {} is passed over and the first digest goes out at the next slot",
                local(slot)
            ),
            AtStart::Nothing => format!("next {next}"),
            AtStart::Paused if digest.paused => {
                "paused (`paused = true`): nothing is sent until it is resumed".to_string()
            }
            AtStart::Paused => {
                "paused (`gazette pause`): nothing is sent until `gazette resume`".to_string()
            }
        }
    }
}

/// Before the daemon's first tick: a digest that has never run passes over
/// the slot that came before now (recorded as missed), so it starts with
/// its next slot; `catch_up` applies only once a digest has run. Returns
/// each digest's outlook.
pub async fn first_start(
    store: &Store,
    digests: &[Digest],
    now: DateTime<Utc>,
) -> Vec<(String, Result<Outlook>)> {
    let mut outlooks = Vec::new();
    for digest in digests {
        let outlook = async {
            let outlook = outlook(store, digest, now).await?;
            if let AtStart::FirstStart(slot) = outlook.at_start {
                store
                    .record_missed(&digest.name, Timestamp::from(slot), Timestamp::from(now))
                    .await?;
            }
            Ok(outlook)
        }
        .await;
        outlooks.push((digest.name.to_string(), outlook));
    }
    outlooks
}

/// What one tick does: plans each digest's due slot, then delivers what
/// is pending and due now. Failures are logged; the next tick tries again.
pub async fn tick(engine: &Engine, shutdown: &tokio::sync::watch::Receiver<bool>) {
    for (digest, result) in reconcile(&engine.store, &engine.settings.digests, Utc::now()).await {
        if let Err(e) = result {
            error!(digest, "cannot plan: {}", chain(&e));
        }
    }
    if let Err(e) =
        delivery::deliver_unfinished(engine, None, delivery::Drain::DueNow, shutdown).await
    {
        error!("delivery stopped: {}", chain(&e));
    }
}
