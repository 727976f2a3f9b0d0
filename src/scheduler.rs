//! Cron slots per digest, computed in the digest's own time zone.
//!
//! tokio-cron-scheduler only ticks, in UTC, once a minute: it keeps a fixed
//! UTC offset for time-zoned jobs (wrong after a daylight-saving change) and
//! does not replay missed ticks. So each tick asks, for every digest, which
//! slot is due now in its IANA zone, and the store's unique (digest, slot)
//! key makes every tick, restart and replica idempotent.

use chrono::{DateTime, Timelike, Utc};
use tracing::{error, info, warn};

use crate::config::Digest;
use crate::delivery::{self, Engine};
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
    for digest in digests {
        let result = match decide(digest, now) {
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

/// The daemon loop: a UTC tick every minute (and one at start), plan what
/// is due, deliver what is pending, until `shutdown` turns true.
pub async fn run(
    engine: &Engine,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    use tokio_cron_scheduler::{Job, JobScheduler};

    let (tick_tx, mut tick_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut scheduler = JobScheduler::new().await?;
    scheduler
        .add(Job::new_async("0 * * * * *", move |_, _| {
            let tick_tx = tick_tx.clone();
            Box::pin(async move {
                // A tick while the previous one is still running is dropped:
                // runs never overlap.
                let _ = tick_tx.try_send(());
            })
        })?)
        .await?;
    scheduler.start().await?;
    for digest in &engine.settings.digests {
        if let Some(next) = next_slot(digest, Utc::now()) {
            info!(digest = %digest.name, schedule = %digest.schedule.text, timezone = %digest.timezone, next = %next, "scheduled");
        }
    }
    loop {
        for (digest, result) in reconcile(&engine.store, &engine.settings.digests, Utc::now()).await
        {
            if let Err(e) = result {
                error!(digest, "cannot plan: {e:#}");
            }
        }
        if let Err(e) =
            delivery::deliver_unfinished(engine, None, delivery::Drain::DueNow, &shutdown).await
        {
            error!("delivery stopped: {e:#}");
        }
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tick_rx.recv() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
    }
    scheduler.shutdown().await?;
    info!("stopped");
    Ok(())
}
