//! Readers by their links: subscribe requests and confirmations (double
//! opt-in), the reader a token belongs to, unsubscribing and preferences.

use anyhow::Result;
use sqlx::FromRow;

use super::{BeginWrite, Store, Timestamp};
use crate::domain::{DigestName, EmailAddress, new_token};

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
    /// The confirmation link's token, kept in clear until its email is sent.
    pub token: &'a str,
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
    /// was created after `recent`) holding the digests and name asked for.
    /// Nothing else changes until the link is followed: whoever types an
    /// address cannot rename its subscriber.
    pub async fn request_subscription(
        &self,
        req: &SubscriptionRequest<'_>,
    ) -> Result<SubscribeOutcome> {
        let SubscriptionRequest {
            email,
            name,
            digests,
            token,
            token_hash,
            now,
            expires,
            recent,
        } = *req;
        let digests =
            serde_json::to_string(&digests.iter().map(DigestName::as_str).collect::<Vec<_>>())?;
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            // Writing first takes SQLite's write lock before any read.
            sqlx::query(
                "insert into subscribers (email, email_key, status, unsubscribe_token, created_at, updated_at) \
                 values ($1, $2, 'pending', $3, $4, $4) on conflict (email_key) do nothing",
            )
            .bind(email.as_str()).bind(email.key()).bind(new_token()).bind(now)
            .execute(&mut *tx)
            .await?;
            let (subscriber_id,): (i64,) =
                sqlx::query_as("select id from subscribers where email_key = $1")
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
            sqlx::query(
                "insert into confirmations (token_hash, subscriber_id, digests, name, created_at, expires_at, \
                 mail_status, link_token, next_attempt_at) values ($1, $2, $3, $4, $5, $6, 'pending', $7, $5)",
            )
            .bind(token_hash).bind(subscriber_id).bind(&digests).bind(name).bind(now).bind(expires).bind(token)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(SubscribeOutcome::Confirm { subscriber_id })
        })
    }

    /// The address a confirmation link is for, while the link works
    /// (unused, not expired). Changes nothing.
    pub async fn pending_confirmation(
        &self,
        token_hash: &str,
        now: Timestamp,
    ) -> Result<Option<String>> {
        let sql = "select s.email from confirmations c join subscribers s on s.id = c.subscriber_id \
                   where c.token_hash = $1 and c.used_at is null and c.expires_at > $2";
        let row: Option<(String,)> = on_pool!(self, pool => {
            sqlx::query_as(sql).bind(token_hash).bind(now).fetch_optional(pool).await?
        });
        Ok(row.map(|(email,)| email))
    }

    /// Follows a confirmation link: single use, before it expires. The
    /// subscriber becomes confirmed with the digests and name asked for
    /// in that request.
    pub async fn confirm(&self, token_hash: &str, now: Timestamp) -> Result<Option<Reader>> {
        on_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let used: Option<(i64, String, Option<String>)> = sqlx::query_as(
                "update confirmations set used_at = $2 \
                 where token_hash = $1 and used_at is null and expires_at > $2 \
                 returning subscriber_id, digests, name",
            )
            .bind(token_hash).bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((subscriber_id, digests, name)) = used else {
                tx.rollback().await?;
                return Ok(None);
            };
            // A request without a name keeps the one already stored.
            sqlx::query(
                "update subscribers set status = 'confirmed', name = coalesce($3, name), updated_at = $2 \
                 where id = $1",
            )
                .bind(subscriber_id).bind(now).bind(name)
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
            let mut tx = pool.begin_write().await?;
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
}
