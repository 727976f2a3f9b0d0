//! The planner and the workers: the delivery ledger's state machine.
//!
//! Planning a (digest, slot) is one idempotent transaction in the store.
//! Delivering claims batches of due ledger rows with a lease, renders and
//! sends them on `smtp.pool_size` workers (each with its own connection),
//! and records each outcome: sent, retry later (backoff), failed, skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{info, instrument, warn};

use crate::config::{Digest, Settings};
use crate::mail::{self, MessageMeta, SendError, Sender};
use crate::render::{Recipient, Renderer, RunContext};
use crate::store::{
    Claimed, DeliveryCounts, PlanOutcome, Run, RunArticle, RunPlan, Store, Timestamp,
};

/// What the delivery code needs, shared by every command.
#[derive(Clone)]
pub struct Engine {
    pub settings: Arc<Settings>,
    pub store: Store,
    pub renderer: Arc<Renderer>,
}

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
            info!(run_id, status, "this slot was planned before")
        }
    }
    Ok(outcome)
}

/// Whether delivering waits for retries scheduled in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Return once nothing is due now (the daemon comes back on its next tick).
    DueNow,
    /// Return only when the run is finished (`gazette send`).
    UntilFinished,
}

/// One unit of work for a worker.
struct Job {
    claimed: Claimed,
    run: Arc<RunJob>,
}

/// What every delivery of a run shares.
struct RunJob {
    digest: String,
    title: String,
    context: RunContext,
}

enum Outcome {
    Sent(i64),
    Skipped(i64),
    Retry {
        id: i64,
        attempts: i32,
        error: String,
    },
    Failed {
        id: i64,
        error: String,
    },
}

/// `smtp.pool_size` workers, each owning one [`Sender`] (one SMTP connection).
pub struct Workers {
    jobs: mpsc::Sender<Job>,
    outcomes: mpsc::Receiver<Outcome>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    pub fn start(engine: &Engine) -> Self {
        let size = engine.settings.smtp.pool_size.max(1);
        let (jobs, job_rx) = mpsc::channel::<Job>(size * 2);
        let (outcome_tx, outcomes) = mpsc::channel::<Outcome>(size * 2);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let handles = (0..size)
            .map(|_| {
                let job_rx = job_rx.clone();
                let outcome_tx = outcome_tx.clone();
                let engine = engine.clone();
                tokio::spawn(async move {
                    let mut sender = Sender::new(&engine.settings);
                    loop {
                        let job = job_rx.lock().await.recv().await;
                        let Some(job) = job else { break };
                        let outcome = deliver_one(&engine, &mut sender, &job).await;
                        if outcome_tx.send(outcome).await.is_err() {
                            break;
                        }
                    }
                    sender.close().await;
                })
            })
            .collect();
        Self {
            jobs,
            outcomes,
            handles,
        }
    }

    /// Closes every connection once the in-flight messages are done.
    pub async fn stop(self) {
        drop(self.jobs);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

async fn deliver_one(engine: &Engine, sender: &mut Sender, job: &Job) -> Outcome {
    let c = &job.claimed;
    if c.subscriber_status != "confirmed" {
        return Outcome::Skipped(c.id);
    }
    let message = (|| {
        let recipient = Recipient {
            name: c.name.as_deref(),
            email: &c.email,
            unsubscribe_token: &c.unsubscribe_token,
        };
        let rendered = engine.renderer.render(&job.run.context, &recipient)?;
        let from = &engine.settings.mail.from;
        let meta = MessageMeta {
            from,
            to_email: &c.email,
            to_name: c.name.as_deref(),
            message_id: mail::message_id(from, &job.run.digest, Some(c.run_id), c.subscriber_id),
            list_id: mail::list_id(from, &job.run.digest, &job.run.title),
            unsubscribe_url: engine.renderer.unsubscribe_url(&c.unsubscribe_token),
            date: Utc::now(),
        };
        mail::build_message(&meta, &rendered)
    })();
    let message = match message {
        Ok(m) => m,
        Err(e) => {
            return Outcome::Failed {
                id: c.id,
                error: format!("cannot render or build the message: {e:#}"),
            };
        }
    };
    let stem = format!("{}-{}-{}", job.run.digest, c.run_id, c.subscriber_id);
    match sender.send(&message, &stem).await {
        Ok(()) => Outcome::Sent(c.id),
        Err(SendError::Permanent(error)) => Outcome::Failed { id: c.id, error },
        Err(SendError::Transient(error)) => Outcome::Retry {
            id: c.id,
            attempts: c.attempts + 1,
            error,
        },
    }
}

/// Exponential backoff with jitter: `base * 2^(attempts-1)`, capped, then
/// a random 50–100% of it so retries of many rows spread out.
pub fn backoff(settings: &Settings, attempts: i32) -> Duration {
    let d = &settings.delivery;
    let exp = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(0)
        .min(30);
    let full = d.retry_base.saturating_mul(1u32 << exp).min(d.retry_max);
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    full.mul_f64(0.5 + f64::from(byte[0]) / 510.0)
}

/// Delivers the pending rows of `run`. Returns the run's final counts.
#[instrument(skip_all, fields(run_id = run.id, digest = %run.digest))]
pub async fn deliver_run(
    engine: &Engine,
    workers: &mut Workers,
    run: &Run,
    drain: Drain,
    shutdown: &watch::Receiver<bool>,
) -> Result<DeliveryCounts> {
    let settings = &engine.settings;
    let store = &engine.store;
    let Some(digest) = settings.digest(&run.digest) else {
        warn!(
            "run {} belongs to digest `{}`, which is no longer configured: left pending",
            run.id, run.digest
        );
        return store.delivery_counts(run.id).await;
    };
    let articles = store.run_articles(run.id).await?;
    let job = Arc::new(RunJob {
        digest: digest.name.to_string(),
        title: digest.title.clone(),
        context: RunContext::new(digest, run.slot.0, &articles, Some(run.id)),
    });
    let lease =
        chrono::Duration::from_std(settings.delivery.lease).unwrap_or(chrono::Duration::minutes(5));
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = Utc::now();
        store.release_expired_leases(Timestamp::from(now)).await?;
        let claimed = store
            .claim(
                Some(run.id),
                Timestamp::from(now),
                Timestamp::from(now + lease),
                settings.delivery.batch_size,
            )
            .await?;
        if claimed.is_empty() {
            let counts = store.delivery_counts(run.id).await?;
            if counts.open() == 0 || drain == Drain::DueNow {
                break;
            }
            // Rows waiting for a retry, or leased by another process.
            let wait = match store.next_attempt_at(run.id).await? {
                Some(at) => (at.0 - Utc::now()).to_std().unwrap_or_default(),
                None => Duration::from_secs(1),
            }
            .clamp(Duration::from_millis(50), Duration::from_secs(5));
            let mut shutdown = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
            continue;
        }
        let n = claimed.len();
        let feed = async {
            for c in claimed {
                if workers
                    .jobs
                    .send(Job {
                        claimed: c,
                        run: job.clone(),
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        let collect = async {
            let mut outcomes = Vec::with_capacity(n);
            while outcomes.len() < n {
                match workers.outcomes.recv().await {
                    Some(o) => outcomes.push(o),
                    None => break,
                }
            }
            outcomes
        };
        let ((), outcomes) = tokio::join!(feed, collect);
        record(engine, outcomes).await?;
    }
    store.finish_run_if_done(run.id, Timestamp::now()).await?;
    store.delivery_counts(run.id).await
}

async fn record(engine: &Engine, outcomes: Vec<Outcome>) -> Result<()> {
    let store = &engine.store;
    let max_attempts = engine.settings.delivery.max_attempts as i32;
    let mut sent = Vec::new();
    let mut skipped = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Sent(id) => sent.push(id),
            Outcome::Skipped(id) => skipped.push(id),
            Outcome::Failed { id, error } => {
                warn!(delivery = id, %error, "delivery failed");
                store.mark_failed(id, &error).await?;
            }
            Outcome::Retry {
                id,
                attempts,
                error,
            } if attempts >= max_attempts => {
                warn!(delivery = id, %error, attempts, "delivery failed: no attempts left");
                store
                    .mark_failed(id, &format!("{error} (gave up after {attempts} attempts)"))
                    .await?;
            }
            Outcome::Retry {
                id,
                attempts,
                error,
            } => {
                let at = Utc::now() + backoff(&engine.settings, attempts);
                warn!(delivery = id, %error, attempts, retry_at = %at, "delivery will be retried");
                store.mark_retry(id, Timestamp::from(at), &error).await?;
            }
        }
    }
    store.mark_sent(&sent, Timestamp::now()).await?;
    store.mark_skipped(&skipped).await?;
    Ok(())
}

/// Delivers every unfinished run (of one digest, or all), oldest first.
pub async fn deliver_unfinished(
    engine: &Engine,
    digest: Option<&crate::domain::DigestName>,
    drain: Drain,
    shutdown: &watch::Receiver<bool>,
) -> Result<HashMap<i64, DeliveryCounts>> {
    let runs = engine.store.unfinished_runs(digest).await?;
    let mut done = HashMap::new();
    if runs.is_empty() {
        return Ok(done);
    }
    let mut workers = Workers::start(engine);
    let mut result = Ok(());
    for run in &runs {
        match deliver_run(engine, &mut workers, run, drain, shutdown).await {
            Ok(counts) => {
                done.insert(run.id, counts);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    workers.stop().await;
    result.map(|()| done)
}
