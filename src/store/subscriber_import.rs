//! Subscriber imports, streamed: rows are staged as they come, a batch at
//! a time (on Postgres, into one COPY that the server reads while the next
//! batch is parsed; on SQLite, multi-row inserts), into a temporary table of
//! the import's own transaction, then merged into the subscribers by a few
//! set-wise statements, and committed all at once. Memory stays flat in the
//! file's size; the database does the sorting out.

use anyhow::{Context, Result, anyhow, bail};
use futures_util::TryStreamExt;
use sqlx::{FromRow, QueryBuilder, Row};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::backend::{BeginWrite, Store};
use super::subscribers::{ImportCounts, NewSubscriber};
use super::time::Timestamp;
use crate::domain::{DigestName, new_token};

/// Rows staged per statement.
const BATCH: usize = 5_000;
/// Rows per SQLite insert: five parameters each, under its limit of 32,766.
const SQLITE_ROWS: usize = 1_000;
/// Batches of COPY data parsed ahead of what Postgres has read.
const AHEAD: usize = 2;

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
    Postgres(PgStaging),
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
}

/// Postgres's staging: a task holds the transaction and one COPY into
/// `import_rows` open, and sends it each batch of COPY text it receives;
/// the transaction comes back when the batches end.
struct PgStaging {
    batches: Option<mpsc::Sender<Vec<u8>>>,
    copying: JoinHandle<Result<sqlx::Transaction<'static, sqlx::Postgres>>>,
}

impl PgStaging {
    fn start(mut tx: sqlx::Transaction<'static, sqlx::Postgres>) -> Self {
        let (batches, mut received) = mpsc::channel::<Vec<u8>>(AHEAD);
        let copying = tokio::spawn(async move {
            let mut copy = tx
                .copy_in_raw("copy import_rows (line, email, email_key, name, digests) from stdin")
                .await?;
            while let Some(batch) = received.recv().await {
                copy.send(batch).await?;
            }
            copy.finish().await?;
            Ok(tx)
        });
        PgStaging {
            batches: Some(batches),
            copying,
        }
    }

    async fn send(&mut self, batch: Vec<u8>) -> Result<()> {
        let sent = match &self.batches {
            Some(batches) => batches.send(batch).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The task stopped early: its error says why.
        Err(self
            .end()
            .await
            .err()
            .unwrap_or_else(|| anyhow!("the COPY of the rows ended early")))
    }

    /// Ends the COPY; the transaction, with every row staged.
    async fn end(&mut self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.batches = None;
        (&mut self.copying)
            .await
            .context("the COPY of the rows stopped")?
    }
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

/// The addresses on more than one line of the file: the first line of
/// each, and the last name given for it (`null`: none).
const REPEATS: &str = "select g.email_key, g.first_line, n.name from \
     (select email_key, min(line) as first_line, \
      max(case when name is not null then line end) as named_line \
      from import_rows group by email_key having count(*) > 1) g \
     left join import_rows n on n.line = g.named_line";

/// One row per address of the file: its first line, its address as first
/// written, that line's digests, and the last name given for it.
const ADDRESSES: &str = "select r.line, r.email, r.email_key, r.digests, \
     case when p.email_key is null then r.name else p.name end as name \
     from import_rows r left join import_repeats p on p.email_key = r.email_key \
     where p.email_key is null or r.line = p.first_line";

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
                ImportTx::Postgres(PgStaging::start(tx))
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
            ImportTx::Postgres(staging) => {
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
                staging.send(data.into_bytes()).await?;
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
        // One row per digest: its name and its flag's place in `digests`.
        let digest_rows = (1..=digests.len())
            .map(|i| format!("(${}, {i})", i + 2))
            .collect::<Vec<_>>()
            .join(", ");
        // New addresses, added in file order. They have no token of
        // before: on Postgres, null (left out of that column's index); on
        // SQLite, where the column is not null, neither a token nor random:
        // `none:` matches no link, and the import's nonce with the line
        // keeps each unique.
        let no_token = match self.tx {
            ImportTx::Postgres(_) => "null",
            ImportTx::Sqlite(_) => "'none:' || $2 || '.' || k.line",
        };
        let new_subscribers = format!(
            "insert into subscribers (email, email_key, name, status, legacy_token_hash, \
             created_at, updated_at) \
             select k.email, k.email_key, k.name, 'confirmed', {no_token}, $1, $1 \
             from ({ADDRESSES}) k \
             where not exists (select 1 from subscribers s where s.email_key = k.email_key) \
             order by k.line"
        );
        // The import's digests: each one's name and the place of its flag.
        let d = format!("d (digest, place) as (values {digest_rows})");
        // The digests of the rows `r` of `rows` for their subscribers,
        // unless they have them.
        let subscribe = |rows: &str| {
            format!(
                "with {d} insert into subscriptions (subscriber_id, digest, created_at) \
                 select s.id, d.digest, $1 from {rows} \
                 join subscribers s on s.email_key = r.email_key cross join d \
                 where substr(r.digests, d.place, 1) = '1' on conflict do nothing"
            )
        };
        // Every row's.
        let already_here = subscribe("import_rows r");
        // The new subscribers with the digests of their one row (how many).
        // Their ids are drawn in file order before they are added, so that
        // each one's row (materialized once, with its digests) adds both the
        // subscriber and their subscriptions, with no join back to the rows.
        let new_subscribed = format!(
            "with {d}, k as materialized (\
             select nextval('subscribers_id_seq') as id, o.* from (\
             select a.line, a.email, a.email_key, a.name, a.digests from ({ADDRESSES}) a \
             where not exists (select 1 from subscribers s where s.email_key = a.email_key) \
             order by a.line) o), \
             added as (insert into subscribers (id, email, email_key, name, status, \
             legacy_token_hash, created_at, updated_at) \
             select k.id, k.email, k.email_key, k.name, 'confirmed', null, $1, $1 from k), \
             subscribed as (insert into subscriptions (subscriber_id, digest, created_at) \
             select k.id, d.digest, $1 from k cross join d \
             where substr(k.digests, d.place, 1) = '1' \
             and not exists (select 1 from import_repeats p where p.email_key = k.email_key)) \
             select count(*) from k"
        );
        // Every line's of the addresses on several (usually none).
        let repeated_subscribed =
            subscribe("import_repeats p join import_rows r on r.email_key = p.email_key");
        // A statement above with its parameters: the time, the nonce and
        // the digests' names.
        macro_rules! bound {
            ($sql:expr) => {{
                let mut query = sqlx::query($sql).persistent(false).bind(now).bind(&nonce);
                for digest in &digests {
                    query = query.bind(digest.as_str());
                }
                query
            }};
        }
        macro_rules! merge {
            ($tx:expr, $temporary:expr, $postgres:expr) => {{
                let tx = $tx;
                if $postgres {
                    sqlx::query("analyze import_rows").persistent(false).execute(&mut **tx).await?;
                }
                // The addresses on more than one line (usually none): their
                // first line, and the last name given.
                sqlx::query(&format!("create temporary table import_repeats {} as {REPEATS}", $temporary))
                    .persistent(false)
                    .execute(&mut **tx)
                    .await?;
                if $postgres {
                    sqlx::query("analyze import_repeats").persistent(false).execute(&mut **tx).await?;
                }
                let mut lines = sqlx::query_as::<_, Repeated>(
                    "select r.line, r.email, p.first_line from import_rows r \
                     join import_repeats p on p.email_key = r.email_key \
                     where r.line > p.first_line order by r.line",
                )
                .persistent(false)
                .fetch(&mut **tx);
                while let Some(r) = lines.try_next().await? {
                    repeated(format!(
                        "line {}: {} is also on line {}: both lines are applied, in order",
                        r.line, r.email, r.first_line
                    ));
                }
                drop(lines);
                // A row of an address that left is kept inactive (counted
                // before anything is applied).
                let inactive: i64 = sqlx::query_scalar(
                    "select count(*) from import_rows r join subscribers s on s.email_key = r.email_key \
                     where s.status in ('unsubscribed', 'bounced')",
                )
                .persistent(false)
                .fetch_one(&mut **tx)
                .await?;
                // Addresses already here take the last name given (a row
                // without one keeps theirs); pending ones become confirmed.
                sqlx::query(&format!(
                    "update subscribers set name = coalesce(k.name, subscribers.name), updated_at = $1, \
                     status = case when subscribers.status = 'pending' then 'confirmed' else subscribers.status end \
                     from ({ADDRESSES}) k where subscribers.email_key = k.email_key"
                ))
                .persistent(false)
                .bind(now)
                .execute(&mut **tx)
                .await?;
                // Postgres cannot tell how many flags are set, guesses few,
                // and would look up each row's subscriber by index: hashing
                // them is faster (a third less time at a million rows).
                let hashed = $postgres && !digests.is_empty();
                if hashed {
                    // The joins below pick their plans from the table's
                    // statistics, which would not yet count the rows just
                    // updated.
                    sqlx::query("analyze subscribers").persistent(false).execute(&mut **tx).await?;
                    sqlx::query("set local enable_nestloop = off").persistent(false).execute(&mut **tx).await?;
                }
                let added = if hashed {
                    // Those already here add their rows' digests (which
                    // they may have); then the new ones are added with
                    // their row's, which no one can have yet: no conflict
                    // to look for, and no subscriber to look up.
                    bound!(&already_here).execute(&mut **tx).await?;
                    let added: i64 = bound!(&new_subscribed).fetch_one(&mut **tx).await?.get(0);
                    bound!(&repeated_subscribed).execute(&mut **tx).await?;
                    added as u64
                } else {
                    let added = bound!(&new_subscribers).execute(&mut **tx).await?.rows_affected();
                    if !digests.is_empty() {
                        // Every row adds its digests (one statement for them all).
                        bound!(&already_here).execute(&mut **tx).await?;
                    }
                    added
                };
                if hashed {
                    sqlx::query("set local enable_nestloop = on").persistent(false).execute(&mut **tx).await?;
                }
                (added, inactive)
            }};
        }
        let (added, inactive) = match self.tx {
            ImportTx::Postgres(mut staging) => {
                let mut tx = staging.end().await?;
                // The joins and sorts of a large import fit in memory.
                sqlx::query("set local work_mem = '64MB'")
                    .persistent(false)
                    .execute(&mut *tx)
                    .await?;
                // (The temporary tables are new in each import: statements
                // naming them are not kept prepared.)
                let counts = merge!(&mut tx, "on commit drop", true);
                tx.commit().await?;
                counts
            }
            ImportTx::Sqlite(mut tx) => {
                let counts = merge!(&mut tx, "", false);
                sqlx::query("drop table import_repeats")
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("drop table import_rows")
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                counts
            }
        };
        let total = self.staged;
        let (added, inactive) = (added, inactive as u64);
        Ok(ImportCounts {
            added,
            updated: total - added - inactive,
            kept_inactive: inactive,
        })
    }
}
