//! Planning a run: which articles it takes, the transaction that creates
//! it, and its ledger, planned in chunks of readers while it is sent.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tracing::{info, instrument};

use super::policy::retrying;
use crate::config::Digest;
use crate::store::{PlanChunk, PlanOutcome, RunArticle, RunPlan, Store, Timestamp};

/// The articles a run of `digest` at `slot` takes, and the window they
/// come from: after the previous run's cutoff (first run: `window` back),
/// up to the slot.
pub async fn select_for_slot(
    store: &Store,
    digest: &Digest,
    slot: DateTime<Utc>,
) -> Result<(Timestamp, Timestamp, Vec<RunArticle>)> {
    let cutoff = Timestamp::from(slot);
    let first_window =
        chrono::Duration::from_std(digest.window).unwrap_or(chrono::Duration::days(1));
    let window_start = store
        .previous_cutoff(&digest.name, cutoff)
        .await?
        .unwrap_or_else(|| Timestamp::from(slot - first_window));
    let articles = store
        .select_articles(window_start, cutoff, &digest.tags, digest.max_articles)
        .await?;
    Ok((window_start, cutoff, articles))
}

/// Plans the run of `digest` at `slot`; planning a slot twice is harmless.
/// Creates the run and plans the first chunk of its ledger, so that
/// sending can start at once; the delivery loop plans the rest while it
/// sends ([`plan_rest`]). `Planned` counts the deliveries of that first
/// chunk (the whole ledger when the list fits in one).
#[instrument(skip_all, fields(digest = %digest.name, slot = %slot))]
pub async fn plan(
    store: &Store,
    digest: &Digest,
    slot: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<PlanOutcome> {
    // Every tick plans the due slot again: once it exists, there is nothing
    // to select. (The insert below stays the authority when two planners race.)
    if let Some((run_id, status)) = store
        .run_for_slot(&digest.name, Timestamp::from(slot))
        .await?
    {
        return Ok(PlanOutcome::Exists { run_id, status });
    }
    let (window_start, cutoff, articles) = select_for_slot(store, digest, slot).await?;
    let outcome = store
        .start_run(&RunPlan {
            digest: &digest.name,
            slot: Timestamp::from(slot),
            window_start,
            cutoff,
            articles: &articles,
            skip_if_empty: digest.skip_if_empty,
            now: Timestamp::from(now),
        })
        .await
        .context("cannot plan the run")?;
    let outcome = match outcome {
        PlanOutcome::Planned { run_id, .. } => {
            info!(
                run_id,
                articles = articles.len(),
                "run created: planning its deliveries"
            );
            let first = store
                .plan_chunk(run_id, chunk_size(), Timestamp::from(now))
                .await
                .context("cannot plan the run's deliveries")?;
            let deliveries = match first {
                // (The delivery loop analyzes the ledger after its first
                // chunk, not here on the way to the first message.)
                PlanChunk::More(n) => n,
                PlanChunk::Last(n) => {
                    if n > 0 {
                        store.analyze_ledger().await;
                    }
                    planned(run_id, n);
                    n
                }
                PlanChunk::Over => 0,
            };
            PlanOutcome::Planned { run_id, deliveries }
        }
        other => other,
    };
    match &outcome {
        PlanOutcome::Planned { .. } => {}
        PlanOutcome::Skipped { run_id } => {
            info!(
                run_id,
                "nothing new since the previous run: skipped, no mail"
            )
        }
        PlanOutcome::Exists { run_id, status } => {
            info!(run_id, %status, "this slot was planned before")
        }
    }
    Ok(outcome)
}

/// Plans the rest of `run`'s ledger, chunk by chunk, while the run is
/// being sent; `progress` counts the deliveries planned here. Resumes from
/// the run's cursor (after a crash, or alongside another replica planning
/// the same run: they take turns). Stops between chunks on shutdown; the
/// next process to deliver the run goes on from there.
pub(super) async fn plan_rest(
    store: Store,
    run_id: i64,
    progress: watch::Sender<u64>,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let (chunk, pause) = (chunk_size(), pause_between_chunks());
    let mut analyzed = false;
    while !*shutdown.borrow() {
        let step = retrying("plan deliveries", &shutdown, || {
            store.plan_chunk(run_id, chunk, Timestamp::now())
        })
        .await?;
        match step {
            PlanChunk::More(n) => {
                progress.send_modify(|p| *p += n);
                if !analyzed {
                    // (A run resumed after a crash may not have been.)
                    store.analyze_ledger().await;
                    analyzed = true;
                }
            }
            PlanChunk::Last(n) => {
                progress.send_modify(|p| *p += n);
                store.analyze_ledger().await;
                let total = store
                    .delivery_counts(run_id)
                    .await
                    .map(|c| c.open() + c.sent + c.failed + c.skipped);
                planned(run_id, total.unwrap_or_default() as u64);
                return Ok(());
            }
            PlanChunk::Over => return Ok(()),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(())
}

/// One line per run once its whole ledger is planned.
fn planned(run_id: i64, deliveries: u64) {
    info!(run_id, deliveries, "planned a run");
}

/// Readers planned per transaction. At 10,000 a chunk takes tens of
/// milliseconds, so the first messages leave at once, and planning stays
/// far ahead of sending (it plans well over 100,000 readers a second).
const CHUNK: u32 = 10_000;

/// The chunk size; debug builds read `GAZETTE_PLAN_CHUNK` so that the
/// tests can kill a process in the middle of planning a small list.
fn chunk_size() -> u32 {
    #[cfg(debug_assertions)]
    if let Some(n) = std::env::var("GAZETTE_PLAN_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    CHUNK
}

/// A pause after each chunk: none, except in debug builds with
/// `GAZETTE_PLAN_PAUSE_MS` set (for the same tests, to make planning last
/// long enough to be interrupted).
fn pause_between_chunks() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("GAZETTE_PLAN_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return Duration::from_millis(ms);
    }
    Duration::ZERO
}
