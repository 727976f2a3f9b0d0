//! `gazette feeds …`: fetch the feeds now, and list their state.

use anyhow::{Result, bail};

use super::process::counted;
use crate::config::Feed;
use crate::delivery::Engine;
use crate::feeds::{self, Fetcher, Outcome};
use crate::store::Timestamp;

/// `gazette feeds fetch [NAME]`: polls each feed (or the one named) once,
/// whatever its schedule, and prints what was added, updated or skipped.
/// Fails when a feed failed, after every feed was tried.
pub async fn feeds_fetch(engine: &Engine, name: Option<&str>) -> Result<()> {
    let settings = &engine.settings;
    let chosen: Vec<&Feed> = match name {
        Some(name) => match settings.feed(name) {
            Some(feed) => vec![feed],
            None => bail!(
                "no feed named `{name}` in the configuration ({}); configured: {}",
                settings.sources.join(", "),
                configured(&settings.feeds)
            ),
        },
        None => settings.feeds.iter().collect(),
    };
    if chosen.is_empty() {
        println!("no feeds configured: add a [[feeds]] section with a `url`");
        return Ok(());
    }
    feeds::sync(&engine.store, &settings.feeds).await?;
    let fetcher = Fetcher::new(feeds::homepage(settings).as_deref())?;
    let mut failed = 0;
    for feed in chosen {
        let outcome = feeds::poll(&engine.store, &fetcher, feed, false).await?;
        if matches!(outcome, Outcome::Failed(_)) {
            failed += 1;
        }
        print_outcome(feed, &outcome);
    }
    if failed > 0 {
        bail!(
            "{} failed (it is tried again later; `gazette feeds list` shows the error)",
            counted(failed, "feed", "feeds")
        );
    }
    Ok(())
}

fn configured(feeds: &[Feed]) -> String {
    if feeds.is_empty() {
        "none".into()
    } else {
        feeds
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn print_outcome(feed: &Feed, outcome: &Outcome) {
    let name = &feed.name;
    match outcome {
        Outcome::Stored {
            added,
            updated,
            unchanged,
            skipped,
        } => {
            println!(
                "{name}: {} added, {} updated, {unchanged} unchanged, {} skipped",
                added.len(),
                updated.len(),
                skipped.len()
            );
            for a in added {
                println!("  added    {}  {}", a.title, a.url);
            }
            for a in updated {
                println!("  updated  {}  {}", a.title, a.url);
            }
            for why in skipped {
                println!("  skipped  {why}");
            }
        }
        Outcome::NotModified => println!("{name}: not modified"),
        Outcome::Failed(e) => println!("{name}: error: {e}"),
        Outcome::NotTaken => println!("{name}: another process is fetching it now"),
    }
}

/// `gazette feeds list`: each configured feed's last fetch, its status
/// (ok, error with the error, not modified), its next fetch and how many
/// articles it brought; with `json`, one JSON object a line.
pub async fn feeds_list(engine: &Engine, json: bool) -> Result<()> {
    let settings = &engine.settings;
    if settings.feeds.is_empty() && !json {
        println!("no feeds configured: add a [[feeds]] section with a `url`");
        return Ok(());
    }
    feeds::sync(&engine.store, &settings.feeds).await?;
    let statuses = engine.store.feed_statuses().await?;
    let time = |t: Option<Timestamp>| t.map(|t| t.0.format("%Y-%m-%d %H:%M:%S UTC").to_string());
    for feed in &settings.feeds {
        let Some(s) = statuses.iter().find(|s| s.name == feed.name) else {
            continue;
        };
        let status = s.last_status.as_deref().unwrap_or("never fetched");
        if json {
            let line = serde_json::json!({
                "name": s.name,
                "url": s.url,
                "status": s.last_status,
                "error": s.last_error,
                "failures": s.failures,
                "last_fetch_at": s.last_fetch_at.map(|t| t.0.to_rfc3339()),
                "next_fetch_at": s.next_fetch_at.map(|t| t.0.to_rfc3339()),
                "articles": s.articles,
            });
            println!("{line}");
            continue;
        }
        let status = match (status, &s.last_error) {
            ("error", Some(e)) => format!("error: {e}"),
            ("not_modified", _) => "not modified".into(),
            (status, _) => status.to_string(),
        };
        println!(
            "{}  {status}  last fetch {}  next fetch {}  {}  {}",
            s.name,
            time(s.last_fetch_at).unwrap_or_else(|| "never".into()),
            time(s.next_fetch_at).unwrap_or_else(|| "now".into()),
            counted(s.articles as u64, "article", "articles"),
            s.url
        );
    }
    Ok(())
}
