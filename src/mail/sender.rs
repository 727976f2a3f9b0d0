//! One worker's way out: the outbox or an SMTP connection.

use std::path::PathBuf;

use lettre::address::Envelope;

use super::outbox::write_eml;
use super::smtp::SmtpSender;
use crate::config::{Settings, TransportKind};

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

/// One worker's way out: each worker owns one, so SMTP connections are
/// never shared and stay open between messages.
pub enum Sender {
    Outbox(PathBuf),
    Smtp(Box<SmtpSender>),
}

impl Sender {
    pub fn new(settings: &Settings) -> Self {
        match settings.mail.transport {
            TransportKind::Outbox => Sender::Outbox(settings.mail.outbox_dir.clone()),
            TransportKind::Smtp => Sender::Smtp(Box::new(SmtpSender::new(settings.smtp.clone()))),
        }
    }

    /// Sends `message`; `file_stem` names its outbox file.
    pub async fn send(
        &mut self,
        message: &lettre::Message,
        file_stem: &str,
    ) -> Result<(), SendError> {
        self.send_then(message, file_stem, None).await
    }

    /// Sends `message`, and, over SMTP to a relay that pipelines, starts
    /// the transaction of the message that this sender sends next, whose
    /// envelope is `next` (see [`SmtpSender::send`]).
    pub async fn send_then(
        &mut self,
        message: &lettre::Message,
        file_stem: &str,
        next: Option<&Envelope>,
    ) -> Result<(), SendError> {
        match self {
            Sender::Outbox(dir) => write_eml(dir, file_stem, &message.formatted())
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(format!("{e:#}"))),
            Sender::Smtp(smtp) => smtp.send(message, next).await,
        }
    }

    /// Whether [`Sender::send_then`] has a use for the next envelope: an
    /// open SMTP connection to a relay that pipelines.
    pub fn chains(&self) -> bool {
        matches!(self, Sender::Smtp(smtp) if smtp.chains())
    }

    pub async fn close(&mut self) {
        if let Sender::Smtp(smtp) = self {
            smtp.close().await;
        }
    }
}
