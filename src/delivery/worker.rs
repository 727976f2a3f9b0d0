//! The workers: `delivery.concurrency` tasks, each owning one [`Sender`]
//! (one SMTP connection, kept open between messages), taking jobs from one
//! channel and reporting each outcome on another.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{Mutex, mpsc};
use tracing::error;

use super::engine::Engine;
use super::job::{Job, Outcome, prepare, send_one};
use super::policy::{Breaker, RateLimiter};
use crate::mail::{BodyEncoder, Outgoing, Relays, Sender};

/// `delivery.concurrency` workers, each owning one [`Sender`] (one SMTP connection).
pub struct Workers {
    pub(super) jobs: mpsc::Sender<Job>,
    pub(super) outcomes: mpsc::Receiver<Outcome>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    pub(super) breaker: Arc<Breaker>,
    /// How long the next pause lasts when the relay keeps failing.
    pub(super) pause: Duration,
}

/// What the workers of a process share.
struct Shared {
    engine: Engine,
    jobs: Mutex<mpsc::Receiver<Job>>,
    outcomes: mpsc::Sender<Outcome>,
    limiter: Option<RateLimiter>,
    breaker: Arc<Breaker>,
    /// The relays' shares and health, for every worker's sender.
    relays: Arc<Relays>,
}

impl Workers {
    pub fn start(engine: &Engine) -> Self {
        let size = engine.settings.delivery.concurrency.max(1);
        let breaker = Arc::new(Breaker::new((size as u32).max(3)));
        let (jobs, job_rx) = mpsc::channel::<Job>(size * 2);
        // At most `size` outcomes wait unrecorded: this bounds the duplicates
        // after a crash (see `Writer`).
        let (outcome_tx, outcomes) = mpsc::channel::<Outcome>(size);
        let shared = Arc::new(Shared {
            engine: engine.clone(),
            jobs: Mutex::new(job_rx),
            outcomes: outcome_tx,
            limiter: engine
                .settings
                .delivery
                .rate_per_second
                .map(RateLimiter::new),
            breaker: breaker.clone(),
            relays: engine.relays.clone(),
        });
        let handles = (0..size)
            .map(|_| tokio::spawn(work(shared.clone())))
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

/// A job taken early, with its message (or the outcome of a job that sends
/// none) once it is built; its transaction may already be under way (see
/// `Sender::send_then`).
type Ahead = (Job, Option<Result<Outgoing, Outcome>>);

/// One worker: sends job after job until the channel closes. A job whose
/// handling panics is retried later like a transient failure (its reason
/// recorded), on a fresh connection: the run goes on and finishes.
async fn work(shared: Arc<Shared>) {
    let settings = &shared.engine.settings;
    let mut sender = Sender::worker(settings, &shared.relays);
    let mut encoder = BodyEncoder::default();
    let mut ahead: Option<Ahead> = None;
    loop {
        let (job, prepared) = match ahead.take() {
            Some((job, prepared)) => (job, prepared),
            None => {
                // (Not while its relay is ahead of its share: the job goes
                // to a worker of another relay meanwhile.)
                let closed = || shared.jobs.try_lock().is_ok_and(|rx| rx.is_closed());
                sender.ready(closed).await;
                match shared.jobs.lock().await.recv().await {
                    Some(job) => (job, None),
                    None => break,
                }
            }
        };
        let handled = handle(
            &shared,
            &mut sender,
            &mut encoder,
            &mut ahead,
            &job,
            prepared,
        );
        let outcome = match AssertUnwindSafe(handled).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => {
                let reason = panic_message(panic.as_ref());
                error!(
                    delivery = job.claimed.id,
                    to = job.claimed.email,
                    "a delivery worker panicked ({reason}): the delivery is retried later"
                );
                // (The connection's state is unknown: it is dropped.)
                sender = Sender::worker(settings, &shared.relays);
                encoder = BodyEncoder::default();
                Outcome::retry(
                    &job.claimed,
                    format!("internal error while sending: {reason}"),
                )
            }
        };
        if shared.outcomes.send(outcome).await.is_err() {
            break;
        }
    }
    sender.close().await;
}

/// Sends one job: after the rate limit's wait, if its lease is still
/// usable and the relay is not taken to be down.
async fn handle(
    shared: &Shared,
    sender: &mut Sender,
    encoder: &mut BodyEncoder,
    ahead: &mut Option<Ahead>,
    job: &Job,
    prepared: Option<Result<Outgoing, Outcome>>,
) -> Outcome {
    let breaker = &shared.breaker;
    if let Some(limiter) = shared.limiter.as_ref().filter(|_| !breaker.is_open()) {
        limiter.acquire().await;
    }
    // (The lease is checked after the rate limit's wait.)
    if !job.usable() {
        return Outcome::LeaseLost(job.claimed.id);
    }
    if breaker.is_open() {
        return Outcome::Deferred(job.claimed.id);
    }
    let engine = &shared.engine;
    let prepared = match prepared {
        Some(prepared) => prepared,
        None => prepare(engine, encoder, job).await,
    };
    let outcome = match prepared {
        Err(outcome) => outcome,
        Ok(message) => {
            // Without a rate limit to keep, the next job waiting, if any, is
            // taken and built now, so that its envelope goes out with this
            // message's content. (It is held in `ahead` before it is built:
            // whatever happens while building it, it is not lost.)
            if shared.limiter.is_none() && sender.chains() {
                let next = shared
                    .jobs
                    .try_lock()
                    .ok()
                    .and_then(|mut rx| rx.try_recv().ok());
                if let Some(next) = next {
                    let (next, built) = ahead.insert((next, None));
                    *built = Some(prepare(engine, encoder, next).await);
                }
            }
            // (Its lease is checked again before its content is sent.)
            let next = ahead.as_ref().and_then(|(next, built)| {
                built
                    .as_ref()
                    .and_then(|b| b.as_ref().ok())
                    .filter(|_| next.usable())
            });
            let next = next.map(|n| &n.envelope);
            let started = std::time::Instant::now();
            let outcome = send_one(sender, job, &message, next).await;
            engine
                .metrics
                .send_seconds
                .observe(started.elapsed().as_secs_f64());
            outcome
        }
    };
    breaker.record(matches!(outcome, Outcome::Retry { .. }));
    outcome
}

/// What a panic said, for the log and the ledger.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
