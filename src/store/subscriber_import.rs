//! Subscriber imports, streamed: rows are staged as they come, a batch at
//! a time (COPY on Postgres, multi-row inserts on SQLite), into a temporary
//! table of the import's own transaction, then merged into the subscribers
//! by a few set-wise statements, and committed all at once. Memory stays
//! flat in the file's size; the database does the sorting out.

use anyhow::{Result, bail};
use futures_util::TryStreamExt;
use sqlx::{FromRow, QueryBuilder};

use super::backend::{BeginWrite, Store};
use super::subscribers::{ImportCounts, NewSubscriber};
use super::time::Timestamp;
use crate::domain::{DigestName, new_token};

/// Rows staged per statement.
const BATCH: usize = 5_000;
/// Rows per SQLite insert: five parameters each, under its limit of 32,766.
const SQLITE_ROWS: usize = 1_000;

/// An import under way: rows staged so far, in a transaction of its own.
/// Dropped without [`SubscriberImport::finish`], it rolls back: nothing
/// is imported.
pub struct SubscriberImport {
    tx: ImportTx,
    /// The digests a row may name; a row's `digests` column is one flag
    /// (`0`/`1`) per digest here, in this order.
    digests: Vec<DigestName>,
    batch: Vec<Staged>,
    staged: u64,
}

enum ImportTx {
    Postgres(sqlx::Transaction<'static, sqlx::Postgres>),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

struct Staged {
    line: u64,
    email: String,
    key: String,
    name: Option<String>,
    flags: String,
}

#[derive(FromRow)]
struct Repeated {
    line: i64,
    email: String,
    first_line: i64,
}

#[derive(FromRow)]
struct Tally {
    total: i64,
    inactive: i64,
    added: i64,
}

/// The rows of the file whose address is on an earlier line too.
const REPEATED: &str =
    "exists (select 1 from import_rows e where e.email_key = r.email_key and e.line < r.line)";

impl Store {
    /// Starts an import of subscribers to any of `digests`.
    pub async fn begin_subscriber_import(
        &self,
        digests: &[DigestName],
    ) -> Result<SubscriberImport> {
        // One flag per digest.
        let columns = "line bigint not null, email text not null, email_key text not null, \
                       name text, digests text not null";
        let tx = match self {
            Store::Postgres(pool) => {
                let mut tx = pool.begin_write().await?;
                sqlx::query(&format!(
                    "create temporary table import_rows ({columns}) on commit drop"
                ))
                .persistent(false)
                .execute(&mut *tx)
                .await?;
                ImportTx::Postgres(tx)
            }
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_write().await?;
                sqlx::query(&format!("create temporary table import_rows ({columns})"))
                    .execute(&mut *tx)
                    .await?;
                ImportTx::Sqlite(tx)
            }
        };
        Ok(SubscriberImport {
            tx,
            digests: digests.to_vec(),
            batch: Vec::with_capacity(BATCH),
            staged: 0,
        })
    }
}

/// Text for Postgres's COPY text format: backslash, tab and line ends escaped.
fn copy_text(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

impl SubscriberImport {
    /// Adds the row of `line`; rows are applied in the order given, as if
    /// one after the other.
    pub async fn push(&mut self, line: u64, s: &NewSubscriber) -> Result<()> {
        let mut flags = vec![b'0'; self.digests.len()];
        for d in &s.digests {
            let Some(i) = self.digests.iter().position(|k| k == d) else {
                bail!("line {line}: digest `{d}` is not among those of the import");
            };
            flags[i] = b'1';
        }
        self.batch.push(Staged {
            line,
            email: s.email.as_str().to_string(),
            key: s.email.key(),
            name: s.name.clone(),
            flags: String::from_utf8(flags).expect("ASCII flags"),
        });
        self.staged += 1;
        if self.batch.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// How many rows were given so far.
    pub fn staged(&self) -> u64 {
        self.staged
    }

    async fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        match &mut self.tx {
            ImportTx::Postgres(tx) => {
                let mut data = String::with_capacity(self.batch.len() * 64);
                for row in &self.batch {
                    data.push_str(&row.line.to_string());
                    data.push('\t');
                    copy_text(&mut data, &row.email);
                    data.push('\t');
                    copy_text(&mut data, &row.key);
                    data.push('\t');
                    match &row.name {
                        Some(name) => copy_text(&mut data, name),
                        None => data.push_str("\\N"),
                    }
                    data.push('\t');
                    data.push_str(&row.flags);
                    data.push('\n');
                }
                let mut copy = tx
                    .copy_in_raw(
                        "copy import_rows (line, email, email_key, name, digests) from stdin",
                    )
                    .await?;
                copy.send(data.into_bytes()).await?;
                copy.finish().await?;
            }
            ImportTx::Sqlite(tx) => {
                for chunk in self.batch.chunks(SQLITE_ROWS) {
                    let mut q = QueryBuilder::<sqlx::Sqlite>::new(
                        "insert into import_rows (line, email, email_key, name, digests) ",
                    );
                    q.push_values(chunk, |mut b, row| {
                        b.push_bind(row.line as i64)
                            .push_bind(&row.email)
                            .push_bind(&row.key)
                            .push_bind(&row.name)
                            .push_bind(&row.flags);
                    });
                    q.build().execute(&mut **tx).await?;
                }
            }
        }
        self.batch.clear();
        Ok(())
    }

    /// Applies the rows and commits: new addresses become confirmed
    /// subscribers (ids in file order); existing ones take the last name
    /// given (a row without a name keeps theirs), pending ones become
    /// confirmed, unsubscribed or bounced ones stay so; everyone gets the
    /// digests of all their rows added. `repeated` hears of each address
    /// on more than one line (`line L: ADDRESS is also on line F: …`).
    pub async fn finish(
        mut self,
        now: Timestamp,
        repeated: &mut (dyn FnMut(String) + Send),
    ) -> Result<ImportCounts> {
        self.flush().await?;
        let nonce = new_token();
        let digests = std::mem::take(&mut self.digests);
        macro_rules! merge {
            ($tx:expr, $persistent:expr, $analyze:expr) => {{
                let tx = $tx;
                // Looked up by address, in line order.
                sqlx::query("create index import_rows_key on import_rows (email_key, line)")
                    .persistent($persistent)
                    .execute(&mut **tx)
                    .await?;
                if $analyze {
                    sqlx::query("analyze import_rows").persistent(false).execute(&mut **tx).await?;
                }
                let repeated_sql = format!(
                    "select r.line, r.email, \
                     (select min(f.line) from import_rows f where f.email_key = r.email_key) as first_line \
                     from import_rows r where {REPEATED} order by r.line"
                );
                let mut lines = sqlx::query_as::<_, Repeated>(&repeated_sql)
                .persistent($persistent)
                .fetch(&mut **tx);
                while let Some(r) = lines.try_next().await? {
                    repeated(format!(
                        "line {}: {} is also on line {}: both lines are applied, in order",
                        r.line, r.email, r.first_line
                    ));
                }
                drop(lines);
                // What the rows do, counted before any is applied: a row of
                // an address that left is kept inactive; the first row of a
                // new address adds it; any other row updates.
                let tally: Tally = sqlx::query_as(&format!(
                    "select (select count(*) from import_rows) as total, \
                     (select count(*) from import_rows r join subscribers s on s.email_key = r.email_key \
                      where s.status in ('unsubscribed', 'bounced')) as inactive, \
                     (select count(*) from import_rows r where not {REPEATED} \
                      and not exists (select 1 from subscribers s where s.email_key = r.email_key)) as added"
                ))
                .persistent($persistent)
                .fetch_one(&mut **tx)
                .await?;
                // The last name given for each address.
                const LAST_NAME: &str = "(select n.name from import_rows n where n.email_key = {key} \
                                         and n.name is not null order by n.line desc limit 1)";
                sqlx::query(&format!(
                    "update subscribers set name = coalesce({}, name), updated_at = $1, \
                     status = case when status = 'pending' then 'confirmed' else status end \
                     where email_key in (select email_key from import_rows)",
                    LAST_NAME.replace("{key}", "subscribers.email_key")
                ))
                .persistent($persistent)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                // Neither token nor random: `none:` matches no link, and
                // the import's nonce with the line keeps each unique.
                sqlx::query(&format!(
                    "insert into subscribers (email, email_key, name, status, legacy_token_hash, \
                     created_at, updated_at) \
                     select r.email, r.email_key, {}, 'confirmed', 'none:' || $2 || '.' || r.line, $1, $1 \
                     from import_rows r where not {REPEATED} \
                     and not exists (select 1 from subscribers s where s.email_key = r.email_key) \
                     order by r.line",
                    LAST_NAME.replace("{key}", "r.email_key")
                ))
                .persistent($persistent)
                .bind(now)
                .bind(&nonce)
                .execute(&mut **tx)
                .await?;
                if $analyze {
                    // The joins below pick their plan from the table's
                    // statistics, which would still say it is small.
                    sqlx::query("analyze subscribers").persistent(false).execute(&mut **tx).await?;
                }
                for (i, digest) in digests.iter().enumerate() {
                    sqlx::query(
                        "insert into subscriptions (subscriber_id, digest, created_at) \
                         select s.id, $2, $1 from import_rows r join subscribers s on s.email_key = r.email_key \
                         where substr(r.digests, $3, 1) = '1' on conflict do nothing",
                    )
                    .persistent($persistent)
                    .bind(now)
                    .bind(digest.as_str())
                    .bind(i as i32 + 1)
                    .execute(&mut **tx)
                    .await?;
                }
                tally
            }};
        }
        let tally = match self.tx {
            ImportTx::Postgres(mut tx) => {
                // (The temporary table is new in each import: statements
                // naming it are not kept prepared.)
                let tally = merge!(&mut tx, false, true);
                tx.commit().await?;
                tally
            }
            ImportTx::Sqlite(mut tx) => {
                let tally = merge!(&mut tx, true, false);
                sqlx::query("drop table import_rows")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                tally
            }
        };
        Ok(ImportCounts {
            added: tally.added as u64,
            updated: (tally.total - tally.added - tally.inactive) as u64,
            kept_inactive: tally.inactive as u64,
        })
    }
}
