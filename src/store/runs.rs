//! Runs: creating a (digest, slot) with its articles, planning its ledger
//! in chunks, missed slots, and the runs' history.

use anyhow::Result;
use sqlx::{FromRow, QueryBuilder};

use super::articles::{RunArticle, RunArticleRow};
use super::backend::{BeginWrite, Store};
use super::time::Timestamp;
use crate::domain::{DigestName, RunStatus};

#[derive(Debug, Clone, FromRow)]
pub struct Run {
    pub id: i64,
    pub digest: String,
    pub slot: Timestamp,
    pub status: RunStatus,
    pub window_start: Timestamp,
    pub cutoff: Timestamp,
    pub created_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// Readers are still being added to its ledger (see [`Store::plan_chunk`]).
    pub planning: bool,
}

/// How many readers [`Store::plan_run`] plans at a time (one
/// transaction each).
pub const PLAN_CHUNK: u32 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanOutcome {
    /// A new run with its articles, and the pending deliveries planned so
    /// far: one per confirmed subscriber once its planning is done.
    Planned { run_id: i64, deliveries: u64 },
    /// Nothing new to send and the digest skips empty runs: no mail.
    Skipped { run_id: i64 },
    /// This slot was planned before (another tick, a restart, a replica).
    Exists { run_id: i64, status: RunStatus },
}

/// What one [`Store::plan_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanChunk {
    /// Planned this many deliveries; more readers are left to plan.
    More(u64),
    /// Planned this many deliveries, and with them the run's whole ledger.
    Last(u64),
    /// The run's ledger was planned before (or there is no such run).
    Over,
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

impl Store {
    // -- runs -------------------------------------------------------------

    /// The run of (digest, slot), if that slot was planned (or missed) before.
    pub async fn run_for_slot(
        &self,
        digest: &DigestName,
        slot: Timestamp,
    ) -> Result<Option<(i64, RunStatus)>> {
        let sql = "select id, status from digest_runs where digest = $1 and slot = $2";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(digest.as_str()).bind(slot).fetch_optional(pool).await?))
    }

    /// Pauses `digest` for every process; `false` if it was paused already.
    pub async fn pause_digest(&self, digest: &DigestName, now: Timestamp) -> Result<bool> {
        let sql =
            "insert into digest_pauses (digest, paused_at) values ($1, $2) on conflict do nothing";
        on_pool!(self, pool => {
            let done = sqlx::query(sql).bind(digest.as_str()).bind(now).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Resumes `digest`; `false` if it was not paused (in the store).
    pub async fn resume_digest(&self, digest: &DigestName) -> Result<bool> {
        let sql = "delete from digest_pauses where digest = $1";
        on_pool!(self, pool => {
            let done = sqlx::query(sql).bind(digest.as_str()).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// The digests paused in the store.
    pub async fn paused_digests(&self) -> Result<Vec<String>> {
        let sql = "select digest from digest_pauses order by digest";
        on_pool!(self, pool => {
            let rows: Vec<(String,)> = sqlx::query_as(sql).fetch_all(pool).await?;
            Ok(rows.into_iter().map(|(d,)| d).collect())
        })
    }

    /// Whether `digest` has any run at all (sent, skipped or missed).
    pub async fn has_runs(&self, digest: &DigestName) -> Result<bool> {
        let sql = "select count(*) from (select 1 from digest_runs where digest = $1 limit 1) r";
        on_pool!(self, pool => {
            let (n,): (i64,) = sqlx::query_as(sql).bind(digest.as_str()).fetch_one(pool).await?;
            Ok(n > 0)
        })
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

    /// Creates the run of (digest, slot) and plans its whole ledger before
    /// returning, in chunks of [`PLAN_CHUNK`] readers: one pending delivery
    /// per confirmed subscriber. Planning a slot that exists creates
    /// nothing. (The delivery loop instead sends while it plans: see
    /// [`Store::start_run`] and [`Store::plan_chunk`].)
    pub async fn plan_run(&self, plan: &RunPlan<'_>) -> Result<PlanOutcome> {
        let outcome = self.start_run(plan).await?;
        let PlanOutcome::Planned { run_id, .. } = outcome else {
            return Ok(outcome);
        };
        let mut deliveries = 0;
        loop {
            match self.plan_chunk(run_id, PLAN_CHUNK, plan.now).await? {
                PlanChunk::More(n) => deliveries += n,
                PlanChunk::Last(n) => {
                    deliveries += n;
                    break;
                }
                PlanChunk::Over => break,
            }
        }
        if deliveries > 0 {
            self.analyze_ledger().await;
        }
        Ok(PlanOutcome::Planned { run_id, deliveries })
    }

    /// Refreshes Postgres's statistics of the ledger after a run was planned
    /// (or its first chunk). The claims read the ledger in id order only if
    /// the planner knows how many rows the run has: on statistics from
    /// before the run it expects a handful and sorts the whole run on every
    /// claim instead (35 ms a claim at 100,000 rows, against 2.4 ms).
    /// Autovacuum would analyze the table only once a run is well under
    /// way. A failure only costs speed.
    pub async fn analyze_ledger(&self) {
        if let Store::Postgres(pool) = self
            && let Err(e) = sqlx::query("analyze deliveries").execute(pool).await
        {
            tracing::warn!("cannot analyze the delivery ledger: {e}");
        }
    }

    /// Creates the run of (digest, slot) with its articles in one
    /// transaction, its ledger still to plan ([`Store::plan_chunk`]); a
    /// skipped run is complete at once. Creating a slot that exists creates
    /// nothing. `Planned` counts no delivery yet.
    pub async fn start_run(&self, plan: &RunPlan<'_>) -> Result<PlanOutcome> {
        let skip = plan.articles.is_empty() && plan.skip_if_empty;
        let status = if skip {
            RunStatus::Skipped
        } else {
            RunStatus::Sending
        };
        let finished_at = skip.then_some(plan.now);
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // The write comes first so SQLite takes its write lock up front.
            let created: Option<(i64,)> = sqlx::query_as(
                "insert into digest_runs (digest, slot, status, window_start, cutoff, created_at, finished_at, \
                 planning, plan_cursor) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, 0) on conflict (digest, slot) do nothing returning id",
            )
            .bind(plan.digest.as_str()).bind(plan.slot).bind(status).bind(plan.window_start)
            .bind(plan.cutoff).bind(plan.now).bind(finished_at).bind(!skip)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((run_id,)) = created else {
                let (run_id, status): (i64, RunStatus) =
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
                    "insert into run_articles (run_id, position, article_id, url, title, summary, body, author, tags, \
                     published_at, image_url, summary_text, html) \
                     values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(run_id).bind(position as i32).bind(a.article_id).bind(&a.url).bind(&a.title)
                .bind(&a.summary).bind(&a.body).bind(&a.author)
                .bind(serde_json::to_string(&a.tags)?).bind(Timestamp::from(a.published_at))
                .bind(&a.image_url).bind(&a.summary_text).bind(a.html)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(PlanOutcome::Planned { run_id, deliveries: 0 })
        })
    }

    /// Plans the next chunk of `run`'s ledger in one transaction: one
    /// pending delivery for each of the next `limit` confirmed subscribers
    /// of its digest after the run's cursor (in subscriber id order), and
    /// the cursor moved past them. A crash between two chunks leaves the
    /// cursor at the last one committed, so planning resumes there: no
    /// reader planned twice (the ledger's unique (run, subscriber) key
    /// guards as well), none skipped. One planner at a time per run: the
    /// run's row is locked on Postgres (replicas planning the same run take
    /// turns, each reading the cursor the other left), and SQLite has one
    /// writer. The chunk that finds fewer than `limit` readers ends the
    /// planning; a run left with no delivery at all is finished then.
    pub async fn plan_chunk(&self, run_id: i64, limit: u32, now: Timestamp) -> Result<PlanChunk> {
        let lock = match self {
            Store::Postgres(_) => " for update",
            Store::Sqlite(_) => "",
        };
        let limit = i64::from(limit.max(1));
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let run: Option<(String, i64, bool)> = sqlx::query_as(&format!(
                "select digest, plan_cursor, planning from digest_runs where id = $1{lock}"
            ))
            .bind(run_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((digest, cursor, true)) = run else {
                tx.rollback().await?;
                return Ok(PlanChunk::Over);
            };
            // The chunk's last reader, found first so that the insert below
            // reads a range of ids (the same rows, or fewer if one left
            // meanwhile). Eligibility is the same as the claims check:
            // confirmed, subscribed to the digest.
            let (last, found): (Option<i64>, i64) = sqlx::query_as(
                "select max(c.subscriber_id), count(*) from (select d.subscriber_id from subscriptions d \
                 join subscribers s on s.id = d.subscriber_id \
                 where d.digest = $1 and d.subscriber_id > $2 and s.status = 'confirmed' \
                 order by d.subscriber_id limit $3) c",
            )
            .bind(&digest).bind(cursor).bind(limit)
            .fetch_one(&mut *tx)
            .await?;
            let added = match last {
                Some(last) => sqlx::query(
                    "insert into deliveries (run_id, subscriber_id, status, attempts, next_attempt_at) \
                     select $1, s.id, 'pending', 0, $3 from subscriptions d \
                     join subscribers s on s.id = d.subscriber_id \
                     where d.digest = $2 and d.subscriber_id > $4 and d.subscriber_id <= $5 \
                     and s.status = 'confirmed' \
                     on conflict do nothing",
                )
                .bind(run_id).bind(&digest).bind(now).bind(cursor).bind(last)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
                None => 0,
            };
            let done = found < limit;
            sqlx::query("update digest_runs set plan_cursor = $2, planning = $3 where id = $1")
                .bind(run_id).bind(last.unwrap_or(cursor)).bind(!done)
                .execute(&mut *tx)
                .await?;
            if done {
                sqlx::query(
                    "update digest_runs set status = 'finished', finished_at = $2 \
                     where id = $1 and status = 'sending' \
                     and not exists (select 1 from deliveries where run_id = $1)",
                )
                .bind(run_id).bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(if done { PlanChunk::Last(added) } else { PlanChunk::More(added) })
        })
    }

    /// How many readers a run still planning has yet to be planned for (0
    /// once it is planned): what `send` shows as still to come.
    pub async fn readers_to_plan(&self, run_id: i64) -> Result<i64> {
        let sql = "select count(*) from digest_runs r join subscriptions d on d.digest = r.digest \
                   join subscribers s on s.id = d.subscriber_id \
                   where r.id = $1 and r.planning and d.subscriber_id > r.plan_cursor and s.status = 'confirmed'";
        on_pool!(self, pool => {
            let (n,): (i64,) = sqlx::query_as(sql).bind(run_id).fetch_one(pool).await?;
            Ok(n)
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
        let sql = "select id, digest, slot, status, window_start, cutoff, created_at, finished_at, planning \
                   from digest_runs where id = $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(run_id).fetch_optional(pool).await?))
    }

    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<Run>> {
        let sql = "select id, digest, slot, status, window_start, cutoff, created_at, finished_at, planning \
                   from digest_runs order by id desc limit $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(limit).fetch_all(pool).await?))
    }

    /// Runs that still have deliveries to make, of one digest or all.
    pub async fn unfinished_runs(&self, digest: Option<&DigestName>) -> Result<Vec<Run>> {
        let base = "select id, digest, slot, status, window_start, cutoff, created_at, finished_at, planning \
                    from digest_runs where status = 'sending'";
        on_pool!(self, pool => Ok(match digest {
            Some(d) => sqlx::query_as(&format!("{base} and digest = $1 order by id"))
                .bind(d.as_str()).fetch_all(pool).await?,
            None => sqlx::query_as(&format!("{base} order by id")).fetch_all(pool).await?,
        }))
    }

    pub async fn run_articles(&self, run_id: i64) -> Result<Vec<RunArticle>> {
        let sql = "select article_id, url, title, summary, body, author, tags, published_at, \
                   image_url, summary_text, html from run_articles where run_id = $1 order by position";
        on_pool!(self, pool => {
            let rows: Vec<RunArticleRow> = sqlx::query_as(sql).bind(run_id).fetch_all(pool).await?;
            Ok(rows.into_iter().map(RunArticle::from).collect())
        })
    }

    /// Marks a run finished when it is planned and none of its deliveries
    /// is pending or sending.
    pub async fn finish_run_if_done(&self, run_id: i64, now: Timestamp) -> Result<bool> {
        let sql = "update digest_runs set status = 'finished', finished_at = $2 \
                   where id = $1 and status = 'sending' and not planning and not exists \
                   (select 1 from deliveries where run_id = $1 and status in ('pending', 'sending'))";
        on_pool!(self, pool => {
            let done = sqlx::query(sql).bind(run_id).bind(now).execute(pool).await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Past runs that sent something, newest first (for the archive).
    pub async fn sent_runs(&self, digests: &[String], limit: i64) -> Result<Vec<Run>> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "select id, digest, slot, status, window_start, cutoff, created_at, finished_at, planning \
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
}
