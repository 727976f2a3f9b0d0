//! Confirmation emails waiting for the relay: claimed with a lease (by one
//! process at a time), then recorded as sent, to be retried, or failed.

use anyhow::Result;
use sqlx::{FromRow, QueryBuilder};

use super::backend::Store;
use super::time::Timestamp;

/// A confirmation email to send, with what it needs.
#[derive(Debug, Clone, FromRow)]
pub struct ConfirmationEmail {
    /// The confirmation's key: the hash of its link's token.
    pub token_hash: String,
    /// The link's token, in clear until the email is sent.
    pub link_token: String,
    pub subscriber_id: i64,
    pub email: String,
    pub name: Option<String>,
    /// The digests asked for, as JSON.
    pub digests: String,
    pub attempts: i32,
}

impl Store {
    /// Claims up to `limit` confirmation emails that are due, until
    /// `lease_until`; on Postgres, replicas claim disjoint rows.
    pub async fn claim_confirmation_emails(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> Result<Vec<ConfirmationEmail>> {
        let due = "select token_hash from confirmations where mail_status = 'pending' \
                   and next_attempt_at <= $1 and (lease_until is null or lease_until < $1) \
                   order by next_attempt_at limit $3";
        let lock = match self {
            Store::Postgres(_) => " for update skip locked",
            Store::Sqlite(_) => "",
        };
        let claim = format!(
            "update confirmations set lease_until = $2 where token_hash in ({due}{lock}) returning token_hash"
        );
        let claimed: Vec<(String,)> = on_pool!(self, pool => sqlx::query_as(&claim)
            .bind(now).bind(lease_until).bind(i64::from(limit))
            .fetch_all(pool).await?);
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        on_pool!(self, pool => {
            let mut q = QueryBuilder::new(
                "select c.token_hash, coalesce(c.link_token, '') as link_token, c.subscriber_id, \
                 s.email, coalesce(c.name, s.name) as name, c.digests, c.attempts from confirmations c \
                 join subscribers s on s.id = c.subscriber_id where c.token_hash in (",
            );
            let mut list = q.separated(", ");
            for (hash,) in &claimed {
                list.push_bind(hash);
            }
            q.push(")");
            Ok(q.build_query_as().fetch_all(pool).await?)
        })
    }

    /// The relay took the email: its token is no longer kept in clear.
    pub async fn confirmation_email_sent(&self, token_hash: &str) -> Result<()> {
        let sql = "update confirmations set mail_status = 'sent', link_token = null, \
                   lease_until = null, attempts = attempts + 1 where token_hash = $1";
        on_pool!(self, pool => {
            sqlx::query(sql).bind(token_hash).execute(pool).await?;
            Ok(())
        })
    }

    /// A transient failure: try again at `next_attempt_at`.
    pub async fn confirmation_email_retry(
        &self,
        token_hash: &str,
        next_attempt_at: Timestamp,
        error: &str,
    ) -> Result<()> {
        let sql = "update confirmations set attempts = attempts + 1, next_attempt_at = $2, \
                   lease_until = null, last_error = $3 where token_hash = $1";
        on_pool!(self, pool => {
            sqlx::query(sql).bind(token_hash).bind(next_attempt_at).bind(error).execute(pool).await?;
            Ok(())
        })
    }

    /// The relay refused the email for good (or its attempts ran out).
    pub async fn confirmation_email_failed(&self, token_hash: &str, error: &str) -> Result<()> {
        let sql = "update confirmations set mail_status = 'failed', link_token = null, \
                   lease_until = null, attempts = attempts + 1, last_error = $2 where token_hash = $1";
        on_pool!(self, pool => {
            sqlx::query(sql).bind(token_hash).bind(error).execute(pool).await?;
            Ok(())
        })
    }

    /// When the next confirmation email is due (or its lease runs out).
    pub async fn next_confirmation_email_at(&self) -> Result<Option<Timestamp>> {
        let sql = "select min(coalesce(lease_until, next_attempt_at)) from confirmations \
                   where mail_status = 'pending'";
        on_pool!(self, pool => {
            let (at,): (Option<Timestamp>,) = sqlx::query_as(sql).fetch_one(pool).await?;
            Ok(at)
        })
    }

    /// How many confirmation emails wait to be sent (or retried).
    pub async fn pending_confirmation_emails(&self) -> Result<i64> {
        let sql = "select count(*) from confirmations where mail_status = 'pending'";
        on_pool!(self, pool => {
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(pool).await?;
            Ok(n)
        })
    }
}
