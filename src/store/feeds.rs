//! Feeds: their state between fetches (validators, status, backoff), the
//! lease that lets one process at a time fetch a feed, and storing their
//! entries as articles.

use anyhow::Result;
use sqlx::FromRow;

use super::articles::NewArticle;
use super::backend::{BeginWrite, Store};
use super::time::Timestamp;

/// An entry of a feed as an article to store.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedArticle {
    /// `published_at` is the fetch time when the entry has no date.
    pub article: NewArticle,
    /// Whether the entry has a date: an entry without one keeps the time
    /// it was first stored at on later fetches.
    pub dated: bool,
}

/// What storing an entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryChange {
    Added,
    /// Its content changed, or it gained tags.
    Updated,
    Unchanged,
}

/// What a claimed feed's previous fetches left.
#[derive(Debug, Clone, FromRow)]
pub struct FeedClaim {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// Failed fetches in a row.
    pub failures: i32,
}

/// How a fetch ended, as `feeds list` shows it.
#[derive(Debug, Clone)]
pub enum FetchRecord {
    /// New entries were read; the validators of that answer.
    Ok {
        etag: Option<String>,
        last_modified: Option<String>,
    },
    NotModified,
    Error(String),
}

/// A feed as `gazette feeds list` shows it.
#[derive(Debug, Clone, FromRow)]
pub struct FeedStatus {
    pub name: String,
    pub url: String,
    pub last_fetch_at: Option<Timestamp>,
    /// `ok`, `error` or `not_modified`; `None` before the first fetch.
    pub last_status: Option<String>,
    pub last_error: Option<String>,
    pub failures: i32,
    pub next_fetch_at: Option<Timestamp>,
    pub articles: i64,
}

/// A longer error is cut: the rest says nothing more to an operator.
const ERROR_MAX: usize = 500;

#[derive(FromRow)]
struct Existing {
    id: i64,
    title: String,
    summary: Option<String>,
    body: Option<String>,
    author: Option<String>,
    published_at: Timestamp,
    image_url: Option<String>,
    summary_text: Option<String>,
    html: bool,
}

impl Existing {
    fn differs(&self, entry: &FeedArticle) -> bool {
        let a = &entry.article;
        self.title != a.title
            || self.summary != a.summary
            || self.body != a.body
            || self.author != a.author
            || self.image_url != a.image_url
            || self.summary_text != a.summary_text
            || self.html != a.html
            || (entry.dated && self.published_at != a.published_at)
    }
}

impl Store {
    /// Makes a row for each configured feed (`name`, `url`); a feed whose
    /// address changed forgets the validators of the old one.
    pub async fn sync_feeds(&self, feeds: &[(&str, &str)]) -> Result<()> {
        let sql = "insert into feeds (name, url) values ($1, $2) on conflict (name) do update set \
                   url = excluded.url, \
                   etag = case when feeds.url = excluded.url then feeds.etag end, \
                   last_modified = case when feeds.url = excluded.url then feeds.last_modified end";
        on_pool!(self, pool => {
            for (name, url) in feeds {
                sqlx::query(sql).bind(*name).bind(*url).execute(pool).await?;
            }
            Ok(())
        })
    }

    /// Takes the feed `name` until `lease_until`, unless another process
    /// holds it (or, with `due_only`, its next fetch is not due yet).
    /// `None`: not taken.
    pub async fn claim_feed(
        &self,
        name: &str,
        now: Timestamp,
        lease_until: Timestamp,
        due_only: bool,
    ) -> Result<Option<FeedClaim>> {
        let sql = if due_only {
            "update feeds set leased_until = $2 where name = $1 \
             and (leased_until is null or leased_until < $3) \
             and (next_fetch_at is null or next_fetch_at <= $3) \
             returning etag, last_modified, failures"
        } else {
            "update feeds set leased_until = $2 where name = $1 \
             and (leased_until is null or leased_until < $3) \
             returning etag, last_modified, failures"
        };
        on_pool!(self, pool => Ok(sqlx::query_as(sql)
            .bind(name)
            .bind(lease_until)
            .bind(now)
            .fetch_optional(pool)
            .await?))
    }

    /// Records how a fetch of `name` ended, when the next is due, and
    /// gives up the lease.
    pub async fn record_fetch(
        &self,
        name: &str,
        record: &FetchRecord,
        now: Timestamp,
        next_fetch_at: Timestamp,
    ) -> Result<()> {
        on_pool!(self, pool => {
            match record {
                FetchRecord::Ok { etag, last_modified } => {
                    sqlx::query(
                        "update feeds set last_fetch_at = $2, last_status = 'ok', last_error = null, \
                         failures = 0, next_fetch_at = $3, leased_until = null, etag = $4, \
                         last_modified = $5 where name = $1",
                    )
                    .bind(name).bind(now).bind(next_fetch_at).bind(etag).bind(last_modified)
                    .execute(pool)
                    .await?;
                }
                FetchRecord::NotModified => {
                    sqlx::query(
                        "update feeds set last_fetch_at = $2, last_status = 'not_modified', \
                         last_error = null, failures = 0, next_fetch_at = $3, leased_until = null \
                         where name = $1",
                    )
                    .bind(name).bind(now).bind(next_fetch_at)
                    .execute(pool)
                    .await?;
                }
                FetchRecord::Error(error) => {
                    let error: String = error.chars().take(ERROR_MAX).collect();
                    sqlx::query(
                        "update feeds set last_fetch_at = $2, last_status = 'error', last_error = $4, \
                         failures = failures + 1, next_fetch_at = $3, leased_until = null \
                         where name = $1",
                    )
                    .bind(name).bind(now).bind(next_fetch_at).bind(error)
                    .execute(pool)
                    .await?;
                }
            }
            Ok(())
        })
    }

    /// Stores a feed's entries in one transaction, upserting by url: an
    /// entry seen before updates its article when its content changed
    /// (an entry without a date keeps the article's time), and its tags
    /// are added to the article's (an article that several feeds carry
    /// has the tags of each). Returns what happened to each entry.
    pub async fn store_feed_articles(
        &self,
        feed: &str,
        entries: &[FeedArticle],
        now: Timestamp,
    ) -> Result<Vec<EntryChange>> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut changes = Vec::with_capacity(entries.len());
            for entry in entries {
                let a = &entry.article;
                let existing: Option<Existing> = sqlx::query_as(
                    "select id, title, summary, body, author, published_at, image_url, summary_text, html \
                     from articles where url = $1",
                )
                .bind(&a.url)
                .fetch_optional(&mut *tx)
                .await?;
                let (id, mut change) = match existing {
                    None => {
                        let (id,): (i64,) = sqlx::query_as(
                            "insert into articles (url, title, summary, body, author, published_at, \
                             created_at, updated_at, image_url, summary_text, html) \
                             values ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9, $10) returning id",
                        )
                        .bind(&a.url).bind(&a.title).bind(&a.summary).bind(&a.body).bind(&a.author)
                        .bind(a.published_at).bind(now).bind(&a.image_url).bind(&a.summary_text)
                        .bind(a.html)
                        .fetch_one(&mut *tx)
                        .await?;
                        (id, EntryChange::Added)
                    }
                    Some(old) if old.differs(entry) => {
                        let published_at = if entry.dated { a.published_at } else { old.published_at };
                        sqlx::query(
                            "update articles set title = $2, summary = $3, body = $4, author = $5, \
                             published_at = $6, updated_at = $7, image_url = $8, summary_text = $9, \
                             html = $10 where id = $1",
                        )
                        .bind(old.id).bind(&a.title).bind(&a.summary).bind(&a.body).bind(&a.author)
                        .bind(published_at).bind(now).bind(&a.image_url).bind(&a.summary_text)
                        .bind(a.html)
                        .execute(&mut *tx)
                        .await?;
                        (old.id, EntryChange::Updated)
                    }
                    Some(old) => (old.id, EntryChange::Unchanged),
                };
                for tag in &a.tags {
                    let added = sqlx::query(
                        "insert into article_tags (article_id, tag) values ($1, $2) on conflict do nothing",
                    )
                    .bind(id)
                    .bind(tag)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if added > 0 && change == EntryChange::Unchanged {
                        change = EntryChange::Updated;
                    }
                }
                sqlx::query(
                    "insert into feed_articles (feed, article_id) values ($1, $2) on conflict do nothing",
                )
                .bind(feed)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                changes.push(change);
            }
            tx.commit().await?;
            Ok(changes)
        })
    }

    /// Every feed with a row, by name, with its article count.
    pub async fn feed_statuses(&self) -> Result<Vec<FeedStatus>> {
        let sql = "select f.name, f.url, f.last_fetch_at, f.last_status, f.last_error, f.failures, \
                   f.next_fetch_at, (select count(*) from feed_articles a where a.feed = f.name) as articles \
                   from feeds f order by f.name";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).fetch_all(pool).await?))
    }
}
