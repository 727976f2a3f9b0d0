//! `gazette send`, `status` and `retry`: one run at a time, from the
//! command line.

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SubsecRound, Utc};
use futures_util::TryStreamExt;

use std::collections::HashMap;

use super::preview::articles_now;
use super::process::{counted, refuse_a_misconfigured_relay, shutdown_signal};
use super::progress::Progress;
use crate::config::{Digest, TransportKind};
use crate::delivery::{self, Drain, Engine};
use crate::domain::{DigestName, EmailAddress};
use crate::mail::BodyEncoder;
use crate::render::{Recipient, RunContext};
use crate::store::{DeliveryCounts, PlanOutcome, Run, RunBounces, Timestamp};

/// `gazette send`: finishes earlier unfinished runs of the digest, plans
/// the run of `slot` (default: now) and delivers it; returns the run id
/// planned, if any.
pub async fn send(
    engine: &Engine,
    digest: &str,
    slot: Option<DateTime<Utc>>,
    dry_run: bool,
) -> Result<Option<i64>> {
    let digest = engine.settings.require_digest(digest)?.clone();
    let now = Utc::now();
    // Milliseconds: the precision the store keeps.
    let slot = slot.unwrap_or(now).trunc_subsecs(3);
    if dry_run {
        dry_run_send(engine, &digest, slot).await?;
        return Ok(None);
    }
    refuse_a_paused_digest(engine, &digest).await?;
    refuse_a_misconfigured_relay(engine).await?;
    engine.renderer.log_full_renders(Some(digest.name.as_str()));
    engine.renderer.log_css_warnings();
    let shutdown = shutdown_signal();
    let outcome = delivery::plan(&engine.store, &digest, slot, now).await?;
    let counts = deliver_with_progress(engine, &digest.name, &shutdown).await?;
    let mut ids: Vec<&i64> = counts.keys().collect();
    ids.sort();
    let run_id = match &outcome {
        PlanOutcome::Planned { run_id, .. } => Some(*run_id),
        PlanOutcome::Skipped { run_id } => {
            println!(
                "{}: nothing new since the last digest: run {run_id} skipped, no mail sent",
                digest.name
            );
            Some(*run_id)
        }
        PlanOutcome::Exists { run_id, status } => {
            println!(
                "{}: the slot {} was planned before (run {run_id}, {status}): nothing new to send",
                digest.name,
                slot.to_rfc3339()
            );
            Some(*run_id)
        }
    };
    for id in ids {
        let c = counts[id];
        println!(
            "{}: run {id}: {} sent, {} failed, {} skipped{}",
            digest.name,
            c.sent,
            c.failed,
            c.skipped,
            if c.open() > 0 {
                format!(", {} still pending (interrupted)", c.open())
            } else {
                String::new()
            }
        );
    }
    if engine.settings.mail.transport == TransportKind::Outbox {
        println!(
            "emails are in {}/",
            engine.settings.mail.outbox_dir.display()
        );
    }
    if *shutdown.borrow() {
        bail!(
            "interrupted: run `gazette send {}` again to finish",
            digest.name
        );
    }
    Ok(run_id)
}

/// Delivers the digest's unfinished runs to the end, showing their progress.
async fn deliver_with_progress(
    engine: &Engine,
    digest: &DigestName,
    shutdown: &tokio::sync::watch::Receiver<bool>,
) -> Result<HashMap<i64, DeliveryCounts>> {
    let metrics = engine.metrics.clone();
    let before = metrics.messages_done(digest.as_str());
    let (store, name) = (engine.store.clone(), digest.clone());
    // Counted beside the delivery, not before it: counting the readers of
    // a run still being planned reads the whole list, and the first
    // messages need not wait for that.
    let watch = tokio::spawn(async move {
        let Ok(total) = to_deliver(&store, &name).await else {
            return;
        };
        if total == 0 {
            return;
        }
        let progress = Progress::start(format!("{name}: sending"), total as u64, "emails");
        let mut every = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            every.tick().await;
            progress.set(metrics.messages_done(name.as_str()) - before);
        }
    });
    let counts =
        delivery::deliver_unfinished(engine, Some(digest), Drain::UntilFinished, shutdown).await;
    watch.abort();
    let _ = watch.await;
    counts
}

/// The deliveries left to make in the digest's unfinished runs, counting
/// the readers of a run still being planned.
async fn to_deliver(store: &crate::store::Store, digest: &DigestName) -> Result<i64> {
    let mut total = 0;
    for run in store.unfinished_runs(Some(digest)).await? {
        total += store.delivery_counts(run.id).await?.open();
        if run.planning {
            total += store.readers_to_plan(run.id).await?;
        }
    }
    Ok(total)
}

/// `gazette send DIGEST --test ADDRESS…`: what `preview` shows now, to
/// each address through the configured transport, with `[TEST] ` before
/// its subject; nothing is recorded and no run is touched.
pub async fn send_test(engine: &Engine, digest: &str, addresses: &[String]) -> Result<()> {
    let digest = engine.settings.require_digest(digest)?;
    let addresses = addresses
        .iter()
        .map(|a| EmailAddress::parse(a).with_context(|| format!("--test {a}")))
        .collect::<Result<Vec<_>>>()?;
    let now = Utc::now().trunc_subsecs(3);
    let (articles, note) = articles_now(engine, digest, now).await?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let ctx = RunContext::new(digest, now, &articles, None);
    let mut sender = crate::mail::Sender::beside(&engine.settings, &engine.relays);
    let mut failed = 0;
    for address in &addresses {
        // A subscriber gets their own name and links; anyone else, none
        // that work (the links name no reader).
        let subscriber = engine.store.find_subscriber(address).await?;
        let (id, name, token) = match &subscriber {
            Some(s) => (s.id, s.name.clone(), engine.tokens.for_reader(s.id)),
            None => (0, None, "test".to_string()),
        };
        let reader = Recipient {
            name: name.as_deref(),
            email: address.as_str(),
            unsubscribe_token: &token,
        };
        let mut message =
            delivery::compose(engine, &ctx, &reader, id, now, &mut BodyEncoder::default())?;
        let subject = message
            .headers()
            .get::<lettre::message::header::Subject>()
            .map(|s| s.as_ref().to_string())
            .unwrap_or_default();
        message
            .headers_mut()
            .set(lettre::message::header::Subject::from(format!(
                "[TEST] {subject}"
            )));
        let message = engine.sealer.seal(message).await?;
        let stem = format!("{}-test-{}", digest.name, now.timestamp_millis());
        match sender.send(&message, &stem).await {
            Ok(()) => println!("{}: test sent to {address}", digest.name),
            Err(e) => {
                failed += 1;
                eprintln!("{}: test to {address} not sent: {e}", digest.name);
            }
        }
    }
    sender.close().await;
    if failed > 0 {
        bail!("{} not sent", counted(failed, "test email", "test emails"));
    }
    Ok(())
}

async fn dry_run_send(engine: &Engine, digest: &Digest, slot: DateTime<Utc>) -> Result<()> {
    let (_, _, articles) = delivery::select_for_slot(&engine.store, digest, slot).await?;
    if articles.is_empty() && digest.skip_if_empty {
        println!(
            "{}: dry run: nothing new since the last digest: the run would be skipped",
            digest.name
        );
        return Ok(());
    }
    let ctx = RunContext::new(digest, slot, &articles, None);
    let mut rows = engine.store.stream_confirmed_subscribers(&digest.name);
    let mut count = 0u64;
    let mut encoder = BodyEncoder::default();
    while let Some(s) = rows.try_next().await? {
        let token = engine.tokens.for_reader(s.id);
        let reader = Recipient {
            name: s.name.as_deref(),
            email: &s.email,
            unsubscribe_token: &token,
        };
        delivery::compose(engine, &ctx, &reader, s.id, slot, &mut encoder)
            .with_context(|| format!("cannot build the email to {}", s.email))?;
        count += 1;
    }
    println!(
        "{}: dry run: {} rendered ({}), none sent",
        digest.name,
        counted(count, "email", "emails"),
        counted(articles.len() as u64, "article", "articles")
    );
    Ok(())
}

/// An explicit `send` of a paused digest is refused: a pause means no
/// mail, whoever asks.
async fn refuse_a_paused_digest(engine: &Engine, digest: &Digest) -> Result<()> {
    if digest.paused {
        bail!(
            "{} is paused (`paused = true` in the configuration): remove it to send",
            digest.name
        );
    }
    let paused = engine.store.paused_digests().await?;
    if paused.iter().any(|p| p == digest.name.as_str()) {
        bail!(
            "{} is paused: `gazette resume {}` first",
            digest.name,
            digest.name
        );
    }
    Ok(())
}

/// `gazette pause DIGEST`: for every process sharing the store, its slots
/// are recorded as missed instead of sent, until `gazette resume`.
pub async fn pause(engine: &Engine, digest: &str) -> Result<()> {
    let digest = engine.settings.require_digest(digest)?;
    if engine
        .store
        .pause_digest(&digest.name, Timestamp::now())
        .await?
    {
        println!(
            "paused {}: its slots are recorded as missed, not sent, until `gazette resume {}`",
            digest.name, digest.name
        );
    } else {
        println!("{} was paused already", digest.name);
    }
    Ok(())
}

/// `gazette resume DIGEST`: sends again from its next slot.
pub async fn resume(engine: &Engine, digest: &str) -> Result<()> {
    let digest = engine.settings.require_digest(digest)?;
    let resumed = engine.store.resume_digest(&digest.name).await?;
    if digest.paused {
        bail!(
            "{} is paused by the configuration (`paused = true`): remove that line to resume it",
            digest.name
        );
    }
    let next = crate::schedule::next_slot(digest, Utc::now()).map_or_else(
        || "never".to_string(),
        |t| t.with_timezone(&digest.timezone).to_rfc3339(),
    );
    if resumed {
        println!(
            "resumed {}: it sends again from its next slot, {next}",
            digest.name
        );
    } else {
        println!("{} was not paused (next slot {next})", digest.name);
    }
    Ok(())
}

// -- status and retry -------------------------------------------------------

/// How long a run took (or has taken so far), as `1h 02m 03s`.
fn duration(run: &Run) -> String {
    let end = run.finished_at.map_or_else(Utc::now, |t| t.0);
    let secs = (end - run.created_at.0).num_seconds().max(0);
    match (secs / 3600, secs / 60 % 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m {s:02}s"),
        (h, m, s) => format!("{h}h {m:02}m {s:02}s"),
    }
}

/// A run and its counts as JSON.
fn run_json(run: &Run, c: &DeliveryCounts, b: &RunBounces) -> serde_json::Value {
    serde_json::json!({
        "run": run.id,
        "digest": run.digest,
        "slot": run.slot.0.to_rfc3339(),
        "status": run.status.as_str(),
        "planning": run.planning,
        "started": run.created_at.0.to_rfc3339(),
        "finished": run.finished_at.map(|t| t.0.to_rfc3339()),
        "pending": c.pending,
        "sending": c.sending,
        "sent": c.sent,
        "failed": c.failed,
        "skipped": c.skipped,
        "bounced": b.bounced(),
        "hard_bounces": b.hard,
        "soft_bounces": b.soft,
        "complaints": b.complaints,
    })
}

/// `gazette status`: recent runs with their ledger counts (with `json`,
/// one JSON object a line).
pub async fn status(engine: &Engine, limit: i64, json: bool) -> Result<()> {
    let runs = engine.store.recent_runs(limit).await?;
    if runs.is_empty() && !json {
        println!("no runs yet");
        return Ok(());
    }
    if !json {
        println!(
            "{:>6}  {:<12} {:<20} {:<9} {:<20} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "run",
            "digest",
            "slot (UTC)",
            "status",
            "started (UTC)",
            "took",
            "pending",
            "sent",
            "failed",
            "skipped",
            "bounced"
        );
    }
    for run in runs {
        let c = engine.store.delivery_counts(run.id).await?;
        let b = engine.store.run_bounces(run.id).await?;
        if json {
            println!("{}", run_json(&run, &c, &b));
            continue;
        }
        println!(
            "{:>6}  {:<12} {:<20} {:<9} {:<20} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}",
            run.id,
            run.digest,
            run.slot.0.format("%Y-%m-%d %H:%M:%S"),
            if run.planning {
                "planning".to_string()
            } else {
                run.status.to_string()
            },
            run.created_at.0.format("%Y-%m-%d %H:%M:%S"),
            duration(&run),
            c.open(),
            c.sent,
            c.failed,
            c.skipped,
            b.bounced()
        );
    }
    Ok(())
}

/// How many of a run's failed and waiting deliveries `status RUN` shows.
const SHOWN: i64 = 50;

/// `gazette status RUN`: one run; its failed deliveries with the reply, and
/// those waiting for a retry with when and why.
pub async fn run_status(engine: &Engine, run_id: i64, json: bool) -> Result<()> {
    let store = &engine.store;
    let run = store
        .run(run_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {run_id}"))?;
    let c = store.delivery_counts(run_id).await?;
    let b = store.run_bounces(run_id).await?;
    let articles = store.run_articles(run_id).await?.len();
    let failed = store.failed_deliveries(run_id).await?;
    let waiting = store.tried_open_deliveries(run_id, SHOWN).await?;
    let folded_at = store.folded_at(run_id).await?;
    if json {
        let mut value = run_json(&run, &c, &b);
        value["articles"] = articles.into();
        value["ledger_folded_at"] = folded_at.map(|t| t.0.to_rfc3339()).into();
        value["failed_deliveries"] = failed
            .iter()
            .map(|f| {
                serde_json::json!({
                    "email": f.email, "attempts": f.attempts, "last_error": f.last_error,
                })
            })
            .collect();
        value["retries"] = waiting
            .iter()
            .map(|w| {
                serde_json::json!({
                    "email": w.email, "status": w.status.as_str(), "attempts": w.attempts,
                    "next_attempt_at": w.next_attempt_at.0.to_rfc3339(), "last_error": w.last_error,
                })
            })
            .collect();
        println!("{value}");
        return Ok(());
    }
    println!(
        "run {}: digest {}, slot {}, {}",
        run.id,
        run.digest,
        run.slot.0.to_rfc3339(),
        run.status
    );
    println!(
        "started {}, {} {}",
        run.created_at.0.to_rfc3339(),
        if run.finished_at.is_some() {
            "took"
        } else {
            "running for"
        },
        duration(&run)
    );
    println!(
        "{} published after {} up to {}",
        counted(articles as u64, "article", "articles"),
        run.window_start.0.to_rfc3339(),
        run.cutoff.0.to_rfc3339(),
    );
    println!(
        "deliveries: {} pending, {} sending, {} sent, {} failed, {} skipped",
        c.pending, c.sending, c.sent, c.failed, c.skipped
    );
    println!(
        "bounces: {} hard, {} soft, {}",
        b.hard,
        b.soft,
        counted(b.complaints as u64, "complaint", "complaints")
    );
    if let Some(folded) = folded_at {
        println!(
            "ledger folded {} (delivery.keep_ledger): the counts remain, the rows of each reader are gone",
            folded.0.to_rfc3339()
        );
    }
    if run.planning {
        println!(
            "planning: {} planned so far, {} to come",
            c.open() + c.sent + c.failed + c.skipped,
            counted(
                store.readers_to_plan(run_id).await? as u64,
                "reader",
                "readers"
            )
        );
    }
    if !failed.is_empty() {
        println!("failed:");
        for f in failed {
            println!(
                "  {}\t{}\t{}",
                f.email,
                counted(f.attempts as u64, "attempt", "attempts"),
                f.last_error.as_deref().unwrap_or("")
            );
        }
    }
    if !waiting.is_empty() {
        println!("waiting for a retry (the first {SHOWN} at most):");
        for w in waiting {
            println!(
                "  {}\t{}\tnext {}\t{}",
                w.email,
                counted(w.attempts as u64, "attempt", "attempts"),
                w.next_attempt_at.0.to_rfc3339(),
                w.last_error.as_deref().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// `gazette retry RUN`: re-queues the run's failed deliveries and delivers them.
pub async fn retry(engine: &Engine, run_id: i64) -> Result<()> {
    let run = engine
        .store
        .run(run_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {run_id}"))?;
    let digest = engine.settings.require_digest(&run.digest)?;
    let n = engine
        .store
        .requeue_failed(run_id, Timestamp::now())
        .await?;
    println!(
        "run {run_id}: {} re-queued",
        counted(n, "failed delivery", "failed deliveries")
    );
    if n == 0 {
        if let Some(folded) = engine.store.folded_at(run_id).await? {
            println!(
                "run {run_id}: its ledger was folded {} (delivery.keep_ledger): failed deliveries \
                 folded then can no longer be retried",
                folded.0.to_rfc3339()
            );
        }
        return Ok(());
    }
    let before = engine.store.delivery_counts(run_id).await?;
    let shutdown = shutdown_signal();
    let counts = deliver_with_progress(engine, &digest.name, &shutdown).await?;
    // What the retry did: the run's counts now, less those before it (the
    // re-queued rows were all failed, and are now pending or done).
    if let Some(c) = counts.get(&run_id) {
        println!(
            "{}: run {run_id}: of the {n} retried, {} sent, {} failed again, {} skipped{}",
            digest.name,
            c.sent - before.sent,
            c.failed,
            c.skipped - before.skipped,
            if c.open() > 0 {
                format!(", {} still pending (interrupted)", c.open())
            } else {
                String::new()
            }
        );
    }
    Ok(())
}
