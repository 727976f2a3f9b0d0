//! One delivery as a worker sees it: the claimed row, its message, and
//! what became of it.

use std::sync::Arc;

use anyhow::Result;
use chrono::{DateTime, Utc};

use super::engine::Engine;
use crate::bounces::Named;
use crate::domain::SubscriberStatus;
use crate::errors::chain;
use crate::mail::{self, BodyEncoder, MessageMeta, Outgoing, SendError, Sender};
use crate::render::{Recipient, RunContext};
use crate::store::Claimed;

/// One unit of work for a worker.
pub(super) struct Job {
    pub(super) claimed: Claimed,
    pub(super) run: Arc<RunContext>,
    /// Half the lease after the claim: past it, the row is neither sent
    /// nor released by this process (see [`Outcome::LeaseLost`]).
    pub(super) usable_until: tokio::time::Instant,
}

impl Job {
    /// Whether this process may still send the row.
    pub(super) fn usable(&self) -> bool {
        tokio::time::Instant::now() < self.usable_until
    }
}

/// The digest email of a run for one reader: what `send` delivers,
/// `preview` writes and `send --dry-run` builds, made in one place so that
/// they cannot differ.
pub fn compose(
    engine: &Engine,
    run: &RunContext,
    reader: &Recipient<'_>,
    subscriber_id: i64,
    date: DateTime<Utc>,
    encoder: &mut BodyEncoder,
) -> Result<lettre::Message> {
    let (subject, bodies) = engine.renderer.render_for_mail(run, reader, encoder)?;
    let from = &engine.settings.mail.from;
    mail::build_message(
        &MessageMeta {
            from,
            to_email: reader.email,
            to_name: reader.name,
            message_id: mail::message_id(from, run.name(), run.run_id(), subscriber_id),
            list: Some(mail::ListHeaders {
                list_id: mail::list_id(from, run.name(), run.title()),
                unsubscribe_url: engine.renderer.unsubscribe_url(reader.unsubscribe_token),
            }),
            date,
            envelope_from: run
                .run_id()
                .zip(engine.return_path.as_ref())
                .map(|(run_id, rp)| rp.for_delivery(Some(run_id), subscriber_id)),
        },
        &subject,
        bodies,
    )
}

pub(super) enum Outcome {
    Sent(i64),
    Skipped(i64),
    /// Not attempted (the relay is failing, or shutting down): back to
    /// pending without counting an attempt.
    Deferred(i64),
    /// Not attempted, because the row waited in this process (behind a
    /// rate limit, say) until its lease nearly ran out: another process may
    /// claim it once the lease is over, so this one leaves the row alone.
    LeaseLost(i64),
    Retry {
        id: i64,
        attempts: i32,
        /// The reader's address, for the log.
        to: String,
        error: String,
    },
    Failed {
        id: i64,
        to: String,
        error: String,
    },
    /// Refused at RCPT because the mailbox does not exist: failed, and a
    /// hard bounce for the reader.
    NoMailbox {
        id: i64,
        named: Named,
        to: String,
        error: String,
    },
}

impl Outcome {
    /// A failure that is final for `c`.
    pub(super) fn failed(c: &Claimed, error: String) -> Self {
        Outcome::Failed {
            id: c.id,
            to: c.email.clone(),
            error,
        }
    }

    /// A failure that `c` may be retried after (if attempts are left).
    pub(super) fn retry(c: &Claimed, error: String) -> Self {
        Outcome::Retry {
            id: c.id,
            attempts: c.attempts + 1,
            to: c.email.clone(),
            error,
        }
    }
}

/// The message of `job` as it goes out (signed), or the outcome of a job
/// that sends none.
pub(super) async fn prepare(
    engine: &Engine,
    encoder: &mut BodyEncoder,
    job: &Job,
) -> Result<Outgoing, Outcome> {
    let c = &job.claimed;
    if engine.panic_for_tests.as_deref() == Some(c.email.as_str()) {
        panic!("a fault injected for {}", c.email);
    }
    if c.subscriber_status != Some(SubscriberStatus::Confirmed) {
        return Err(Outcome::Skipped(c.id));
    }
    let token = engine.tokens.for_reader(c.subscriber_id);
    let reader = Recipient {
        name: c.name.as_deref(),
        email: &c.email,
        unsubscribe_token: &token,
    };
    let message = compose(
        engine,
        &job.run,
        &reader,
        c.subscriber_id,
        Utc::now(),
        encoder,
    )
    .map_err(|e| {
        Outcome::failed(
            c,
            format!("cannot render or build the message: {}", chain(&e)),
        )
    })?;
    // (A signature that fails is not the message's fault: it is retried.)
    engine
        .sealer
        .seal(message)
        .await
        .map_err(|e| Outcome::retry(c, chain(&e).to_string()))
}

pub(super) async fn send_one(
    sender: &mut Sender,
    job: &Job,
    message: &Outgoing,
    next: Option<&lettre::address::Envelope>,
) -> Outcome {
    let c = &job.claimed;
    let stem = format!("{}-{}-{}", job.run.name(), c.run_id, c.subscriber_id);
    match sender.send_then(message, &stem, next).await {
        Ok(()) => Outcome::Sent(c.id),
        Err(SendError::Permanent(error)) => Outcome::failed(c, error),
        Err(SendError::NoMailbox(error)) => Outcome::NoMailbox {
            id: c.id,
            named: Named {
                run_id: Some(c.run_id),
                subscriber_id: c.subscriber_id,
            },
            to: c.email.clone(),
            error,
        },
        Err(SendError::Transient(error) | SendError::Setup(error)) => Outcome::retry(c, error),
    }
}
