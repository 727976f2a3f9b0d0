//! Delivering a digest: the ledger's state machine.
//!
//! - [`plan`]: a (digest, slot) becomes a run, its articles and one ledger
//!   row per confirmed subscriber, in one idempotent transaction;
//! - [`run`]: the loop that drains one run: claims batches of due rows
//!   with a lease, feeds them to the workers, hands their outcomes to the
//!   writer, and waits for retries;
//! - [`worker`]: `delivery.concurrency` workers, each with one SMTP
//!   connection, render and send one message at a time ([`job`]);
//! - [`writer`]: outcomes written to the ledger in batches;
//! - [`confirmations`]: the double opt-in emails, sent in the background
//!   from the rows subscribe requests leave;
//! - [`policy`]: when to try again: backoff, the relay breaker, the rate
//!   limit, and retrying the database.

pub mod confirmations;
mod engine;
mod job;
mod plan;
mod policy;
mod run;
mod worker;
mod writer;

use std::collections::HashMap;

use anyhow::Result;
use tokio::sync::watch;

pub use self::engine::Engine;
pub use self::job::compose;
pub use self::plan::{plan, select_for_slot};
pub use self::policy::backoff;
pub use self::run::{Drain, deliver_run};
pub use self::worker::Workers;
use crate::domain::DigestName;
use crate::store::DeliveryCounts;

/// Delivers every unfinished run (of one digest, or all), oldest first.
pub async fn deliver_unfinished(
    engine: &Engine,
    digest: Option<&DigestName>,
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
