//! One worker's way out: the outbox or an SMTP connection.

use std::path::PathBuf;
use std::sync::Arc;

use lettre::address::Envelope;

use super::outbox::write_eml;
use super::relays::{RelaySender, Relays};
use super::seal::Outgoing;
use super::smtp::SendError;
use crate::config::{Settings, TransportKind};
use crate::errors::chain;
use crate::metrics::Metrics;

/// One worker's way out: each worker owns one, so SMTP connections are
/// never shared and stay open between messages.
pub enum Sender {
    Outbox(PathBuf),
    Smtp(Box<RelaySender>),
}

impl Sender {
    /// A sender with relays of its own (their health and metrics unshared).
    pub fn new(settings: &Settings) -> Self {
        let relays = Arc::new(Relays::new(&settings.relays, &Metrics::default()));
        Self::with_relays(settings, &relays)
    }

    /// A sender among others that share `relays`: the workers of a process.
    pub fn with_relays(settings: &Settings, relays: &Arc<Relays>) -> Self {
        match settings.mail.transport {
            TransportKind::Outbox => Sender::Outbox(settings.mail.outbox_dir.clone()),
            TransportKind::Smtp => Sender::Smtp(Box::new(RelaySender::new(relays.clone()))),
        }
    }

    /// Sends `message`; `file_stem` names its outbox file.
    pub async fn send(&mut self, message: &Outgoing, file_stem: &str) -> Result<(), SendError> {
        self.send_then(message, file_stem, None).await
    }

    /// Sends `message`, and, over SMTP to a relay that pipelines, starts
    /// the transaction of the message that this sender sends next, whose
    /// envelope is `next` (see [`super::smtp::SmtpSender::send`]).
    pub async fn send_then(
        &mut self,
        message: &Outgoing,
        file_stem: &str,
        next: Option<&Envelope>,
    ) -> Result<(), SendError> {
        match self {
            Sender::Outbox(dir) => write_eml(dir, file_stem, &message.bytes)
                .await
                .map(|_| ())
                .map_err(|e| SendError::Transient(format!("{}", chain(&e)))),
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
