//! The outbox transport: one `.eml` file per message.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Writes `bytes` to `dir/stem.eml` atomically (a temp file renamed), so a
/// reader never sees half a message and a retry overwrites the same file.
pub async fn write_eml(dir: &Path, stem: &str, bytes: &[u8]) -> Result<PathBuf> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("cannot create outbox directory {}", dir.display()))?;
    let path = dir.join(format!("{stem}.eml"));
    let tmp = dir.join(format!(".{stem}.eml.tmp"));
    tokio::fs::write(&tmp, bytes)
        .await
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
