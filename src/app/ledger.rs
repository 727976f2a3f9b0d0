//! Ledger retention: `gazette fold-ledger` and the daemon's periodic fold
//! of finished runs older than `[delivery] keep_ledger`.

use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use tokio::sync::watch;
use tracing::{error, info};

use super::process::counted;
use crate::delivery::Engine;
use crate::errors::chain;
use crate::store::{FoldReport, Store, Timestamp};

/// Ledger rows deleted (and counted) per transaction: a claim or an
/// outcome write waits for one batch at most.
pub const FOLD_BATCH: u32 = 10_000;

/// How often the daemon folds (first when it starts).
const FOLD_EVERY: Duration = Duration::from_secs(600);

/// The instant before which finished runs are folded, if any are.
fn fold_before(keep: Option<Duration>) -> Option<Timestamp> {
    let keep = chrono::Duration::from_std(keep?).ok()?;
    Some(Timestamp::from(Utc::now() - keep))
}

/// `gazette fold-ledger [--dry-run]`: folds now what the daemon would fold
/// on its next round, or lists it.
pub async fn fold_ledger(engine: &Engine, dry_run: bool) -> Result<()> {
    let Some(before) = fold_before(engine.settings.delivery.keep_ledger) else {
        println!("delivery.keep_ledger is `forever`: the ledger is never folded");
        return Ok(());
    };
    let store = &engine.store;
    if dry_run {
        let runs = store.foldable_runs(before).await?;
        for run in &runs {
            println!(
                "run {} ({}, finished {}): {}",
                run.id,
                run.digest,
                run.finished_at.0.format("%Y-%m-%d %H:%M:%S"),
                counted(run.rows as u64, "ledger row", "ledger rows")
            );
        }
        let rows: i64 = runs.iter().map(|r| r.rows).sum();
        println!(
            "dry run: would fold {} of {} finished before {}",
            counted(rows as u64, "ledger row", "ledger rows"),
            counted(runs.len() as u64, "run", "runs"),
            before.0.format("%Y-%m-%d %H:%M:%S UTC")
        );
        return Ok(());
    }
    let shutdown = super::process::shutdown_signal();
    let report = store
        .fold_ledger(before, FOLD_BATCH, Timestamp::now(), &|| *shutdown.borrow())
        .await?;
    println!("{}", said(&report, before));
    if *shutdown.borrow() {
        anyhow::bail!("interrupted: run `gazette fold-ledger` again to fold the rest");
    }
    Ok(())
}

fn said(report: &FoldReport, before: Timestamp) -> String {
    format!(
        "folded {} of {} finished before {} into their runs' counts",
        counted(report.rows, "ledger row", "ledger rows"),
        counted(report.runs, "run", "runs"),
        before.0.format("%Y-%m-%d %H:%M:%S UTC")
    )
}

/// The daemon's fold: every few minutes, until `shutdown` turns true. A
/// failure is logged and the next round tries again; sending goes on.
pub async fn keep_folding(
    store: Store,
    keep: Option<Duration>,
    mut shutdown: watch::Receiver<bool>,
) {
    if keep.is_none() {
        return;
    }
    let mut wait = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        wait = FOLD_EVERY;
        let Some(before) = fold_before(keep) else {
            return;
        };
        let stop = shutdown.clone();
        match store
            .fold_ledger(before, FOLD_BATCH, Timestamp::now(), &|| *stop.borrow())
            .await
        {
            Ok(report) if report.rows > 0 => info!("{}", said(&report, before)),
            Ok(_) => {}
            Err(e) => error!("cannot fold the ledger: {}; trying again later", chain(&e)),
        }
    }
}
