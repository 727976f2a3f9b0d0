//! `gazette check`: everything a deploy needs, before it is needed.

use anyhow::Result;
use chrono::Utc;

use super::process::open_store;
use crate::config::{Settings, TokenKey, TransportKind};
use crate::mail;
use crate::render::Renderer;
use crate::schedule;

/// `gazette check`: configuration and templates were checked on load; this
/// also reaches the database and, for SMTP, the relay.
pub async fn check(settings: Settings) -> Result<()> {
    let sources = settings.sources.join(", ");
    println!("configuration: ok ({sources})");
    let renderer = Renderer::new(&settings)?;
    renderer.check_web()?;
    println!(
        "templates: ok ({} digests, {})",
        settings.digests.len(),
        settings.templates_dir.display()
    );
    for (digest, why) in renderer.full_renders() {
        println!("  {digest}: each email is rendered in full for every reader (slower): {why}");
    }
    for (template, warning) in renderer.css_warnings() {
        println!("  warning: {template}: {warning}");
    }
    drop(renderer);
    for line in super::dkim::describe_keys(&settings) {
        println!("{line}");
    }
    let (store, _) = open_store(&settings).await?;
    println!(
        "database: ok ({}, {})",
        store.backend(),
        settings.database.redacted_url()
    );
    // What `gazette run` would do if started now, as its log says it.
    let now = Utc::now();
    for d in &settings.digests {
        let outlook = schedule::outlook(&store, d, now).await?;
        println!(
            "  {}: `{}` in {}, {}",
            d.name,
            d.schedule.text,
            d.timezone,
            outlook.describe(d)
        );
    }
    match &settings.web.token_key {
        TokenKey::Given(_) => println!("links: signed with web.token_key"),
        TokenKey::File(path) => println!("links: signed with the key in {}", path.display()),
    }
    store.close().await;
    match settings.mail.transport {
        TransportKind::Smtp => {
            // (Every relay of `[[relays]]`, each named.)
            let several = settings.relays.len() > 1;
            for relay in &settings.relays {
                mail::check_relay(&relay.smtp).await.map_err(|e| {
                    if several {
                        anyhow::anyhow!("relay {}: {e}", relay.name)
                    } else {
                        anyhow::anyhow!("{e}")
                    }
                })?;
                let weight = if several {
                    format!(", weight {}", relay.weight)
                } else {
                    String::new()
                };
                println!(
                    "smtp: ok ({}, tls = \"{}\"{weight})",
                    relay.name,
                    relay.smtp.tls.as_str()
                );
            }
            let workers = settings.delivery.concurrency;
            for (relay, needed) in mail::short_pools(&settings.relays, workers) {
                println!(
                    "  warning: relay {}: its weight gives it the messages of {needed:.1} of the {workers} workers, but its pool_size is {}: the other relays' workers will wait for it (raise its pool_size to {} or lower its weight)",
                    relay.name,
                    relay.smtp.pool_size,
                    needed.ceil()
                );
            }
        }
        TransportKind::Outbox => println!("mail: outbox ({})", settings.mail.outbox_dir.display()),
    }
    Ok(())
}
