//! Relay choice: the connections of a process are dealt out to the relays
//! by weight, and a relay that keeps failing hands its share to the others
//! until it answers again.
//!
//! Each worker's [`RelaySender`] has a home relay, given by a smooth
//! weighted round-robin over the relays (nginx's: each turn every relay
//! gains its weight, the one ahead is chosen and loses the total), skipping
//! a relay once it has as many workers as its `pool_size`. Relays that
//! answer alike thus get deliveries in proportion to their weights. Each
//! relay has a breaker: after consecutive transient failures its workers
//! send through the other relays (the same round-robin, among those that
//! work) for a pause that doubles while it keeps failing (1 s to 60 s);
//! after the pause a worker tries its home relay again, and stays when it
//! answers. With every relay failing, workers use their own and the
//! delivery engine's pause takes over.

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
    /// Workers whose home each relay is.
    homes: Vec<usize>,
    breakers: Vec<Breaker>,
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
                homes: vec![0; n],
                breakers: (0..n).map(|_| Breaker::default()).collect(),
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

    /// The home relay of a new worker.
    fn home(&self) -> usize {
        let mut state = self.lock();
        let home = self
            .pick(&mut state, |i, s| {
                s.homes[i] < self.relays[i].relay.smtp.pool_size
            })
            // (More workers than connections: the configuration refuses
            // that, but a worker replaced after a panic comes on top.)
            .or_else(|| self.pick(&mut state, |_, _| true))
            .unwrap_or(0);
        state.homes[home] += 1;
        home
    }

    fn leave(&self, home: usize) {
        let mut state = self.lock();
        state.homes[home] = state.homes[home].saturating_sub(1);
    }

    /// Where a worker at home on `home` sends now: home, unless its
    /// breaker is open and another relay works.
    fn route(&self, home: usize) -> usize {
        let now = Instant::now();
        let mut state = self.lock();
        let works = |i: usize, s: &State| s.breakers[i].open_until.is_none_or(|t| t <= now);
        if works(home, &state) {
            return home;
        }
        self.pick(&mut state, |i, s| i != home && works(i, s))
            .unwrap_or(home)
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

/// One worker's way to the relays: a connection to its home relay, and
/// to another one while home is down (each opened on first use).
pub struct RelaySender {
    relays: std::sync::Arc<Relays>,
    home: usize,
    senders: Vec<Option<SmtpSender>>,
    /// The relay of the last message: the one whose connection may wait
    /// for the next message (see [`SmtpSender::send`]).
    last: usize,
}

impl RelaySender {
    pub fn new(relays: std::sync::Arc<Relays>) -> Self {
        let home = relays.home();
        let senders = relays.relays.iter().map(|_| None).collect();
        Self {
            relays,
            home,
            senders,
            last: home,
        }
    }

    pub async fn send(
        &mut self,
        message: &Outgoing,
        next: Option<&Envelope>,
    ) -> Result<(), SendError> {
        // (A message whose envelope went out with the last one's content
        // goes to that relay, which waits for it.)
        let relay = if self.senders[self.last]
            .as_ref()
            .is_some_and(|s| s.primed_for(&message.envelope))
        {
            self.last
        } else {
            self.relays.route(self.home)
        };
        if relay != self.last
            && self.last != self.home
            && let Some(mut previous) = self.senders[self.last].take()
        {
            // (A stand-in's connection is closed once home works again.)
            previous.close().await;
        }
        self.last = relay;
        let sender = self.senders[relay]
            .get_or_insert_with(|| SmtpSender::new(self.relays.relays[relay].relay.smtp.clone()));
        let result = sender.send(message, next).await;
        self.relays.record(relay, &result);
        result
    }

    /// Whether [`RelaySender::send`] has a use for the next envelope.
    pub fn chains(&self) -> bool {
        self.senders[self.last]
            .as_ref()
            .is_some_and(SmtpSender::chains)
    }

    pub async fn close(&mut self) {
        for sender in self.senders.iter_mut().flatten() {
            sender.close().await;
        }
    }
}

impl Drop for RelaySender {
    fn drop(&mut self) {
        self.relays.leave(self.home);
    }
}
