//! `gazette preview`: the email `send` would deliver, as files an editor
//! opens (here), or as a local page that follows the templates as they are
//! edited ([`super::preview_server`]). Both render it with
//! [`delivery::compose`], the function `send` uses.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::{DateTime, SubsecRound, Utc};

use crate::config::{Digest, Settings};
use crate::delivery::{self, Engine};
use crate::domain::{EmailAddress, SubscriberStatus};
use crate::mail::BodyEncoder;
use crate::render::{Recipient, RunContext};
use crate::store::Timestamp;

/// The reader a preview is for.
#[derive(Debug, Clone, Copy)]
pub enum ReaderChoice<'a> {
    /// The digest's first confirmed subscriber, or the sample reader.
    Default,
    /// The sample reader, whatever the store holds.
    Sample,
    /// The subscriber with this address (on the digest or not).
    Email(&'a str),
}

/// One digest email as the editor sees it, with what it is made of.
#[derive(Debug)]
pub struct Preview {
    pub subject: String,
    pub html: String,
    pub text: String,
    /// The whole message, as `send` hands it to the relay (signed, with
    /// `[[dkim]]` keys).
    pub message: Vec<u8>,
    /// The reader's address (the sample reader's too).
    pub reader: String,
    pub articles: usize,
    /// Where the articles come from when it is not the usual window
    /// ("nothing new since the last digest: …").
    pub note: Option<String>,
    /// What makes this email differ from one `send` would deliver (a
    /// reader who is not on the digest, or not confirmed).
    pub warnings: Vec<String>,
}

impl Preview {
    /// The message's header block, as sent (folded lines and all).
    pub fn headers(&self) -> String {
        let end = self
            .message
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or(self.message.len());
        String::from_utf8_lossy(&self.message[..end]).replace("\r\n", "\n")
    }
}

/// Renders the email `send` would deliver now (or the email of an earlier
/// `run`) to `reader`.
///
/// When nothing is new for the digest (right after a send, say), the
/// preview takes the latest `max_articles` articles instead, and its
/// [`Preview::note`] says so: an empty digest shows nothing of the
/// templates.
pub async fn render_preview(
    engine: &Engine,
    digest: &str,
    reader: ReaderChoice<'_>,
    run: Option<i64>,
) -> Result<Preview> {
    let settings = &engine.settings;
    let digest = settings.require_digest(digest)?;
    let now = Utc::now().trunc_subsecs(3);
    let mut warnings = Vec::new();
    let subscriber = match reader {
        ReaderChoice::Email(email) => {
            let email = EmailAddress::parse(email)?;
            let subscriber = engine
                .store
                .find_subscriber(&email)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no subscriber {email}"))?;
            let digests = engine.store.subscriber_digests(subscriber.id).await?;
            if !digests.iter().any(|d| d == digest.name.as_str()) {
                warnings.push(format!(
                    "{email} is not a subscriber of `{}` ({}): `send` would not mail them this digest",
                    digest.name,
                    if digests.is_empty() {
                        "they receive no digest".to_string()
                    } else {
                        format!("they receive {}", digests.join(", "))
                    }
                ));
            }
            if subscriber.status != SubscriberStatus::Confirmed {
                warnings.push(format!(
                    "{email} is {}: `send` mails confirmed subscribers only",
                    subscriber.status
                ));
            }
            Some(subscriber)
        }
        ReaderChoice::Default => engine.store.first_subscriber_of(&digest.name).await?,
        ReaderChoice::Sample => None,
    };
    let (id, email, name, token) = match &subscriber {
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
    let (slot, articles, note) = match run {
        Some(run_id) => {
            let run = engine
                .store
                .run(run_id)
                .await?
                .filter(|r| r.digest == digest.name.as_str())
                .ok_or_else(|| anyhow::anyhow!("no run {run_id} of digest `{}`", digest.name))?;
            (run.slot.0, engine.store.run_articles(run_id).await?, None)
        }
        None => {
            let (articles, note) = articles_now(engine, digest, now).await?;
            (now, articles, note)
        }
    };
    let ctx = RunContext::new(digest, slot, &articles, run);
    let recipient = Recipient {
        name: name.as_deref(),
        email: &email,
        unsubscribe_token: &token,
    };
    let rendered = engine.renderer.render(&ctx, &recipient)?;
    let message = delivery::compose(
        engine,
        &ctx,
        &recipient,
        id,
        now,
        &mut BodyEncoder::default(),
    )?;
    Ok(Preview {
        subject: rendered.subject,
        html: rendered.html,
        text: rendered.text,
        message: engine.sealer.seal(message).await?.bytes,
        reader: email,
        articles: articles.len(),
        note,
        warnings,
    })
}

/// The articles a run now would take; if there are none, the latest
/// `max_articles` of the digest (its tags), with a note saying so.
pub(super) async fn articles_now(
    engine: &Engine,
    digest: &Digest,
    now: DateTime<Utc>,
) -> Result<(Vec<crate::store::RunArticle>, Option<String>)> {
    let (_, cutoff, articles) = delivery::select_for_slot(&engine.store, digest, now).await?;
    if !articles.is_empty() {
        return Ok((articles, None));
    }
    let after_a_run = engine
        .store
        .previous_cutoff(&digest.name, cutoff)
        .await?
        .is_some();
    let nothing_new = if after_a_run {
        format!("nothing new for `{}` since the last digest", digest.name)
    } else {
        format!(
            "nothing new for `{}` in its first window ({})",
            digest.name,
            humantime::format_duration(digest.window)
        )
    };
    let run_now = if digest.skip_if_empty {
        "a run now would be skipped and send nothing"
    } else {
        "a run now would send an empty digest"
    };
    let latest = engine
        .store
        .select_articles(
            Timestamp::from(DateTime::UNIX_EPOCH),
            cutoff,
            &digest.tags,
            digest.max_articles,
        )
        .await?;
    let note = match latest.len() {
        0 => format!(
            "no new articles for `{}`, and none older to show; {run_now}",
            digest.name
        ),
        1 => format!("{nothing_new}: showing the latest article instead ({run_now})"),
        n => format!("{nothing_new}: showing the latest {n} articles instead ({run_now})"),
    };
    Ok((latest, Some(note)))
}

/// The files `preview` wrote.
#[derive(Debug)]
pub struct PreviewFiles {
    pub html: PathBuf,
    pub text: PathBuf,
    pub eml: PathBuf,
    pub articles: usize,
    pub note: Option<String>,
    pub warnings: Vec<String>,
}

/// The paths of `digest`'s preview files in `out`.
fn preview_paths(out: &Path, digest: &str) -> [PathBuf; 3] {
    ["html", "txt", "eml"].map(|ext| out.join(format!("{digest}.{ext}")))
}

/// Removes the files of an earlier preview of `digest` in `out`, so that a
/// preview that fails leaves none that look current; returns those removed.
fn remove_earlier_preview(out: &Path, digest: &str) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for path in preview_paths(out, digest) {
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot remove {} of an earlier preview", path.display())
                });
            }
        }
    }
    Ok(removed)
}

/// What the error of a failed preview adds: no file was written, and the
/// earlier ones are gone.
fn not_written(digest: &str, removed: &[PathBuf]) -> String {
    if removed.is_empty() {
        return format!("no preview of `{digest}` was written");
    }
    let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
    format!(
        "no preview of `{digest}` was written, and the earlier {} removed so that none looks current",
        match names.as_slice() {
            [one] => format!("{one} was"),
            [rest @ .., last] => format!("{} and {last} were", rest.join(", ")),
            [] => unreachable!(),
        }
    )
}

/// `gazette preview DIGEST --out DIR`: the earlier files of DIGEST in DIR
/// are removed first, then the engine is opened and the preview written.
/// (Opening checks the templates: a broken one fails here, and the error
/// says the earlier files are gone.)
pub async fn preview_command(
    settings: Settings,
    digest: &str,
    subscriber: Option<&str>,
    out: &Path,
    run: Option<i64>,
) -> Result<()> {
    let name = settings.require_digest(digest)?.name.as_str().to_string();
    let removed = remove_earlier_preview(out, &name)?;
    let engine = super::open(settings)
        .await
        .with_context(|| not_written(&name, &removed))?;
    let files = write_preview(&engine, &name, subscriber, out, run, removed).await?;
    print_preview(&files);
    Ok(())
}

/// Renders the email `send` would deliver now (or the email of an earlier
/// `run`) to `subscriber` (or to the digest's first subscriber, or a
/// sample reader) into `out`, after removing the files of an earlier
/// preview (a failure leaves none behind).
pub async fn preview(
    engine: &Engine,
    digest: &str,
    subscriber: Option<&str>,
    out: &Path,
    run: Option<i64>,
) -> Result<PreviewFiles> {
    let digest = engine.settings.require_digest(digest)?.name.as_str();
    write_preview(engine, digest, subscriber, out, run, Vec::new()).await
}

/// [`preview`], after `removed` were removed.
async fn write_preview(
    engine: &Engine,
    digest: &str,
    subscriber: Option<&str>,
    out: &Path,
    run: Option<i64>,
    mut removed: Vec<PathBuf>,
) -> Result<PreviewFiles> {
    removed.extend(remove_earlier_preview(out, digest)?);
    let reader = subscriber.map_or(ReaderChoice::Default, ReaderChoice::Email);
    let written = async {
        let preview = render_preview(engine, digest, reader, run).await?;
        std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
        let [html, text, eml] = preview_paths(out, digest);
        let write = |path: &Path, bytes: &[u8]| {
            std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
        };
        write(&html, preview.html.as_bytes())?;
        write(&text, preview.text.as_bytes())?;
        write(&eml, &preview.message)?;
        Ok::<_, anyhow::Error>(PreviewFiles {
            html,
            text,
            eml,
            articles: preview.articles,
            note: preview.note,
            warnings: preview.warnings,
        })
    }
    .await;
    written.map_err(|e| {
        // The files written before a failure go too.
        let mut gone = removed;
        for path in preview_paths(out, digest) {
            if std::fs::remove_file(&path).is_ok() && !gone.contains(&path) {
                gone.push(path);
            }
        }
        e.context(not_written(digest, &gone))
    })
}

pub fn print_preview(files: &PreviewFiles) {
    println!("{}", files.html.display());
    println!("{}", files.text.display());
    println!("{}", files.eml.display());
    if let Some(note) = &files.note {
        eprintln!("note: {note}");
    }
    for warning in &files.warnings {
        eprintln!("warning: {warning}");
    }
}
