//! Readers by their links: subscribe requests and confirmations (double
//! opt-in), the reader a token belongs to, unsubscribing and preferences.

use anyhow::Result;
use sqlx::FromRow;

use super::backend::{BeginWrite, Store};
use super::subscribers::{SubscriberChange, no_legacy_token};
use super::time::Timestamp;
use crate::domain::{DigestName, EmailAddress, ReaderTokens, SubscriberStatus, sha256_hex};

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
    pub status: SubscriberStatus,
}

/// What the store keeps of a legacy token: its SHA-256.
fn legacy_token_hash(token: &str) -> String {
    format!("sha256:{}", sha256_hex(token))
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
                "insert into subscribers (email, email_key, status, legacy_token_hash, created_at, updated_at) \
                 values ($1, $2, 'pending', $3, $4, $4) on conflict (email_key) do nothing",
            )
            .bind(email.as_str()).bind(email.key()).bind(no_legacy_token()).bind(now)
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
                "select id, email, name, status from subscribers where id = $1",
            )
            .bind(subscriber_id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Some(reader))
        })
    }

    /// The reader a link's token names: a token signed by `tokens`, or
    /// the random token of an email sent before links were signed (found
    /// by its hash).
    pub async fn reader_by_token(
        &self,
        tokens: &ReaderTokens,
        token: &str,
    ) -> Result<Option<Reader>> {
        const COLUMNS: &str = "select id, email, name, status from subscribers";
        if let Some(id) = tokens.verify(token) {
            let sql = format!("{COLUMNS} where id = $1");
            return on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?));
        }
        if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let sql = format!("{COLUMNS} where legacy_token_hash = $1");
        let hash = legacy_token_hash(token);
        on_pool!(self, pool => Ok(sqlx::query_as(&sql).bind(&hash).fetch_optional(pool).await?))
    }

    /// Replaces the random tokens kept in clear from before links were
    /// signed with their hashes, a batch at a time; run at start-up, and
    /// a no-op once done.
    pub async fn hash_legacy_tokens(&self) -> Result<u64> {
        let pending = "select id, legacy_token_hash from subscribers \
                       where legacy_token_hash not like 'sha256:%' \
                       and legacy_token_hash not like 'none:%' order by id limit 500";
        let mut hashed = 0;
        loop {
            let done = on_pool!(self, pool => {
                let mut tx = pool.begin_write().await?;
                let rows: Vec<(i64, String)> = sqlx::query_as(pending).fetch_all(&mut *tx).await?;
                for (id, token) in &rows {
                    sqlx::query("update subscribers set legacy_token_hash = $2 where id = $1")
                        .bind(id).bind(legacy_token_hash(token))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                rows.len() as u64
            });
            if done == 0 {
                return Ok(hashed);
            }
            hashed += done;
        }
    }

    /// Records the fingerprint of the key that signs readers' links, or
    /// checks it against the one recorded: links signed with another key
    /// would open nothing.
    pub async fn check_token_key(&self, tokens: &ReaderTokens, now: Timestamp) -> Result<()> {
        let fingerprint = tokens.fingerprint();
        let recorded: String = on_pool!(self, pool => {
            sqlx::query(
                "insert into token_keys (name, fingerprint, created_at) values ('readers', $1, $2) \
                 on conflict (name) do nothing",
            )
            .bind(&fingerprint).bind(now)
            .execute(pool)
            .await?;
            let (recorded,): (String,) =
                sqlx::query_as("select fingerprint from token_keys where name = 'readers'")
                    .fetch_one(pool)
                    .await?;
            recorded
        });
        anyhow::ensure!(
            recorded == fingerprint,
            "this database's reader links (unsubscribe, preferences) are signed with another key \
             (fingerprint {recorded}, this process has {fingerprint}): give every process the same \
             `web.token_key` (or `web.token_key_file`); a new key would break every link already mailed"
        );
        Ok(())
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
            SubscriberStatus::Unsubscribed
        } else {
            SubscriberStatus::Confirmed
        };
        let change = SubscriberChange {
            name: Some(name),
            digests: Some(digests),
            status: Some(status),
        };
        self.update_subscriber(subscriber_id, &change, now).await
    }
}
