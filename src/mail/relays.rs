//! Relay choice: each message goes to a relay by weight, and a relay that
//! keeps failing hands its share to the others until it answers again.
//!
//! A worker of a process holds one connection, to one relay, counted in
//! that relay's `pool_size`: a relay never has more workers than that.
//! Workers start on the relays by a smooth weighted round-robin (nginx's:
//! each turn every relay gains its weight, the one ahead is chosen and
//! loses the total). Before each message a worker looks at the messages
//! each relay was handed: when its relay is more than [`LEAD`] messages
//! ahead of its weight's share, the worker moves to the relay furthest
//! behind that has a connection to spare, or, if none has, waits for the
//! others to catch up. Deliveries thus follow the weights whatever the
//! pools and however fast each relay answers, while each worker keeps its
//! connection, and the pipelining that chains one message to the next,
//! for as long as its relay keeps to its share.
//!
//! Each relay has a breaker: after consecutive transient failures it is
//! passed over for a pause that doubles while it keeps failing (1 s to
//! 60 s); its workers move to relays with a connection to spare, or wait
//! for the pause to end. The shares are then counted again among the
//! relays that work, and again when it comes back, so that it gets its
//! share back (and not the messages it missed). With every relay failing,
//! workers use their own and the delivery engine's pause takes over.
//!
//! Senders beside the workers (confirmation emails, `send --test`) share
//! the breakers and metrics, and take the round-robin's relay for each
//! message, on a connection of their own.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tracing::{info, warn};

use super::seal::Outgoing;
use super::smtp::{SendError, SmtpSender};
use crate::config::Relay;
use crate::metrics::{Metrics, RelayLabels, RelayName};

/// Consecutive transient failures after which a relay is taken to be down.
const FAILURES_TO_OPEN: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_secs(1);
const LONGEST_PAUSE: Duration = Duration::from_secs(60);
/// How many messages a relay may be handed beyond its weight's share
/// before its workers move or wait.
const LEAD: f64 = 16.0;
/// How often a waiting worker looks again.
const WAIT: Duration = Duration::from_millis(5);

/// The relays whose weight gives them more of `workers`' messages than
/// their pool has connections for, with the workers' worth they need.
pub fn short_pools(relays: &[Relay], workers: usize) -> Vec<(&Relay, f64)> {
    let weights: u64 = relays.iter().map(|r| u64::from(r.weight)).sum();
    relays
        .iter()
        .map(|r| {
            (
                r,
                workers as f64 * f64::from(r.weight) / weights.max(1) as f64,
            )
        })
        .filter(|(r, needed)| *needed > r.smtp.pool_size as f64 + 0.5)
        .collect()
}

/// The relays of a process, their shares and their health: one for all
/// the workers.
pub struct Relays {
    relays: Vec<Shared>,
    state: Mutex<State>,
}

struct Shared {
    relay: Relay,
    sent: Counter,
    refused: Counter,
    failed: Counter,
    open: Gauge,
}

struct State {
    /// The smooth weighted round-robin's current weights.
    current: Vec<i64>,
    /// The workers on each relay (one connection each).
    workers: Vec<usize>,
    breakers: Vec<Breaker>,
    /// The messages handed to each relay since the relays that work last
    /// changed.
    handed: Vec<u64>,
    /// The relays that worked then.
    working: Vec<bool>,
}

/// What a worker does next.
enum Step {
    Send(usize),
    Wait,
}

#[derive(Default)]
struct Breaker {
    consecutive: u32,
    /// While in the future, the relay is passed over.
    open_until: Option<Instant>,
    /// The next pause.
    pause: Option<Duration>,
}

impl Relays {
    pub fn new(relays: &[Relay], metrics: &Metrics) -> Self {
        let relays: Vec<Shared> = relays
            .iter()
            .map(|relay| {
                // (One statement each: a family's read guard lives to the
                // end of its statement, and the next `get_or_create` may
                // need to write: in one struct literal, they deadlock.)
                let counter = |outcome: &str| {
                    let labels = RelayLabels {
                        relay: relay.name.clone(),
                        outcome: outcome.to_string(),
                    };
                    metrics.relay_messages.get_or_create(&labels).clone()
                };
                let sent = counter("sent");
                let refused = counter("refused");
                let failed = counter("failed");
                let name = RelayName {
                    relay: relay.name.clone(),
                };
                let open = metrics.relay_down.get_or_create(&name).clone();
                Shared {
                    relay: relay.clone(),
                    sent,
                    refused,
                    failed,
                    open,
                }
            })
            .collect();
        let n = relays.len();
        Self {
            relays,
            state: Mutex::new(State {
                current: vec![0; n],
                workers: vec![0; n],
                breakers: (0..n).map(|_| Breaker::default()).collect(),
                handed: vec![0; n],
                working: vec![true; n],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One turn of the smooth weighted round-robin among the relays that
    /// `eligible` lets through; `None` if it lets none through.
    fn pick(&self, state: &mut State, eligible: impl Fn(usize, &State) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.relays.len())
            .filter(|&i| eligible(i, state))
            .collect();
        let total: i64 = candidates
            .iter()
            .map(|&i| i64::from(self.relays[i].relay.weight))
            .sum();
        for &i in &candidates {
            state.current[i] += i64::from(self.relays[i].relay.weight);
        }
        let chosen = *candidates
            .iter()
            .max_by_key(|&&i| (state.current[i], -(i as i64)))?;
        state.current[chosen] -= total;
        Some(chosen)
    }

    /// The relay of a new worker.
    fn join(&self) -> usize {
        let mut state = self.lock();
        let at = self
            .pick(&mut state, |i, s| {
                s.workers[i] < self.relays[i].relay.smtp.pool_size
            })
            // (More workers than connections: the configuration refuses
            // that, but a worker replaced after a panic comes on top.)
            .or_else(|| self.pick(&mut state, |_, _| true))
            .unwrap_or(0);
        state.workers[at] += 1;
        at
    }

    fn leave(&self, at: usize) {
        let mut state = self.lock();
        state.workers[at] = state.workers[at].saturating_sub(1);
    }

    /// The relays that work now (breaker closed, or its pause over); the
    /// shares are counted afresh when that changes.
    fn working(&self, state: &mut State) -> Vec<bool> {
        let now = Instant::now();
        let working: Vec<bool> = state
            .breakers
            .iter()
            .map(|b| b.open_until.is_none_or(|t| t <= now))
            .collect();
        if working != state.working {
            state.handed.fill(0);
            state.working.clone_from(&working);
        }
        working
    }

    /// How many messages relay `i` was handed beyond its weight's share of
    /// those handed to the relays that work (negative: short of it).
    fn lead(&self, state: &State, working: &[bool], i: usize) -> f64 {
        let (mut total, mut weights) = (0u64, 0u64);
        for (j, shared) in self.relays.iter().enumerate() {
            if working[j] {
                total += state.handed[j];
                weights += u64::from(shared.relay.weight);
            }
        }
        let share = f64::from(self.relays[i].relay.weight) / weights.max(1) as f64;
        state.handed[i] as f64 - total as f64 * share
    }

    /// Where the worker on relay `at` sends its next message.
    fn step(&self, at: usize) -> Step {
        if self.relays.len() == 1 {
            return Step::Send(at);
        }
        let mut state = self.lock();
        let working = self.working(&mut state);
        if !working.iter().any(|&w| w) {
            return Step::Send(at);
        }
        let ahead = !working[at] || self.lead(&state, &working, at) > LEAD;
        if !ahead {
            return Step::Send(at);
        }
        // The relay furthest behind with a connection to spare (short of
        // its share, unless the worker's own relay is down).
        let to = (0..self.relays.len())
            .filter(|&j| j != at && working[j])
            .filter(|&j| state.workers[j] < self.relays[j].relay.smtp.pool_size)
            .map(|j| (j, self.lead(&state, &working, j)))
            .filter(|&(_, lead)| !working[at] || lead < 0.0)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match to {
            Some((to, _)) => {
                state.workers[at] = state.workers[at].saturating_sub(1);
                state.workers[to] += 1;
                Step::Send(to)
            }
            None => Step::Wait,
        }
    }

    /// Whether the worker on relay `at` may send another message there
    /// without looking again.
    fn keeps(&self, at: usize) -> bool {
        if self.relays.len() == 1 {
            return true;
        }
        let mut state = self.lock();
        let working = self.working(&mut state);
        working[at] && self.lead(&state, &working, at) <= LEAD
    }

    /// The relay of a message from a sender beside the workers: the
    /// round-robin's among those that work (or among all if none does).
    fn any(&self) -> usize {
        let mut state = self.lock();
        let working = self.working(&mut state);
        self.pick(&mut state, |i, _| working[i])
            .or_else(|| self.pick(&mut state, |_, _| true))
            .unwrap_or(0)
    }

    /// Counts a send's outcome on `relay`, and opens or closes its breaker.
    fn record(&self, relay: usize, result: &Result<(), SendError>) {
        let shared = &self.relays[relay];
        match result {
            Ok(()) => shared.sent.inc(),
            Err(SendError::Permanent(_)) => shared.refused.inc(),
            Err(_) => shared.failed.inc(),
        };
        let failed = matches!(result, Err(SendError::Transient(_) | SendError::Setup(_)));
        let mut state = self.lock();
        state.handed[relay] += 1;
        let breaker = &mut state.breakers[relay];
        if !failed {
            if breaker.open_until.take().is_some() {
                info!(
                    relay = shared.relay.name,
                    "the SMTP relay accepts messages again: it gets its share back"
                );
                shared.open.set(0);
            }
            breaker.consecutive = 0;
            breaker.pause = None;
            return;
        }
        breaker.consecutive += 1;
        let now = Instant::now();
        let closed = breaker.open_until.is_none_or(|t| t <= now);
        if breaker.consecutive >= FAILURES_TO_OPEN && closed && self.relays.len() > 1 {
            let pause = breaker.pause.unwrap_or(FIRST_PAUSE);
            breaker.open_until = Some(now + pause);
            breaker.pause = Some((pause * 2).min(LONGEST_PAUSE));
            shared.open.set(1);
            warn!(
                relay = shared.relay.name,
                pause_secs = pause.as_secs(),
                "the SMTP relay keeps failing: its share goes to the other relays"
            );
        }
    }
}

/// One sender's way to the relays: the connection to its relay (one at a
/// time, opened on first use).
pub struct RelaySender {
    relays: std::sync::Arc<Relays>,
    /// The relay of a worker (counted in its pool); `None` for a sender
    /// beside the workers.
    at: Option<usize>,
    senders: Vec<Option<SmtpSender>>,
    /// The relay of the last message: the one whose connection may wait
    /// for the next message (see [`SmtpSender::send`]).
    last: usize,
}

impl RelaySender {
    /// A worker's sender, on a relay of its own among the pools.
    pub fn worker(relays: std::sync::Arc<Relays>) -> Self {
        let at = relays.join();
        Self::with(relays, Some(at))
    }

    /// A sender beside the workers (not counted in the pools).
    pub fn beside(relays: std::sync::Arc<Relays>) -> Self {
        Self::with(relays, None)
    }

    fn with(relays: std::sync::Arc<Relays>, at: Option<usize>) -> Self {
        let senders = relays.relays.iter().map(|_| None).collect();
        Self {
            relays,
            at,
            senders,
            last: at.unwrap_or(0),
        }
    }

    /// Waits while the worker's relay is ahead of its share (or down) and
    /// no other has a connection to spare; `stop` ends the wait.
    pub async fn ready(&mut self, stop: impl Fn() -> bool) {
        let Some(at) = self.at else { return };
        loop {
            match self.relays.step(at) {
                Step::Send(relay) => {
                    self.settle(relay).await;
                    return;
                }
                Step::Wait if stop() => return,
                Step::Wait => tokio::time::sleep(WAIT).await,
            }
        }
    }

    /// Makes `relay` the sender's own: a worker's connection elsewhere is
    /// closed (its pool counts one connection per worker).
    async fn settle(&mut self, relay: usize) {
        if self.at.is_some() {
            self.at = Some(relay);
        }
        if relay != self.last {
            if let Some(mut previous) = self.senders[self.last].take() {
                previous.close().await;
            }
            self.last = relay;
        }
    }

    pub async fn send(
        &mut self,
        message: &Outgoing,
        next: Option<&Envelope>,
    ) -> Result<(), SendError> {
        // (A message whose envelope went out with the last one's content
        // goes to that relay, which waits for it.)
        let primed = self.senders[self.last]
            .as_ref()
            .is_some_and(|s| s.primed_for(&message.envelope));
        let relay = match self.at {
            _ if primed => self.last,
            Some(at) => match self.relays.step(at) {
                Step::Send(relay) => relay,
                // (It waited in `ready`: the others moved meanwhile.)
                Step::Wait => at,
            },
            None => self.relays.any(),
        };
        self.settle(relay).await;
        let sender = self.senders[relay]
            .get_or_insert_with(|| SmtpSender::new(self.relays.relays[relay].relay.smtp.clone()));
        let result = sender.send(message, next).await;
        self.relays.record(relay, &result);
        result
    }

    /// Whether [`RelaySender::send`] has a use for the next envelope: the
    /// connection pipelines and its relay takes the next message too.
    pub fn chains(&self) -> bool {
        self.senders[self.last]
            .as_ref()
            .is_some_and(SmtpSender::chains)
            && self.at.is_none_or(|at| self.relays.keeps(at))
    }

    pub async fn close(&mut self) {
        for sender in self.senders.iter_mut().flatten() {
            sender.close().await;
        }
    }
}

impl Drop for RelaySender {
    fn drop(&mut self) {
        if let Some(at) = self.at {
            self.relays.leave(at);
        }
    }
}
