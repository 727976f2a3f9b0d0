//! `gazette run` (the daemon: a tick every minute, the feeds, the ledger's
//! fold, and the web pages) and `gazette serve` (the web pages alone).

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::Utc;
use tokio::sync::watch;
use tracing::{error, info};

use super::process::{bind, refuse_a_misconfigured_relay, shutdown_signal};
use crate::delivery::Engine;
use crate::errors::chain;
use crate::schedule;

/// Without a tick for this long, the tick source is taken to be dead.
const TICK_WATCHDOG: Duration = Duration::from_secs(150);

/// `gazette run`: the scheduler and the web server, until SIGINT/SIGTERM.
/// When either stops with an error, it is logged at once, the other is
/// stopped, and the daemon exits non-zero for its supervisor to restart.
pub async fn run(engine: &Engine) -> Result<()> {
    engine.renderer.check_web()?;
    engine.renderer.log_full_renders(None);
    engine.renderer.log_css_warnings();
    refuse_a_misconfigured_relay(engine).await?;
    let (stop_tx, stop) = watch::channel(false);
    let mut signal = shutdown_signal();
    let stop_on_signal = stop_tx.clone();
    tokio::spawn(async move {
        while !*signal.borrow() {
            if signal.changed().await.is_err() {
                return;
            }
        }
        let _ = stop_on_signal.send(true);
    });
    let listener = bind(engine).await?;
    let admin = match engine.settings.admin.bind {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin.bind)"))?;
            Some(tokio::spawn(crate::web::admin::serve(
                engine.clone(),
                listener,
                stop.clone(),
            )))
        }
        None => None,
    };
    let mut web = tokio::spawn(crate::web::serve(engine.clone(), listener, stop.clone()));
    let mut ticks = tokio::spawn(tick(engine.clone(), stop.clone()));
    let mut feeds = tokio::spawn(poll_feeds(engine.clone(), stop.clone()));
    // The fold logs its own failures and never stops the daemon.
    let folding = tokio::spawn(super::ledger::keep_folding(
        engine.store.clone(),
        engine.settings.delivery.keep_ledger,
        stop.clone(),
    ));
    let (first, other, rest) = tokio::select! {
        r = &mut web => ("the web server", r, [ticks, feeds]),
        r = &mut ticks => ("the scheduler", r, [web, feeds]),
        r = &mut feeds => ("the feed poller", r, [web, ticks]),
    };
    let first = first_result(first, other);
    if let Err(e) = &first {
        error!("{}: stopping", chain(e));
    }
    let _ = stop_tx.send(true);
    let mut rest_result = Ok(());
    for task in rest {
        let result = task.await.context("a daemon task stopped unexpectedly")?;
        rest_result = rest_result.and(result);
    }
    let rest = rest_result;
    let _ = folding.await;
    if let Some(admin) = admin
        && let Err(e) = first_result("the admin server", admin.await)
    {
        error!("{}", chain(&e));
    }
    first.and(rest)
}

/// A task's result, with a panic or an error named after the task.
fn first_result(what: &str, joined: Result<Result<()>, tokio::task::JoinError>) -> Result<()> {
    match joined {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.context(format!("{what} stopped"))),
        Err(e) => Err(anyhow::anyhow!("{what} stopped unexpectedly: {e}")),
    }
}

/// `gazette serve`: the web pages alone.
pub async fn serve(engine: &Engine) -> Result<()> {
    engine.renderer.check_web()?;
    let listener = bind(engine).await?;
    crate::web::serve(engine.clone(), listener, shutdown_signal()).await
}

/// The daemon's clock: a UTC tick every minute (and one at start) plans
/// what is due and delivers what is pending, until `shutdown` turns true.
/// When the tick source fails or goes quiet, the failure is logged at once
/// and the ticking restarts with a growing pause.
async fn tick(engine: Engine, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let digests = &engine.settings.digests;
    for (digest, (name, outlook)) in digests
        .iter()
        .zip(schedule::first_start(&engine.store, digests, Utc::now()).await)
    {
        match outlook {
            Ok(outlook) => info!(
                digest = name,
                schedule = %digest.schedule.text,
                timezone = %digest.timezone,
                "scheduled: {}",
                outlook.describe(digest)
            ),
            Err(e) => error!(
                digest = name,
                "cannot read the digest's runs: {}",
                chain(&e)
            ),
        }
    }
    supervise("the scheduler", &mut shutdown, |shutdown| {
        ticking(&engine, shutdown)
    })
    .await;
    info!("stopped");
    Ok(())
}

/// The feeds of `[[feeds]]`, each fetched when due, until `shutdown`
/// turns true. A feed that fails is recorded and retried later; when the
/// store fails, the poller restarts (as the scheduler does) while the
/// digests and the web pages go on.
async fn poll_feeds(engine: Engine, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    if !engine.settings.feeds.is_empty() {
        info!(
            feeds = engine.settings.feeds.len(),
            "polling the configured feeds"
        );
    }
    supervise("the feed poller", &mut shutdown, |shutdown| {
        crate::feeds::keep_polling(&engine.store, &engine.settings, shutdown)
    })
    .await;
    Ok(())
}

/// Runs `life` until it returns `Ok` (on shutdown); each time it fails,
/// logs why at once and starts it again after a pause that doubles from
/// 1 s up to 60 s (back to 1 s after a life of over ten minutes).
async fn supervise<F, Fut>(what: &str, shutdown: &mut watch::Receiver<bool>, mut life: F)
where
    F: FnMut(watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let mut pause = Duration::from_secs(1);
    loop {
        let started = tokio::time::Instant::now();
        let Err(e) = life(shutdown.clone()).await else {
            return;
        };
        if started.elapsed() > Duration::from_secs(600) {
            pause = Duration::from_secs(1);
        }
        error!(
            "{what} failed: {}; restarting it in {}s",
            chain(&e),
            pause.as_secs()
        );
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

/// One life of the tick source (tokio-cron-scheduler, in UTC): returns
/// `Ok` on shutdown, an error when the source fails or stops ticking.
async fn ticking(engine: &Engine, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    use tokio_cron_scheduler::{Job, JobScheduler};

    let (tick_tx, mut tick_rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut scheduler = JobScheduler::new()
        .await
        .context("cannot start the cron scheduler")?;
    scheduler
        .add(Job::new_async("0 * * * * *", move |_, _| {
            let tick_tx = tick_tx.clone();
            Box::pin(async move {
                // A tick while the previous one is still running is dropped:
                // runs never overlap.
                let _ = tick_tx.try_send(());
            })
        })?)
        .await
        .context("cannot add the minute tick")?;
    scheduler
        .start()
        .await
        .context("cannot start the cron scheduler")?;
    let result = async {
        // (The watchdog counts from the last minute tick, not from a wake
        // for a slot between ticks.)
        let mut last_tick = tokio::time::Instant::now();
        loop {
            schedule::tick(engine, &shutdown).await;
            if *shutdown.borrow() {
                return Ok(());
            }
            let off_minute =
                schedule::until_next_off_minute_slot(&engine.settings.digests, Utc::now());
            let off_minute = async {
                match off_minute {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = off_minute => {}
                tick = tick_rx.recv() => {
                    if tick.is_none() {
                        anyhow::bail!("the minute tick stopped");
                    }
                    last_tick = tokio::time::Instant::now();
                }
                _ = tokio::time::sleep_until(last_tick + TICK_WATCHDOG) => anyhow::bail!(
                    "no minute tick for {}s", TICK_WATCHDOG.as_secs()
                ),
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return Ok(());
            }
        }
    }
    .await;
    let _ = scheduler.shutdown().await;
    result
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::supervise;

    #[tokio::test(start_paused = true)]
    async fn a_failing_scheduler_is_restarted_after_growing_pauses_until_shutdown() {
        let (stop, mut shutdown) = tokio::sync::watch::channel(false);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let begin = Instant::now();
        let seen = starts.clone();
        supervise("the scheduler", &mut shutdown, |shutdown| {
            let seen = seen.clone();
            let stop = stop.clone();
            let mut shutdown = shutdown;
            async move {
                let n = {
                    let mut starts = seen.lock().unwrap();
                    starts.push(begin.elapsed());
                    starts.len()
                };
                match n {
                    // Three lives fail at once; the fourth runs until
                    // shutdown, which comes from outside.
                    1..=3 => anyhow::bail!("tick source failed ({n})"),
                    _ => {
                        stop.send(true).unwrap();
                        shutdown.changed().await.unwrap();
                        Ok(())
                    }
                }
            }
        })
        .await;
        let secs: Vec<u64> = starts
            .lock()
            .unwrap()
            .iter()
            .map(Duration::as_secs)
            .collect();
        // Started at 0, then after pauses of 1, 2 and 4 s.
        assert_eq!(secs, [0, 1, 3, 7]);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_during_a_pause_stops_the_restarts() {
        let (stop, mut shutdown) = tokio::sync::watch::channel(false);
        let mut lives = 0;
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stop.send(true).unwrap();
            stop
        });
        supervise("the scheduler", &mut shutdown, |_| {
            lives += 1;
            async { anyhow::bail!("tick source failed") }
        })
        .await;
        assert_eq!(lives, 1);
        drop(stopper.await.unwrap());
    }
}
