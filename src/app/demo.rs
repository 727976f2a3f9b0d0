//! `gazette demo`: sample articles and readers, and a first digest in the
//! outbox, on a machine with no server.

use std::path::Path;

use anyhow::{Result, bail};
use chrono::Utc;

use super::preview::preview;
use super::process::counted;
use super::send::send;
use crate::delivery::Engine;
use crate::domain::EmailAddress;
use crate::import;
use crate::store::{NewSubscriber, Timestamp};

const DEMO_ARTICLES: &str = include_str!("../demo_articles.json");

/// Loads sample articles and readers into the configured store and sends
/// the first digest, so a newcomer sees a real email without a server.
pub async fn demo(engine: &Engine) -> Result<()> {
    let Some(digest) = engine.settings.digests.first().cloned() else {
        bail!("no digest is configured: add a [[digests]] section to the configuration");
    };
    // The sample articles are marked as published just now, so every demo
    // run has something new to send.
    let now = Utc::now();
    let mut articles = import::parse_articles(DEMO_ARTICLES, now)?;
    for (i, a) in articles.iter_mut().enumerate() {
        a.published_at = Timestamp::from(now - chrono::Duration::milliseconds(i as i64 + 1));
    }
    engine
        .store
        .upsert_articles(&articles, Timestamp::from(now))
        .await?;
    println!(
        "loaded {}",
        counted(articles.len() as u64, "sample article", "sample articles")
    );
    let readers = [
        ("ada@example.org", "Ada Lovelace"),
        ("grace@example.org", "Grace Hopper"),
        ("zoe@example.org", "Zoë Ünal"),
    ];
    let subs: Vec<NewSubscriber> = readers
        .iter()
        .map(|(email, name)| {
            Ok(NewSubscriber {
                email: EmailAddress::parse(email)?,
                name: Some(name.to_string()),
                digests: vec![digest.name.clone()],
            })
        })
        .collect::<Result<_>>()?;
    engine
        .store
        .upsert_subscribers(&subs, Timestamp::from(now))
        .await?;
    println!(
        "added {}",
        counted(subs.len() as u64, "sample subscriber", "sample subscribers")
    );
    // The run's slot is the moment the sample articles were published by.
    let run = send(engine, digest.name.as_str(), Some(now), false).await?;
    let files = preview(
        engine,
        digest.name.as_str(),
        None,
        Path::new("preview"),
        run,
    )
    .await?;
    println!(
        "open {} in a browser to see the digest as an HTML page",
        files.html.display()
    );
    Ok(())
}
