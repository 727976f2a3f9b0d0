//! The `Store`: every query Gazette makes, on SQLite (the embedded default)
//! or Postgres (production, shared by replicas).
//!
//! Most statements are the same text on both backends (`$1` placeholders
//! work on both); `on_pool!` expands one body per backend so each is
//! type-checked against its own driver. Where the dialects differ, the
//! method matches on the backend explicitly.

mod time;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, FromRow, QueryBuilder};

pub use time::Timestamp;

use crate::domain::{DigestName, EmailAddress, SubscriberStatus, new_token};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend.
macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match $self {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

// ---------------------------------------------------------------------------
// Rows and inputs

/// An article to store, as parsed from an import or the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct NewArticle {
    pub url: String,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub author: Option<String>,
    pub tags: Vec<String>,
    pub published_at: Timestamp,
}

#[derive(Debug, Clone, FromRow)]
pub struct Article {
    pub id: i64,
    pub url: String,
    pub title: String,
    pub summary: Option<String>,
    pub author: Option<String>,
    pub published_at: Timestamp,
}

/// An article as it went into a run: a snapshot, so the run renders the
/// same email later even if the article is edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunArticle {
    pub article_id: i64,
    pub url: String,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub author: Option<String>,
    pub tags: Vec<String>,
    pub published_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, FromRow)]
struct RunArticleRow {
    article_id: i64,
    url: String,
    title: String,
    summary: Option<String>,
    body: Option<String>,
    author: Option<String>,
    tags: String,
    published_at: Timestamp,
}

impl From<RunArticleRow> for RunArticle {
    fn from(r: RunArticleRow) -> Self {
        Self {
            article_id: r.article_id,
            url: r.url,
            title: r.title,
            summary: r.summary,
            body: r.body,
            author: r.author,
            tags: serde_json::from_str(&r.tags).unwrap_or_default(),
            published_at: r.published_at.0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewSubscriber {
    pub email: EmailAddress,
    pub name: Option<String>,
    pub digests: Vec<DigestName>,
}

#[derive(Debug, Clone, FromRow)]
pub struct Subscriber {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    pub status: String,
    pub unsubscribe_token: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportCounts {
    pub added: u64,
    pub updated: u64,
    /// Existing subscribers left unsubscribed or bounced: an import never
    /// re-subscribes someone who left.
    pub kept_inactive: u64,
}

#[derive(Debug, Clone, FromRow)]
pub struct Run {
    pub id: i64,
    pub digest: String,
    pub slot: Timestamp,
    pub status: String,
    pub window_start: Timestamp,
    pub cutoff: Timestamp,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanOutcome {
    /// A new run with its articles and one pending delivery per confirmed subscriber.
    Planned { run_id: i64, deliveries: u64 },
    /// Nothing new to send and the digest skips empty runs: no mail.
    Skipped { run_id: i64 },
    /// This slot was planned before (another tick, a restart, a replica).
    Exists { run_id: i64, status: String },
}

/// What a run's planning needs to know, decided by the caller.
#[derive(Debug, Clone)]
pub struct RunPlan<'a> {
    pub digest: &'a DigestName,
    pub slot: Timestamp,
    pub window_start: Timestamp,
    pub cutoff: Timestamp,
    pub articles: &'a [RunArticle],
    pub skip_if_empty: bool,
    pub now: Timestamp,
}

/// A delivery claimed by a worker, with what it needs to render and send.
#[derive(Debug, Clone, FromRow)]
pub struct Claimed {
    pub id: i64,
    pub run_id: i64,
    pub subscriber_id: i64,
    pub attempts: i32,
    pub email: String,
    pub name: Option<String>,
    pub subscriber_status: String,
    pub unsubscribe_token: String,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, FromRow)]
pub struct DeliveryCounts {
    pub pending: i64,
    pub sending: i64,
    pub sent: i64,
    pub failed: i64,
    pub skipped: i64,
}

impl DeliveryCounts {
    pub fn open(&self) -> i64 {
        self.pending + self.sending
    }
}

#[derive(Debug, Clone, FromRow)]
pub struct FailedDelivery {
    pub id: i64,
    pub email: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

// ---------------------------------------------------------------------------

impl Store {
    /// Opens the store at `url` and applies pending migrations. A SQLite
    /// file is created (with its directory) when missing.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("invalid SQLite address `{url}`"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30))
                .disable_statement_logging();
            if let Some(dir) = Path::new(options.get_filename()).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open SQLite database `{url}`"))?;
            Store::Sqlite(pool)
        } else {
            let options = PgConnectOptions::from_str(url)
                .with_context(|| format!("invalid Postgres address `{}`", redact_url(url)))?
                .disable_statement_logging();
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .with_context(|| format!("cannot connect to Postgres at `{}`", redact_url(url)))?;
            Store::Postgres(pool)
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
            Store::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        }
        .context("cannot apply database migrations")
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    // -- articles -----------------------------------------------------------

    /// Inserts or updates (by url) every article in one transaction: either
    /// all of them are stored or none. Returns (inserted, updated).
    pub async fn upsert_articles(
        &self,
        articles: &[NewArticle],
        now: Timestamp,
    ) -> Result<(u64, u64)> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let (mut inserted, mut updated) = (0, 0);
            for a in articles {
                let existing: Option<(i64,)> = sqlx::query_as("select id from articles where url = $1")
                    .bind(&a.url)
                    .fetch_optional(&mut *tx)
                    .await?;
                let id = match existing {
                    Some((id,)) => {
                        sqlx::query(
                            "update articles set title = $2, summary = $3, body = $4, author = $5, \
                             published_at = $6, updated_at = $7 where id = $1",
                        )
                        .bind(id).bind(&a.title).bind(&a.summary).bind(&a.body).bind(&a.author)
                        .bind(a.published_at).bind(now)
                        .execute(&mut *tx)
                        .await?;
                        sqlx::query("delete from article_tags where article_id = $1")
                            .bind(id)
                            .execute(&mut *tx)
                            .await?;
                        updated += 1;
                        id
                    }
                    None => {
                        let (id,): (i64,) = sqlx::query_as(
                            "insert into articles (url, title, summary, body, author, published_at, created_at, updated_at) \
                             values ($1, $2, $3, $4, $5, $6, $7, $7) returning id",
                        )
                        .bind(&a.url).bind(&a.title).bind(&a.summary).bind(&a.body).bind(&a.author)
                        .bind(a.published_at).bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        inserted += 1;
                        id
                    }
                };
                for tag in &a.tags {
                    sqlx::query("insert into article_tags (article_id, tag) values ($1, $2) on conflict do nothing")
                        .bind(id)
                        .bind(tag)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            Ok((inserted, updated))
        })
    }

    /// The newest `limit` articles.
    pub async fn list_articles(&self, limit: i64) -> Result<Vec<Article>> {
        let sql = "select id, url, title, summary, author, published_at from articles \
                   order by published_at desc, id desc limit $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(limit).fetch_all(pool).await?))
    }

    pub async fn article_tags(&self, article_id: i64) -> Result<Vec<String>> {
        let sql = "select tag from article_tags where article_id = $1 order by tag";
        on_pool!(self, pool => {
            let rows: Vec<(String,)> = sqlx::query_as(sql).bind(article_id).fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(t,)| t).collect())
        })
    }

    /// The articles a run would take: published in (`after`, `until`],
    /// newest first, at most `limit`, with one of `tags` when any are given.
    pub async fn select_articles(
        &self,
        after: Timestamp,
        until: Timestamp,
        tags: &[String],
        limit: u32,
    ) -> Result<Vec<RunArticle>> {
        let rows: Vec<RunArticleRow> = on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "select a.id as article_id, a.url, a.title, a.summary, a.body, a.author, \
                 '[]' as tags, a.published_at from articles a where a.published_at > ",
            );
            q.push_bind(after).push(" and a.published_at <= ").push_bind(until);
            if !tags.is_empty() {
                q.push(" and exists (select 1 from article_tags t where t.article_id = a.id and t.tag in (");
                let mut list = q.separated(", ");
                for tag in tags {
                    list.push_bind(tag);
                }
                q.push("))");
            }
            q.push(" order by a.published_at desc, a.id desc limit ").push_bind(i64::from(limit));
            q.build_query_as().fetch_all(pool).await?
        });
        let mut articles: Vec<RunArticle> = rows.into_iter().map(RunArticle::from).collect();
        for a in &mut articles {
            a.tags = self.article_tags(a.article_id).await?;
        }
        Ok(articles)
    }

    // -- subscribers --------------------------------------------------------

    /// Adds or updates subscribers, all in one transaction, as confirmed
    /// (an operator vouches for them). Existing subscribers keep their
    /// token; unsubscribed or bounced ones stay so.
    pub async fn upsert_subscribers(
        &self,
        subs: &[NewSubscriber],
        now: Timestamp,
    ) -> Result<ImportCounts> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut counts = ImportCounts::default();
            for s in subs {
                let existing: Option<(i64, String)> =
                    sqlx::query_as("select id, status from subscribers where email_key = $1")
                        .bind(s.email.key())
                        .fetch_optional(&mut *tx)
                        .await?;
                let id = match existing {
                    Some((id, status)) => {
                        sqlx::query(
                            "update subscribers set name = coalesce($2, name), updated_at = $3, \
                             status = case when status = 'pending' then 'confirmed' else status end \
                             where id = $1",
                        )
                        .bind(id).bind(&s.name).bind(now)
                        .execute(&mut *tx)
                        .await?;
                        if status == "unsubscribed" || status == "bounced" {
                            counts.kept_inactive += 1;
                        } else {
                            counts.updated += 1;
                        }
                        id
                    }
                    None => {
                        let (id,): (i64,) = sqlx::query_as(
                            "insert into subscribers (email, email_key, name, status, unsubscribe_token, created_at, updated_at) \
                             values ($1, $2, $3, 'confirmed', $4, $5, $5) returning id",
                        )
                        .bind(s.email.as_str()).bind(s.email.key()).bind(&s.name).bind(new_token()).bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        counts.added += 1;
                        id
                    }
                };
                for digest in &s.digests {
                    sqlx::query(
                        "insert into subscriptions (subscriber_id, digest, created_at) values ($1, $2, $3) \
                         on conflict do nothing",
                    )
                    .bind(id).bind(digest.as_str()).bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(counts)
        })
    }

    /// Deletes a subscriber with their subscriptions and ledger rows (on
    /// Postgres the ledger has no foreign key to cascade from).
    pub async fn remove_subscriber(&self, email: &EmailAddress) -> Result<bool> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let removed: Option<(i64,)> =
                sqlx::query_as("delete from subscribers where email_key = $1 returning id")
                    .bind(email.key())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((id,)) = removed {
                sqlx::query("delete from deliveries where subscriber_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(removed.is_some())
        })
    }

    pub async fn set_subscriber_status(
        &self,
        email: &EmailAddress,
        status: SubscriberStatus,
        now: Timestamp,
    ) -> Result<bool> {
        let sql = "update subscribers set status = $2, updated_at = $3 where email_key = $1";
        on_pool!(self, pool => {
            let done = sqlx::query(sql).bind(email.key()).bind(status.as_str()).bind(now).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    pub async fn find_subscriber(&self, email: &EmailAddress) -> Result<Option<Subscriber>> {
        let sql = "select id, email, name, status, unsubscribe_token, created_at from subscribers where email_key = $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(email.key()).fetch_optional(pool).await?))
    }

    /// The first confirmed subscriber of a digest (a realistic preview).
    pub async fn first_subscriber_of(&self, digest: &DigestName) -> Result<Option<Subscriber>> {
        let sql = "select s.id, s.email, s.name, s.status, s.unsubscribe_token, s.created_at \
                   from subscribers s join subscriptions d on d.subscriber_id = s.id \
                   where d.digest = $1 and s.status = 'confirmed' order by s.id limit 1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(digest.as_str()).fetch_optional(pool).await?))
    }

    pub async fn subscriber_digests(&self, subscriber_id: i64) -> Result<Vec<String>> {
        let sql = "select digest from subscriptions where subscriber_id = $1 order by digest";
        on_pool!(self, pool => {
            let rows: Vec<(String,)> = sqlx::query_as(sql).bind(subscriber_id).fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(d,)| d).collect())
        })
    }

    /// Streams subscribers in id order, optionally of one status: memory
    /// stays flat however long the list.
    pub fn stream_subscribers<'a>(
        &'a self,
        status: Option<SubscriberStatus>,
    ) -> BoxStream<'a, Result<Subscriber>> {
        let sql = match status {
            Some(_) => {
                "select id, email, name, status, unsubscribe_token, created_at from subscribers where status = $1 order by id"
            }
            None => {
                "select id, email, name, status, unsubscribe_token, created_at from subscribers order by id"
            }
        };
        let status = status.map(|s| s.as_str());
        on_pool!(self, pool => {
            let mut q = sqlx::query_as::<_, Subscriber>(sql);
            if let Some(s) = status {
                q = q.bind(s);
            }
            q.fetch(pool).map_err(anyhow::Error::from).boxed()
        })
    }

    /// Streams the confirmed subscribers of a digest (for a dry run).
    pub fn stream_confirmed_subscribers<'a>(
        &'a self,
        digest: &'a DigestName,
    ) -> BoxStream<'a, Result<Subscriber>> {
        let sql = "select s.id, s.email, s.name, s.status, s.unsubscribe_token, s.created_at \
                   from subscribers s join subscriptions d on d.subscriber_id = s.id \
                   where d.digest = $1 and s.status = 'confirmed' order by s.id";
        on_pool!(self, pool => sqlx::query_as::<_, Subscriber>(sql)
            .bind(digest.as_str())
            .fetch(pool)
            .map_err(anyhow::Error::from)
            .boxed())
    }

    // -- runs -------------------------------------------------------------

    /// The run of (digest, slot), if that slot was planned (or missed) before.
    pub async fn run_for_slot(
        &self,
        digest: &DigestName,
        slot: Timestamp,
    ) -> Result<Option<(i64, String)>> {
        let sql = "select id, status from digest_runs where digest = $1 and slot = $2";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(digest.as_str()).bind(slot).fetch_optional(pool).await?))
    }

    /// Where the next run of `digest` starts looking: the cutoff of its
    /// latest run before `slot`.
    pub async fn previous_cutoff(
        &self,
        digest: &DigestName,
        slot: Timestamp,
    ) -> Result<Option<Timestamp>> {
        let sql = "select cutoff from digest_runs where digest = $1 and slot < $2 and status <> 'missed' \
                   order by slot desc limit 1";
        on_pool!(self, pool => {
            let row: Option<(Timestamp,)> = sqlx::query_as(sql).bind(digest.as_str()).bind(slot).fetch_optional(pool).await?;
            Ok(row.map(|(t,)| t))
        })
    }

    /// Creates the run of (digest, slot) in one transaction: the run, its
    /// articles and one pending delivery per confirmed subscriber. Planning
    /// a slot that exists creates nothing.
    pub async fn plan_run(&self, plan: &RunPlan<'_>) -> Result<PlanOutcome> {
        let outcome = self.insert_run(plan).await?;
        if let (Store::Postgres(pool), PlanOutcome::Planned { deliveries, .. }) = (self, &outcome)
            && *deliveries > 0
        {
            // The claims read the ledger in id order only if the planner
            // knows how many rows the run has: on statistics from before
            // the run it expects a handful and sorts the whole run on
            // every claim instead (35 ms a claim at 100,000 rows, against
            // 2.4 ms). Autovacuum would analyze the table only once a run
            // is well under way. A failure only costs speed.
            if let Err(e) = sqlx::query("analyze deliveries").execute(pool).await {
                tracing::warn!("cannot analyze the delivery ledger: {e}");
            }
        }
        Ok(outcome)
    }

    async fn insert_run(&self, plan: &RunPlan<'_>) -> Result<PlanOutcome> {
        let skip = plan.articles.is_empty() && plan.skip_if_empty;
        let status = if skip { "skipped" } else { "sending" };
        let finished_at = skip.then_some(plan.now);
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // The write comes first so SQLite takes its write lock up front.
            let created: Option<(i64,)> = sqlx::query_as(
                "insert into digest_runs (digest, slot, status, window_start, cutoff, created_at, finished_at) \
                 values ($1, $2, $3, $4, $5, $6, $7) on conflict (digest, slot) do nothing returning id",
            )
            .bind(plan.digest.as_str()).bind(plan.slot).bind(status).bind(plan.window_start)
            .bind(plan.cutoff).bind(plan.now).bind(finished_at)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((run_id,)) = created else {
                let (run_id, status): (i64, String) =
                    sqlx::query_as("select id, status from digest_runs where digest = $1 and slot = $2")
                        .bind(plan.digest.as_str()).bind(plan.slot)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.rollback().await?;
                return Ok(PlanOutcome::Exists { run_id, status });
            };
            if skip {
                tx.commit().await?;
                return Ok(PlanOutcome::Skipped { run_id });
            }
            for (position, a) in plan.articles.iter().enumerate() {
                sqlx::query(
                    "insert into run_articles (run_id, position, article_id, url, title, summary, body, author, tags, published_at) \
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                )
                .bind(run_id).bind(position as i32).bind(a.article_id).bind(&a.url).bind(&a.title)
                .bind(&a.summary).bind(&a.body).bind(&a.author)
                .bind(serde_json::to_string(&a.tags)?).bind(Timestamp::from(a.published_at))
                .execute(&mut *tx)
                .await?;
            }
            let deliveries = sqlx::query(
                "insert into deliveries (run_id, subscriber_id, status, attempts, next_attempt_at) \
                 select $1, s.id, 'pending', 0, $3 from subscribers s \
                 join subscriptions d on d.subscriber_id = s.id \
                 where d.digest = $2 and s.status = 'confirmed' \
                 on conflict do nothing",
            )
            .bind(run_id).bind(plan.digest.as_str()).bind(plan.now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if deliveries == 0 {
                sqlx::query("update digest_runs set status = 'finished', finished_at = $2 where id = $1")
                    .bind(run_id).bind(plan.now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(PlanOutcome::Planned { run_id, deliveries })
        })
    }

    /// Records a slot that was not sent because it was found too late.
    pub async fn record_missed(
        &self,
        digest: &DigestName,
        slot: Timestamp,
        now: Timestamp,
    ) -> Result<bool> {
        let sql = "insert into digest_runs (digest, slot, status, window_start, cutoff, created_at, finished_at) \
                   values ($1, $2, 'missed', $2, $2, $3, $3) on conflict (digest, slot) do nothing";
        on_pool!(self, pool => {
            let done = sqlx::query(sql).bind(digest.as_str()).bind(slot).bind(now).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    pub async fn run(&self, run_id: i64) -> Result<Option<Run>> {
        let sql = "select id, digest, slot, status, window_start, cutoff, created_at, finished_at \
                   from digest_runs where id = $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(run_id).fetch_optional(pool).await?))
    }

    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<Run>> {
        let sql = "select id, digest, slot, status, window_start, cutoff, created_at, finished_at \
                   from digest_runs order by id desc limit $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(limit).fetch_all(pool).await?))
    }

    /// Runs that still have deliveries to make, of one digest or all.
    pub async fn unfinished_runs(&self, digest: Option<&DigestName>) -> Result<Vec<Run>> {
        let base = "select id, digest, slot, status, window_start, cutoff, created_at, finished_at \
                    from digest_runs where status = 'sending'";
        on_pool!(self, pool => Ok(match digest {
            Some(d) => sqlx::query_as(&format!("{base} and digest = $1 order by id"))
                .bind(d.as_str()).fetch_all(pool).await?,
            None => sqlx::query_as(&format!("{base} order by id")).fetch_all(pool).await?,
        }))
    }

    pub async fn run_articles(&self, run_id: i64) -> Result<Vec<RunArticle>> {
        let sql = "select article_id, url, title, summary, body, author, tags, published_at \
                   from run_articles where run_id = $1 order by position";
        on_pool!(self, pool => {
            let rows: Vec<RunArticleRow> = sqlx::query_as(sql).bind(run_id).fetch_all(pool).await?;
            Ok(rows.into_iter().map(RunArticle::from).collect())
        })
    }

    /// Marks a run finished when none of its deliveries is pending or sending.
    pub async fn finish_run_if_done(&self, run_id: i64, now: Timestamp) -> Result<bool> {
        let sql = "update digest_runs set status = 'finished', finished_at = $2 \
                   where id = $1 and status = 'sending' and not exists \
                   (select 1 from deliveries where run_id = $1 and status in ('pending', 'sending'))";
        on_pool!(self, pool => {
            let done = sqlx::query(sql).bind(run_id).bind(now).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    // -- the delivery ledger ------------------------------------------------

    /// Claims up to `limit` due deliveries of `run` with an id above
    /// `after`, marking them `sending` until `lease_until`: pending rows
    /// whose `next_attempt_at` has come, and rows whose lease expired (a
    /// crashed or stopped process's, taken over as they are). Replicas on
    /// Postgres claim disjoint rows (`for update skip locked`). Walking the
    /// run forward from the last id claimed keeps each claim as cheap at the
    /// end of a long run as at its start; a claim from 0 picks up the rows
    /// left behind (retries, expired leases).
    pub async fn claim(
        &self,
        run: i64,
        after: i64,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        const DUE: &str = "select id from deliveries where run_id = $4 and id > $5 \
                           and (status = 'pending' and next_attempt_at <= $2 \
                           or status = 'sending' and lease_until < $2) order by id limit $3";
        // A row whose subscriber is gone (removed while the run was being
        // planned) comes back as skipped: it is claimed, never mailed.
        const READER: &str = "c.id, c.run_id, c.subscriber_id, c.attempts, \
                              coalesce(s.email, '') as email, s.name, \
                              coalesce(s.status, 'removed') as subscriber_status, \
                              coalesce(s.unsubscribe_token, '') as unsubscribe_token";
        // The parameters of DUE and of the lease, on either backend.
        macro_rules! bind_claim {
            ($sql:expr) => {
                sqlx::query_as($sql)
                    .bind(lease_until)
                    .bind(now)
                    .bind(i64::from(limit))
                    .bind(run)
                    .bind(after)
            };
        }
        match self {
            Store::Postgres(pool) => {
                // One statement. `= any(array(…))` makes the update find its
                // rows through the primary key (with `in (…)` the planner may
                // scan the whole ledger for them), and the subscribers are
                // joined to the claimed rows only.
                let sql = format!(
                    "with c as (update deliveries set status = 'sending', lease_until = $1 \
                     where id = any(array({DUE} for update skip locked)) \
                     returning id, run_id, subscriber_id, attempts) \
                     select {READER} from c left join subscribers s on s.id = c.subscriber_id order by c.id"
                );
                Ok(bind_claim!(&sql).fetch_all(pool).await?)
            }
            Store::Sqlite(pool) => {
                // (SQLite has no update in a `with`, and one writer at a time.)
                let claim = format!(
                    "update deliveries set status = 'sending', lease_until = $1 where id in ({DUE}) returning id"
                );
                let ids: Vec<(i64,)> = bind_claim!(&claim).fetch_all(pool).await?;
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut q = QueryBuilder::new(format!(
                    "select {READER} from deliveries c left join subscribers s on s.id = c.subscriber_id where c.id in ("
                ));
                let mut list = q.separated(", ");
                for (id,) in &ids {
                    list.push_bind(*id);
                }
                q.push(") order by c.id");
                Ok(q.build_query_as().fetch_all(pool).await?)
            }
        }
    }

    /// A connection of the pool, kept for a series of outcome writes.
    pub async fn ledger_connection(&self) -> Result<LedgerConnection> {
        Ok(LedgerConnection(match self {
            Store::Postgres(pool) => Held::Postgres(pool.acquire().await?),
            Store::Sqlite(pool) => Held::Sqlite(pool.acquire().await?),
        }))
    }

    /// Re-queues the failed deliveries of a run (`gazette retry`) with fresh
    /// attempts, and reopens the run. Returns how many.
    pub async fn requeue_failed(&self, run_id: i64, now: Timestamp) -> Result<u64> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "update deliveries set status = 'pending', attempts = 0, next_attempt_at = $2, lease_until = null \
                 where run_id = $1 and status = 'failed'",
            )
            .bind(run_id).bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n > 0 {
                sqlx::query("update digest_runs set status = 'sending', finished_at = null where id = $1")
                    .bind(run_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(n)
        })
    }

    pub async fn delivery_counts(&self, run_id: i64) -> Result<DeliveryCounts> {
        let sql = "select \
            coalesce(sum(case when status = 'pending' then 1 else 0 end), 0) as pending, \
            coalesce(sum(case when status = 'sending' then 1 else 0 end), 0) as sending, \
            coalesce(sum(case when status = 'sent' then 1 else 0 end), 0) as sent, \
            coalesce(sum(case when status = 'failed' then 1 else 0 end), 0) as failed, \
            coalesce(sum(case when status = 'skipped' then 1 else 0 end), 0) as skipped \
            from deliveries where run_id = $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(run_id).fetch_one(pool).await?))
    }

    /// The earliest time a pending delivery of `run` may be tried again.
    pub async fn next_attempt_at(&self, run_id: i64) -> Result<Option<Timestamp>> {
        let sql =
            "select min(next_attempt_at) from deliveries where run_id = $1 and status = 'pending'";
        on_pool!(self, pool => {
            let (t,): (Option<Timestamp>,) = sqlx::query_as(sql).bind(run_id).fetch_one(pool).await?;
            Ok(t)
        })
    }

    pub async fn failed_deliveries(&self, run_id: i64) -> Result<Vec<FailedDelivery>> {
        let sql = "select d.id, s.email, d.attempts, d.last_error from deliveries d \
                   join subscribers s on s.id = d.subscriber_id \
                   where d.run_id = $1 and d.status = 'failed' order by d.id";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(run_id).fetch_all(pool).await?))
    }
}

/// A connection taken from the pool and kept for a series of outcome
/// writes. Each use of the pool costs two more round trips to the database
/// than the statement itself (sqlx checks a connection when it is taken and
/// when it is given back): a delivery run, which writes outcomes every few
/// messages, keeps its connections instead. A connection that failed is
/// dropped, and the next write takes a fresh one.
pub struct LedgerConnection(Held);

enum Held {
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
}

macro_rules! on_conn {
    ($self:expr, $conn:ident => $body:expr) => {
        match &mut $self.0 {
            Held::Postgres($conn) => $body,
            Held::Sqlite($conn) => $body,
        }
    };
}

impl LedgerConnection {
    /// Records deliveries accepted by the relay (one statement per batch).
    pub async fn mark_sent(&mut self, ids: &[i64], now: Timestamp) -> Result<()> {
        self.finish_deliveries(ids, "sent", Some(now)).await
    }

    /// Records deliveries not sent because the subscriber left meanwhile.
    pub async fn mark_skipped(&mut self, ids: &[i64]) -> Result<()> {
        self.finish_deliveries(ids, "skipped", None).await
    }

    /// Returns claimed rows to pending without counting an attempt.
    pub async fn release(&mut self, ids: &[i64]) -> Result<()> {
        self.finish_deliveries(ids, "pending", None).await
    }

    async fn finish_deliveries(
        &mut self,
        ids: &[i64],
        status: &str,
        sent_at: Option<Timestamp>,
    ) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        // Only rows still `sending` change; a message that was sent is also
        // recorded when its lease ran out meanwhile and another process
        // took the row over (which may have put it back to `pending`), so
        // it is not sent again. The condition sits in the
        // CASEs, not the WHERE, so the rows are always found through the
        // primary key.
        let open = if status == "sent" {
            "status in ('sending', 'pending')"
        } else {
            "status = 'sending'"
        };
        on_conn!(self, conn => {
            let mut q = QueryBuilder::new(format!(
                "update deliveries set lease_until = case when {open} then null else lease_until end, \
                 sent_at = case when {open} then "
            ));
            q.push_bind(sent_at)
                .push(format!(" else sent_at end, status = case when {open} then "))
                .push_bind(status)
                .push(" else status end where id in (");
            let mut list = q.separated(", ");
            for id in ids {
                list.push_bind(*id);
            }
            q.push(")");
            q.build().execute(&mut **conn).await?;
            Ok(())
        })
    }

    /// A transient failure: try again at `next_attempt_at`.
    pub async fn mark_retry(
        &mut self,
        id: i64,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<()> {
        let sql = "update deliveries set status = 'pending', lease_until = null, attempts = attempts + 1, \
                   next_attempt_at = $2, last_error = $3 where id = $1 and status = 'sending'";
        on_conn!(self, conn => {
            sqlx::query(sql).bind(id).bind(next_attempt_at).bind(error).execute(&mut **conn).await?;
            Ok(())
        })
    }

    /// A permanent failure, or attempts exhausted.
    pub async fn mark_failed(&mut self, id: i64, error: &str) -> Result<()> {
        let sql = "update deliveries set status = 'failed', lease_until = null, attempts = attempts + 1, \
                   last_error = $2 where id = $1 and status = 'sending'";
        on_conn!(self, conn => {
            sqlx::query(sql).bind(id).bind(error).execute(&mut **conn).await?;
            Ok(())
        })
    }
}

/// What a subscribe request led to. The web answer is the same for each:
/// nobody learns whether an address is subscribed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubscribeOutcome {
    /// A confirmation email is due for this address.
    Confirm { subscriber_id: i64 },
    /// A confirmation was sent to this address moments ago: no new email.
    RateLimited,
}

/// A subscribe request from the web, with its confirmation token's hash.
#[derive(Debug, Clone, Copy)]
pub struct SubscriptionRequest<'a> {
    pub email: &'a EmailAddress,
    pub name: Option<&'a str>,
    pub digests: &'a [DigestName],
    pub token_hash: &'a str,
    pub now: Timestamp,
    pub expires: Timestamp,
    /// An unused confirmation created after this stops a new one being sent.
    pub recent: Timestamp,
}

/// A reader found by one of their links.
#[derive(Debug, Clone, FromRow)]
pub struct Reader {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    pub status: String,
    pub unsubscribe_token: String,
}

/// Equality in time independent of where the strings differ.
fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Store {
    /// Records a subscribe request from the web: a new address becomes a
    /// pending subscriber; any address gets a confirmation row (unless one
    /// was created within `min_interval`). Nothing else changes until the
    /// link is followed.
    pub async fn request_subscription(
        &self,
        req: &SubscriptionRequest<'_>,
    ) -> Result<SubscribeOutcome> {
        let SubscriptionRequest {
            email,
            name,
            digests,
            token_hash,
            now,
            expires,
            recent,
        } = *req;
        let digests =
            serde_json::to_string(&digests.iter().map(DigestName::as_str).collect::<Vec<_>>())?;
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Writing first takes SQLite's write lock before any read.
            sqlx::query(
                "insert into subscribers (email, email_key, name, status, unsubscribe_token, created_at, updated_at) \
                 values ($1, $2, $3, 'pending', $4, $5, $5) on conflict (email_key) do nothing",
            )
            .bind(email.as_str()).bind(email.key()).bind(name).bind(new_token()).bind(now)
            .execute(&mut *tx)
            .await?;
            let (subscriber_id, status): (i64, String) =
                sqlx::query_as("select id, status from subscribers where email_key = $1")
                    .bind(email.key())
                    .fetch_one(&mut *tx)
                    .await?;
            let (recent_count,): (i64,) = sqlx::query_as(
                "select count(*) from confirmations where subscriber_id = $1 and created_at > $2 and used_at is null",
            )
            .bind(subscriber_id).bind(recent)
            .fetch_one(&mut *tx)
            .await?;
            if recent_count > 0 {
                tx.rollback().await?;
                return Ok(SubscribeOutcome::RateLimited);
            }
            if status == "pending" && name.is_some() {
                sqlx::query("update subscribers set name = $2, updated_at = $3 where id = $1")
                    .bind(subscriber_id).bind(name).bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query(
                "insert into confirmations (token_hash, subscriber_id, digests, created_at, expires_at) \
                 values ($1, $2, $3, $4, $5)",
            )
            .bind(token_hash).bind(subscriber_id).bind(&digests).bind(now).bind(expires)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(SubscribeOutcome::Confirm { subscriber_id })
        })
    }

    /// Follows a confirmation link: single use, before it expires. The
    /// subscriber becomes confirmed with the digests they asked for.
    pub async fn confirm(&self, token_hash: &str, now: Timestamp) -> Result<Option<Reader>> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let used: Option<(i64, String)> = sqlx::query_as(
                "update confirmations set used_at = $2 \
                 where token_hash = $1 and used_at is null and expires_at > $2 \
                 returning subscriber_id, digests",
            )
            .bind(token_hash).bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((subscriber_id, digests)) = used else {
                tx.rollback().await?;
                return Ok(None);
            };
            sqlx::query("update subscribers set status = 'confirmed', updated_at = $2 where id = $1")
                .bind(subscriber_id).bind(now)
                .execute(&mut *tx)
                .await?;
            let digests: Vec<String> = serde_json::from_str(&digests)?;
            for digest in digests {
                sqlx::query(
                    "insert into subscriptions (subscriber_id, digest, created_at) values ($1, $2, $3) \
                     on conflict do nothing",
                )
                .bind(subscriber_id).bind(digest).bind(now)
                .execute(&mut *tx)
                .await?;
            }
            let reader: Reader = sqlx::query_as(
                "select id, email, name, status, unsubscribe_token from subscribers where id = $1",
            )
            .bind(subscriber_id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(reader))
        })
    }

    /// The reader whose unsubscribe token this is. The first 16 characters
    /// select the row through the index; the whole token is then compared
    /// in constant time.
    pub async fn reader_by_token(&self, token: &str) -> Result<Option<Reader>> {
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let selector = &token[..16];
        let upper = format!("{selector}g");
        let sql = "select id, email, name, status, unsubscribe_token from subscribers \
                   where unsubscribe_token >= $1 and unsubscribe_token < $2";
        let rows: Vec<Reader> = on_pool!(self, pool => sqlx::query_as(sql).bind(selector).bind(&upper).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .find(|r| constant_time_eq(&r.unsubscribe_token, token)))
    }

    pub async fn unsubscribe(&self, subscriber_id: i64, now: Timestamp) -> Result<()> {
        let sql = "update subscribers set status = 'unsubscribed', updated_at = $2 where id = $1";
        on_pool!(self, pool => {
            sqlx::query(sql).bind(subscriber_id).bind(now).execute(pool).await?;
            Ok(())
        })
    }

    /// Saves a reader's choices: their name and digests. No digest left
    /// means unsubscribed; choosing some (from a link in their own mail)
    /// confirms them.
    pub async fn set_preferences(
        &self,
        subscriber_id: i64,
        name: Option<&str>,
        digests: &[DigestName],
        now: Timestamp,
    ) -> Result<()> {
        let status = if digests.is_empty() {
            "unsubscribed"
        } else {
            "confirmed"
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query("update subscribers set name = $2, status = $3, updated_at = $4 where id = $1")
                .bind(subscriber_id).bind(name).bind(status).bind(now)
                .execute(&mut *tx)
                .await?;
            sqlx::query("delete from subscriptions where subscriber_id = $1")
                .bind(subscriber_id)
                .execute(&mut *tx)
                .await?;
            for digest in digests {
                sqlx::query("insert into subscriptions (subscriber_id, digest, created_at) values ($1, $2, $3)")
                    .bind(subscriber_id).bind(digest.as_str()).bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Whether `run` was addressed to this subscriber (for the web view).
    pub async fn was_addressed(&self, run_id: i64, subscriber_id: i64) -> Result<bool> {
        let sql = "select count(*) from deliveries where run_id = $1 and subscriber_id = $2";
        on_pool!(self, pool => {
            let (n,): (i64,) = sqlx::query_as(sql).bind(run_id).bind(subscriber_id).fetch_one(pool).await?;
            Ok(n > 0)
        })
    }

    /// Past runs that sent something, newest first (for the archive).
    pub async fn sent_runs(&self, digests: &[String], limit: i64) -> Result<Vec<Run>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "select id, digest, slot, status, window_start, cutoff, created_at, finished_at \
                 from digest_runs where status in ('sending', 'finished') and digest in (",
            );
            let mut list = q.separated(", ");
            for d in digests {
                list.push_bind(d);
            }
            q.push(") order by slot desc limit ").push_bind(limit);
            Ok(q.build_query_as().fetch_all(pool).await?)
        })
    }

    /// A cheap round trip, for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("select 1").execute(pool).await?;
            Ok(())
        })
    }
}

/// Held while a process delivers from a SQLite store; dropped, it unlocks.
#[derive(Debug)]
pub struct ProcessLock {
    _file: Option<std::fs::File>,
}

impl Store {
    /// SQLite is owned by one delivering process: a second `run` or `send`
    /// on the same file is refused. Postgres needs no lock: replicas share
    /// it and claim disjoint rows.
    pub fn lock_for_delivery(&self, url: &str) -> Result<ProcessLock> {
        let Store::Sqlite(_) = self else {
            return Ok(ProcessLock { _file: None });
        };
        let options = SqliteConnectOptions::from_str(url)?;
        let path = format!("{}.lock", options.get_filename().display());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file {path}"))?;
        match file.try_lock() {
            Ok(()) => Ok(ProcessLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another gazette process is delivering from {} (lock file {path}): \
                 a SQLite store serves one `run` or `send` at a time; use Postgres to run replicas",
                options.get_filename().display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {path}"))
            }
        }
    }
}

/// A database address with its password hidden, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &userinfo[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
