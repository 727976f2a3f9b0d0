//! The delivery ledger: claiming due rows with a lease, recording
//! outcomes on a held connection, counts and re-queues.

use anyhow::Result;
use sqlx::{FromRow, QueryBuilder};

use super::backend::{BeginWrite, Store};
use super::time::Timestamp;
use crate::domain::{DeliveryStatus, SubscriberStatus};

#[derive(Debug, Clone, FromRow)]
pub struct Claimed {
    pub id: i64,
    pub run_id: i64,
    pub subscriber_id: i64,
    pub attempts: i32,
    pub email: String,
    pub name: Option<String>,
    /// `None`: the subscriber was removed after the run was planned.
    pub subscriber_status: Option<SubscriberStatus>,
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

/// A delivery not yet done: waiting for its turn or a retry, or sending.
#[derive(Debug, Clone, FromRow)]
pub struct OpenDelivery {
    pub email: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: Timestamp,
    pub last_error: Option<String>,
}

impl Store {
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
                              s.status as subscriber_status";
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
            let mut tx = pool.begin_write().await?;
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

    /// A run's counts: its rows in the ledger, plus those folded into its
    /// counts (`[delivery] keep_ledger`).
    pub async fn delivery_counts(&self, run_id: i64) -> Result<DeliveryCounts> {
        let sql = "select \
            coalesce(sum(case when status = 'pending' then 1 else 0 end), 0) as pending, \
            coalesce(sum(case when status = 'sending' then 1 else 0 end), 0) as sending, \
            cast(coalesce(sum(case when status = 'sent' then 1 else 0 end), 0) \
              + coalesce((select f.sent from run_counts f where f.run_id = $1), 0) as bigint) as sent, \
            cast(coalesce(sum(case when status = 'failed' then 1 else 0 end), 0) \
              + coalesce((select f.failed from run_counts f where f.run_id = $1), 0) as bigint) as failed, \
            cast(coalesce(sum(case when status = 'skipped' then 1 else 0 end), 0) \
              + coalesce((select f.skipped from run_counts f where f.run_id = $1), 0) as bigint) as skipped \
            from deliveries where run_id = $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(run_id).fetch_one(pool).await?))
    }

    /// The pending and sending deliveries of the unfinished runs (found
    /// through the runs, so the ledger's finished rows are not read).
    pub async fn open_delivery_counts(&self) -> Result<DeliveryCounts> {
        let sql = "select \
            coalesce(sum(case when d.status = 'pending' then 1 else 0 end), 0) as pending, \
            coalesce(sum(case when d.status = 'sending' then 1 else 0 end), 0) as sending, \
            0 as sent, 0 as failed, 0 as skipped \
            from digest_runs r join deliveries d on d.run_id = r.id where r.status = 'sending'";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).fetch_one(pool).await?))
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

    /// Up to `limit` of the run's open deliveries that have been tried
    /// (retries first), with when they are tried next and why.
    pub async fn tried_open_deliveries(
        &self,
        run_id: i64,
        limit: i64,
    ) -> Result<Vec<OpenDelivery>> {
        let sql = "select coalesce(s.email, '') as email, d.status, d.attempts, d.next_attempt_at, \
                   d.last_error from deliveries d left join subscribers s on s.id = d.subscriber_id \
                   where d.run_id = $1 and d.status in ('pending', 'sending') and d.attempts > 0 \
                   order by d.next_attempt_at, d.id limit $2";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(run_id).bind(limit).fetch_all(pool).await?))
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
        self.finish_deliveries(ids, DeliveryStatus::Sent, Some(now))
            .await
    }

    /// Records deliveries not sent because the subscriber left meanwhile.
    pub async fn mark_skipped(&mut self, ids: &[i64]) -> Result<()> {
        self.finish_deliveries(ids, DeliveryStatus::Skipped, None)
            .await
    }

    /// Returns claimed rows to pending without counting an attempt.
    pub async fn release(&mut self, ids: &[i64]) -> Result<()> {
        self.finish_deliveries(ids, DeliveryStatus::Pending, None)
            .await
    }

    async fn finish_deliveries(
        &mut self,
        ids: &[i64],
        status: DeliveryStatus,
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
        let open = if status == DeliveryStatus::Sent {
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

impl Store {
    /// Whether `run` was addressed to this subscriber (for the web view).
    /// Once the run's ledger is folded its rows are gone: then any reader
    /// who subscribed before the run was planned may read it.
    pub async fn was_addressed(&self, run_id: i64, subscriber_id: i64) -> Result<bool> {
        let sql = "select count(*) from deliveries where run_id = $1 and subscriber_id = $2 \
                   union all select count(*) from run_counts f \
                   join digest_runs r on r.id = f.run_id join subscribers s on s.id = $2 \
                   where f.run_id = $1 and s.created_at <= r.created_at";
        on_pool!(self, pool => {
            let found: Vec<(i64,)> = sqlx::query_as(sql).bind(run_id).bind(subscriber_id).fetch_all(pool).await?;
            Ok(found.iter().any(|(n,)| *n > 0))
        })
    }
}
