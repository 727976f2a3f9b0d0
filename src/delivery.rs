//! The planner and the workers: the delivery ledger's state machine.
//!
//! Planning a (digest, slot) is one idempotent transaction in the store.
//! Delivering claims batches of due ledger rows with a lease, renders and
//! sends them on `delivery.concurrency` workers (each with its own SMTP
//! connection), and records each outcome: sent, retry later (backoff),
//! failed, skipped. When the relay keeps failing, claiming pauses instead
//! of burning every row's attempts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::sync::{Mutex, mpsc, watch};
use tracing::{debug, info, instrument, warn};

use crate::config::{Digest, Settings};
use crate::mail::{self, BodyEncoder, MessageMeta, SendError, Sender};
use crate::render::{Recipient, Renderer, RunContext};
use crate::store::{
    Claimed, DeliveryCounts, LedgerConnection, PlanOutcome, Run, RunArticle, RunPlan, Store,
    Timestamp,
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
    run: Arc<RunContext>,
    /// Half the lease after the claim: past it, the row is neither sent
    /// nor released by this process (see [`Outcome::LeaseLost`]).
    usable_until: tokio::time::Instant,
}

impl Job {
    /// Whether this process may still send the row.
    fn usable(&self) -> bool {
        tokio::time::Instant::now() < self.usable_until
    }
}

/// The digest email of a run for one reader: what `send` delivers,
/// `preview` writes and `send --dry-run` builds, made in one place so that
/// they cannot differ.
pub fn compose(
    engine: &Engine,
    run: &RunContext,
    reader: &Recipient<'_>,
    subscriber_id: i64,
    date: DateTime<Utc>,
    encoder: &mut BodyEncoder,
) -> Result<lettre::Message> {
    let (subject, bodies) = engine.renderer.render_for_mail(run, reader, encoder)?;
    let from = &engine.settings.mail.from;
    mail::build_message(
        &MessageMeta {
            from,
            to_email: reader.email,
            to_name: reader.name,
            message_id: mail::message_id(from, run.name(), run.run_id(), subscriber_id),
            list: Some(mail::ListHeaders {
                list_id: mail::list_id(from, run.name(), run.title()),
                unsubscribe_url: engine.renderer.unsubscribe_url(reader.unsubscribe_token),
            }),
            date,
        },
        &subject,
        bodies,
    )
}

enum Outcome {
    Sent(i64),
    Skipped(i64),
    /// Not attempted (the relay is failing, or shutting down): back to
    /// pending without counting an attempt.
    Deferred(i64),
    /// Not attempted, because the row waited in this process (behind a
    /// rate limit, say) until its lease nearly ran out: another process may
    /// claim it once the lease is over, so this one leaves the row alone.
    LeaseLost(i64),
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

/// A token bucket shared by the workers of a process.
struct RateLimiter {
    per_second: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimiter {
    fn new(per_second: f64) -> Self {
        Self {
            per_second,
            // Start with one token: no burst beyond a second's worth.
            state: Mutex::new((1.0, tokio::time::Instant::now())),
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let mut state = self.state.lock().await;
                let now = tokio::time::Instant::now();
                let refill = now.duration_since(state.1).as_secs_f64() * self.per_second;
                state.0 = (state.0 + refill).min(self.per_second.max(1.0));
                state.1 = now;
                if state.0 >= 1.0 {
                    state.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - state.0) / self.per_second)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Counts consecutive transient failures across workers. Past a threshold
/// the relay is taken to be down: workers stop trying and the claimer
/// pauses with backoff.
struct Breaker {
    consecutive: AtomicU32,
    threshold: u32,
}

impl Breaker {
    fn is_open(&self) -> bool {
        self.consecutive.load(Ordering::Relaxed) >= self.threshold
    }
    fn record(&self, transient_failure: bool) {
        if transient_failure {
            self.consecutive.fetch_add(1, Ordering::Relaxed);
        } else {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }
    fn reset(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }
}

/// `delivery.concurrency` workers, each owning one [`Sender`] (one SMTP connection).
pub struct Workers {
    jobs: mpsc::Sender<Job>,
    outcomes: mpsc::Receiver<Outcome>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    breaker: Arc<Breaker>,
    /// How long the next pause lasts when the relay keeps failing.
    pause: Duration,
}

impl Workers {
    pub fn start(engine: &Engine) -> Self {
        let size = engine.settings.delivery.concurrency.max(1);
        let limiter = engine
            .settings
            .delivery
            .rate_per_second
            .map(|r| Arc::new(RateLimiter::new(r)));
        let breaker = Arc::new(Breaker {
            consecutive: AtomicU32::new(0),
            threshold: (size as u32).max(3),
        });
        let (jobs, job_rx) = mpsc::channel::<Job>(size * 2);
        // At most `size` outcomes wait unrecorded: this bounds the duplicates
        // after a crash (see `Writer`).
        let (outcome_tx, outcomes) = mpsc::channel::<Outcome>(size);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let handles = (0..size)
            .map(|_| {
                let job_rx = job_rx.clone();
                let outcome_tx = outcome_tx.clone();
                let engine = engine.clone();
                let limiter = limiter.clone();
                let breaker = breaker.clone();
                tokio::spawn(async move {
                    let mut sender = Sender::new(&engine.settings);
                    let mut encoder = BodyEncoder::default();
                    // A job taken early with its message (or the outcome of
                    // a job that sends none), whose transaction may already
                    // be under way (see `Sender::send_then`).
                    let mut ahead: Option<(Job, Result<lettre::Message, Outcome>)> = None;
                    loop {
                        let (job, prepared) = match ahead.take() {
                            Some((job, prepared)) => (job, Some(prepared)),
                            None => match job_rx.lock().await.recv().await {
                                Some(job) => (job, None),
                                None => break,
                            },
                        };
                        if let Some(limiter) = limiter.as_ref().filter(|_| !breaker.is_open()) {
                            limiter.acquire().await;
                        }
                        // (The lease is checked after the rate limit's wait.)
                        let outcome = if !job.usable() {
                            Outcome::LeaseLost(job.claimed.id)
                        } else if breaker.is_open() {
                            Outcome::Deferred(job.claimed.id)
                        } else {
                            let prepared =
                                prepared.unwrap_or_else(|| prepare(&engine, &mut encoder, &job));
                            let outcome = match prepared {
                                Err(outcome) => outcome,
                                Ok(message) => {
                                    // Without a rate limit to keep, the next
                                    // job waiting, if any, is taken and built
                                    // now, so that its envelope goes out with
                                    // this message's content.
                                    if limiter.is_none() && sender.chains() {
                                        ahead = job_rx
                                            .try_lock()
                                            .ok()
                                            .and_then(|mut rx| rx.try_recv().ok())
                                            .map(|next| {
                                                let prepared =
                                                    prepare(&engine, &mut encoder, &next);
                                                (next, prepared)
                                            });
                                    }
                                    // (Its lease is checked again before its
                                    // content is sent.)
                                    let next = ahead.as_ref().and_then(|(next, prepared)| {
                                        prepared.as_ref().ok().filter(|_| next.usable())
                                    });
                                    let next = next.map(lettre::Message::envelope);
                                    send_one(&mut sender, &job, &message, next).await
                                }
                            };
                            breaker.record(matches!(outcome, Outcome::Retry { .. }));
                            outcome
                        };
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
            breaker,
            pause: Duration::from_secs(1),
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

/// The message of `job`, or the outcome of a job that sends none.
fn prepare(
    engine: &Engine,
    encoder: &mut BodyEncoder,
    job: &Job,
) -> Result<lettre::Message, Outcome> {
    let c = &job.claimed;
    if c.subscriber_status != "confirmed" {
        return Err(Outcome::Skipped(c.id));
    }
    let reader = Recipient {
        name: c.name.as_deref(),
        email: &c.email,
        unsubscribe_token: &c.unsubscribe_token,
    };
    compose(
        engine,
        &job.run,
        &reader,
        c.subscriber_id,
        Utc::now(),
        encoder,
    )
    .map_err(|e| Outcome::Failed {
        id: c.id,
        error: format!("cannot render or build the message: {e:#}"),
    })
}

async fn send_one(
    sender: &mut Sender,
    job: &Job,
    message: &lettre::Message,
    next: Option<&lettre::address::Envelope>,
) -> Outcome {
    let c = &job.claimed;
    let stem = format!("{}-{}-{}", job.run.name(), c.run_id, c.subscriber_id);
    match sender.send_then(message, &stem, next).await {
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
    let job = Arc::new(RunContext::new(digest, run.slot.0, &articles, Some(run.id)));
    let lease =
        chrono::Duration::from_std(settings.delivery.lease).unwrap_or(chrono::Duration::minutes(5));
    // Outcomes are written twice the concurrency at a time: each write is a
    // commit, which waits for the disk, and with batches of `concurrency`
    // those commits held the benchmark back (100,000 messages: 8,300–9,000
    // messages a second, against 9,700–10,200 with batches twice as large).
    let flush_at = 2 * settings.delivery.concurrency.max(1);
    // Claim again, in the background, well before the workers run dry, so
    // batches follow each other without a pause.
    let refill_at =
        (settings.delivery.concurrency * 2).max(settings.delivery.batch_size as usize / 2);
    // Claimed rows with the time until which this process may send them.
    let mut queue: std::collections::VecDeque<(Claimed, tokio::time::Instant)> =
        std::collections::VecDeque::new();
    let mut in_flight = 0usize;
    let mut writer = Writer::default();
    type Claim = (Vec<Claimed>, tokio::time::Instant);
    let mut claiming: Option<tokio::task::JoinHandle<Result<Claim>>> = None;
    // The last claim found nothing due: wait for the rows in hand first.
    let mut dry = false;
    // The highest id claimed so far: claims walk the run forward.
    let mut after = 0i64;
    let mut stop = shutdown.clone();
    let mut watching = true;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let stopping = *shutdown.borrow();
        if stopping {
            // Rows not yet handed to a worker go back to pending (those of
            // a claim under way once it is done).
            let now = tokio::time::Instant::now();
            writer.buffer.extend(
                queue
                    .drain(..)
                    .filter(|(_, usable_until)| now < *usable_until)
                    .map(|(c, _)| Outcome::Deferred(c.id)),
            );
        } else if !dry
            && claiming.is_none()
            && queue.len() < refill_at
            && !workers.breaker.is_open()
        {
            // (While the relay keeps failing, nothing more is claimed: the
            // rows in hand are released and the loop pauses below.)
            let (engine, shutdown) = (engine.clone(), shutdown.clone());
            let (run_id, batch) = (run.id, settings.delivery.batch_size);
            let usable_until = tokio::time::Instant::now() + settings.delivery.lease / 2;
            claiming = Some(tokio::spawn(async move {
                let store = &engine.store;
                let now = Utc::now();
                let claimed = retrying("claim deliveries", &shutdown, || {
                    store.claim(
                        run_id,
                        after,
                        Timestamp::from(now),
                        Timestamp::from(now + lease),
                        batch,
                    )
                })
                .await?;
                Ok((claimed, usable_until))
            }));
        }
        // (With a claim under way, the select below waits for its rows.)
        if queue.is_empty() && in_flight == 0 && claiming.is_none() {
            writer.finish(engine, shutdown).await?;
            if stopping {
                break;
            }
            if workers.breaker.is_open() {
                warn!(
                    pause_secs = workers.pause.as_secs(),
                    "the SMTP relay keeps failing: pausing deliveries"
                );
                let mut shutdown = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(workers.pause) => {}
                    _ = shutdown.changed() => {}
                }
                workers.pause = (workers.pause * 2).min(Duration::from_secs(60));
                workers.breaker.reset();
                dry = false;
                continue;
            }
            let (counts, next) = retrying("read the ledger", shutdown, || async {
                Ok((
                    store.delivery_counts(run.id).await?,
                    store.next_attempt_at(run.id).await?,
                ))
            })
            .await?;
            if counts.open() == 0 || drain == Drain::DueNow {
                break;
            }
            // Rows waiting for a retry, or leased by another process. Each
            // look at the ledger reads the whole run, so while only retries
            // are left (nobody holds a lease that could run out or be
            // released) the wait goes up to the next retry's time, checking
            // once a minute for a `gazette retry`.
            let longest = if counts.sending > 0 {
                Duration::from_secs(5)
            } else {
                Duration::from_secs(60)
            };
            let wait = match next {
                Some(at) => (at.0 - Utc::now()).to_std().unwrap_or_default(),
                None => Duration::from_secs(1),
            }
            .clamp(Duration::from_millis(50), longest);
            let mut shutdown = shutdown.clone();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
            dry = false;
            continue;
        }
        let can_feed = !queue.is_empty() && !stopping;
        tokio::select! {
            permit = workers.jobs.reserve(), if can_feed => {
                let Ok(permit) = permit else {
                    anyhow::bail!("the delivery workers stopped");
                };
                let (claimed, usable_until) = queue.pop_front().expect("queue is not empty");
                permit.send(Job { claimed, run: job.clone(), usable_until });
                in_flight += 1;
            }
            outcome = workers.outcomes.recv(), if in_flight > 0 && writer.unrecorded() < 2 * flush_at => {
                in_flight -= 1;
                if let Some(o) = outcome {
                    if matches!(o, Outcome::Sent(_)) && workers.pause > Duration::from_secs(1) {
                        info!("the SMTP relay accepts messages again: deliveries resumed");
                        workers.pause = Duration::from_secs(1);
                    }
                    writer.buffer.push(o);
                }
                if writer.buffer.len() >= flush_at {
                    writer.start(engine, shutdown);
                }
            }
            claimed = async { claiming.as_mut().expect("a claim is under way").await }, if claiming.is_some() => {
                claiming = None;
                let claimed = claimed.context("the ledger claim stopped")??;
                take_claimed(claimed, &mut queue, &mut after, &mut dry);
            }
            written = writer.written(), if writer.is_writing() => {
                written?;
                if writer.buffer.len() >= flush_at {
                    writer.start(engine, shutdown);
                }
            }
            _ = tick.tick() => writer.start(engine, shutdown),
            changed = stop.changed(), if can_feed && watching => watching = changed.is_ok(),
        }
    }
    retrying("finish the run", shutdown, || async {
        store.finish_run_if_done(run.id, Timestamp::now()).await?;
        store.delivery_counts(run.id).await
    })
    .await
}

/// Takes the rows of a finished claim into the queue and moves the claim
/// cursor on.
fn take_claimed(
    (claimed, usable_until): (Vec<Claimed>, tokio::time::Instant),
    queue: &mut std::collections::VecDeque<(Claimed, tokio::time::Instant)>,
    after: &mut i64,
    dry: &mut bool,
) {
    match claimed.last() {
        Some(last) => *after = last.id,
        // Past the end: go round once more from the start for the rows
        // left behind, then wait.
        None if *after > 0 => *after = 0,
        None => *dry = true,
    }
    queue.extend(claimed.into_iter().map(|c| (c, usable_until)));
}

/// Runs a store operation until it succeeds: the database may restart or
/// drop connections mid-run, and nothing may be lost meanwhile. Logs once
/// when it starts failing and once when it recovers; gives up only on
/// shutdown.
async fn retrying<T, F, Fut>(what: &str, shutdown: &watch::Receiver<bool>, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(250);
    let mut failures = 0u32;
    loop {
        match op().await {
            Ok(v) => {
                if failures > 0 {
                    info!("database reachable again: {what} succeeded");
                }
                return Ok(v);
            }
            Err(e) => {
                if failures == 0 {
                    warn!("cannot {what}, retrying with backoff: {e:#}");
                }
                failures += 1;
                if *shutdown.borrow() {
                    return Err(e.context(format!("cannot {what}")));
                }
                let mut stop = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.changed() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Writes outcomes to the ledger in the background, so the workers never
/// wait for the database: a write starts when `2 × concurrency` outcomes
/// are buffered (or every 100 ms), with at most `WRITES` writes under way,
/// each of its own outcomes (a write waits for its commit, so one at a time
/// would stop the workers during every commit). Outcomes stop being taken
/// from the workers while `4 × concurrency` are unrecorded. After a crash
/// the messages sent but not yet recorded are sent again: those being
/// written or buffered (at most `4 × concurrency`), those in the channel
/// from the workers (at most `concurrency`) and one just sent per worker,
/// so `6 × concurrency`.
#[derive(Default)]
struct Writer {
    buffer: Vec<Outcome>,
    /// The writes under way, oldest first, and how many outcomes each records.
    pending: std::collections::VecDeque<(
        tokio::task::JoinHandle<Result<Option<LedgerConnection>>>,
        usize,
    )>,
    /// The connections of the writes done, for the next ones.
    idle: Vec<LedgerConnection>,
}

/// How many outcome writes may be under way at once.
const WRITES: usize = 2;

impl Writer {
    /// Outcomes not yet in the ledger: buffered or being written.
    fn unrecorded(&self) -> usize {
        self.buffer.len() + self.pending.iter().map(|(_, n)| n).sum::<usize>()
    }

    fn is_writing(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Starts writing the buffer, unless it is empty or `WRITES` writes are
    /// under way.
    fn start(&mut self, engine: &Engine, shutdown: &watch::Receiver<bool>) {
        if self.pending.len() >= WRITES || self.buffer.is_empty() {
            return;
        }
        let outcomes = std::mem::take(&mut self.buffer);
        let count = outcomes.len();
        let engine = engine.clone();
        let shutdown = shutdown.clone();
        let conn = self.idle.pop();
        let write = tokio::spawn(async move { record(&engine, outcomes, conn, &shutdown).await });
        self.pending.push_back((write, count));
    }

    /// Waits for the oldest write under way (forever if there is none).
    async fn written(&mut self) -> Result<()> {
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
    async fn finish(&mut self, engine: &Engine, shutdown: &watch::Receiver<bool>) -> Result<()> {
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
            Outcome::Failed { id, error } => {
                warn!(delivery = id, %error, "delivery failed");
                failed.push((id, error));
            }
            Outcome::Retry {
                id,
                attempts,
                error,
            } if attempts >= max_attempts => {
                warn!(delivery = id, %error, attempts, "delivery failed: no attempts left");
                failed.push((id, format!("{error} (gave up after {attempts} attempts)")));
            }
            Outcome::Retry {
                id,
                attempts,
                error,
            } => {
                let at = Utc::now() + backoff(&engine.settings, attempts);
                warn!(delivery = id, %error, attempts, retry_at = %at, "delivery will be retried");
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
    Ok(held.into_inner())
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
