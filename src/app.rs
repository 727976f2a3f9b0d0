//! The commands, as library functions that print what the operator sees.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, SubsecRound, Utc};
use futures_util::TryStreamExt;
use tokio::sync::watch;

use crate::config::{Digest, Settings, TransportKind};
use crate::delivery::{self, Drain, Engine};
use crate::domain::{DigestName, EmailAddress, SubscriberStatus};
use crate::import;
use crate::mail::{self, BodyEncoder};
use crate::render::{Recipient, Renderer, RunContext};
use crate::store::{NewSubscriber, PlanOutcome, Store, Timestamp};

/// Checks the templates, then opens (and migrates) the store.
pub async fn open(settings: Settings) -> Result<Engine> {
    let renderer = Renderer::new(&settings)?;
    let store = Store::connect(&settings.database.url).await?;
    Ok(Engine {
        settings: Arc::new(settings),
        store,
        renderer: Arc::new(renderer),
        panic_for_tests: None,
    })
}

/// `gazette run`: the scheduler and the web server, until SIGINT/SIGTERM.
pub async fn run(engine: &Engine) -> Result<()> {
    engine.renderer.check_web()?;
    refuse_a_misconfigured_relay(engine).await?;
    let shutdown = shutdown_signal();
    let listener = bind(engine).await?;
    let web = tokio::spawn(crate::web::serve(
        engine.clone(),
        listener,
        shutdown.clone(),
    ));
    let result = crate::scheduler::run(engine, shutdown).await;
    web.await.context("the web server stopped")??;
    result
}

/// Connects to the SMTP relay once before delivering: an answer that no
/// retry can change (credentials refused, an unusable TLS setting) stops
/// the command here, before any run is planned or any delivery fails for
/// it. A relay that is down is not refused: the ledger waits for it.
async fn refuse_a_misconfigured_relay(engine: &Engine) -> Result<()> {
    if engine.settings.mail.transport != TransportKind::Smtp {
        return Ok(());
    }
    match mail::check_relay(&engine.settings.smtp).await {
        Err(mail::SendError::Setup(e)) => Err(anyhow::anyhow!("{e}")),
        Ok(()) | Err(mail::SendError::Transient(_) | mail::SendError::Permanent(_)) => Ok(()),
    }
}

/// `gazette serve`: the web pages alone.
pub async fn serve(engine: &Engine) -> Result<()> {
    engine.renderer.check_web()?;
    let listener = bind(engine).await?;
    crate::web::serve(engine.clone(), listener, shutdown_signal()).await
}

async fn bind(engine: &Engine) -> Result<tokio::net::TcpListener> {
    let addr = engine.settings.web.bind;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (web.bind)"))
}

/// A watch that turns true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down: finishing the messages in flight");
        let _ = tx.send(true);
    });
    rx
}

fn digest_names(settings: &Settings) -> Vec<DigestName> {
    settings.digests.iter().map(|d| d.name.clone()).collect()
}

// -- articles ---------------------------------------------------------------

pub async fn articles_import(engine: &Engine, path: &str) -> Result<()> {
    let text = import::read_input(path)?;
    let shown = if path == "-" { "standard input" } else { path };
    let articles = import::parse_articles(&text, Utc::now())
        .with_context(|| format!("{shown}: nothing was imported"))?;
    let (inserted, updated) = engine
        .store
        .upsert_articles(&articles, Timestamp::now())
        .await
        .with_context(|| format!("{shown}: nothing was imported"))?;
    println!(
        "imported {} articles from {shown} ({inserted} new, {updated} updated)",
        articles.len()
    );
    Ok(())
}

pub async fn articles_add(engine: &Engine, input: import::ArticleInput) -> Result<()> {
    let article = input.validate(Utc::now()).map_err(anyhow::Error::msg)?;
    let (inserted, _) = engine
        .store
        .upsert_articles(std::slice::from_ref(&article), Timestamp::now())
        .await?;
    println!(
        "{} {}",
        if inserted == 1 { "added" } else { "updated" },
        article.url
    );
    Ok(())
}

pub async fn articles_list(engine: &Engine, limit: i64) -> Result<()> {
    let articles = engine.store.list_articles(limit).await?;
    if articles.is_empty() {
        println!("no articles yet: add some with `gazette articles import FILE`");
    }
    for a in articles {
        let tags = engine.store.article_tags(a.id).await?;
        println!(
            "{}  {}  {}{}",
            a.published_at.0.format("%Y-%m-%d %H:%M"),
            a.title,
            a.url,
            if tags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", tags.join(", "))
            }
        );
    }
    Ok(())
}

// -- subscribers ------------------------------------------------------------

pub async fn subscribers_add(
    engine: &Engine,
    email: &str,
    name: Option<String>,
    digests: &[String],
) -> Result<()> {
    let email = EmailAddress::parse(email)?;
    let known = digest_names(&engine.settings);
    let digests =
        import::parse_digest_list(&digests.join(";"), &known).map_err(anyhow::Error::msg)?;
    if digests.is_empty() {
        bail!("no digest is configured: add a [[digests]] section to the configuration first");
    }
    let counts = engine
        .store
        .upsert_subscribers(
            &[NewSubscriber {
                email: email.clone(),
                name: name.filter(|n| !n.trim().is_empty()),
                digests: digests.clone(),
            }],
            Timestamp::now(),
        )
        .await?;
    let list: Vec<&str> = digests.iter().map(DigestName::as_str).collect();
    if counts.added == 1 {
        println!("added {email} (confirmed) to {}", list.join(", "));
    } else if counts.kept_inactive == 1 {
        println!("{email} had unsubscribed or bounced: subscriptions updated, still not mailed");
    } else {
        println!("updated {email}: subscribed to {}", list.join(", "));
    }
    Ok(())
}

pub async fn subscribers_remove(engine: &Engine, email: &str) -> Result<()> {
    let email = EmailAddress::parse(email)?;
    if engine.store.remove_subscriber(&email).await? {
        println!("removed {email}");
        Ok(())
    } else {
        bail!("no subscriber {email}")
    }
}

pub async fn subscribers_list(engine: &Engine, status: Option<&str>) -> Result<()> {
    let status = match status {
        Some(s) => Some(SubscriberStatus::parse(s).ok_or_else(|| {
            anyhow::anyhow!("unknown status `{s}` (pending, confirmed, unsubscribed, bounced)")
        })?),
        None => None,
    };
    let mut rows = engine.store.stream_subscribers(status);
    let mut count = 0u64;
    while let Some(s) = rows.try_next().await? {
        let digests = engine.store.subscriber_digests(s.id).await?;
        println!(
            "{}\t{}\t{}\t{}",
            s.email,
            s.name.as_deref().unwrap_or(""),
            s.status,
            digests.join(";")
        );
        count += 1;
    }
    eprintln!("{count} subscribers");
    Ok(())
}

pub async fn subscribers_import(engine: &Engine, path: &str) -> Result<()> {
    let shown = if path == "-" { "standard input" } else { path };
    let known = digest_names(&engine.settings);
    let subscribers = if path == "-" {
        import::parse_subscribers_csv(std::io::stdin().lock(), &known)
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
        import::parse_subscribers_csv(std::io::BufReader::new(file), &known)
    }
    .with_context(|| format!("{shown}: nothing was imported"))?;
    let counts = engine
        .store
        .upsert_subscribers(&subscribers, Timestamp::now())
        .await
        .with_context(|| format!("{shown}: nothing was imported"))?;
    println!(
        "imported {} subscribers from {shown} ({} new, {} updated, {} left unsubscribed)",
        subscribers.len(),
        counts.added,
        counts.updated,
        counts.kept_inactive
    );
    Ok(())
}

// -- preview ----------------------------------------------------------------

/// The files `preview` wrote.
#[derive(Debug)]
pub struct PreviewFiles {
    pub html: PathBuf,
    pub text: PathBuf,
    pub eml: PathBuf,
    pub articles: usize,
}

/// Renders the email `send` would deliver now (or the email of an earlier
/// `run`) to `subscriber` (or to the digest's first subscriber, or a
/// sample reader) into `out`.
pub async fn preview(
    engine: &Engine,
    digest: &str,
    subscriber: Option<&str>,
    out: &Path,
    run: Option<i64>,
) -> Result<PreviewFiles> {
    let settings = &engine.settings;
    let digest = settings.require_digest(digest)?;
    let now = Utc::now().trunc_subsecs(3);
    let reader = match subscriber {
        Some(email) => {
            let email = EmailAddress::parse(email)?;
            Some(
                engine
                    .store
                    .find_subscriber(&email)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no subscriber {email}"))?,
            )
        }
        None => engine.store.first_subscriber_of(&digest.name).await?,
    };
    let (id, email, name, token) = match &reader {
        Some(s) => (
            s.id,
            s.email.clone(),
            s.name.clone(),
            s.unsubscribe_token.clone(),
        ),
        None => (
            0,
            "reader@example.org".to_string(),
            Some("Sample Reader".to_string()),
            "sample-token".to_string(),
        ),
    };
    let (slot, articles) = match run {
        Some(run_id) => {
            let run = engine
                .store
                .run(run_id)
                .await?
                .filter(|r| r.digest == digest.name.as_str())
                .ok_or_else(|| anyhow::anyhow!("no run {run_id} of digest `{}`", digest.name))?;
            (run.slot.0, engine.store.run_articles(run_id).await?)
        }
        None => (
            now,
            delivery::select_for_slot(&engine.store, digest, now)
                .await?
                .2,
        ),
    };
    let ctx = RunContext::new(digest, slot, &articles, run);
    let reader = Recipient {
        name: name.as_deref(),
        email: &email,
        unsubscribe_token: &token,
    };
    let rendered = engine.renderer.render(&ctx, &reader)?;
    let message = delivery::compose(engine, &ctx, &reader, id, now, &mut BodyEncoder::default())?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let files = PreviewFiles {
        html: out.join(format!("{}.html", digest.name)),
        text: out.join(format!("{}.txt", digest.name)),
        eml: out.join(format!("{}.eml", digest.name)),
        articles: articles.len(),
    };
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write(&files.html, rendered.html.as_bytes())?;
    write(&files.text, rendered.text.as_bytes())?;
    write(&files.eml, &message.formatted())?;
    Ok(files)
}

pub fn print_preview(digest: &Digest, files: &PreviewFiles) {
    println!("{}", files.html.display());
    println!("{}", files.text.display());
    println!("{}", files.eml.display());
    if files.articles == 0 {
        eprintln!(
            "note: no new articles for `{}`{}",
            digest.name,
            if digest.skip_if_empty {
                "; a run now would be skipped and send nothing"
            } else {
                ""
            }
        );
    }
}

// -- send -------------------------------------------------------------------

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
    refuse_a_misconfigured_relay(engine).await?;
    let shutdown = shutdown_signal();
    let outcome = delivery::plan(&engine.store, &digest, slot, now).await?;
    let counts =
        delivery::deliver_unfinished(engine, Some(&digest.name), Drain::UntilFinished, &shutdown)
            .await?;
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
        let reader = Recipient {
            name: s.name.as_deref(),
            email: &s.email,
            unsubscribe_token: &s.unsubscribe_token,
        };
        delivery::compose(engine, &ctx, &reader, s.id, slot, &mut encoder)
            .with_context(|| format!("cannot build the email to {}", s.email))?;
        count += 1;
    }
    println!(
        "{}: dry run: {count} emails rendered ({} articles), none sent",
        digest.name,
        articles.len()
    );
    Ok(())
}

// -- status and retry -------------------------------------------------------

/// `gazette status`: recent runs with their ledger counts.
pub async fn status(engine: &Engine, limit: i64) -> Result<()> {
    let runs = engine.store.recent_runs(limit).await?;
    if runs.is_empty() {
        println!("no runs yet");
        return Ok(());
    }
    println!(
        "{:>6}  {:<12} {:<22} {:<9} {:>8} {:>8} {:>8} {:>8}",
        "run", "digest", "slot (UTC)", "status", "pending", "sent", "failed", "skipped"
    );
    for run in runs {
        let c = engine.store.delivery_counts(run.id).await?;
        println!(
            "{:>6}  {:<12} {:<22} {:<9} {:>8} {:>8} {:>8} {:>8}",
            run.id,
            run.digest,
            run.slot.0.format("%Y-%m-%d %H:%M:%S"),
            run.status,
            c.open(),
            c.sent,
            c.failed,
            c.skipped
        );
    }
    Ok(())
}

/// `gazette status RUN`: one run, and its failed deliveries with the reply.
pub async fn run_status(engine: &Engine, run_id: i64) -> Result<()> {
    let run = engine
        .store
        .run(run_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run {run_id}"))?;
    let c = engine.store.delivery_counts(run_id).await?;
    println!(
        "run {}: digest {}, slot {}, {}",
        run.id,
        run.digest,
        run.slot.0.to_rfc3339(),
        run.status
    );
    println!(
        "articles published after {} up to {}: {}",
        run.window_start.0.to_rfc3339(),
        run.cutoff.0.to_rfc3339(),
        engine.store.run_articles(run_id).await?.len()
    );
    println!(
        "deliveries: {} pending, {} sending, {} sent, {} failed, {} skipped",
        c.pending, c.sending, c.sent, c.failed, c.skipped
    );
    let failed = engine.store.failed_deliveries(run_id).await?;
    if !failed.is_empty() {
        println!("failed:");
        for f in failed {
            println!(
                "  {}\t{} attempts\t{}",
                f.email,
                f.attempts,
                f.last_error.as_deref().unwrap_or("")
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
    println!("run {run_id}: {n} failed deliveries re-queued");
    if n == 0 {
        return Ok(());
    }
    let shutdown = shutdown_signal();
    let counts =
        delivery::deliver_unfinished(engine, Some(&digest.name), Drain::UntilFinished, &shutdown)
            .await?;
    if let Some(c) = counts.get(&run_id) {
        println!(
            "{}: run {run_id}: {} sent, {} failed, {} skipped",
            digest.name, c.sent, c.failed, c.skipped
        );
    }
    Ok(())
}

// -- check --------------------------------------------------------------------

/// `gazette check`: configuration and templates were checked on load; this
/// also reaches the database and, for SMTP, the relay.
pub async fn check(settings: Settings) -> Result<()> {
    let sources = settings.sources.join(", ");
    println!("configuration: ok ({sources})");
    let renderer = Renderer::new(&settings)?;
    renderer.check_web()?;
    drop(renderer);
    println!(
        "templates: ok ({} digests, {})",
        settings.digests.len(),
        settings.templates_dir.display()
    );
    for d in &settings.digests {
        let next = crate::scheduler::next_slot(d, Utc::now())
            .map(|t| t.with_timezone(&d.timezone).to_rfc3339())
            .unwrap_or_else(|| "never".into());
        println!(
            "  {}: `{}` in {}, next {next}",
            d.name, d.schedule.text, d.timezone
        );
    }
    let store = Store::connect(&settings.database.url).await?;
    println!(
        "database: ok ({}, {})",
        store.backend(),
        settings.database.redacted_url()
    );
    store.close().await;
    match settings.mail.transport {
        TransportKind::Smtp => {
            mail::check_relay(&settings.smtp)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "smtp: ok ({}:{}, tls {:?})",
                settings.smtp.host, settings.smtp.port, settings.smtp.tls
            );
        }
        TransportKind::Outbox => println!("mail: outbox ({})", settings.mail.outbox_dir.display()),
    }
    Ok(())
}

// -- demo -------------------------------------------------------------------

const DEMO_ARTICLES: &str = include_str!("demo_articles.json");

/// Loads sample articles and readers into the configured store and sends
/// the first digest, so a newcomer sees a real email without a server.
pub async fn demo(engine: &Engine) -> Result<()> {
    let Some(digest) = engine.settings.digests.first().cloned() else {
        bail!("no digest is configured: add a [[digests]] section to the configuration");
    };
    // The sample articles are marked as published just now, so every demo
    // run has something new to send.
    let now = Utc::now();
    let mut articles = import::parse_articles(DEMO_ARTICLES, now)?;
    for (i, a) in articles.iter_mut().enumerate() {
        a.published_at = Timestamp::from(now - chrono::Duration::milliseconds(i as i64 + 1));
    }
    engine
        .store
        .upsert_articles(&articles, Timestamp::from(now))
        .await?;
    println!("loaded {} sample articles", articles.len());
    let readers = [
        ("ada@example.org", "Ada Lovelace"),
        ("grace@example.org", "Grace Hopper"),
        ("zoe@example.org", "Zoë Ünal"),
    ];
    let subs: Vec<NewSubscriber> = readers
        .iter()
        .map(|(email, name)| {
            Ok(NewSubscriber {
                email: EmailAddress::parse(email)?,
                name: Some(name.to_string()),
                digests: vec![digest.name.clone()],
            })
        })
        .collect::<Result<_>>()?;
    engine
        .store
        .upsert_subscribers(&subs, Timestamp::from(now))
        .await?;
    println!("added {} sample subscribers", subs.len());
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    let run = send(engine, digest.name.as_str(), None, false).await?;
    let files = preview(
        engine,
        digest.name.as_str(),
        None,
        Path::new("preview"),
        run,
    )
    .await?;
    println!(
        "open {} in a browser to see the digest as an HTML page",
        files.html.display()
    );
    Ok(())
}
