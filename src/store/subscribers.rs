//! Subscribers as the operator manages them: imports, additions,
//! removals, lists.

use anyhow::{Result, bail};
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use sqlx::FromRow;

use super::backend::{BeginWrite, Store};
use super::time::Timestamp;
use crate::domain::{DigestName, EmailAddress, SubscriberStatus, new_token};

/// What a new subscriber's `legacy_token_hash` holds: unique, and matching
/// no token (their links are signed).
pub(super) fn no_legacy_token() -> String {
    format!("none:{}", new_token())
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
    pub status: SubscriberStatus,
    pub created_at: Timestamp,
}

/// What `update_subscriber` changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscriberChange<'a> {
    pub name: Option<Option<&'a str>>,
    pub digests: Option<&'a [DigestName]>,
    pub status: Option<SubscriberStatus>,
}

/// A subscriber with one of their digests (none: a row of its own).
#[derive(Debug, FromRow)]
struct SubscriberDigest {
    id: i64,
    email: String,
    name: Option<String>,
    status: SubscriberStatus,
    created_at: Timestamp,
    digest: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ImportCounts {
    pub added: u64,
    pub updated: u64,
    /// Existing subscribers left unsubscribed or bounced: an import never
    /// re-subscribes someone who left.
    pub kept_inactive: u64,
}

impl Store {
    // -- subscribers --------------------------------------------------------

    /// Adds or updates subscribers, all in one transaction, as confirmed
    /// (an operator vouches for them). Existing subscribers keep their
    /// token; unsubscribed or bounced ones stay so.
    pub async fn upsert_subscribers(
        &self,
        subs: &[NewSubscriber],
        now: Timestamp,
    ) -> Result<ImportCounts> {
        self.upsert_subscribers_reporting(subs, now, &|_| {}).await
    }

    /// [`Store::upsert_subscribers`], calling `progress` with the number of
    /// subscribers staged so far (before the commit). A file too large to
    /// hold is streamed through [`Store::begin_subscriber_import`] instead.
    pub async fn upsert_subscribers_reporting(
        &self,
        subs: &[NewSubscriber],
        now: Timestamp,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<ImportCounts> {
        let mut digests: Vec<DigestName> = Vec::new();
        for d in subs.iter().flat_map(|s| &s.digests) {
            if !digests.contains(d) {
                digests.push(d.clone());
            }
        }
        let mut import = self.begin_subscriber_import(&digests).await?;
        for (i, s) in subs.iter().enumerate() {
            import.push(i as u64 + 1, s).await?;
            progress(import.staged());
        }
        import.finish(now, &mut |_| {}).await
    }

    /// Deletes a subscriber with their subscriptions and ledger rows (on
    /// Postgres neither has a foreign key to cascade from; the
    /// subscriptions are deleted after the subscriber, so that any added
    /// by a transaction the delete waited for go too). The ledger rows
    /// are found without reading the ledger through: on Postgres, by one
    /// look-up per run in the (run_id, subscriber_id) index, which the
    /// ledger has anyway (an index on subscriber_id alone would cost every
    /// planned row one more entry); on SQLite, whose ledger keeps its
    /// foreign key, through the index on subscriber_id that its cascade
    /// needs.
    pub async fn remove_subscriber(&self, email: &EmailAddress) -> Result<bool> {
        let ledger = match self {
            Store::Postgres(_) => {
                "delete from deliveries where subscriber_id = $1 \
                 and run_id = any(array(select id from digest_runs))"
            }
            Store::Sqlite(_) => "delete from deliveries where subscriber_id = $1",
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let removed: Option<(i64,)> =
                sqlx::query_as("delete from subscribers where email_key = $1 returning id")
                    .bind(email.key())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some((id,)) = removed {
                sqlx::query("delete from subscriptions where subscriber_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(ledger).bind(id).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(removed.is_some())
        })
    }

    /// Changes one subscriber, in one transaction: their name (`Some(None)`
    /// clears it), the digests they receive (replaced), their status.
    pub async fn update_subscriber(
        &self,
        subscriber_id: i64,
        change: &SubscriberChange<'_>,
        now: Timestamp,
    ) -> Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if let Some(name) = change.name {
                sqlx::query("update subscribers set name = $2, updated_at = $3 where id = $1")
                    .bind(subscriber_id).bind(name).bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(status) = change.status {
                // Confirming a reader again (after a bounce, say) starts
                // their bounce counts afresh.
                sqlx::query(
                    "update subscribers set status = $2, updated_at = $3, \
                     hard_bounces = case when $2 = 'confirmed' then 0 else hard_bounces end, \
                     soft_bounces = case when $2 = 'confirmed' then 0 else soft_bounces end, \
                     soft_bounce_run = case when $2 = 'confirmed' then null else soft_bounce_run end \
                     where id = $1",
                )
                    .bind(subscriber_id).bind(status).bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            if let Some(digests) = change.digests {
                // The subscriber's row is held first: a removal waits for
                // this transaction, and none is found if one came before.
                let held = sqlx::query("update subscribers set updated_at = $2 where id = $1")
                    .bind(subscriber_id).bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if held == 0 {
                    bail!("subscriber {subscriber_id} does not exist");
                }
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
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// How many subscribers there are of each status.
    pub async fn subscriber_counts(&self) -> Result<Vec<(SubscriberStatus, i64)>> {
        let sql = "select status, count(*) from subscribers group by status order by status";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).fetch_all(pool).await?))
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
        let sql =
            "select id, email, name, status, created_at from subscribers where email_key = $1";
        on_pool!(self, pool => Ok(sqlx::query_as(sql).bind(email.key()).fetch_optional(pool).await?))
    }

    /// The first confirmed subscriber of a digest (a realistic preview).
    pub async fn first_subscriber_of(&self, digest: &DigestName) -> Result<Option<Subscriber>> {
        let sql = "select s.id, s.email, s.name, s.status, s.created_at \
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

    /// Streams subscribers in id order, optionally of one status, each
    /// with the digests they receive: one query, read as it comes, so
    /// memory stays flat however long the list.
    pub fn stream_subscribers<'a>(
        &'a self,
        status: Option<SubscriberStatus>,
    ) -> BoxStream<'a, Result<(Subscriber, Vec<String>)>> {
        const ALL: &str = "select s.id, s.email, s.name, s.status, s.created_at, d.digest \
            from subscribers s left join subscriptions d on d.subscriber_id = s.id \
            order by s.id, d.digest";
        const OF_STATUS: &str = "select s.id, s.email, s.name, s.status, s.created_at, d.digest \
            from subscribers s left join subscriptions d on d.subscriber_id = s.id \
            where s.status = $1 order by s.id, d.digest";
        let sql = if status.is_some() { OF_STATUS } else { ALL };
        let rows: BoxStream<'a, Result<SubscriberDigest>> = on_pool!(self, pool => {
            let mut q = sqlx::query_as::<_, SubscriberDigest>(sql);
            if let Some(s) = status {
                q = q.bind(s);
            }
            q.fetch(pool).map_err(anyhow::Error::from).boxed()
        });
        // Rows come ordered by subscriber: the rows of one make one item.
        futures_util::stream::unfold((rows, None), |(mut rows, carried)| async move {
            let first: SubscriberDigest = match carried {
                Some(row) => row,
                None => match rows.try_next().await {
                    Ok(Some(row)) => row,
                    Ok(None) => return None,
                    Err(e) => return Some((Err(e), (rows, None))),
                },
            };
            let mut digests: Vec<String> = first.digest.iter().cloned().collect();
            let mut next = None;
            loop {
                match rows.try_next().await {
                    Ok(Some(row)) if row.id == first.id => digests.extend(row.digest),
                    Ok(Some(row)) => {
                        next = Some(row);
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => return Some((Err(e), (rows, None))),
                }
            }
            let subscriber = Subscriber {
                id: first.id,
                email: first.email,
                name: first.name,
                status: first.status,
                created_at: first.created_at,
            };
            Some((Ok((subscriber, digests)), (rows, next)))
        })
        .boxed()
    }

    /// Streams the confirmed subscribers of a digest (for a dry run).
    pub fn stream_confirmed_subscribers<'a>(
        &'a self,
        digest: &'a DigestName,
    ) -> BoxStream<'a, Result<Subscriber>> {
        let sql = "select s.id, s.email, s.name, s.status, s.created_at \
                   from subscribers s join subscriptions d on d.subscriber_id = s.id \
                   where d.digest = $1 and s.status = 'confirmed' order by s.id";
        on_pool!(self, pool => sqlx::query_as::<_, Subscriber>(sql)
            .bind(digest.as_str())
            .fetch(pool)
            .map_err(anyhow::Error::from)
            .boxed())
    }
}
