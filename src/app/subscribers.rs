//! `gazette subscribers …`: add, remove, list, import.

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;

use super::process::digest_names;
use crate::delivery::Engine;
use crate::domain::{DigestName, EmailAddress, SubscriberStatus};
use crate::import;
use crate::store::{NewSubscriber, Timestamp};

pub async fn subscribers_add(
    engine: &Engine,
    email: &str,
    name: Option<String>,
    digests: &[String],
) -> Result<()> {
    let email = EmailAddress::parse(email)?;
    let known = digest_names(&engine.settings);
    let digests =
        import::parse_digest_list(&digests.join(";"), &known).map_err(anyhow::Error::msg)?;
    if digests.is_empty() {
        bail!("no digest is configured: add a [[digests]] section to the configuration first");
    }
    let counts = engine
        .store
        .upsert_subscribers(
            &[NewSubscriber {
                email: email.clone(),
                name: name.filter(|n| !n.trim().is_empty()),
                digests: digests.clone(),
            }],
            Timestamp::now(),
        )
        .await?;
    let list: Vec<&str> = digests.iter().map(DigestName::as_str).collect();
    if counts.added == 1 {
        println!("added {email} (confirmed) to {}", list.join(", "));
    } else if counts.kept_inactive == 1 {
        println!("{email} had unsubscribed or bounced: subscriptions updated, still not mailed");
    } else {
        println!("updated {email}: subscribed to {}", list.join(", "));
    }
    Ok(())
}

pub async fn subscribers_remove(engine: &Engine, email: &str) -> Result<()> {
    let email = EmailAddress::parse(email)?;
    if engine.store.remove_subscriber(&email).await? {
        println!("removed {email}");
        Ok(())
    } else {
        bail!("no subscriber {email}")
    }
}

pub async fn subscribers_list(engine: &Engine, status: Option<&str>) -> Result<()> {
    let status = match status {
        Some(s) => Some(SubscriberStatus::parse(s).ok_or_else(|| {
            anyhow::anyhow!("unknown status `{s}` (pending, confirmed, unsubscribed, bounced)")
        })?),
        None => None,
    };
    let mut rows = engine.store.stream_subscribers(status);
    let mut count = 0u64;
    while let Some(s) = rows.try_next().await? {
        let digests = engine.store.subscriber_digests(s.id).await?;
        println!(
            "{}\t{}\t{}\t{}",
            s.email,
            s.name.as_deref().unwrap_or(""),
            s.status,
            digests.join(";")
        );
        count += 1;
    }
    eprintln!("{count} subscribers");
    Ok(())
}

pub async fn subscribers_import(engine: &Engine, path: &str) -> Result<()> {
    let shown = if path == "-" { "standard input" } else { path };
    let known = digest_names(&engine.settings);
    let subscribers = if path == "-" {
        import::parse_subscribers_csv(std::io::stdin().lock(), &known)
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
        import::parse_subscribers_csv(std::io::BufReader::new(file), &known)
    }
    .with_context(|| format!("{shown}: nothing was imported"))?;
    let counts = engine
        .store
        .upsert_subscribers(&subscribers, Timestamp::now())
        .await
        .with_context(|| format!("{shown}: nothing was imported"))?;
    println!(
        "imported {} subscribers from {shown} ({} new, {} updated, {} left unsubscribed)",
        subscribers.len(),
        counts.added,
        counts.updated,
        counts.kept_inactive
    );
    Ok(())
}
