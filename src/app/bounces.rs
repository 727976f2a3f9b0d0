//! `gazette bounces ingest`: one message that came back, as the MTA's
//! pipe or an alias hands it over, read and recorded.

use std::io::Read;

use anyhow::{Context, Result};

use crate::bounces::{self, report};
use crate::delivery::Engine;

/// The largest message read (a bounce returns at most the original).
const LIMIT: u64 = 50 * 1024 * 1024;

/// Why `bounces ingest` failed: the MTA is told to keep the message and
/// try again later (exit 75, EX_TEMPFAIL), so nothing is lost.
#[derive(Debug, thiserror::Error)]
#[error("{0:#}")]
pub struct IngestFailed(pub anyhow::Error);

/// Reads one message from `file` (`-` or none: standard input) and says
/// what was done with it.
pub async fn bounces_ingest(
    engine: &Engine,
    file: Option<&str>,
    recipient: Option<&str>,
) -> Result<()> {
    let raw = read_input(file).map_err(IngestFailed)?;
    let keys = report::Keys {
        return_path: engine.return_path.as_ref(),
        readers: &engine.tokens,
    };
    let verdict = report::read(&raw, recipient, &keys)
        .map_err(|e| IngestFailed(anyhow::anyhow!("cannot read the message: {e}")))?;
    let said = match verdict {
        report::Verdict::Ignored(why) => {
            tracing::info!("{why}");
            why
        }
        report::Verdict::Report {
            named,
            kind,
            source,
            reason,
        } => {
            let ledger = bounces::Ledger {
                store: &engine.store,
                metrics: &engine.metrics,
                limits: bounces::limits(&engine.settings),
            };
            bounces::record(ledger, named, kind, source, &reason)
                .await
                .map_err(IngestFailed)?
        }
    };
    println!("{said}");
    Ok(())
}

fn read_input(file: Option<&str>) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    match file {
        None | Some("-") => {
            std::io::stdin()
                .take(LIMIT)
                .read_to_end(&mut raw)
                .context("cannot read the message from standard input")?;
        }
        Some(path) => {
            std::fs::File::open(path)
                .with_context(|| format!("cannot open {path}"))?
                .take(LIMIT)
                .read_to_end(&mut raw)
                .with_context(|| format!("cannot read {path}"))?;
        }
    }
    Ok(raw)
}
