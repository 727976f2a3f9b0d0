//! Planning a run: which articles it takes, and the one transaction that
//! creates it with its ledger.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tracing::{info, instrument};

use crate::config::Digest;
use crate::store::{PlanOutcome, RunArticle, RunPlan, Store, Timestamp};

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
        .plan_run(&RunPlan {
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
    match &outcome {
        PlanOutcome::Planned { run_id, deliveries } => info!(
            run_id,
            articles = articles.len(),
            deliveries,
            "planned a run"
        ),
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
