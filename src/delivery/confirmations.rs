//! Confirmation emails (double opt-in), sent in the background from the
//! rows the subscribe requests leave in the store: a request never waits
//! for the relay, a relay that is down delays the email, and a refusal is
//! recorded instead of reaching the reader's page.

use std::time::Duration;

use anyhow::Result;
use chrono::Utc;
use minijinja::context;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::engine::Engine;
use super::policy::backoff;
use crate::bounces;
use crate::domain::{BounceKind, BounceSource};
use crate::errors::chain;
use crate::mail::{self, BodyEncoder, MessageMeta, Rendered, SendError, Sender};
use crate::store::{ConfirmationEmail, Timestamp};

/// Confirmation emails claimed at a time.
const BATCH: u32 = 20;
/// The longest wait between two looks at the store.
const LONGEST_WAIT: Duration = Duration::from_secs(60);

/// Sends the confirmation emails that wait, until `shutdown` turns true:
/// woken by [`Engine::confirmations_due`] when a request adds one, and at
/// the time the next retry is due.
pub async fn mail_confirmations(engine: Engine, mut shutdown: watch::Receiver<bool>) {
    let mut sender = Sender::beside(&engine.settings, &engine.relays);
    let mut failing = false;
    while !*shutdown.borrow() {
        let wait = match send_due(&engine, &mut sender).await {
            Ok(true) => continue,
            Ok(false) => {
                if std::mem::take(&mut failing) {
                    info!("database reachable again: confirmation emails go out");
                }
                let next = engine.store.next_confirmation_email_at().await;
                match next {
                    Ok(Some(at)) => (at.0 - Utc::now()).to_std().unwrap_or_default(),
                    _ => LONGEST_WAIT,
                }
            }
            Err(e) => {
                if !std::mem::replace(&mut failing, true) {
                    warn!("cannot send confirmation emails, retrying: {}", chain(&e));
                }
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = engine.confirmations_due.notified() => {}
            _ = tokio::time::sleep(wait.clamp(Duration::from_millis(50), LONGEST_WAIT)) => {}
            _ = shutdown.changed() => {}
        }
    }
    sender.close().await;
}

/// Claims the emails that are due and sends them; `false` if none was due.
async fn send_due(engine: &Engine, sender: &mut Sender) -> Result<bool> {
    let now = Utc::now();
    let lease = chrono::Duration::from_std(engine.settings.delivery.lease)
        .unwrap_or(chrono::Duration::minutes(5));
    let due = engine
        .store
        .claim_confirmation_emails(Timestamp::from(now), Timestamp::from(now + lease), BATCH)
        .await?;
    if due.is_empty() {
        return Ok(false);
    }
    for email in due {
        send_one(engine, sender, &email).await?;
    }
    Ok(true)
}

/// Sends one confirmation email and records what became of it.
async fn send_one(engine: &Engine, sender: &mut Sender, email: &ConfirmationEmail) -> Result<()> {
    let store = &engine.store;
    let sent = match confirmation_message(engine, email) {
        Ok(message) => match engine.sealer.seal(message).await {
            Ok(message) => {
                let stem = format!("confirm-{}", &email.token_hash[..16]);
                sender.send(&message, &stem).await
            }
            Err(e) => Err(SendError::Transient(chain(&e).to_string())),
        },
        Err(e) => Err(SendError::Permanent(format!(
            "cannot build the email: {}",
            chain(&e)
        ))),
    };
    let attempts = email.attempts + 1;
    match sent {
        Ok(()) => {
            debug!(subscriber = email.subscriber_id, "confirmation email sent");
            store.confirmation_email_sent(&email.token_hash).await
        }
        Err(SendError::Permanent(error)) => {
            warn!(subscriber = email.subscriber_id, %error, "confirmation email refused");
            store
                .confirmation_email_failed(&email.token_hash, &error)
                .await
        }
        Err(SendError::NoMailbox(error)) => {
            warn!(subscriber = email.subscriber_id, %error, "confirmation email refused: no such mailbox");
            store
                .confirmation_email_failed(&email.token_hash, &error)
                .await?;
            if !engine.settings.bounces.enabled() {
                return Ok(());
            }
            let ledger = bounces::Ledger {
                store,
                metrics: &engine.metrics,
                limits: bounces::limits(&engine.settings),
            };
            let named = bounces::Named {
                run_id: None,
                subscriber_id: email.subscriber_id,
            };
            bounces::record(ledger, named, BounceKind::Hard, BounceSource::Smtp, &error)
                .await
                .map(|_| ())
        }
        Err(SendError::Transient(error) | SendError::Setup(error))
            if attempts >= engine.settings.delivery.max_attempts as i32 =>
        {
            warn!(subscriber = email.subscriber_id, %error, attempts, "confirmation email given up");
            let error = format!("{error} (gave up after {attempts} attempts)");
            store
                .confirmation_email_failed(&email.token_hash, &error)
                .await
        }
        Err(SendError::Transient(error) | SendError::Setup(error)) => {
            let at = Utc::now() + backoff(&engine.settings, attempts);
            warn!(subscriber = email.subscriber_id, %error, attempts, retry_at = %at, "confirmation email will be retried");
            store
                .confirmation_email_retry(&email.token_hash, Timestamp::from(at), &error)
                .await
        }
    }
}

/// The confirmation email: `templates/confirm.html.j2` and
/// `confirm.txt.j2`, with a Message-ID of its own that a retry keeps.
fn confirmation_message(engine: &Engine, email: &ConfirmationEmail) -> Result<lettre::Message> {
    let settings = &engine.settings;
    let site = settings.mail.site_name();
    let digests: Vec<String> = serde_json::from_str(&email.digests)?;
    let titles: Vec<String> = digests
        .iter()
        .filter_map(|d| settings.digest(d).map(|d| d.title.clone()))
        .collect();
    let ctx = context! {
        site => site.clone(),
        confirm_url => format!("{}/confirm/{}", settings.web.base_url, email.link_token),
        digests => titles,
        subscriber => context! { name => email.name.clone(), email => email.email.clone() },
        ttl_hours => settings.web.confirm_ttl.as_secs() / 3600,
    };
    let rendered = Rendered {
        subject: format!("Confirm your subscription to {site}"),
        html: engine.renderer.render_email_html("confirm.html.j2", &ctx)?,
        text: engine.renderer.render_template("confirm.txt.j2", &ctx)?,
    };
    let from = &settings.mail.from;
    mail::build_message(
        &MessageMeta {
            from,
            to_email: &email.email,
            to_name: email.name.as_deref(),
            message_id: format!(
                "<confirm.{}@{}>",
                &email.token_hash[..24],
                from.email.domain()
            ),
            list: None,
            date: Utc::now(),
            envelope_from: engine
                .return_path
                .as_ref()
                .map(|rp| rp.for_delivery(None, email.subscriber_id)),
        },
        &rendered.subject,
        BodyEncoder::default().bodies(&rendered.text, &rendered.html),
    )
}
