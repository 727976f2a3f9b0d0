//! One delivering process per SQLite store.

use std::str::FromStr;

use anyhow::{Context, Result};
use sqlx::sqlite::SqliteConnectOptions;

use super::backend::Store;

/// Held while a process delivers from a SQLite store; dropped, it unlocks.
#[derive(Debug)]
pub struct ProcessLock {
    _file: Option<std::fs::File>,
}

impl Store {
    /// SQLite is owned by one delivering process: a second `run` or `send`
    /// on the same file is refused. Postgres needs no lock: replicas share
    /// it and claim disjoint rows.
    pub fn lock_for_delivery(&self, url: &str) -> Result<ProcessLock> {
        let Store::Sqlite(_) = self else {
            return Ok(ProcessLock { _file: None });
        };
        let options = SqliteConnectOptions::from_str(url)?;
        let path = format!("{}.lock", options.get_filename().display());
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open lock file {path}"))?;
        match file.try_lock() {
            Ok(()) => Ok(ProcessLock { _file: Some(file) }),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "another gazette process is delivering from {} (lock file {path}): \
                 a SQLite store serves one `run` or `send` at a time; use Postgres to run replicas",
                options.get_filename().display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("cannot lock {path}"))
            }
        }
    }
}
