//! The minijinja environment over `templates/`: for each subscriber of a
//! run, a subject, an HTML body and a plain-text body.
//!
//! Templates are strict about undefined variables and `.html.j2` templates
//! are HTML auto-escaped, so article text is always data. Everything that
//! is the same for all subscribers of a run (digest, articles) is turned
//! into template values once per run ([`RunContext`]).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use minijinja::machinery;
use minijinja::{
    AutoEscape, Environment, HtmlEscape, Output, State, UndefinedBehavior, Value, context,
};
use serde::Serialize;

use crate::config::{Digest, Settings};
use crate::mail::{BodyEncoder, EncodedBodies, encode_body};
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
    markers: Markers,
    /// The digests whose emails are rendered from a skeleton per run.
    skeleton_digests: HashSet<String>,
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
    /// The run's emails rendered once with markers in place of the
    /// reader's values, one per [`Pattern`] (see [`Skeleton`]).
    skeletons: Mutex<HashMap<Pattern, Option<Arc<Skeleton>>>>,
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
            skeletons: Mutex::default(),
            name: digest.name.to_string(),
            title: digest.title.clone(),
            digest: Value::from_serialize(&digest_value),
            date: Value::from(date),
            articles: Value::from_serialize(&articles),
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

    /// The skeleton for `pattern`, built on first use.
    fn skeleton(
        &self,
        pattern: Pattern,
        build: impl FnOnce() -> Option<Skeleton>,
    ) -> Option<Arc<Skeleton>> {
        let mut skeletons = self
            .skeletons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        skeletons
            .entry(pattern)
            .or_insert_with(|| build().map(Arc::new))
            .clone()
    }
}

fn subject_template_name(digest: &Digest) -> String {
    // No `.html` suffix: the subject is plain text, not auto-escaped.
    format!("subject/{}", digest.name)
}

/// The subject, HTML and text templates of a digest.
fn template_names(digest: &Digest) -> [String; 3] {
    [
        subject_template_name(digest),
        format!("{}.html.j2", digest.template),
        format!("{}.txt.j2", digest.template),
    ]
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
        let markers = Markers::new();
        let formatter = markers.clone();
        env.set_formatter(move |out, state, value| formatter.format(out, state, value));
        for digest in &settings.digests {
            env.add_template_owned(subject_template_name(digest), digest.subject.clone())
                .with_context(|| {
                    format!(
                        "the subject template of digest `{}` is invalid",
                        digest.name
                    )
                })?;
        }
        let mut renderer = Self {
            env,
            base_url: settings.web.base_url.clone(),
            markers,
            skeleton_digests: HashSet::new(),
        };
        for digest in &settings.digests {
            renderer
                .check_digest(digest, &settings.templates_dir)
                .with_context(|| format!("templates of digest `{}`", digest.name))?;
        }
        for digest in &settings.digests {
            let mut seen = HashSet::new();
            let only_printed = template_names(digest)
                .iter()
                .all(|name| reader_values_only_printed(&renderer.env, name, &mut seen));
            if only_printed {
                renderer.skeleton_digests.insert(digest.name.to_string());
            } else {
                tracing::info!(
                    digest = %digest.name,
                    "the templates do more with reader values than print or test them: \
                     each email is rendered in full"
                );
            }
        }
        Ok(renderer)
    }

    fn check_digest(&self, digest: &Digest, dir: &Path) -> Result<()> {
        for name in &template_names(digest)[1..] {
            self.env
                .get_template(name)
                .map_err(|e| anyhow::anyhow!("{}: {}", dir.join(name).display(), describe(&e)))?;
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

    /// Whether the emails of `digest` are rendered from a skeleton per run
    /// (see [`Renderer::render`]) rather than in full for every reader.
    pub fn renders_from_skeleton(&self, digest: &str) -> bool {
        self.skeleton_digests.contains(digest)
    }

    /// Renders one subscriber's email of a run.
    ///
    /// When the digest's templates use the reader's values only as
    /// `{{ subscriber.name }}` or `{% if subscriber.name %}` (see
    /// [`Renderer::new`]), the run is rendered once per [`Pattern`] with
    /// markers in the reader's place, and each email is that skeleton with
    /// the reader's values (escaped as the template would have) put in:
    /// the same text as [`Renderer::render_full`], without running the
    /// templates for every reader.
    pub fn render(&self, run: &RunContext, to: &Recipient<'_>) -> Result<Rendered> {
        let values = self.reader_values(run, to);
        match self.skeleton_for(run, &values) {
            Some(skeleton) => Ok(skeleton.fill(&values)),
            None => self.render_values(run, &values),
        }
    }

    /// What an email needs of [`Renderer::render`]: the subject and both
    /// bodies, quoted-printable. From a skeleton, only the lines with the
    /// reader's values are encoded; otherwise `encoder` encodes the
    /// rendered text.
    pub fn render_for_mail(
        &self,
        run: &RunContext,
        to: &Recipient<'_>,
        encoder: &mut BodyEncoder,
    ) -> Result<(String, EncodedBodies)> {
        let values = self.reader_values(run, to);
        match self.skeleton_for(run, &values) {
            Some(skeleton) => Ok((skeleton.subject(&values), skeleton.encode(&values))),
            None => {
                let rendered = self.render_values(run, &values)?;
                let bodies = encoder.bodies(&rendered);
                Ok((rendered.subject, bodies))
            }
        }
    }

    /// The run's skeleton for these values; `None` if the digest renders
    /// in full for every reader, or if rendering failed (rendering again
    /// with the reader's values gives the error message).
    fn skeleton_for(&self, run: &RunContext, values: &ReaderValues<'_>) -> Option<Arc<Skeleton>> {
        if !self.skeleton_digests.contains(run.name()) {
            return None;
        }
        let pattern = Pattern::of(values);
        run.skeleton(pattern, || self.skeleton(run, pattern))
    }

    /// Renders one subscriber's email by running the templates with the
    /// reader's values.
    pub fn render_full(&self, run: &RunContext, to: &Recipient<'_>) -> Result<Rendered> {
        self.render_values(run, &self.reader_values(run, to))
    }

    fn reader_values<'a>(&self, run: &RunContext, to: &Recipient<'a>) -> ReaderValues<'a> {
        [
            to.name.map(Cow::Borrowed),
            Some(Cow::Borrowed(to.email)),
            Some(Cow::Owned(self.unsubscribe_url(to.unsubscribe_token))),
            Some(Cow::Owned(self.preferences_url(to.unsubscribe_token))),
            run.run_id
                .map(|r| Cow::Owned(self.web_view_url(r, to.unsubscribe_token))),
        ]
    }

    /// The template context of a run for these reader values.
    fn context(run: &RunContext, values: [Option<&str>; FIELDS]) -> Value {
        let [name, email, unsubscribe, preferences, web_view] = values;
        context! {
            digest => run.digest.clone(),
            date => run.date.clone(),
            articles => run.articles.clone(),
            run => context! { id => run.run_id },
            subscriber => context! { name => name, email => email },
            links => context! {
                unsubscribe => unsubscribe,
                preferences => preferences,
                web_view => web_view,
            },
        }
    }

    fn render_values(&self, run: &RunContext, values: &ReaderValues<'_>) -> Result<Rendered> {
        let ctx = Self::context(run, values.each_ref().map(|v| v.as_deref()));
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

    /// The run's emails for every reader whose values fit `pattern`, with
    /// markers in place of the values; `None` if a template fails (or
    /// prints a marker other than through `{{ … }}`).
    fn skeleton(&self, run: &RunContext, pattern: Pattern) -> Option<Skeleton> {
        let markers: [Option<String>; FIELDS] =
            std::array::from_fn(|field| match pattern.0[field] {
                Slot::Absent => None,
                Slot::Empty => Some(String::new()),
                Slot::Marker => Some(self.markers.value(field)),
            });
        let ctx = Self::context(run, markers.each_ref().map(|v| v.as_deref()));
        let render = |name: &str| -> Option<Vec<Piece>> {
            let text = self.env.get_template(name).ok()?.render(&ctx).ok()?;
            self.markers.parse(&text)
        };
        Some(Skeleton::new(
            render(&run.subject_template)?,
            render(&run.html_template)?,
            render(&run.text_template)?,
        ))
    }
}

/// How many reader values a template sees: `subscriber.name`,
/// `subscriber.email`, `links.unsubscribe`, `links.preferences`,
/// `links.web_view`, in this order.
const FIELDS: usize = 5;

/// The template variables that hold reader values.
const READER_VARIABLES: [&str; 2] = ["subscriber", "links"];

type ReaderValues<'a> = [Option<Cow<'a, str>>; FIELDS];

/// What a template can tell of a reader value without printing it: absent
/// (`none`), empty, or a string that is true in a test. Readers with the
/// same pattern share a skeleton.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    Absent,
    Empty,
    Marker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Pattern([Slot; FIELDS]);

impl Pattern {
    fn of(values: &ReaderValues<'_>) -> Self {
        Self(values.each_ref().map(|v| match v.as_deref() {
            None => Slot::Absent,
            Some("") => Slot::Empty,
            Some(_) => Slot::Marker,
        }))
    }
}

/// A piece of a rendered skeleton.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    /// A reader value, HTML-escaped or as is.
    Value {
        field: usize,
        html: bool,
    },
}

/// A run's subject, HTML and text, rendered once for a [`Pattern`].
#[derive(Debug)]
pub(crate) struct Skeleton {
    subject: Vec<Piece>,
    html: Vec<Piece>,
    text: Vec<Piece>,
    html_body: Vec<Chunk>,
    text_body: Vec<Chunk>,
}

impl Skeleton {
    fn new(subject: Vec<Piece>, html: Vec<Piece>, text: Vec<Piece>) -> Self {
        Self {
            html_body: Chunk::prepare(&html),
            text_body: Chunk::prepare(&text),
            subject,
            html,
            text,
        }
    }

    fn fill(&self, values: &ReaderValues<'_>) -> Rendered {
        let fill = |pieces: &[Piece]| {
            let mut out = String::with_capacity(
                pieces
                    .iter()
                    .map(|p| match p {
                        Piece::Text(t) => t.len(),
                        Piece::Value { field, .. } => {
                            values[*field].as_deref().map_or(0, |v| v.len() * 2)
                        }
                    })
                    .sum(),
            );
            fill_into(pieces, values, &mut out);
            out
        };
        Rendered {
            subject: one_line(&fill(&self.subject)),
            html: fill(&self.html),
            text: fill(&self.text),
        }
    }

    fn subject(&self, values: &ReaderValues<'_>) -> String {
        let mut subject = String::new();
        fill_into(&self.subject, values, &mut subject);
        one_line(&subject)
    }

    fn encode(&self, values: &ReaderValues<'_>) -> EncodedBodies {
        EncodedBodies {
            text: Chunk::encode(&self.text_body, values),
            html: Chunk::encode(&self.html_body, values),
        }
    }
}

fn fill_into(pieces: &[Piece], values: &ReaderValues<'_>, out: &mut String) {
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Value { field, html } => {
                let value = values[*field].as_deref().unwrap_or_default();
                if *html {
                    let _ = write!(out, "{}", HtmlEscape(value));
                } else {
                    out.push_str(value);
                }
            }
        }
    }
}

/// Part of a body's quoted-printable encoding, prepared with the skeleton.
/// Quoted-printable is line-local, so the lines without a reader value
/// are encoded once, and only the lines with one for each reader.
#[derive(Debug)]
enum Chunk {
    /// Whole lines, encoded, with the CRLFs between them and around them.
    Encoded(Vec<u8>),
    /// One line holding reader values (without its line end).
    Line(Vec<Piece>),
}

impl Chunk {
    fn prepare(pieces: &[Piece]) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut encoded = Vec::new();
        let mut line: Vec<Piece> = Vec::new();
        let mut first = true;
        // Ends the current line: encoded now if it has no reader value.
        let mut end_line =
            |line: &mut Vec<Piece>, encoded: &mut Vec<u8>, chunks: &mut Vec<Chunk>| {
                if !std::mem::take(&mut first) {
                    encoded.extend_from_slice(b"\r\n");
                }
                if line.iter().any(|p| matches!(p, Piece::Value { .. })) {
                    if !encoded.is_empty() {
                        chunks.push(Chunk::Encoded(std::mem::take(encoded)));
                    }
                    chunks.push(Chunk::Line(std::mem::take(line)));
                } else {
                    let mut text = String::new();
                    for piece in line.drain(..) {
                        if let Piece::Text(t) = piece {
                            text.push_str(&t);
                        }
                    }
                    encode_body(&text, encoded);
                }
            };
        for piece in pieces {
            match piece {
                Piece::Value { .. } => line.push(piece.clone()),
                Piece::Text(t) => {
                    let mut parts = t.split('\n').peekable();
                    while let Some(part) = parts.next() {
                        if !part.is_empty() {
                            line.push(Piece::Text(part.to_string()));
                        }
                        if parts.peek().is_some() {
                            end_line(&mut line, &mut encoded, &mut chunks);
                        }
                    }
                }
            }
        }
        end_line(&mut line, &mut encoded, &mut chunks);
        if !encoded.is_empty() {
            chunks.push(Chunk::Encoded(encoded));
        }
        chunks
    }

    fn encode(chunks: &[Chunk], values: &ReaderValues<'_>) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            chunks
                .iter()
                .map(|c| match c {
                    Chunk::Encoded(bytes) => bytes.len(),
                    Chunk::Line(_) => 160,
                })
                .sum(),
        );
        let mut line = String::new();
        for chunk in chunks {
            match chunk {
                Chunk::Encoded(bytes) => out.extend_from_slice(bytes),
                Chunk::Line(pieces) => {
                    line.clear();
                    fill_into(pieces, values, &mut line);
                    encode_body(&line, &mut out);
                }
            }
        }
        out
    }
}

/// The markers that stand for reader values in a skeleton: private-use
/// characters around a random nonce, so no article or reader text can
/// contain one by accident. A marker value is `OPEN nonce field CLOSE`; the
/// formatter prints it as `OPEN nonce field mode CLOSE`, the mode saying
/// whether the value is HTML-escaped where it was printed.
#[derive(Clone)]
struct Markers {
    nonce: Arc<str>,
}

impl Markers {
    const OPEN: char = '\u{E000}';
    const CLOSE: char = '\u{E001}';

    fn new() -> Self {
        let mut bytes = [0u8; 16];
        let _ = getrandom::fill(&mut bytes);
        let nonce: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self {
            nonce: nonce.into(),
        }
    }

    fn value(&self, field: usize) -> String {
        format!("{}{}{field}{}", Self::OPEN, self.nonce, Self::CLOSE)
    }

    /// The field a marker value stands for.
    fn field_of(&self, value: &str) -> Option<usize> {
        let rest = value.strip_prefix(Self::OPEN)?.strip_prefix(&*self.nonce)?;
        let digit = rest.strip_suffix(Self::CLOSE)?;
        let field = digit.parse::<usize>().ok()?;
        (digit.len() == 1 && field < FIELDS).then_some(field)
    }

    /// Prints reader markers with their escaping mode, anything else as
    /// minijinja does.
    fn format(
        &self,
        out: &mut Output,
        state: &State,
        value: &Value,
    ) -> Result<(), minijinja::Error> {
        let Some(field) = value.as_str().and_then(|s| self.field_of(s)) else {
            return minijinja::escape_formatter(out, state, value);
        };
        let mode = match state.auto_escape() {
            AutoEscape::None => 'n',
            AutoEscape::Html => 'h',
            _ => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    "a reader value printed with an escaping other than HTML",
                ));
            }
        };
        write!(
            out,
            "{}{}{field}{mode}{}",
            Self::OPEN,
            self.nonce,
            Self::CLOSE
        )
        .map_err(minijinja::Error::from)
    }

    /// Splits rendered text at the printed markers; `None` if a marker
    /// reached the output other than through the formatter.
    fn parse(&self, text: &str) -> Option<Vec<Piece>> {
        let open = format!("{}{}", Self::OPEN, self.nonce);
        let mut parts = text.split(open.as_str());
        let mut pieces = vec![Piece::Text(parts.next()?.to_string())];
        for part in parts {
            let mut chars = part.chars();
            let field = chars.next()?.to_digit(10)? as usize;
            let html = match chars.next()? {
                'h' => true,
                'n' => false,
                _ => return None,
            };
            if field >= FIELDS || chars.next()? != Self::CLOSE {
                return None;
            }
            pieces.push(Piece::Value { field, html });
            pieces.push(Piece::Text(chars.as_str().to_string()));
        }
        pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
        Some(pieces)
    }
}

/// Whether template `name`, and every template it extends or includes,
/// uses the reader's values only printed (`{{ subscriber.name }}`, also as
/// the value of an inline `if`) or tested for truth (`{% if
/// subscriber.name %}`, `not subscriber.name`), and never captures output into a value (macros,
/// `{% set %}` and filter blocks, `super()`, `self`, recursive loops). Only
/// then does a skeleton render every reader's email exactly: anything else
/// (a comparison, a filter, a length) could differ from one reader to the
/// next, and those digests are rendered in full for every reader.
///
/// This reads minijinja's compiled instructions, which are not a stable
/// interface: a minijinja update that changes them makes digests fall back
/// to full rendering (the renderer tests say so), never render wrongly.
fn reader_values_only_printed(
    env: &Environment<'_>,
    name: &str,
    seen: &mut HashSet<String>,
) -> bool {
    if !seen.insert(name.to_string()) {
        return true;
    }
    let Ok(template) = env.get_template(name) else {
        return false;
    };
    let compiled = machinery::get_compiled_template(&template);
    std::iter::once(&compiled.instructions)
        .chain(compiled.blocks.values())
        .all(|code| instructions_only_print(env, code, seen))
}

fn instructions_only_print(
    env: &Environment<'_>,
    code: &machinery::Instructions<'_>,
    seen: &mut HashSet<String>,
) -> bool {
    use machinery::Instruction as I;
    let at = |i: usize| u32::try_from(i).ok().and_then(|i| code.get(i));
    for i in 0..code.len() {
        let ok = match at(i) {
            Some(I::Lookup(var)) if READER_VARIABLES.contains(var) => {
                matches!(at(i + 1), Some(I::GetAttr(_)))
                    && match at(i + 2) {
                        // (`not` makes a boolean of its truth.)
                        Some(I::Emit | I::JumpIfFalse(_) | I::Not) => true,
                        // `{{ subscriber.name if … else … }}`
                        Some(I::Jump(to)) => matches!(code.get(*to), Some(I::Emit)),
                        _ => false,
                    }
            }
            Some(I::Lookup("self"))
            | Some(I::BeginCapture(_))
            | Some(I::BuildMacro(..))
            | Some(I::FastSuper)
            | Some(I::FastRecurse)
            | Some(I::CallObject(_))
            | Some(I::Enclose(_))
            | Some(I::GetClosure) => false,
            Some(I::CallFunction(f, _)) => !matches!(*f, "super" | "loop" | "caller" | "self"),
            Some(I::Include(_) | I::LoadBlocks) => match i.checked_sub(1).and_then(at) {
                Some(I::LoadConst(included)) => included
                    .as_str()
                    .is_some_and(|included| reader_values_only_printed(env, included, seen)),
                _ => false,
            },
            _ => true,
        };
        if !ok {
            return false;
        }
    }
    true
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
