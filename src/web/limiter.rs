//! The per-client limit on subscribe requests: a sliding hour per client
//! address, kept in memory (a restart forgets it, which is fine for a
//! limit meant to slow a flood down).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

const HOUR: Duration = Duration::from_secs(3600);
/// Beyond this many clients, those idle for an hour are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Default)]
pub struct Limiter {
    attempts: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Limiter {
    /// Whether this client may make another request now, counting it if so.
    pub async fn allow(&self, client: IpAddr, per_hour: u32) -> bool {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().await;
        if attempts.len() > PRUNE_ABOVE {
            attempts.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < HOUR));
        }
        let q = attempts.entry(client).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            q.pop_front();
        }
        if q.len() >= per_hour as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}
