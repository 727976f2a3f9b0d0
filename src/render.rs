//! The minijinja environment over `templates/`: for each subscriber of a
//! run, a subject, an HTML body and a plain-text body.
//!
//! Templates are strict about undefined variables and `.html.j2` templates
//! are HTML auto-escaped, so article text is always data. Everything that
//! is the same for all subscribers of a run (digest, articles) is turned
//! into template values once per run ([`RunContext`]).

use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use minijinja::{Environment, UndefinedBehavior, Value, context};
use serde::Serialize;

use crate::config::{Digest, Settings};
use crate::store::RunArticle;

/// What a subscriber receives, before it becomes a MIME message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// The reader an email is rendered for.
#[derive(Debug, Clone)]
pub struct Recipient<'a> {
    pub name: Option<&'a str>,
    pub email: &'a str,
    pub unsubscribe_token: &'a str,
}

pub struct Renderer {
    env: Environment<'static>,
    base_url: String,
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

#[derive(Serialize)]
struct ArticleValue<'a> {
    title: &'a str,
    url: &'a str,
    summary: Option<&'a str>,
    body: Option<&'a str>,
    author: Option<&'a str>,
    tags: &'a [String],
    /// In the digest's time zone, e.g. "29 Nov 2026, 08:15".
    published_at: String,
    published_at_iso: String,
}

/// The per-run part of the template context, built once per run.
pub struct RunContext {
    name: String,
    title: String,
    digest: Value,
    date: Value,
    articles: Value,
    run_id: Option<i64>,
    /// The names of the run's three templates, resolved once per run.
    html_template: String,
    text_template: String,
    subject_template: String,
}

impl RunContext {
    pub fn new(
        digest: &Digest,
        slot: DateTime<Utc>,
        articles: &[RunArticle],
        run_id: Option<i64>,
    ) -> Self {
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
        let articles: Vec<ArticleValue> = articles
            .iter()
            .map(|a| {
                let at = a.published_at.with_timezone(&tz);
                ArticleValue {
                    title: &a.title,
                    url: &a.url,
                    summary: a.summary.as_deref(),
                    body: a.body.as_deref(),
                    author: a.author.as_deref(),
                    tags: &a.tags,
                    published_at: at.format("%-d %b %Y, %H:%M").to_string(),
                    published_at_iso: at.to_rfc3339(),
                }
            })
            .collect();
        Self {
            name: digest.name.to_string(),
            title: digest.title.clone(),
            digest: Value::from_serialize(&digest_value),
            date: Value::from(date),
            articles: Value::from_serialize(&articles),
            run_id,
            html_template: format!("{}.html.j2", digest.template),
            text_template: format!("{}.txt.j2", digest.template),
            subject_template: subject_template_name(digest),
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
}

fn subject_template_name(digest: &Digest) -> String {
    // No `.html` suffix: the subject is plain text, not auto-escaped.
    format!("subject/{}", digest.name)
}

impl Renderer {
    /// Loads the templates of every configured digest and renders each once
    /// with sample data, so that a syntax error or a misspelt variable stops
    /// the command now, naming the template and line.
    pub fn new(settings: &Settings) -> Result<Self> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Block tags do not leave blank lines behind (matters for text mails).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_loader(minijinja::path_loader(&settings.templates_dir));
        for digest in &settings.digests {
            env.add_template_owned(subject_template_name(digest), digest.subject.clone())
                .with_context(|| {
                    format!(
                        "the subject template of digest `{}` is invalid",
                        digest.name
                    )
                })?;
        }
        let renderer = Self {
            env,
            base_url: settings.web.base_url.clone(),
        };
        for digest in &settings.digests {
            renderer
                .check_digest(digest, &settings.templates_dir)
                .with_context(|| format!("templates of digest `{}`", digest.name))?;
        }
        Ok(renderer)
    }

    fn check_digest(&self, digest: &Digest, dir: &Path) -> Result<()> {
        for ext in ["html", "txt"] {
            let name = format!("{}.{ext}.j2", digest.template);
            self.env
                .get_template(&name)
                .map_err(|e| anyhow::anyhow!("{}: {}", dir.join(&name).display(), describe(&e)))?;
        }
        let sample = RunArticle {
            article_id: 0,
            url: "https://example.org/sample".into(),
            title: "Sample article".into(),
            summary: Some("A summary.".into()),
            body: Some("A body.".into()),
            author: Some("A. Author".into()),
            tags: vec!["sample".into()],
            published_at: Utc::now(),
        };
        let ctx = RunContext::new(digest, Utc::now(), &[sample], Some(0));
        let recipient = Recipient {
            name: Some("Sample Reader"),
            email: "reader@example.org",
            unsubscribe_token: "sample",
        };
        self.render(&ctx, &recipient)?;
        Ok(())
    }

    /// The templates of the web pages and the confirmation email, checked
    /// before `run` or `serve` starts (and by `gazette check`).
    pub const WEB_TEMPLATES: [&'static str; 7] = [
        "web/subscribe.html.j2",
        "web/message.html.j2",
        "web/unsubscribe.html.j2",
        "web/preferences.html.j2",
        "web/archive.html.j2",
        "confirm.html.j2",
        "confirm.txt.j2",
    ];

    pub fn check_web(&self) -> Result<()> {
        for name in Self::WEB_TEMPLATES {
            self.env
                .get_template(name)
                .map_err(|e| anyhow::anyhow!("{name}: {}", describe(&e)))?;
        }
        Ok(())
    }

    pub fn unsubscribe_url(&self, token: &str) -> String {
        format!("{}/unsubscribe/{token}", self.base_url)
    }

    pub fn preferences_url(&self, token: &str) -> String {
        format!("{}/preferences/{token}", self.base_url)
    }

    pub fn web_view_url(&self, run: i64, token: &str) -> String {
        format!("{}/digests/{run}/{token}", self.base_url)
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Renders any template under the templates directory (web pages,
    /// the confirmation email) with `ctx`.
    pub fn render_template(&self, name: &str, ctx: &Value) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| anyhow::anyhow!("{name}: {}", describe(&e)))?;
        template
            .render(ctx)
            .map_err(|e| anyhow::anyhow!("{name}: {}", describe(&e)))
    }

    /// Renders one subscriber's email of a run.
    pub fn render(&self, run: &RunContext, to: &Recipient<'_>) -> Result<Rendered> {
        let ctx = context! {
            digest => run.digest.clone(),
            date => run.date.clone(),
            articles => run.articles.clone(),
            run => context! { id => run.run_id },
            subscriber => context! { name => to.name, email => to.email },
            links => context! {
                unsubscribe => self.unsubscribe_url(to.unsubscribe_token),
                preferences => self.preferences_url(to.unsubscribe_token),
                web_view => run.run_id.map(|r| self.web_view_url(r, to.unsubscribe_token)),
            },
        };
        let render = |name: &str| -> Result<String> {
            let template = self
                .env
                .get_template(name)
                .map_err(|e| anyhow::anyhow!("{name}: {}", describe(&e)))?;
            template
                .render(&ctx)
                .map_err(|e| anyhow::anyhow!("{name}: {}", describe(&e)))
        };
        let subject = one_line(&render(&run.subject_template)?);
        let html = render(&run.html_template)?;
        let text = render(&run.text_template)?;
        Ok(Rendered {
            subject,
            html,
            text,
        })
    }
}

/// A minijinja error with its template, line and cause chain.
fn describe(e: &minijinja::Error) -> String {
    let mut out = match (e.name(), e.line()) {
        (Some(name), Some(line)) => format!("{} (template {name}, line {line})", e.kind()),
        _ => e.kind().to_string(),
    };
    if let Some(detail) = e.detail() {
        out.push_str(": ");
        out.push_str(detail);
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        source = inner.source();
    }
    out
}

/// Collapses control characters (CR, LF, tab) and runs of spaces into
/// single spaces: a header value can never be split or extended.
pub fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_removes_line_breaks_and_control_characters() {
        assert_eq!(
            one_line(" Hello\r\nBcc: evil@example.org\t\u{7}x  "),
            "Hello Bcc: evil@example.org x"
        );
    }
}
