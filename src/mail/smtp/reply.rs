//! What the relay answered, sorted: 5xx is permanent, everything else
//! (4xx, I/O, timeouts) worth another attempt later.

use std::time::Duration;

/// How a send failed, which decides what the ledger does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Try again later: a 4xx reply, a refused or dropped connection, a timeout.
    Transient(String),
    /// Do not try again: a 5xx reply for this recipient or message.
    Permanent(String),
    /// The relay refuses this configuration (credentials, an untrusted
    /// certificate, TLS that cannot work): `send` and `run` stop before
    /// planning; a delivery that meets it mid-run is tried again later,
    /// as it may pass once the configuration is mended.
    Setup(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Transient(m) => write!(f, "temporary failure: {m}"),
            SendError::Permanent(m) => write!(f, "permanent failure: {m}"),
            SendError::Setup(m) => write!(f, "{m}"),
        }
    }
}

pub(super) async fn with_timeout<T, E: Into<TimeoutOr>>(
    limit: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, TimeoutOr> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(TimeoutOr::Timeout(limit)),
    }
}

#[derive(Debug)]
pub(super) enum TimeoutOr {
    Smtp(lettre::transport::smtp::Error),
    /// Writing to the connection failed.
    Io(std::io::Error),
    Timeout(Duration),
}

impl From<lettre::transport::smtp::Error> for TimeoutOr {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        TimeoutOr::Smtp(e)
    }
}

impl From<std::io::Error> for TimeoutOr {
    fn from(e: std::io::Error) -> Self {
        TimeoutOr::Io(e)
    }
}

impl TimeoutOr {
    pub(super) fn status(&self) -> Option<lettre::transport::smtp::response::Code> {
        match self {
            TimeoutOr::Smtp(e) => e.status(),
            TimeoutOr::Io(_) | TimeoutOr::Timeout(_) => None,
        }
    }
}

impl std::fmt::Display for TimeoutOr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutOr::Smtp(e) => write!(f, "{e}"),
            TimeoutOr::Io(e) => write!(f, "network error: {e}"),
            TimeoutOr::Timeout(d) => write!(f, "no answer within {}s", d.as_secs()),
        }
    }
}

/// 5xx replies are permanent; everything else (4xx, I/O, timeouts) is worth
/// another attempt later.
pub(super) fn classify(context: &str, e: &TimeoutOr) -> SendError {
    let message = format!("{context}: {e}");
    match e {
        TimeoutOr::Smtp(err) if err.is_permanent() => SendError::Permanent(message),
        _ => SendError::Transient(message),
    }
}
