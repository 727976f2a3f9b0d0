//! The backends: which there are, how each is opened and migrated, the
//! `on_pool!` switch that runs one body on either, and write transactions.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use crate::config::redact_url;
use anyhow::{Context, Result};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection};

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");

#[derive(Debug, Clone)]
pub enum Store {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend.
macro_rules! on_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match $self {
            Store::Postgres($pool) => $body,
            Store::Sqlite($pool) => $body,
        }
    };
}

/// A transaction that will write. SQLite takes its write lock at `BEGIN
/// IMMEDIATE`: a transaction that reads first and writes later fails at
/// once with "database is locked" when another connection wrote in between
/// (the daemon's ledger writes, the confirmation mailer), instead of
/// waiting its turn.
pub(super) trait BeginWrite {
    type Db: sqlx::Database;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, Self::Db>>;
}

impl BeginWrite for PgPool {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, Self::Db>> {
        self.begin().await
    }
}

impl BeginWrite for SqlitePool {
    type Db = sqlx::Sqlite;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, Self::Db>> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl Store {
    /// Opens the store at `url` and applies pending migrations. A SQLite
    /// file is created (with its directory) when missing.
    pub async fn connect(url: &str) -> Result<Self> {
        let store = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .with_context(|| format!("invalid SQLite address `{url}`"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(30))
                .disable_statement_logging();
            if let Some(dir) = Path::new(options.get_filename()).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .with_context(|| format!("cannot open SQLite database `{url}`"))?;
            Store::Sqlite(pool)
        } else {
            let options = PgConnectOptions::from_str(url)
                .with_context(|| format!("invalid Postgres address `{}`", redact_url(url)))?
                .disable_statement_logging();
            // One connection first, of its own: an address where nothing
            // listens, or a refused login, is reported at once with its
            // cause, instead of after the pool's acquire timeout.
            let first = tokio::time::timeout(Duration::from_secs(10), options.connect())
                .await
                .map_err(|_| {
                    anyhow::anyhow!(
                        "no answer from Postgres at `{}` within 10 s",
                        redact_url(url)
                    )
                })?
                .with_context(|| format!("cannot connect to Postgres at `{}`", redact_url(url)))?;
            let _ = first.close().await;
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(options)
                .await
                .with_context(|| format!("cannot connect to Postgres at `{}`", redact_url(url)))?;
            Store::Postgres(pool)
        };
        store.migrate().await?;
        Ok(store)
    }

    pub async fn migrate(&self) -> Result<()> {
        match self {
            Store::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
            Store::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
        }
        .context("cannot apply database migrations")
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "postgres",
            Store::Sqlite(_) => "sqlite",
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    pub async fn ping(&self) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query("select 1").execute(pool).await?;
            Ok(())
        })
    }
}
