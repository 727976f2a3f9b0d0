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
    /// Do not try again: the relay answered RCPT that the mailbox does not
    /// exist (`5.1.1`, `5.1.0`, or a bare `550`), a hard bounce.
    NoMailbox(String),
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
            SendError::Permanent(m) | SendError::NoMailbox(m) => {
                write!(f, "permanent failure: {m}")
            }
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
    /// The relay's reply to RCPT.
    Recipient(lettre::transport::smtp::Error),
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
            TimeoutOr::Smtp(e) | TimeoutOr::Recipient(e) => e.status(),
            TimeoutOr::Io(_) | TimeoutOr::Timeout(_) => None,
        }
    }
}

impl std::fmt::Display for TimeoutOr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeoutOr::Smtp(e) | TimeoutOr::Recipient(e) => write!(f, "{e}"),
            TimeoutOr::Io(e) => write!(f, "network error: {e}"),
            TimeoutOr::Timeout(d) => write!(f, "no answer within {}s", d.as_secs()),
        }
    }
}

/// 5xx replies are permanent; everything else (4xx, I/O, timeouts) is worth
/// another attempt later. A permanent reply that says the mailbox does not
/// exist is a hard bounce: `5.1.1` or `5.1.0` wherever it came (those codes
/// are about the recipient's address), and a bare `550` only as the reply
/// to RCPT (after DATA it may refuse the content instead).
pub(super) fn classify(context: &str, e: &TimeoutOr) -> SendError {
    let message = format!("{context}: {e}");
    match e {
        TimeoutOr::Smtp(err) | TimeoutOr::Recipient(err) if err.is_permanent() => {
            let at_rcpt = matches!(e, TimeoutOr::Recipient(_));
            if no_mailbox(err, at_rcpt) {
                SendError::NoMailbox(message)
            } else {
                SendError::Permanent(message)
            }
        }
        _ => SendError::Transient(message),
    }
}

/// Whether a permanent reply says the mailbox does not exist.
fn no_mailbox(err: &lettre::transport::smtp::Error, at_rcpt: bool) -> bool {
    // lettre writes `permanent error (550): 5.1.1 <…>: …`.
    let text = err.to_string();
    let said = text.split_once("): ").map_or("", |(_, said)| said);
    let first = said.split_whitespace().next().unwrap_or("");
    let enhanced = {
        let parts: Vec<&str> = first.split('.').collect();
        parts.len() == 3
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    if enhanced {
        return first == "5.1.1" || first == "5.1.0";
    }
    at_rcpt && err.status().is_some_and(|c| c.to_string() == "550")
}
