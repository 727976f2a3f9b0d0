//! `gazette preview`: the email `send` would deliver, as files an editor
//! opens.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{SubsecRound, Utc};

use crate::config::Digest;
use crate::delivery::{self, Engine};
use crate::domain::EmailAddress;
use crate::mail::BodyEncoder;
use crate::render::{Recipient, RunContext};

/// The files `preview` wrote.
#[derive(Debug)]
pub struct PreviewFiles {
    pub html: PathBuf,
    pub text: PathBuf,
    pub eml: PathBuf,
    pub articles: usize,
}

/// Renders the email `send` would deliver now (or the email of an earlier
/// `run`) to `subscriber` (or to the digest's first subscriber, or a
/// sample reader) into `out`.
pub async fn preview(
    engine: &Engine,
    digest: &str,
    subscriber: Option<&str>,
    out: &Path,
    run: Option<i64>,
) -> Result<PreviewFiles> {
    let settings = &engine.settings;
    let digest = settings.require_digest(digest)?;
    let now = Utc::now().trunc_subsecs(3);
    let reader = match subscriber {
        Some(email) => {
            let email = EmailAddress::parse(email)?;
            Some(
                engine
                    .store
                    .find_subscriber(&email)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("no subscriber {email}"))?,
            )
        }
        None => engine.store.first_subscriber_of(&digest.name).await?,
    };
    let (id, email, name, token) = match &reader {
        Some(s) => (
            s.id,
            s.email.clone(),
            s.name.clone(),
            engine.tokens.for_reader(s.id),
        ),
        None => (
            0,
            "reader@example.org".to_string(),
            Some("Sample Reader".to_string()),
            "sample-token".to_string(),
        ),
    };
    let (slot, articles) = match run {
        Some(run_id) => {
            let run = engine
                .store
                .run(run_id)
                .await?
                .filter(|r| r.digest == digest.name.as_str())
                .ok_or_else(|| anyhow::anyhow!("no run {run_id} of digest `{}`", digest.name))?;
            (run.slot.0, engine.store.run_articles(run_id).await?)
        }
        None => (
            now,
            delivery::select_for_slot(&engine.store, digest, now)
                .await?
                .2,
        ),
    };
    let ctx = RunContext::new(digest, slot, &articles, run);
    let reader = Recipient {
        name: name.as_deref(),
        email: &email,
        unsubscribe_token: &token,
    };
    let rendered = engine.renderer.render(&ctx, &reader)?;
    let message = delivery::compose(engine, &ctx, &reader, id, now, &mut BodyEncoder::default())?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let files = PreviewFiles {
        html: out.join(format!("{}.html", digest.name)),
        text: out.join(format!("{}.txt", digest.name)),
        eml: out.join(format!("{}.eml", digest.name)),
        articles: articles.len(),
    };
    let write = |path: &Path, bytes: &[u8]| {
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
    };
    write(&files.html, rendered.html.as_bytes())?;
    write(&files.text, rendered.text.as_bytes())?;
    write(&files.eml, &message.formatted())?;
    Ok(files)
}

pub fn print_preview(digest: &Digest, files: &PreviewFiles) {
    println!("{}", files.html.display());
    println!("{}", files.text.display());
    println!("{}", files.eml.display());
    if files.articles == 0 {
        eprintln!(
            "note: no new articles for `{}`{}",
            digest.name,
            if digest.skip_if_empty {
                "; a run now would be skipped and send nothing"
            } else {
                ""
            }
        );
    }
}
