//! Ledger retention: the rows of finished runs older than `[delivery]
//! keep_ledger` are folded into their run's counts (`run_counts`) and
//! deleted, a batch per short transaction, so the ledger holds the recent
//! runs only and `status` still shows every run's counts.

use anyhow::Result;
use sqlx::FromRow;

use super::backend::{BeginWrite, Store};
use super::time::Timestamp;
use crate::domain::DeliveryStatus;

/// What a fold did, or (dry run) would do.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FoldReport {
    /// Runs with ledger rows folded.
    pub runs: u64,
    /// Ledger rows deleted (and counted in their run's counts).
    pub rows: u64,
}

/// A run whose ledger may be folded, with its rows left in the ledger.
#[derive(Debug, Clone, FromRow)]
pub struct FoldableRun {
    pub id: i64,
    pub digest: String,
    pub finished_at: Timestamp,
    #[sqlx(rename = "ledger_rows")]
    pub rows: i64,
}

/// The finished runs, finished before `$1`, that still have ledger rows.
/// (The `exists` reads one entry of the ledger's (run_id, id) index per run.)
const FOLDABLE: &str = "select r.id from digest_runs r where r.status = 'finished' \
    and r.finished_at < $1 and exists (select 1 from deliveries d where d.run_id = r.id) \
    order by r.id";

impl Store {
    /// Folds the ledger rows of every run finished before `before`: each
    /// batch of at most `batch` rows is deleted and added to its run's
    /// counts in one transaction, so a claim or an outcome write waits for
    /// one batch at most, and a fold interrupted between batches leaves
    /// the counts exact. Only final rows (sent, failed, skipped) of runs
    /// still finished are taken: `gazette retry` reopening a run stops its
    /// fold. Processes folding at once take disjoint rows (on Postgres
    /// `for update skip locked`; SQLite has one writer), and a row is
    /// counted by the transaction that deleted it, so nothing is counted
    /// twice. `stop` is checked between batches.
    pub async fn fold_ledger(
        &self,
        before: Timestamp,
        batch: u32,
        now: Timestamp,
        stop: &(dyn Fn() -> bool + Sync),
    ) -> Result<FoldReport> {
        let runs: Vec<(i64,)> =
            on_pool!(self, pool => sqlx::query_as(FOLDABLE).bind(before).fetch_all(pool).await?);
        let mut report = FoldReport::default();
        for (run_id,) in runs {
            let mut folded_any = false;
            loop {
                if stop() {
                    return Ok(report);
                }
                let n = self.fold_batch(run_id, batch, now).await?;
                if n == 0 {
                    break;
                }
                folded_any = true;
                report.rows += n;
            }
            report.runs += u64::from(folded_any);
        }
        Ok(report)
    }

    /// What [`Store::fold_ledger`] would fold: the runs finished before
    /// `before` with rows in the ledger, and how many each has.
    pub async fn foldable_runs(&self, before: Timestamp) -> Result<Vec<FoldableRun>> {
        let sql = "select r.id, r.digest, r.finished_at, \
                   (select count(*) from deliveries d where d.run_id = r.id) as ledger_rows \
                   from digest_runs r where r.status = 'finished' and r.finished_at < $1 \
                   and exists (select 1 from deliveries d where d.run_id = r.id) order by r.id";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(before).fetch_all(pool).await?))
    }

    /// Folds up to `batch` final rows of `run_id`, if the run is finished;
    /// returns how many.
    async fn fold_batch(&self, run_id: i64, batch: u32, now: Timestamp) -> Result<u64> {
        const ROWS: &str = "select d.id from deliveries d where d.run_id = $1 \
            and d.status in ('sent', 'failed', 'skipped') \
            and exists (select 1 from digest_runs r where r.id = $1 and r.status = 'finished') \
            order by d.id limit $2";
        const ADD: &str = "insert into run_counts (run_id, sent, failed, skipped, folded_at) \
            values ($1, $2, $3, $4, $5) on conflict (run_id) do update set \
            sent = run_counts.sent + excluded.sent, failed = run_counts.failed + excluded.failed, \
            skipped = run_counts.skipped + excluded.skipped, folded_at = excluded.folded_at";
        let delete = match self {
            Store::Postgres(_) => format!(
                "delete from deliveries where id = any(array({ROWS} for update of d skip locked)) \
                 returning status"
            ),
            Store::Sqlite(_) => {
                format!("delete from deliveries where id in ({ROWS}) returning status")
            }
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let gone: Vec<(DeliveryStatus,)> = sqlx::query_as(&delete)
                .bind(run_id).bind(i64::from(batch))
                .fetch_all(&mut *tx)
                .await?;
            if gone.is_empty() {
                tx.rollback().await?;
                return Ok(0);
            }
            let count = |status| gone.iter().filter(|(s,)| *s == status).count() as i64;
            sqlx::query(ADD)
                .bind(run_id)
                .bind(count(DeliveryStatus::Sent))
                .bind(count(DeliveryStatus::Failed))
                .bind(count(DeliveryStatus::Skipped))
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(gone.len() as u64)
        })
    }

    /// When the ledger of `run_id` was last folded, if it was.
    pub async fn folded_at(&self, run_id: i64) -> Result<Option<Timestamp>> {
        let sql = "select folded_at from run_counts where run_id = $1";
        on_pool!(self, pool => {
            let row: Option<(Timestamp,)> = sqlx::query_as(sql).bind(run_id).fetch_optional(pool).await?;
            Ok(row.map(|(t,)| t))
        })
    }
}
