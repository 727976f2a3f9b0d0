//! The loop that drains one run: claims due ledger rows in the
//! background, feeds them to the workers, hands their outcomes to the
//! writer, pauses while the relay keeps failing, and waits for retries.
//! Its state is [`RunLoop`], with one method per event.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, instrument, warn};

use super::engine::Engine;
use super::job::{Job, Outcome};
use super::plan::plan_rest;
use super::policy::retrying;
use super::worker::Workers;
use super::writer::Writer;
use crate::render::RunContext;
use crate::store::{Claimed, DeliveryCounts, Run, Timestamp};

/// Whether delivering waits for retries scheduled in the future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Return once nothing is due now (the daemon comes back on its next tick).
    DueNow,
    /// Return only when the run is finished (`gazette send`).
    UntilFinished,
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
    let store = &engine.store;
    let Some(digest) = engine.settings.digest(&run.digest) else {
        warn!(
            "run {} belongs to digest `{}`, which is no longer configured: left pending",
            run.id, run.digest
        );
        return store.delivery_counts(run.id).await;
    };
    let articles = store.run_articles(run.id).await?;
    let context = Arc::new(RunContext::new(digest, run.slot.0, &articles, Some(run.id)));
    let mut state = RunLoop::new(engine, workers, run.id, context, shutdown);
    if run.planning {
        state.start_planning();
    }
    while state.step(drain).await? {}
    // (Only when stopping: the planner stops after its chunk.)
    if let Some(planner) = state.planner.take() {
        planner.await.context("the planning of the run stopped")??;
    }
    let (finished, counts) = retrying("finish the run", shutdown, || async {
        let finished = store.finish_run_if_done(run.id, Timestamp::now()).await?;
        Ok((finished, store.delivery_counts(run.id).await?))
    })
    .await?;
    if finished {
        // One line per run, as one when it was planned.
        let took = (Utc::now() - run.created_at.0).to_std().unwrap_or_default();
        engine.metrics.run_seconds.observe(took.as_secs_f64());
        info!(
            sent = counts.sent,
            failed = counts.failed,
            skipped = counts.skipped,
            took_secs = format!("{:.1}", took.as_secs_f64()),
            per_second = format!("{:.0}", counts.sent as f64 / took.as_secs_f64().max(0.001)),
            "run finished"
        );
    }
    Ok(counts)
}

/// Rows of a finished claim, with the time until which this process may
/// send them.
type Claim = (Vec<Claimed>, Instant);

/// What woke the loop up.
enum Event {
    /// A job went to a worker.
    Fed,
    /// Every worker is gone.
    WorkersGone,
    Outcome(Option<Outcome>),
    Claimed(Result<Result<Claim>, tokio::task::JoinError>),
    Written(Result<()>),
    /// The planner added a chunk to the ledger (`false`: it is done).
    Planned(bool),
    PlanningDone(Result<Result<()>, tokio::task::JoinError>),
    Tick,
    /// Shutdown changed (or its sender is gone: `false`).
    Stop(bool),
}

struct RunLoop<'a> {
    engine: &'a Engine,
    workers: &'a mut Workers,
    run_id: i64,
    context: Arc<RunContext>,
    shutdown: &'a watch::Receiver<bool>,
    /// Claimed rows with the time until which this process may send them.
    queue: VecDeque<(Claimed, Instant)>,
    /// Jobs handed to the workers whose outcome has not come back.
    in_flight: usize,
    writer: Writer,
    claiming: Option<JoinHandle<Result<Claim>>>,
    /// The last claim found nothing due: wait for the rows in hand first.
    dry: bool,
    /// The highest id claimed so far: claims walk the run forward.
    after: i64,
    stop: watch::Receiver<bool>,
    watching: bool,
    tick: tokio::time::Interval,
    /// Outcomes are written this many at a time.
    flush_at: usize,
    /// A claim starts when fewer rows than this are in hand.
    refill_at: usize,
    lease: chrono::Duration,
    /// What the last wait for retries was for (pending, sending, next).
    waiting: Option<(i64, i64, Option<Timestamp>)>,
    /// Plans the rest of the run's ledger while it is sent.
    planner: Option<JoinHandle<Result<()>>>,
    /// Deliveries the planner has added so far.
    planned: watch::Receiver<u64>,
    /// What `planned` said when the last claim started.
    planned_at_claim: u64,
}

impl<'a> RunLoop<'a> {
    fn new(
        engine: &'a Engine,
        workers: &'a mut Workers,
        run_id: i64,
        context: Arc<RunContext>,
        shutdown: &'a watch::Receiver<bool>,
    ) -> Self {
        let delivery = &engine.settings.delivery;
        let writer = Writer::for_digest(context.name());
        Self {
            engine,
            workers,
            run_id,
            context,
            shutdown,
            queue: VecDeque::new(),
            in_flight: 0,
            writer,
            claiming: None,
            dry: false,
            after: 0,
            stop: shutdown.clone(),
            watching: true,
            tick: tokio::time::interval(Duration::from_millis(100)),
            // Outcomes are written twice the concurrency at a time: each
            // write is a commit, which waits for the disk, and with batches
            // of `concurrency` those commits held the benchmark back
            // (100,000 messages: 8,300–9,000 messages a second, against
            // 9,700–10,200 with batches twice as large).
            flush_at: 2 * delivery.concurrency.max(1),
            // Claim again, in the background, well before the workers run
            // dry, so batches follow each other without a pause.
            refill_at: (delivery.concurrency * 2).max(delivery.batch_size as usize / 2),
            lease: chrono::Duration::from_std(delivery.lease)
                .unwrap_or(chrono::Duration::minutes(5)),
            waiting: None,
            planner: None,
            planned: watch::channel(0).1,
            planned_at_claim: 0,
        }
    }

    /// Plans the rest of the run's ledger in the background.
    fn start_planning(&mut self) {
        let (progress, planned) = watch::channel(0);
        self.planned = planned;
        self.planner = Some(tokio::spawn(plan_rest(
            self.engine.store.clone(),
            self.run_id,
            progress,
            self.shutdown.clone(),
        )));
    }

    /// One turn of the loop; `false` when the run is done (or stopped).
    async fn step(&mut self, drain: Drain) -> Result<bool> {
        let stopping = *self.shutdown.borrow();
        if stopping {
            self.release_unsent();
        } else if !self.dry
            && self.claiming.is_none()
            && self.queue.len() < self.refill_at
            // (While the relay keeps failing, nothing more is claimed: the
            // rows in hand are released and the loop pauses.)
            && !self.workers.breaker.is_open()
        {
            self.start_claim();
        }
        // (With a claim under way, the wait below is for its rows; while
        // the run is being planned, for its next chunk.)
        if self.queue.is_empty()
            && self.in_flight == 0
            && self.claiming.is_none()
            && (self.planner.is_none() || stopping)
        {
            return self.when_idle(stopping, drain).await;
        }
        match self.next_event(stopping).await {
            Event::Fed => {}
            Event::WorkersGone => anyhow::bail!("the delivery workers stopped"),
            Event::Tick => self.writer.start(self.engine, self.shutdown),
            Event::Outcome(outcome) => self.on_outcome(outcome),
            Event::Claimed(claimed) => self.on_claimed(claimed)?,
            Event::Written(written) => {
                written?;
                self.flush_if_full();
            }
            Event::Stop(watching) => self.watching = watching,
            Event::Planned(more) => {
                // (Once the planner's sender is gone, its end comes next.)
                if more {
                    self.dry = false;
                }
            }
            Event::PlanningDone(done) => {
                done.context("the planning of the run stopped")??;
                self.dry = false;
            }
        }
        Ok(true)
    }

    /// Waits for the next thing to happen; feeds a worker when one is free.
    async fn next_event(&mut self, stopping: bool) -> Event {
        let can_feed = !self.queue.is_empty() && !stopping;
        let can_take = self.in_flight > 0 && self.writer.unrecorded() < 2 * self.flush_at;
        tokio::select! {
            permit = self.workers.jobs.reserve(), if can_feed => {
                let Ok(permit) = permit else {
                    return Event::WorkersGone;
                };
                let (claimed, usable_until) = self.queue.pop_front().expect("queue is not empty");
                permit.send(Job { claimed, run: self.context.clone(), usable_until });
                self.in_flight += 1;
                Event::Fed
            }
            outcome = self.workers.outcomes.recv(), if can_take => Event::Outcome(outcome),
            claimed = async { self.claiming.as_mut().expect("a claim is under way").await }, if self.claiming.is_some() => {
                self.claiming = None;
                Event::Claimed(claimed)
            }
            written = self.writer.written(), if self.writer.is_writing() => Event::Written(written),
            changed = self.planned.changed(), if self.planner.is_some() && self.planned.has_changed().is_ok() => {
                Event::Planned(changed.is_ok())
            }
            done = async { self.planner.as_mut().expect("planning is under way").await }, if self.planner.is_some() => {
                self.planner = None;
                Event::PlanningDone(done)
            }
            _ = self.tick.tick() => Event::Tick,
            changed = self.stop.changed(), if can_feed && self.watching => Event::Stop(changed.is_ok()),
        }
    }

    /// Shutting down: rows not yet handed to a worker go back to pending
    /// (those of a claim under way once it is done).
    fn release_unsent(&mut self) {
        let now = Instant::now();
        self.writer.buffer.extend(
            self.queue
                .drain(..)
                .filter(|(_, usable_until)| now < *usable_until)
                .map(|(c, _)| Outcome::Deferred(c.id)),
        );
    }

    /// Claims the next batch of due rows in the background.
    fn start_claim(&mut self) {
        let (engine, shutdown) = (self.engine.clone(), self.shutdown.clone());
        let (run_id, after, lease) = (self.run_id, self.after, self.lease);
        let batch = engine.settings.delivery.batch_size;
        self.planned_at_claim = *self.planned.borrow_and_update();
        let usable_until = Instant::now() + engine.settings.delivery.lease / 2;
        self.claiming = Some(tokio::spawn(async move {
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

    /// A worker's outcome: buffered for the writer.
    fn on_outcome(&mut self, outcome: Option<Outcome>) {
        self.in_flight -= 1;
        if let Some(o) = outcome {
            if matches!(o, Outcome::Sent(_)) && self.workers.pause > Duration::from_secs(1) {
                info!("the SMTP relay accepts messages again: deliveries resumed");
                self.engine.metrics.breaker_open.set(0);
                self.workers.pause = Duration::from_secs(1);
            }
            self.writer.buffer.push(o);
        }
        self.flush_if_full();
    }

    /// A claim is done: its rows join the queue and the claim cursor moves
    /// on.
    fn on_claimed(&mut self, claimed: Result<Result<Claim>, tokio::task::JoinError>) -> Result<()> {
        let (claimed, usable_until) = claimed.context("the ledger claim stopped")??;
        match claimed.last() {
            Some(last) => self.after = last.id,
            // The claims caught up with the planner: wait for its next
            // chunk (at once if one came in while this claim ran). Rows
            // left behind are picked up once planning is done.
            None if self.planner.is_some() => {
                self.dry = *self.planned.borrow() == self.planned_at_claim;
            }
            // Past the end: go round once more from the start for the rows
            // left behind, then wait.
            None if self.after > 0 => self.after = 0,
            None => self.dry = true,
        }
        self.queue
            .extend(claimed.into_iter().map(|c| (c, usable_until)));
        Ok(())
    }

    fn flush_if_full(&mut self) {
        if self.writer.buffer.len() >= self.flush_at {
            self.writer.start(self.engine, self.shutdown);
        }
    }

    /// Nothing in hand or in flight: write what is left, then stop, pause
    /// (the relay keeps failing), or wait for the rows not yet due.
    async fn when_idle(&mut self, stopping: bool, drain: Drain) -> Result<bool> {
        self.writer.finish(self.engine, self.shutdown).await?;
        if stopping {
            return Ok(false);
        }
        if self.workers.breaker.is_open() {
            self.pause().await;
            return Ok(true);
        }
        let store = &self.engine.store;
        let run_id = self.run_id;
        let (counts, next) = retrying("read the ledger", self.shutdown, || async {
            Ok((
                store.delivery_counts(run_id).await?,
                store.next_attempt_at(run_id).await?,
            ))
        })
        .await?;
        if counts.open() == 0 || drain == Drain::DueNow {
            return Ok(false);
        }
        // Rows waiting for a retry, or leased by another process. Each look
        // at the ledger reads the whole run, so while only retries are left
        // (nobody holds a lease that could run out or be released) the wait
        // goes up to the next retry's time, checking once a minute for a
        // `gazette retry`.
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
        // Said once for each new state of the wait, not at every look.
        let waiting = (counts.pending, counts.sending, next);
        if self.waiting != Some(waiting) {
            self.waiting = Some(waiting);
            match next {
                Some(at) if counts.pending > 0 => info!(
                    pending = counts.pending,
                    sending = counts.sending,
                    next_retry = %at.0.to_rfc3339(),
                    "waiting for deliveries to be retried"
                ),
                _ => info!(
                    sending = counts.sending,
                    "waiting for deliveries leased by another process"
                ),
            }
        }
        self.sleep(wait).await;
        self.dry = false;
        Ok(true)
    }

    /// The relay keeps failing: wait, longer each time, then try again.
    async fn pause(&mut self) {
        let pause = self.workers.pause;
        warn!(
            pause_secs = pause.as_secs(),
            "the SMTP relay keeps failing: pausing deliveries"
        );
        self.engine.metrics.breaker_open.set(1);
        self.sleep(pause).await;
        self.workers.pause = (pause * 2).min(Duration::from_secs(60));
        self.workers.breaker.reset();
        self.dry = false;
    }

    /// Sleeps for `wait`, or until shutdown.
    async fn sleep(&self, wait: Duration) {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}
