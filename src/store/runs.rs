//! Runs: planning a (digest, slot) with its articles and ledger in one
//! transaction, missed slots, and the runs' history.

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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanOutcome {
    /// A new run with its articles and one pending delivery per confirmed subscriber.
    Planned { run_id: i64, deliveries: u64 },
    /// Nothing new to send and the digest skips empty runs: no mail.
    Skipped { run_id: i64 },
    /// This slot was planned before (another tick, a restart, a replica).
    Exists { run_id: i64, status: RunStatus },
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
                "insert into digest_runs (digest, slot, status, window_start, cutoff, created_at, finished_at) \
                 values ($1, $2, $3, $4, $5, $6, $7) on conflict (digest, slot) do nothing returning id",
            )
            .bind(plan.digest.as_str()).bind(plan.slot).bind(status).bind(plan.window_start)
            .bind(plan.cutoff).bind(plan.now).bind(finished_at)
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
        let sql = "select article_id, url, title, summary, body, author, tags, published_at, \
                   image_url, summary_text, html from run_articles where run_id = $1 order by position";
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
}
