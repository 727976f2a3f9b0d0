//! `gazette subscribers …`: add, set, remove, list, import, export.

use std::io::Write as _;

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;

use super::process::{counted, digest_names};
use super::progress::Progress;
use crate::delivery::Engine;
use crate::domain::{DigestName, EmailAddress, SubscriberStatus, check_name};
use crate::import;
use crate::store::{NewSubscriber, SubscriberChange, Timestamp};

/// A subscriber as the operator sees them, to say what a command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    name: Option<String>,
    status: SubscriberStatus,
    digests: Vec<String>,
}

async fn seen(engine: &Engine, email: &EmailAddress) -> Result<Option<(i64, Seen)>> {
    let Some(s) = engine.store.find_subscriber(email).await? else {
        return Ok(None);
    };
    let digests = engine.store.subscriber_digests(s.id).await?;
    Ok(Some((
        s.id,
        Seen {
            name: s.name,
            status: s.status,
            digests,
        },
    )))
}

/// What changed from `before` to `after`, in words; empty: nothing.
fn changes(before: &Seen, after: &Seen) -> Vec<String> {
    let name = |n: &Option<String>| {
        n.as_deref()
            .map_or("no name".to_string(), |n| format!("\"{n}\""))
    };
    let digests = |d: &[String]| {
        if d.is_empty() {
            "no digest".to_string()
        } else {
            d.join(", ")
        }
    };
    let mut said = Vec::new();
    if before.name != after.name {
        said.push(format!(
            "name {} → {}",
            name(&before.name),
            name(&after.name)
        ));
    }
    if before.status != after.status {
        said.push(format!("status {} → {}", before.status, after.status));
    }
    if before.digests != after.digests {
        said.push(format!(
            "digests {} → {}",
            digests(&before.digests),
            digests(&after.digests)
        ));
    }
    said
}

fn say_changes(email: &EmailAddress, before: &Seen, after: &Seen) {
    let said = changes(before, after);
    if said.is_empty() {
        println!(
            "{email}: nothing changed ({}, {})",
            after.status,
            if after.digests.is_empty() {
                "no digest".to_string()
            } else {
                after.digests.join(", ")
            }
        );
    } else {
        println!("updated {email}: {}", said.join("; "));
    }
    if matches!(
        after.status,
        SubscriberStatus::Unsubscribed | SubscriberStatus::Bounced
    ) {
        println!(
            "{email} is {}: not mailed until it is set to confirmed",
            after.status
        );
    }
}

/// `gazette subscribers add`: a new subscriber, confirmed (the operator
/// vouches), to the digests given (default: all); for an existing one,
/// the name and digests given are added (their other digests kept), and a
/// pending subscriber becomes confirmed. Says what changed.
pub async fn subscribers_add(
    engine: &Engine,
    email: &str,
    name: Option<String>,
    digests: &[String],
) -> Result<()> {
    let email = EmailAddress::parse(email)?;
    name.as_deref().map(check_name).transpose()?;
    let known = digest_names(&engine.settings);
    let mut chosen =
        import::parse_digest_list(&digests.join(";"), &known).map_err(anyhow::Error::msg)?;
    if chosen.is_empty() {
        bail!("no digest is configured: add a [[digests]] section to the configuration first");
    }
    let before = seen(engine, &email).await?;
    if let Some((_, before)) = &before
        && digests.is_empty()
    {
        // Without --digest an existing subscriber keeps the digests they had.
        chosen = before
            .digests
            .iter()
            .filter_map(|d| DigestName::parse(d).ok())
            .collect();
    }
    engine
        .store
        .upsert_subscribers(
            &[NewSubscriber {
                email: email.clone(),
                name: name.filter(|n| !n.trim().is_empty()),
                digests: chosen.clone(),
            }],
            Timestamp::now(),
        )
        .await?;
    match before {
        None => {
            let list: Vec<&str> = chosen.iter().map(DigestName::as_str).collect();
            println!("added {email} (confirmed) to {}", list.join(", "));
        }
        Some((_, before)) => {
            let (_, after) = seen(engine, &email)
                .await?
                .context("the subscriber vanished")?;
            say_changes(&email, &before, &after);
        }
    }
    Ok(())
}

/// `gazette subscribers set`: changes an existing subscriber's name,
/// digests (replaced by those given) or status. Says what changed.
pub async fn subscribers_set(
    engine: &Engine,
    email: &str,
    name: Option<String>,
    digests: &[String],
    status: Option<&str>,
) -> Result<()> {
    let email = EmailAddress::parse(email)?;
    let status = match parse_status(status)? {
        Some(SubscriberStatus::Pending) => {
            bail!(
                "a subscriber cannot be set back to pending: use confirmed, unsubscribed or bounced"
            )
        }
        other => other,
    };
    let known = digest_names(&engine.settings);
    let chosen = if digests.is_empty() {
        None
    } else {
        Some(import::parse_digest_list(&digests.join(";"), &known).map_err(anyhow::Error::msg)?)
    };
    let Some((id, before)) = seen(engine, &email).await? else {
        bail!("no subscriber {email}: add one with `gazette subscribers add`");
    };
    // As given, before trimming: `add` refuses a trailing tab too.
    name.as_deref().map(check_name).transpose()?;
    let name = name.map(|n| n.trim().to_string());
    let change = SubscriberChange {
        name: name.as_ref().map(|n| (!n.is_empty()).then_some(n.as_str())),
        digests: chosen.as_deref(),
        status,
    };
    engine
        .store
        .update_subscriber(id, &change, Timestamp::now())
        .await?;
    let (_, after) = seen(engine, &email)
        .await?
        .context("the subscriber vanished")?;
    say_changes(&email, &before, &after);
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

/// `gazette subscribers import FILE` (`-`: standard input): streamed, a
/// row at a time, into one transaction; a bad row (with every other one
/// found, by line) leaves nothing imported.
pub async fn subscribers_import(engine: &Engine, path: &str) -> Result<()> {
    let shown = if path == "-" { "standard input" } else { path };
    let known = digest_names(&engine.settings);
    let nothing = || format!("{shown}: nothing was imported");
    let (input, total): (Box<dyn std::io::Read + Send>, Option<u64>) = if path == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), None)
    } else {
        let open = || std::fs::File::open(path).with_context(|| format!("cannot read {path}"));
        // A first quick read counts the rows, for the progress bar.
        let total = import::count_csv_records(std::io::BufReader::new(open()?));
        (Box::new(std::io::BufReader::new(open()?)), Some(total))
    };
    let mut rows = import::SubscriberCsv::new(input, &known).with_context(nothing)?;
    let mut staging = Some(engine.store.begin_subscriber_import(&known).await?);
    let progress = match total {
        Some(total) => Progress::start(format!("{shown}: importing"), total, "subscribers"),
        None => Progress::counting(format!("{shown}: importing"), "subscribers"),
    };
    let mut problems = import::Problems::default();
    let mut count = 0u64;
    while let Some(row) = rows.next_row() {
        match row {
            Ok((line, subscriber)) => {
                if let Some(staging) = &mut staging {
                    staging
                        .push(line, &subscriber)
                        .await
                        .with_context(nothing)?;
                    count += 1;
                    progress.set(count);
                }
            }
            Err(problem) => {
                // Nothing will be imported: the rest of the file is read
                // only to name its other bad rows.
                staging = None;
                problems.push(problem);
            }
        }
    }
    drop(progress);
    let Some(staging) = staging.filter(|_| problems.is_empty()) else {
        return Err(problems.into_error()).with_context(nothing);
    };
    if count == 0 {
        return Err(anyhow::anyhow!(
            "no subscribers found below the header line"
        ))
        .with_context(nothing);
    }
    let counts = staging
        .finish(Timestamp::now(), &mut |warning| {
            eprintln!("warning: {shown}: {warning}")
        })
        .await
        .with_context(nothing)?;
    println!(
        "imported {} from {shown} ({} new, {} updated, {} left unsubscribed)",
        counted(count, "subscriber", "subscribers"),
        counts.added,
        counts.updated,
        counts.kept_inactive
    );
    Ok(())
}
