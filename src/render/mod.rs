//! The minijinja environment over `templates/`: for each subscriber of a
//! run, a subject, an HTML body and a plain-text body.
//!
//! Templates are strict about undefined variables and `.html.j2` templates
//! are HTML auto-escaped, so article text is always data. Everything that
//! is the same for all subscribers of a run (digest, articles) is turned
//! into template values once per run ([`RunContext`], in [`context`]); the
//! once-per-shape fast path is in [`fast`].

mod context;
mod errors;
mod fast;
mod filters;
mod inline;

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use chrono::Utc;
use minijinja::{Environment, UndefinedBehavior, Value};

pub use self::context::{Recipient, RunContext};
use self::context::{subject_template_name, template_names};
use self::fast::{Markers, Pattern, ReaderValues, Skeleton};
use self::inline::Inliner;
use crate::config::{Digest, Settings};
pub use crate::mail::Rendered;
use crate::mail::{BodyEncoder, EncodedBodies, one_line};
use crate::store::RunArticle;

pub struct Renderer {
    env: Environment<'static>,
    templates_dir: std::path::PathBuf,
    base_url: String,
    markers: Markers,
    /// The digests whose emails are rendered from a skeleton per run.
    skeleton_digests: HashSet<String>,
    /// See [`Renderer::full_renders`].
    full_renders: Vec<(String, String)>,
    /// See [`Renderer::css_warnings`].
    css_warnings: Vec<(String, String)>,
    inliner: Inliner,
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
        filters::add_to(&mut env);
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
            templates_dir: settings.templates_dir.clone(),
            base_url: settings.web.base_url.clone(),
            markers,
            skeleton_digests: HashSet::new(),
            full_renders: Vec::new(),
            css_warnings: Vec::new(),
            inliner: Inliner::new(),
        };
        for digest in &settings.digests {
            renderer
                .check_digest(digest, &settings.templates_dir)
                .with_context(|| format!("templates of digest `{}`", digest.name))?;
        }
        for digest in &settings.digests {
            let mut seen = HashSet::new();
            let only_printed = template_names(digest).iter().try_for_each(|name| {
                fast::reader_values_only_printed(&renderer.env, name, &mut seen)
            });
            let why = match only_printed {
                Ok(()) => renderer.skeleton_unusable(digest).err(),
                Err(at) => Some(format!(
                    "{at} does more with a reader's value than print or test it"
                )),
            };
            match why {
                None => {
                    renderer.skeleton_digests.insert(digest.name.to_string());
                }
                Some(why) => {
                    let html = renderer.sample_html(digest)?;
                    let why = match inline::has_style(&html) {
                        true => format!("{why} (and its CSS is inlined for every email)"),
                        false => why,
                    };
                    renderer.full_renders.push((digest.name.to_string(), why));
                }
            }
        }
        renderer.css_warnings = renderer.check_css(settings)?;
        Ok(renderer)
    }

    /// The digests whose emails are rendered in full for every reader,
    /// each with why: the template, line and expression that use a
    /// reader's value for more than printing or testing it, or what keeps
    /// HTML whose CSS is inlined from being filled in. Said by `gazette
    /// check` and when `run` or `send` start.
    pub fn full_renders(&self) -> &[(String, String)] {
        &self.full_renders
    }

    /// What an editor should know of the `<style>` blocks of each email
    /// template (digests, and `confirm` for the confirmation email): rules
    /// that are not inlined, and CSS that does not parse. Said by `gazette
    /// check` and when `run` or `send` start.
    pub fn css_warnings(&self) -> &[(String, String)] {
        &self.css_warnings
    }

    /// How many HTML documents have had their CSS inlined: once per run
    /// and reader shape for a digest rendered from a skeleton, and once
    /// more for the first reader of each shape, whose full rendering
    /// checks the skeleton; once per email otherwise.
    pub fn inlined(&self) -> usize {
        self.inliner.count()
    }

    /// `Err` says why a skeleton cannot stand for `digest`'s emails
    /// although its templates only print and test reader values (a reader
    /// value printed unescaped in HTML whose CSS is inlined).
    fn skeleton_unusable(&self, digest: &Digest) -> Result<(), String> {
        let run = sample_run(digest);
        let values = self.reader_values(&run, &SAMPLE_READER);
        let ctx = run.context(
            self.markers
                .stand_ins(Pattern::of(&values))
                .each_ref()
                .map(|v| v.as_deref()),
        );
        fast::build(
            &self.env,
            &self.markers,
            &self.inliner,
            run.template_names(),
            &ctx,
        )
        .map(drop)
    }

    /// The HTML of `digest` rendered with sample data, before inlining.
    fn sample_html(&self, digest: &Digest) -> Result<String> {
        let run = sample_run(digest);
        let values = self.reader_values(&run, &SAMPLE_READER);
        let ctx = run.context(values.each_ref().map(|v| v.as_deref()));
        self.render_one(&run.html_template, &ctx)
    }

    /// [`Renderer::css_warnings`], from the templates rendered with
    /// sample data.
    fn check_css(&self, settings: &Settings) -> Result<Vec<(String, String)>> {
        let mut warnings = Vec::new();
        for digest in &settings.digests {
            let html = self.sample_html(digest)?;
            for warning in inline::css_warnings(&html) {
                warnings.push((format!("{}.html.j2", digest.template), warning));
            }
        }
        let confirm = self.env.get_template("confirm.html.j2");
        if let Ok(html) = confirm.and_then(|t| t.render(confirm_sample())) {
            for warning in inline::css_warnings(&html) {
                warnings.push(("confirm.html.j2".to_string(), warning));
            }
        }
        warnings.sort();
        warnings.dedup();
        Ok(warnings)
    }

    /// Logs [`Renderer::css_warnings`], one line a warning.
    pub fn log_css_warnings(&self) {
        for (template, warning) in &self.css_warnings {
            tracing::warn!("{template}: {warning}");
        }
    }

    /// Logs [`Renderer::full_renders`] (of digest `only`, if given), one
    /// line a digest.
    pub fn log_full_renders(&self, only: Option<&str>) {
        let shown = self
            .full_renders
            .iter()
            .filter(|(digest, _)| only.is_none_or(|only| only == digest));
        for (digest, why) in shown {
            tracing::info!(
                digest = %digest,
                "each email is rendered in full for every reader (slower): {why}"
            );
        }
    }

    fn check_digest(&self, digest: &Digest, dir: &Path) -> Result<()> {
        for name in &template_names(digest)[1..] {
            self.env.get_template(name).map_err(|e| {
                anyhow::anyhow!("{}: {}", dir.join(name).display(), self.describe(&e))
            })?;
        }
        self.render(&sample_run(digest), &SAMPLE_READER)?;
        Ok(())
    }

    /// The templates of the web pages and the confirmation email, checked
    /// before `run` or `serve` starts (and by `gazette check`).
    pub const WEB_TEMPLATES: [&'static str; 8] = [
        "web/subscribe.html.j2",
        "web/confirm.html.j2",
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
                .map_err(|e| anyhow::anyhow!("{name}: {}", self.describe(&e)))?;
        }
        Ok(())
    }

    /// A template error said for an editor (see [`errors::describe`]).
    fn describe(&self, e: &minijinja::Error) -> String {
        errors::describe(&self.env, &self.templates_dir, e)
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

    /// Renders an email's HTML template (the confirmation email) with
    /// `ctx`, its `<style>` rules inlined if it has any.
    pub fn render_email_html(&self, name: &str, ctx: &Value) -> Result<String> {
        let html = self.render_template(name, ctx)?;
        self.inlined_html(name, html)
    }

    /// `html` (rendered from template `name`) with the rules of its
    /// `<style>` blocks inlined; as it is without one.
    fn inlined_html(&self, name: &str, html: String) -> Result<String> {
        if !inline::has_style(&html) {
            return Ok(html);
        }
        self.inliner
            .inline(&html)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.templates_dir.join(name).display()))
    }

    /// Renders any template under the templates directory (web pages,
    /// the confirmation email's text) with `ctx`.
    pub fn render_template(&self, name: &str, ctx: &Value) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| anyhow::anyhow!("{name}: {}", self.describe(&e)))?;
        template
            .render(ctx)
            .map_err(|e| anyhow::anyhow!("{name}: {}", self.describe(&e)))
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
        match self.skeleton_for(run, &values)? {
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
        match self.skeleton_for(run, &values)? {
            Some(skeleton) => Ok((skeleton.subject(&values), skeleton.encode(&values))),
            None => {
                let rendered = self.render_values(run, &values)?;
                let bodies = encoder.bodies(&rendered.text, &rendered.html);
                Ok((rendered.subject, bodies))
            }
        }
    }

    /// The run's skeleton for these values; `None` if the digest renders
    /// in full for every reader, if rendering failed (rendering again with
    /// the reader's values gives the error message), or if a skeleton's
    /// email differed from the full rendering.
    ///
    /// The first reader of each shape is also rendered in full, and the
    /// skeleton is used only if it gives the same bytes (subject, both
    /// bodies, and their encoding): on any difference the rest of the run
    /// is rendered in full, and the log says so once.
    fn skeleton_for(
        &self,
        run: &RunContext,
        values: &ReaderValues<'_>,
    ) -> Result<Option<Arc<Skeleton>>> {
        if !self.skeleton_digests.contains(run.name()) || run.full_only.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let pattern = Pattern::of(values);
        let mut skeletons = run
            .skeletons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = skeletons.get(&pattern) {
            return Ok(known.clone());
        }
        let stand_ins = self.markers.stand_ins(pattern);
        let ctx = run.context(stand_ins.each_ref().map(|v| v.as_deref()));
        let built = fast::build(
            &self.env,
            &self.markers,
            &self.inliner,
            run.template_names(),
            &ctx,
        );
        let Ok(skeleton) = built else {
            skeletons.insert(pattern, None);
            return Ok(None);
        };
        let skeleton = run.as_built(skeleton);
        let full = self.render_values(run, values)?;
        let same = skeleton.fill(values) == full
            && skeleton.encode(values) == BodyEncoder::default().bodies(&full.text, &full.html);
        if same {
            let skeleton = Arc::new(skeleton);
            skeletons.insert(pattern, Some(skeleton.clone()));
            return Ok(Some(skeleton));
        }
        skeletons.insert(pattern, None);
        if !run.full_only.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                digest = run.name(),
                run_id = run.run_id(),
                "an email rendered once per reader shape differs from the same email \
                 rendered in full: this run is rendered in full for every reader"
            );
        }
        Ok(None)
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
            run.run_id()
                .map(|r| Cow::Owned(self.web_view_url(r, to.unsubscribe_token))),
        ]
    }

    fn render_values(&self, run: &RunContext, values: &ReaderValues<'_>) -> Result<Rendered> {
        let ctx = run.context(values.each_ref().map(|v| v.as_deref()));
        let subject = one_line(&self.render_one(&run.subject_template, &ctx)?);
        let html = self.render_one(&run.html_template, &ctx)?;
        let html = self.inlined_html(&run.html_template, html)?;
        let text = self.render_one(&run.text_template, &ctx)?;
        Ok(Rendered {
            subject,
            html,
            text,
        })
    }

    fn render_one(&self, name: &str, ctx: &Value) -> Result<String> {
        let template = self
            .env
            .get_template(name)
            .map_err(|e| anyhow::anyhow!("{name}: {}", self.describe(&e)))?;
        template
            .render(ctx)
            .map_err(|e| anyhow::anyhow!("{name}: {}", self.describe(&e)))
    }
}

/// The reader the templates are checked with.
const SAMPLE_READER: Recipient<'static> = Recipient {
    name: Some("Sample Reader"),
    email: "reader@example.org",
    unsubscribe_token: "sample",
};

/// A run of `digest` with one sample article, for checking its templates.
fn sample_run(digest: &Digest) -> RunContext {
    let sample = RunArticle {
        article_id: 0,
        url: "https://example.org/sample".into(),
        title: "Sample article".into(),
        summary: Some("A summary.".into()),
        body: Some("A body.".into()),
        author: Some("A. Author".into()),
        tags: vec!["sample".into()],
        published_at: Utc::now(),
        image_url: Some("https://example.org/sample.png".into()),
        summary_text: None,
        html: false,
    };
    RunContext::new(digest, Utc::now(), &[sample], Some(0))
}

/// What the confirmation email's template is checked with (as
/// `delivery::confirmations` fills it).
fn confirm_sample() -> Value {
    minijinja::context! {
        site => "Gazette",
        confirm_url => "https://example.org/confirm/sample",
        digests => vec!["The Daily"],
        subscriber => minijinja::context! { name => "Sample Reader", email => "reader@example.org" },
        ttl_hours => 48,
    }
}
