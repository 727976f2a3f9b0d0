//! `gazette subscribers …`: add, remove, list, import, export.

use std::io::Write as _;

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;

use super::process::{counted, digest_names};
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

/// How `subscribers list` writes each subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// Tab-separated: email, name, status, digests (`;`-separated).
    Text,
    /// One JSON object a line: `{"email","name","status","digests"}`.
    Json,
}

fn parse_status(status: Option<&str>) -> Result<Option<SubscriberStatus>> {
    status
        .map(|s| {
            SubscriberStatus::parse(s).ok_or_else(|| {
                anyhow::anyhow!("unknown status `{s}` (pending, confirmed, unsubscribed, bounced)")
            })
        })
        .transpose()
}

pub async fn subscribers_list(
    engine: &Engine,
    status: Option<&str>,
    format: ListFormat,
) -> Result<()> {
    let mut rows = engine.store.stream_subscribers(parse_status(status)?);
    let mut count = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    while let Some((s, digests)) = rows.try_next().await? {
        match format {
            ListFormat::Text => writeln!(
                out,
                "{}\t{}\t{}\t{}",
                s.email,
                s.name.as_deref().unwrap_or(""),
                s.status,
                digests.join(";")
            )?,
            ListFormat::Json => {
                let line = serde_json::json!({
                    "email": s.email,
                    "name": s.name,
                    "status": s.status.as_str(),
                    "digests": digests,
                });
                writeln!(out, "{line}")?
            }
        }
        count += 1;
    }
    out.flush()?;
    eprintln!("{}", counted(count, "subscriber", "subscribers"));
    Ok(())
}

/// `gazette subscribers export FILE`: the confirmed subscribers as the CSV
/// that `subscribers import` reads (`-`: standard output). Only confirmed
/// ones: an import makes every row confirmed, so exporting those who left
/// or never confirmed would subscribe them again.
pub async fn subscribers_export(engine: &Engine, path: &str) -> Result<()> {
    let out: Box<dyn std::io::Write + Send> = if path == "-" {
        Box::new(std::io::stdout())
    } else {
        let file = std::fs::File::create(path).with_context(|| format!("cannot write {path}"))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let mut csv = csv::Writer::from_writer(out);
    csv.write_record(["email", "name", "digests"])?;
    let mut rows = engine
        .store
        .stream_subscribers(Some(SubscriberStatus::Confirmed));
    let mut count = 0u64;
    while let Some((s, digests)) = rows.try_next().await? {
        csv.write_record([
            s.email.as_str(),
            s.name.as_deref().unwrap_or(""),
            digests.join(";").as_str(),
        ])?;
        count += 1;
    }
    csv.flush()?;
    let shown = if path == "-" { "standard output" } else { path };
    eprintln!(
        "exported {} to {shown}",
        counted(count, "confirmed subscriber", "confirmed subscribers")
    );
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
