//! What a template sees: the per-run values (digest, date, articles),
//! built once per run, and the reader an email is rendered for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use minijinja::{Value, context};
use serde::Serialize;

use super::fast::{FIELDS, Pattern, Skeleton};
use crate::config::Digest;
use crate::store::RunArticle;

/// The reader an email is rendered for.
#[derive(Debug, Clone)]
pub struct Recipient<'a> {
    pub name: Option<&'a str>,
    pub email: &'a str,
    pub unsubscribe_token: &'a str,
}

#[derive(Serialize)]
struct DigestValue<'a> {
    name: &'a str,
    title: &'a str,
    /// The slot's date in the digest's time zone, e.g. "Sunday, 29 November 2026".
    date: String,
    date_iso: String,
    timezone: &'a str,
}

/// The per-run part of the template context, built once per run.
pub struct RunContext {
    /// The run's emails rendered once with markers in place of the
    /// reader's values, one per [`Pattern`] (see [`Skeleton`]).
    pub(super) skeletons: Mutex<HashMap<Pattern, Option<Arc<Skeleton>>>>,
    /// Set when a skeleton's email differed from the full rendering: the
    /// rest of the run is rendered in full.
    pub(super) full_only: AtomicBool,
    spoiled: AtomicBool,
    pub(super) name: String,
    pub(super) title: String,
    pub(super) digest: Value,
    pub(super) date: Value,
    pub(super) articles: Value,
    pub(super) run_id: Option<i64>,
    /// The names of the run's three templates, resolved once per run.
    pub(super) html_template: String,
    pub(super) text_template: String,
    pub(super) subject_template: String,
}

impl RunContext {
    pub fn new(
        digest: &Digest,
        slot: DateTime<Utc>,
        articles: &[RunArticle],
        run_id: Option<i64>,
    ) -> Self {
        let [subject_template, html_template, text_template] = template_names(digest);
        let tz = digest.timezone;
        let local = slot.with_timezone(&tz);
        let date = local.format("%A, %-d %B %Y").to_string();
        let digest_value = DigestValue {
            name: digest.name.as_str(),
            title: &digest.title,
            date: date.clone(),
            date_iso: local.format("%Y-%m-%d").to_string(),
            timezone: tz.name(),
        };
        let articles: Vec<Value> = articles.iter().map(|a| article_value(a, tz)).collect();
        Self {
            skeletons: Mutex::default(),
            full_only: AtomicBool::new(false),
            spoiled: AtomicBool::new(false),
            name: digest.name.to_string(),
            title: digest.title.clone(),
            digest: Value::from_serialize(&digest_value),
            date: Value::from(date),
            articles: Value::from(articles),
            run_id,
            html_template,
            text_template,
            subject_template,
        }
    }
}

impl RunContext {
    /// The digest's name, as configured.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn title(&self) -> &str {
        &self.title
    }

    /// The run; `None` for a preview of what is new now.
    pub fn run_id(&self) -> Option<i64> {
        self.run_id
    }

    /// Whether this run renders every email in full, having found a
    /// skeleton that differs from the full rendering.
    pub fn renders_in_full(&self) -> bool {
        self.full_only.load(Ordering::Relaxed)
    }

    /// The names of the run's subject, HTML and text templates.
    pub(super) fn template_names(&self) -> [&str; 3] {
        [
            &self.subject_template,
            &self.html_template,
            &self.text_template,
        ]
    }

    /// Makes every skeleton of this run differ from the full rendering (a
    /// stray byte at the end of its HTML), as a minijinja change that the
    /// analysis missed would: for the tests of the fallback to rendering
    /// in full.
    #[doc(hidden)]
    pub fn spoil_skeletons_for_tests(&self) {
        self.spoiled.store(true, Ordering::Relaxed);
    }

    /// `skeleton`, spoiled if [`RunContext::spoil_skeletons_for_tests`]
    /// was called.
    pub(super) fn as_built(&self, skeleton: Skeleton) -> Skeleton {
        if self.spoiled.load(Ordering::Relaxed) {
            skeleton.spoiled()
        } else {
            skeleton
        }
    }

    /// The template context of a run for these reader values.
    pub(super) fn context(&self, values: [Option<&str>; FIELDS]) -> Value {
        let [name, email, unsubscribe, preferences, web_view] = values;
        context! {
            digest => self.digest.clone(),
            date => self.date.clone(),
            articles => self.articles.clone(),
            run => context! { id => self.run_id },
            subscriber => context! { name => name, email => email },
            links => context! {
                unsubscribe => unsubscribe,
                preferences => preferences,
                web_view => web_view,
            },
        }
    }
}

/// An article as templates see it. `summary` and `body` print as they
/// are when they are sanitized HTML (from a feed) and are escaped when
/// they are plain text; `summary_text` is the summary as plain text
/// either way, for the text part.
fn article_value(a: &RunArticle, tz: chrono_tz::Tz) -> Value {
    let at = a.published_at.with_timezone(&tz);
    let markup = |text: &Option<String>| match text {
        Some(text) if a.html => Value::from_safe_string(text.clone()),
        Some(text) => Value::from(text.as_str()),
        None => Value::from(()),
    };
    let summary_text = if a.html {
        a.summary_text.as_deref()
    } else {
        a.summary.as_deref()
    };
    Value::from_iter([
        ("title", Value::from(a.title.as_str())),
        ("url", Value::from(a.url.as_str())),
        ("summary", markup(&a.summary)),
        ("summary_text", Value::from(summary_text)),
        ("body", markup(&a.body)),
        ("author", Value::from(a.author.as_deref())),
        ("tags", Value::from_serialize(&a.tags)),
        ("image_url", Value::from(a.image_url.as_deref())),
        // In the digest's time zone, e.g. "29 Nov 2026, 08:15".
        (
            "published_at",
            Value::from(at.format("%-d %b %Y, %H:%M").to_string()),
        ),
        ("published_at_iso", Value::from(at.to_rfc3339())),
    ])
}

pub(super) fn subject_template_name(digest: &Digest) -> String {
    // No `.html` suffix: the subject is plain text, not auto-escaped.
    format!("subject/{}", digest.name)
}

/// The subject, HTML and text templates of a digest.
pub(super) fn template_names(digest: &Digest) -> [String; 3] {
    [
        subject_template_name(digest),
        format!("{}.html.j2", digest.template),
        format!("{}.txt.j2", digest.template),
    ]
}
