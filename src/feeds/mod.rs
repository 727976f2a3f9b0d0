//! Articles from where they are published: RSS and Atom feeds, polled by
//! `gazette run` (one process at a time per feed, through a lease row) and
//! by `gazette feeds fetch`.
//!
//! [`fetch`] makes the conditional GET with its limits; [`entry`] parses
//! the body and maps each entry to an article; [`sanitize`] makes the
//! entries' HTML safe for a digest. This file polls one feed (lease,
//! fetch, store, record, backoff) and keeps polling them all.

mod entry;
mod fetch;
mod sanitize;

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use tracing::{debug, info, warn};

pub use self::entry::{Entries, parse};
pub use self::fetch::{Fetched, Fetcher, MAX_REDIRECTS, Validators};
pub use self::sanitize::{sanitize, to_text};
use crate::config::{Feed, Settings};
use crate::store::{EntryChange, FetchRecord, Store, Timestamp};

/// The longest pause between fetches after failures (unless the feed's
/// interval is longer).
pub const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);

/// How long a lease outlives a fetch's timeout: time to store the entries.
const LEASE_MARGIN: Duration = Duration::from_secs(60);

/// The daemon looks at the feeds' due times at least this often (another
/// process may have fetched one meanwhile) …
const LONGEST_WAIT: Duration = Duration::from_secs(30);
/// … and at most this often.
const SHORTEST_WAIT: Duration = Duration::from_secs(1);

/// The pause before the next fetch after `failures` failed fetches in a
/// row: the interval, doubled for each failure up to [`MAX_BACKOFF`].
pub fn pause_after(interval: Duration, failures: u32) -> Duration {
    if failures == 0 {
        return interval;
    }
    let doubled = interval.saturating_mul(1u32 << failures.min(20));
    doubled.min(MAX_BACKOFF.max(interval))
}

/// An article named in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Named {
    pub title: String,
    pub url: String,
}

/// What polling a feed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Stored {
        added: Vec<Named>,
        updated: Vec<Named>,
        unchanged: usize,
        /// A line per entry that could not be an article, with why.
        skipped: Vec<String>,
    },
    NotModified,
    /// The error, also kept for `gazette feeds list`.
    Failed(String),
    /// Another process is fetching it (or, for the daemon, it is not due).
    NotTaken,
}

/// The User-Agent's homepage: `web.base_url`, unless it is a local one.
pub fn homepage(settings: &Settings) -> Option<String> {
    let base = &settings.web.base_url;
    let host = url::Url::parse(base).ok()?.host_str()?.to_string();
    let local = host == "localhost" || host.starts_with("127.") || host == "[::1]";
    (!local).then(|| base.clone())
}

/// The configured feeds' rows in the store.
pub async fn sync(store: &Store, feeds: &[Feed]) -> Result<()> {
    let rows: Vec<(&str, &str)> = feeds
        .iter()
        .map(|f| (f.name.as_str(), f.url.as_str()))
        .collect();
    store
        .sync_feeds(&rows)
        .await
        .context("cannot record the configured feeds")
}

/// Polls `feed` once if no other process is (and, with `due_only`, if
/// its next fetch is due): fetch, store its entries, record the outcome
/// and the next fetch. A feed's failure is its outcome; an error is the
/// store's.
pub async fn poll(
    store: &Store,
    fetcher: &Fetcher,
    feed: &Feed,
    due_only: bool,
) -> Result<Outcome> {
    let now = Timestamp::now();
    let lease = Timestamp::from(now.0 + feed.timeout + LEASE_MARGIN);
    let Some(claim) = store.claim_feed(&feed.name, now, lease, due_only).await? else {
        return Ok(Outcome::NotTaken);
    };
    let validators = Validators {
        etag: claim.etag,
        last_modified: claim.last_modified,
    };
    let fetched = fetcher.fetch(feed, &validators).await;
    let (record, outcome) = match fetched {
        Ok(Fetched::NotModified) => (FetchRecord::NotModified, Outcome::NotModified),
        Ok(Fetched::Body {
            body,
            url,
            etag,
            last_modified,
        }) => match parse(&body, feed, &url, now.0) {
            Ok(entries) => {
                let outcome = store_entries(store, feed, entries, now).await?;
                (
                    FetchRecord::Ok {
                        etag,
                        last_modified,
                    },
                    outcome,
                )
            }
            Err(e) => (FetchRecord::Error(e.clone()), Outcome::Failed(e)),
        },
        Err(e) => (FetchRecord::Error(e.clone()), Outcome::Failed(e)),
    };
    let failures = match record {
        FetchRecord::Error(_) => u32::try_from(claim.failures).unwrap_or(0) + 1,
        _ => 0,
    };
    let done = Timestamp::now();
    let next = Timestamp::from(done.0 + pause_after(feed.interval, failures));
    store.record_fetch(&feed.name, &record, done, next).await?;
    Ok(outcome)
}

async fn store_entries(
    store: &Store,
    feed: &Feed,
    entries: Entries,
    now: Timestamp,
) -> Result<Outcome> {
    let changes = store
        .store_feed_articles(&feed.name, &entries.articles, now)
        .await
        .with_context(|| format!("cannot store the entries of feed `{}`", feed.name))?;
    let (mut added, mut updated, mut unchanged) = (Vec::new(), Vec::new(), 0);
    for (entry, change) in entries.articles.into_iter().zip(changes) {
        let named = Named {
            title: entry.article.title,
            url: entry.article.url,
        };
        match change {
            EntryChange::Added => added.push(named),
            EntryChange::Updated => updated.push(named),
            EntryChange::Unchanged => unchanged += 1,
        }
    }
    Ok(Outcome::Stored {
        added,
        updated,
        unchanged,
        skipped: entries.skipped,
    })
}

/// The daemon's feed poller: every configured feed when it is due, until
/// `shutdown` turns true. A feed that fails is recorded and tried again
/// later (backoff); an error is the store's, for the supervisor.
pub async fn keep_polling(
    store: &Store,
    settings: &Settings,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let feeds = &settings.feeds;
    if feeds.is_empty() {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return Ok(());
            }
        }
        return Ok(());
    }
    let fetcher = Fetcher::new(homepage(settings).as_deref())?;
    sync(store, feeds).await?;
    loop {
        let polls = feeds.iter().map(|feed| poll(store, &fetcher, feed, true));
        let outcomes = futures_util::future::join_all(polls).await;
        for (feed, outcome) in feeds.iter().zip(outcomes) {
            log_outcome(feed, &outcome?);
        }
        let wait = until_next_due(store, feeds).await?;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return Ok(());
        }
    }
}

fn log_outcome(feed: &Feed, outcome: &Outcome) {
    let name = feed.name.as_str();
    match outcome {
        Outcome::Stored {
            added,
            updated,
            unchanged,
            skipped,
        } => info!(
            feed = name,
            added = added.len(),
            updated = updated.len(),
            unchanged,
            skipped = skipped.len(),
            "feed fetched"
        ),
        Outcome::NotModified => debug!(feed = name, "feed not modified"),
        Outcome::Failed(e) => warn!(feed = name, "feed fetch failed: {e}"),
        Outcome::NotTaken => {}
    }
}

/// How long until the first of `feeds` is due, within the daemon's bounds.
async fn until_next_due(store: &Store, feeds: &[Feed]) -> Result<Duration> {
    let now = Timestamp::now();
    let statuses = store.feed_statuses().await?;
    let next = statuses
        .iter()
        .filter(|s| feeds.iter().any(|f| f.name == s.name))
        .map(|s| s.next_fetch_at.unwrap_or(now))
        .min()
        .unwrap_or(now);
    let wait = (next.0 - now.0).to_std().unwrap_or_default();
    Ok(wait.clamp(SHORTEST_WAIT, LONGEST_WAIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_after_each_failure_up_to_six_hours() {
        let m = Duration::from_secs(60);
        let pauses: Vec<u64> = (0..12)
            .map(|f| pause_after(15 * m, f).as_secs() / 60)
            .collect();
        assert_eq!(
            pauses,
            [15, 30, 60, 120, 240, 360, 360, 360, 360, 360, 360, 360]
        );
        // An interval longer than six hours is kept.
        assert_eq!(pause_after(12 * 60 * m, 3), 12 * 60 * m);
    }
}
