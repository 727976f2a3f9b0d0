//! When to try again, in one place: the backoff of a delivery's retries,
//! the breaker that pauses claiming while the relay keeps failing, the
//! rate limit, and the retrying of database operations.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::config::Settings;
use crate::errors::chain;

/// A token bucket shared by the workers of a process.
pub(super) struct RateLimiter {
    per_second: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl RateLimiter {
    pub(super) fn new(per_second: f64) -> Self {
        Self {
            per_second,
            // Start with one token: no burst beyond a second's worth.
            state: Mutex::new((1.0, tokio::time::Instant::now())),
        }
    }

    pub(super) async fn acquire(&self) {
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
pub(super) struct Breaker {
    consecutive: AtomicU32,
    threshold: u32,
}

impl Breaker {
    pub(super) fn new(threshold: u32) -> Self {
        Self {
            consecutive: AtomicU32::new(0),
            threshold,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.consecutive.load(Ordering::Relaxed) >= self.threshold
    }
    pub(super) fn record(&self, transient_failure: bool) {
        if transient_failure {
            self.consecutive.fetch_add(1, Ordering::Relaxed);
        } else {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }
    pub(super) fn reset(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
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

/// Runs a store operation until it succeeds: the database may restart or
/// drop connections mid-run, and nothing may be lost meanwhile. Logs once
/// when it starts failing and once when it recovers; gives up only on
/// shutdown.
pub(super) async fn retrying<T, F, Fut>(
    what: &str,
    shutdown: &watch::Receiver<bool>,
    mut op: F,
) -> Result<T>
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
                    warn!("cannot {what}, retrying with backoff: {}", chain(&e));
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
