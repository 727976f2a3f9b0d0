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

/// One worker's way out: each worker owns one, so SMTP connections are
/// never shared and stay open between messages.
pub enum Sender {
    Outbox(PathBuf),
    Smtp(Box<RelaySender>),
}

impl Sender {
    /// A worker's sender: one connection among the relays' pools.
    pub fn worker(settings: &Settings, relays: &Arc<Relays>) -> Self {
        match settings.mail.transport {
            TransportKind::Outbox => Sender::Outbox(settings.mail.outbox_dir.clone()),
            TransportKind::Smtp => Sender::Smtp(Box::new(RelaySender::worker(relays.clone()))),
        }
    }

    /// A sender beside the workers (confirmation emails, test sends): a
    /// connection of its own, sharing the relays' health and metrics.
    pub fn beside(settings: &Settings, relays: &Arc<Relays>) -> Self {
        match settings.mail.transport {
            TransportKind::Outbox => Sender::Outbox(settings.mail.outbox_dir.clone()),
            TransportKind::Smtp => Sender::Smtp(Box::new(RelaySender::beside(relays.clone()))),
        }
    }

    /// Waits while a worker's relay is ahead of its share, or down, and no
    /// other relay has a connection to spare; `stop` ends the wait.
    pub async fn ready(&mut self, stop: impl Fn() -> bool) {
        if let Sender::Smtp(smtp) = self {
            smtp.ready(stop).await;
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
