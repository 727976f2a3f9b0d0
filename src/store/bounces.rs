//! Bounces and complaints: each report recorded once per delivery and
//! kind, and the reader's state it leads to (bounced after `hard_limit`
//! hard bounces or `soft_limit` soft-bounced digests in a row,
//! unsubscribed at a complaint); the shared secrets of the return path.

use anyhow::Result;
use sqlx::FromRow;

use super::backend::{BeginWrite, Store};
use super::time::Timestamp;
use crate::domain::{BounceKind, BounceSource, SubscriberStatus, new_token};

/// One report about one delivery to one reader.
#[derive(Debug, Clone, Copy)]
pub struct BounceReport<'a> {
    pub subscriber_id: i64,
    /// `None`: the confirmation email, or a report that names no run.
    pub run_id: Option<i64>,
    pub kind: BounceKind,
    pub source: BounceSource,
    /// The status and diagnostic, or the provider's words.
    pub reason: &'a str,
    pub received_at: Timestamp,
}

/// How many bounces make a reader `bounced`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BounceLimits {
    /// Hard bounces.
    pub hard: u32,
    /// Digests in a row that soft-bounced.
    pub soft: u32,
}

/// What recording a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceOutcome {
    /// The same delivery was reported with this kind before: it counts once.
    Duplicate,
    Recorded {
        /// The reader's state now.
        status: SubscriberStatus,
        /// Whether this report changed it (to bounced or unsubscribed).
        changed: bool,
    },
}

/// A recorded report, as `bounces` lists them.
#[derive(Debug, Clone, FromRow)]
pub struct BounceRecord {
    pub subscriber_id: i64,
    pub run_id: Option<i64>,
    pub kind: BounceKind,
    pub source: BounceSource,
    pub reason: String,
    pub received_at: Timestamp,
}

/// A run's bounces and complaints (distinct readers of each kind).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunBounces {
    pub hard: i64,
    pub soft: i64,
    pub complaints: i64,
}

impl RunBounces {
    /// Readers whose digest bounced, hard or soft.
    pub fn bounced(&self) -> i64 {
        self.hard + self.soft
    }
}

impl Store {
    // -- bounces ------------------------------------------------------------

    /// Records `report` and applies it to the reader, in one transaction.
    pub async fn record_bounce(
        &self,
        report: &BounceReport<'_>,
        limits: BounceLimits,
    ) -> Result<BounceOutcome> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let inserted: Option<(i64,)> = sqlx::query_as(
                "insert into bounces (subscriber_id, run_id, kind, source, reason, received_at) \
                 values ($1, $2, $3, $4, $5, $6) on conflict do nothing returning id",
            )
            .bind(report.subscriber_id).bind(report.run_id).bind(report.kind)
            .bind(report.source).bind(report.reason).bind(report.received_at)
            .fetch_optional(&mut *tx)
            .await?;
            if inserted.is_none() {
                tx.rollback().await?;
                return Ok(BounceOutcome::Duplicate);
            }
            let (status, mut hard, mut soft, mut soft_run): (SubscriberStatus, i32, i32, Option<i64>) =
                sqlx::query_as(
                    "select status, hard_bounces, soft_bounces, soft_bounce_run from subscribers where id = $1",
                )
                .bind(report.subscriber_id)
                .fetch_one(&mut *tx)
                .await?;
            let active = matches!(status, SubscriberStatus::Confirmed | SubscriberStatus::Pending);
            let mut next = status;
            match report.kind {
                BounceKind::Complaint => {
                    if active {
                        next = SubscriberStatus::Unsubscribed;
                    }
                }
                BounceKind::Hard => {
                    hard += 1;
                    if active && hard as u32 >= limits.hard {
                        next = SubscriberStatus::Bounced;
                    }
                }
                BounceKind::Soft => {
                    match (report.run_id, soft_run) {
                        // A late report of a digest before the latest one
                        // that soft-bounced: recorded, not counted again.
                        (Some(run), Some(last)) if run <= last => {}
                        (Some(run), Some(last)) => {
                            // A digest delivered between the two, with no
                            // bounce of its own, ends the series.
                            let (between,): (i64,) = sqlx::query_as(
                                "select count(*) from deliveries d where d.subscriber_id = $1 \
                                 and d.status = 'sent' and d.run_id > $2 and d.run_id < $3 \
                                 and not exists (select 1 from bounces b where b.subscriber_id = d.subscriber_id \
                                 and b.run_id = d.run_id)",
                            )
                            .bind(report.subscriber_id).bind(last).bind(run)
                            .fetch_one(&mut *tx)
                            .await?;
                            soft = if between > 0 { 1 } else { soft + 1 };
                            soft_run = Some(run);
                        }
                        (Some(run), None) => {
                            soft += 1;
                            soft_run = Some(run);
                        }
                        (None, _) => soft += 1,
                    }
                    if active && soft as u32 >= limits.soft {
                        next = SubscriberStatus::Bounced;
                    }
                }
            }
            sqlx::query(
                "update subscribers set status = $2, hard_bounces = $3, soft_bounces = $4, \
                 soft_bounce_run = $5, updated_at = $6 where id = $1",
            )
            .bind(report.subscriber_id).bind(next).bind(hard).bind(soft).bind(soft_run)
            .bind(report.received_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(BounceOutcome::Recorded { status: next, changed: next != status })
        })
    }

    /// The latest run whose digest was delivered to this reader: what a
    /// report that names no delivery (a webhook's) is counted against.
    pub async fn latest_sent_run(&self, subscriber_id: i64) -> Result<Option<i64>> {
        let sql = "select max(run_id) from deliveries where subscriber_id = $1 and status = 'sent'";
        on_pool!(self, pool => {
            let (run,): (Option<i64>,) = sqlx::query_as(sql).bind(subscriber_id).fetch_one(pool).await?;
            Ok(run)
        })
    }

    /// A reader's address by id.
    pub async fn subscriber_email(&self, subscriber_id: i64) -> Result<Option<String>> {
        let sql = "select email from subscribers where id = $1";
        on_pool!(self, pool => {
            let row: Option<(String,)> = sqlx::query_as(sql).bind(subscriber_id).fetch_optional(pool).await?;
            Ok(row.map(|(e,)| e))
        })
    }

    /// The reports recorded for a reader, oldest first.
    pub async fn bounces_of(&self, subscriber_id: i64) -> Result<Vec<BounceRecord>> {
        let sql = "select subscriber_id, run_id, kind, source, reason, received_at from bounces \
                   where subscriber_id = $1 order by id";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(subscriber_id).fetch_all(pool).await?))
    }

    /// Each run's bounces and complaints: readers counted once a kind.
    pub async fn run_bounces(&self, run_id: i64) -> Result<RunBounces> {
        let sql = "select kind, count(distinct subscriber_id) from bounces where run_id = $1 group by kind";
        on_pool!(self, pool => {
            let rows: Vec<(BounceKind, i64)> = sqlx::query_as(sql).bind(run_id).fetch_all(pool).await?;
            let mut counts = RunBounces::default();
            for (kind, n) in rows {
                match kind {
                    BounceKind::Hard => counts.hard = n,
                    BounceKind::Soft => counts.soft = n,
                    BounceKind::Complaint => counts.complaints = n,
                }
            }
            Ok(counts)
        })
    }

    /// The secret called `name`, made (256 random bits) on first use and
    /// shared by every process of the store from then on.
    pub async fn shared_secret(&self, name: &str, now: Timestamp) -> Result<String> {
        on_pool!(self, pool => {
            sqlx::query("insert into secrets (name, value, created_at) values ($1, $2, $3) on conflict do nothing")
                .bind(name).bind(new_token()).bind(now)
                .execute(pool)
                .await?;
            let (value,): (String,) = sqlx::query_as("select value from secrets where name = $1")
                .bind(name)
                .fetch_one(pool)
                .await?;
            Ok(value)
        })
    }
}
