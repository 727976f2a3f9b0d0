//! What the commands of one process share: the engine they open, the
//! signals that stop them, the relay check before delivering, the
//! runtime's size.

use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::sync::watch;

use crate::bounces::ReturnPath;
use crate::config::{Settings, TokenKey, TransportKind};
use crate::delivery::Engine;
use crate::domain::{DigestName, ReaderTokens, new_token};
use crate::mail;
use crate::render::Renderer;
use crate::store::{Store, Timestamp};

/// Checks the templates, then opens (and migrates) the store, with the
/// key that signs readers' links.
pub async fn open(settings: Settings) -> Result<Engine> {
    let renderer = Renderer::new(&settings)?;
    let (store, tokens) = open_store(&settings).await?;
    let return_path = match &settings.bounces.return_path {
        Some(address) => {
            let secret = store
                .shared_secret(ReturnPath::SECRET, Timestamp::now())
                .await
                .context("cannot read the key of the return paths")?;
            Some(ReturnPath::new(address, secret.as_bytes()))
        }
        None => None,
    };
    let metrics = Arc::new(crate::metrics::Metrics::default());
    Ok(Engine {
        sealer: mail::Sealer::new(settings.dkim.clone()),
        relays: Arc::new(mail::Relays::new(&settings.relays, &metrics)),
        settings: Arc::new(settings),
        store,
        renderer: Arc::new(renderer),
        tokens,
        return_path,
        metrics,
        confirmations_due: Arc::default(),
        panic_for_tests: None,
    })
}

/// Opens (and migrates) the store, with the key that signs readers'
/// links: the key must be the one the store has seen, and the tokens kept
/// in clear from before links were signed are replaced with their hashes.
pub(super) async fn open_store(settings: &Settings) -> Result<(Store, ReaderTokens)> {
    let tokens = reader_tokens(&settings.web.token_key)?;
    let store = Store::connect(&settings.database.url).await?;
    store.check_token_key(&tokens, Timestamp::now()).await?;
    let hashed = store
        .hash_legacy_tokens()
        .await
        .context("cannot hash the reader tokens of before")?;
    if hashed > 0 {
        tracing::info!(
            hashed,
            "reader tokens from before signed links: kept as hashes now"
        );
    }
    Ok((store, tokens))
}

/// The key that signs readers' links: `web.token_key`, or the key file,
/// made with 256 random bits (readable by its owner only) when missing.
pub fn reader_tokens(key: &TokenKey) -> Result<ReaderTokens> {
    let path = match key {
        TokenKey::Given(secret) => return Ok(ReaderTokens::new(secret.expose().as_bytes())),
        TokenKey::File(path) => path,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= 32 => Ok(ReaderTokens::new(text.trim().as_bytes())),
        Ok(_) => anyhow::bail!(
            "{} (web.token_key_file) holds fewer than 32 characters: it is not a key",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create directory {}", dir.display()))?;
            }
            let key = new_token();
            let mut file = std::fs::OpenOptions::new();
            file.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut file, 0o600);
            std::io::Write::write_all(&mut file.open(path)?, format!("{key}\n").as_bytes())
                .with_context(|| format!("cannot write {} (web.token_key_file)", path.display()))?;
            tracing::info!(
                file = %path.display(),
                "made the key that signs readers' links: keep it with the database"
            );
            Ok(ReaderTokens::new(key.as_bytes()))
        }
        Err(e) => {
            Err(e).with_context(|| format!("cannot read {} (web.token_key_file)", path.display()))
        }
    }
}

/// Connects to the SMTP relay once before delivering: an answer that no
/// retry can change (credentials refused, an unusable TLS setting) stops
/// the command here, before any run is planned or any delivery fails for
/// it. A relay that is down is not refused: the ledger waits for it.
pub(super) async fn refuse_a_misconfigured_relay(engine: &Engine) -> Result<()> {
    if engine.settings.mail.transport != TransportKind::Smtp {
        return Ok(());
    }
    for relay in &engine.settings.relays {
        if let Err(mail::SendError::Setup(e)) = mail::check_relay(&relay.smtp).await {
            return Err(anyhow::anyhow!("{e}"));
        }
    }
    Ok(())
}

pub(super) async fn bind(engine: &Engine) -> Result<tokio::net::TcpListener> {
    let addr = engine.settings.web.bind;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (web.bind)"))
}

/// A watch that turns true on SIGINT or SIGTERM.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down: finishing the messages in flight");
        let _ = tx.send(true);
    });
    rx
}

pub(super) fn digest_names(settings: &Settings) -> Vec<DigestName> {
    settings.digests.iter().map(|d| d.name.clone()).collect()
}

/// The runtime's worker threads: `TOKIO_WORKER_THREADS` if set, otherwise
/// half the cores, at least one. Sending is mostly waiting on the relay and
/// the database, which on a small machine share its cores: gazette's own
/// work is about 0.05 ms of CPU per message, a core's worth at some 20,000
/// messages a second, and every further thread adds wake-ups across threads
/// (on 2 cores, 100,000 messages took 7.0 s of CPU on two threads and 5.5 s
/// on one; see docs/benchmarks.md).
pub fn runtime_threads(configured: Option<&str>) -> Result<usize, String> {
    match configured {
        Some(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("TOKIO_WORKER_THREADS must be a positive number, not `{v}`")),
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            Ok((cores / 2).max(1))
        }
    }
}

/// `n` things, in words: `1 subscriber`, `2 subscribers`, `0 deliveries`.
pub fn counted(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}
