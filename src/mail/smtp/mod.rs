//! SMTP on connections of our own: [`connect`] opens one (TCP_NODELAY,
//! TLS, EHLO, AUTH), [`session`] runs pipelined transactions on it, and
//! [`reply`] sorts what the relay answered into transient and permanent.

mod connect;
mod reply;
mod session;

use std::time::Duration;

use lettre::address::Envelope;
use lettre::transport::smtp::extension::ClientId;

use self::connect::Connection;
pub use self::reply::SendError;
use self::reply::{classify, with_timeout};
use self::session::{read_envelope_replies, send_pipelined};
use super::seal::Outgoing;
use crate::config::SmtpSettings;

/// One SMTP connection, opened on first use and reopened after a failure.
pub struct SmtpSender {
    settings: SmtpSettings,
    conn: Option<Connection>,
    /// The bytes of one pipelined transaction, reused from message to message.
    out: Vec<u8>,
    /// The envelope whose MAIL, RCPT and DATA the relay has accepted: it
    /// waits for that message's content.
    primed: Option<Envelope>,
}

impl SmtpSender {
    pub fn new(settings: SmtpSettings) -> Self {
        Self {
            settings,
            conn: None,
            out: Vec::new(),
            primed: None,
        }
    }

    /// Sends `message` on this sender's connection, opened if need be.
    ///
    /// With `next`, the envelope of the message this sender sends right
    /// after, a relay that pipelines gets that message's MAIL, RCPT and DATA
    /// in the same write as this message's content (RFC 2920 lets message
    /// content open a group), so that each message costs one round trip
    /// instead of two. The relay then waits for that content: a call with
    /// another envelope drops the connection first, which never ends the
    /// waiting message with its dot, so nothing is delivered by it.
    pub async fn send(
        &mut self,
        message: &Outgoing,
        next: Option<&Envelope>,
    ) -> Result<(), SendError> {
        let envelope = &message.envelope;
        let bytes = &message.bytes;
        // Non-ASCII addresses or content need ESMTP parameters that lettre
        // adds (SMTPUTF8, BODY=8BITMIME); our bodies are quoted-printable.
        let plain = bytes.is_ascii() && envelope_is_ascii(envelope);
        let mut primed = match self.primed.take() {
            Some(p) if plain && &p == envelope => true,
            Some(_) => {
                self.conn = None;
                false
            }
            None => false,
        };
        if self.conn.as_ref().is_none_or(|c| c.smtp.has_broken()) {
            primed = false;
            self.conn = Some(connect::connect(&self.settings, &hello_name(&self.settings)).await?);
        }
        let conn = self.conn.as_mut().expect("connected above");
        let pipelined = conn.pipelined.clone().filter(|_| plain);
        let next = next.filter(|n| pipelined.is_some() && envelope_is_ascii(n));
        let limit = self.settings.timeout;
        let sent = match pipelined {
            Some(stream) => {
                let out = &mut self.out;
                let opening = (!primed).then_some(envelope);
                let send = send_pipelined(&mut conn.smtp, stream, out, opening, bytes, next);
                with_timeout(limit, send).await
            }
            None => with_timeout(limit, conn.smtp.send(envelope, bytes)).await,
        };
        match sent {
            Ok(_) => {
                if let Some(next) = next {
                    // This message is accepted whatever comes now: a failure
                    // of the next envelope only drops the connection, and
                    // the next message starts afresh on a new one.
                    let replies = read_envelope_replies(&mut conn.smtp, next);
                    match with_timeout(limit, replies).await {
                        Ok(()) => self.primed = Some(next.clone()),
                        Err(_) => self.conn = None,
                    }
                }
                Ok(())
            }
            Err(e) => {
                // After any failure the SMTP session state is unknown: start
                // the next message on a fresh connection. (QUIT only where
                // the relay cannot be waiting for a message's content.)
                if let Some(mut conn) = self.conn.take()
                    && next.is_none()
                {
                    let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.abort()).await;
                }
                Err(classify("SMTP relay refused the message", &e))
            }
        }
    }

    /// Whether the relay waits for the content of the message with this
    /// envelope (see [`SmtpSender::send`]).
    pub fn primed_for(&self, envelope: &Envelope) -> bool {
        self.primed.as_ref() == Some(envelope)
    }

    /// Whether [`SmtpSender::send`] has a use for the next envelope: an
    /// open connection to a relay that pipelines.
    pub fn chains(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.pipelined.is_some())
    }

    pub async fn close(&mut self) {
        if self.primed.take().is_some() {
            // (The relay waits for a message: QUIT would be its content.)
            self.conn = None;
        }
        if let Some(mut conn) = self.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.quit()).await;
        }
    }
}

fn envelope_is_ascii(envelope: &Envelope) -> bool {
    envelope
        .from()
        .is_none_or(|a| AsRef::<str>::as_ref(a).is_ascii())
        && envelope
            .to()
            .iter()
            .all(|a| AsRef::<str>::as_ref(a).is_ascii())
}

/// The name sent in EHLO: `smtp.hello_name`, or this machine's host name.
fn hello_name(settings: &SmtpSettings) -> ClientId {
    match &settings.hello_name {
        Some(name) => ClientId::Domain(name.clone()),
        None => ClientId::default(),
    }
}

/// Connects to the relay (and authenticates) without sending anything:
/// what `gazette check` does.
pub async fn check_relay(settings: &SmtpSettings) -> Result<(), SendError> {
    let mut conn = connect::connect(settings, &hello_name(settings)).await?;
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.smtp.quit()).await;
    Ok(())
}
