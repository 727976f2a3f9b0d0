//! The outcome writer: delivery outcomes recorded in the ledger in
//! batches, in the background, on held connections.

use anyhow::{Context, Result};
use chrono::Utc;
use tokio::sync::{Mutex, watch};
use tracing::{Instrument, debug, warn};

use super::engine::Engine;
use super::job::Outcome;
use super::policy::{backoff, retrying};
use crate::bounces;
use crate::domain::{BounceKind, BounceSource};
use crate::errors::chain;
use crate::store::{LedgerConnection, Timestamp};

/// the messages sent but not yet recorded are sent again: those being
/// written or buffered (at most `4 × concurrency`), those in the channel
/// from the workers (at most `concurrency`) and one just sent per worker,
/// so `6 × concurrency`.
/// Writes outcomes to the ledger in the background, so the workers never
/// wait for the database: a write starts when `2 × concurrency` outcomes
/// are buffered (or every 100 ms), with at most `WRITES` writes under way,
/// each of its own outcomes (a write waits for its commit, so one at a time
/// would stop the workers during every commit). Outcomes stop being taken
#[derive(Default)]
pub(super) struct Writer {
    pub(super) buffer: Vec<Outcome>,
    /// The writes under way, oldest first, and how many outcomes each records.
    pending: std::collections::VecDeque<(
        tokio::task::JoinHandle<Result<Option<LedgerConnection>>>,
        usize,
    )>,
    /// The connections of the writes done, for the next ones.
    idle: Vec<LedgerConnection>,
    /// The run's digest, for the metrics.
    digest: std::sync::Arc<str>,
}

/// How many outcome writes may be under way at once.
const WRITES: usize = 2;

impl Writer {
    pub(super) fn for_digest(digest: &str) -> Self {
        Self {
            digest: digest.into(),
            ..Self::default()
        }
    }

    /// Outcomes not yet in the ledger: buffered or being written.
    pub(super) fn unrecorded(&self) -> usize {
        self.buffer.len() + self.pending.iter().map(|(_, n)| n).sum::<usize>()
    }

    pub(super) fn is_writing(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts writing the buffer, unless it is empty or `WRITES` writes are
    /// under way.
    pub(super) fn start(&mut self, engine: &Engine, shutdown: &watch::Receiver<bool>) {
        if self.pending.len() >= WRITES || self.buffer.is_empty() {
            return;
        }
        let outcomes = std::mem::take(&mut self.buffer);
        let count = outcomes.len();
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let conn = self.idle.pop();
        let digest = self.digest.clone();
        // (In the run's span, so that its lines name the run and digest.)
        let write = tokio::spawn(
            async move { record(&engine, &digest, outcomes, conn, &shutdown).await }
                .instrument(tracing::Span::current()),
        );
        self.pending.push_back((write, count));
    }

    /// Waits for the oldest write under way (forever if there is none).
    pub(super) async fn written(&mut self) -> Result<()> {
        let Some((write, _)) = self.pending.front_mut() else {
            return std::future::pending().await;
        };
        let result = write.await;
        self.pending.pop_front();
        let conn = result.context("the ledger writer stopped")??;
        self.idle.extend(conn);
        Ok(())
    }

    /// Writes everything buffered and waits for it.
    pub(super) async fn finish(
        &mut self,
        engine: &Engine,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<()> {
        loop {
            self.start(engine, shutdown);
            if !self.is_writing() {
                return Ok(());
            }
            self.written().await?;
        }
    }
}

/// Writes a batch of outcomes to the ledger: one statement for all the
/// sent rows, one for the skipped, one for the released; failures and
/// retries row by row (they carry their own reply). Writes on `conn`, or a
/// connection of the pool, and returns the connection for the next write.
async fn record(
    engine: &Engine,
    digest: &str,
    outcomes: Vec<Outcome>,
    conn: Option<LedgerConnection>,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<LedgerConnection>> {
    if outcomes.is_empty() {
        return Ok(conn);
    }
    let store = &engine.store;
    let max_attempts = engine.settings.delivery.max_attempts as i32;
    let mut sent = Vec::new();
    let mut skipped = Vec::new();
    let mut deferred = Vec::new();
    let mut failed = Vec::new();
    let mut retries = Vec::new();
    let mut no_mailbox = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Sent(id) => sent.push(id),
            Outcome::Skipped(id) => skipped.push(id),
            Outcome::Deferred(id) => deferred.push(id),
            Outcome::LeaseLost(id) => {
                debug!(
                    delivery = id,
                    "not sent: its lease ran low while it waited; it returns to pending when the lease is over"
                );
            }
            Outcome::Failed { id, to, error } => {
                warn!(delivery = id, to, %error, "delivery failed");
                failed.push((id, error));
            }
            Outcome::NoMailbox {
                id,
                named,
                to,
                error,
            } => {
                warn!(delivery = id, to, %error, "delivery failed: no such mailbox");
                if engine.settings.bounces.enabled() {
                    no_mailbox.push((named, error.clone()));
                }
                failed.push((id, error));
            }
            Outcome::Retry {
                id,
                attempts,
                to,
                error,
            } if attempts >= max_attempts => {
                warn!(delivery = id, to, %error, attempts, "delivery failed: no attempts left");
                failed.push((id, format!("{error} (gave up after {attempts} attempts)")));
            }
            Outcome::Retry {
                id,
                attempts,
                to,
                error,
            } => {
                let at = Utc::now() + backoff(&engine.settings, attempts);
                warn!(delivery = id, to, %error, attempts, retry_at = %at, "delivery will be retried");
                retries.push((id, Timestamp::from(at), error));
            }
        }
    }
    let now = Timestamp::now();
    let held = Mutex::new(conn);
    retrying("record delivery outcomes", shutdown, || async {
        let mut slot = held.lock().await;
        // (A connection that fails is dropped here; the next try takes
        // another. Each statement only changes rows still open, so writing
        // the batch again is harmless.)
        let mut conn = match slot.take() {
            Some(conn) => conn,
            None => store.ledger_connection().await?,
        };
        conn.mark_sent(&sent, now).await?;
        conn.mark_skipped(&skipped).await?;
        conn.release(&deferred).await?;
        for (id, error) in &failed {
            conn.mark_failed(*id, error).await?;
        }
        for (id, at, error) in &retries {
            conn.mark_retry(*id, *at, error).await?;
        }
        *slot = Some(conn);
        Ok(())
    })
    .await?;
    // The readers whose mailbox does not exist: a hard bounce each (after
    // the ledger, which must not wait for them).
    for (named, error) in &no_mailbox {
        let ledger = bounces::Ledger {
            store,
            metrics: &engine.metrics,
            limits: bounces::limits(&engine.settings),
        };
        if let Err(e) =
            bounces::record(ledger, *named, BounceKind::Hard, BounceSource::Smtp, error).await
        {
            warn!(
                subscriber = named.subscriber_id,
                "cannot record the bounce of a refused recipient: {}",
                chain(&e)
            );
        }
    }
    let metrics = &engine.metrics;
    metrics.count_messages(digest, "sent", sent.len());
    metrics.count_messages(digest, "skipped", skipped.len());
    metrics.count_messages(digest, "failed", failed.len());
    metrics.count_messages(digest, "retried", retries.len());
    Ok(held.into_inner())
}
