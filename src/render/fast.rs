//! The once-per-shape fast path: a run is rendered once for each shape of
//! reader ([`Pattern`]) with markers in place of the reader's values, and
//! each email is that [`Skeleton`] with the reader's values put in.
//!
//! Whether a digest's templates allow this is decided by reading
//! minijinja's compiled instructions ([`reader_values_only_printed`]),
//! which are not a stable interface: this file is the only user of
//! `minijinja::machinery`, minijinja is pinned to an exact version, and
//! the analysis is an allow-list, so an instruction it does not know
//! makes the digest render in full. The renderer also compares the first
//! email of each shape with a full rendering before it trusts a skeleton.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use minijinja::machinery;
use minijinja::{AutoEscape, Environment, HtmlEscape, Output, State, Value};

use super::inline::{self, Inliner};
use crate::mail::{EncodedBodies, Rendered, encode_body, one_line};

/// How many reader values a template sees: `subscriber.name`,
/// `subscriber.email`, `links.unsubscribe`, `links.preferences`,
/// `links.web_view`, in this order.
pub(super) const FIELDS: usize = 5;

/// The template variables that hold reader values.
const READER_VARIABLES: [&str; 2] = ["subscriber", "links"];

pub(super) type ReaderValues<'a> = [Option<Cow<'a, str>>; FIELDS];

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
pub(super) struct Pattern([Slot; FIELDS]);

impl Pattern {
    pub(super) fn of(values: &ReaderValues<'_>) -> Self {
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
    /// A reader value, escaped as it is where it was printed.
    Value {
        field: usize,
        escape: Escape,
    },
}

/// How a reader value is written into a skeleton's hole.
#[derive(Debug, Clone)]
enum Escape {
    /// As is (a text template, or `{% autoescape false %}`).
    None,
    /// As minijinja's HTML escaping writes it.
    Html,
    /// As the document's serializer writes it after CSS inlining, learned
    /// from the [`PROBE`] printed in the hole: the replacement of each
    /// probe character, every other character being written as is.
    Learned(Arc<[String; PROBE.len()]>),
}

/// The characters that HTML escaping, an HTML parser or its serializer may
/// write otherwise than as themselves (in text, in an attribute, in a
/// comment): printed, HTML-escaped, with each reader marker of an HTML
/// template, so that after CSS inlining has parsed and rewritten the
/// document, each hole says how its reader's value is to be written
/// there. (A parser turns CR LF into LF before anything else: values get
/// the same before their characters are replaced.)
const PROBE: [char; 9] = ['&', '<', '>', '"', '\'', '/', '\u{a0}', '\0', '\r'];

/// Ends each probe character's replacement in a marker.
const PROBE_END: char = '\u{E002}';

/// A run's subject, HTML and text, rendered once for a [`Pattern`].
#[derive(Debug)]
pub(super) struct Skeleton {
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

    /// This skeleton with a stray byte at the end of its HTML.
    pub(super) fn spoiled(mut self) -> Self {
        self.html.push(Piece::Text("\u{0}".into()));
        self.html_body = Chunk::prepare(&self.html);
        self
    }

    pub(super) fn fill(&self, values: &ReaderValues<'_>) -> Rendered {
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

    pub(super) fn subject(&self, values: &ReaderValues<'_>) -> String {
        let mut subject = String::new();
        fill_into(&self.subject, values, &mut subject);
        one_line(&subject)
    }

    pub(super) fn encode(&self, values: &ReaderValues<'_>) -> EncodedBodies {
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
            Piece::Value { field, escape } => {
                let value = values[*field].as_deref().unwrap_or_default();
                match escape {
                    Escape::None => out.push_str(value),
                    Escape::Html => {
                        let _ = write!(out, "{}", HtmlEscape(value));
                    }
                    Escape::Learned(replacements) => {
                        let value = match value.contains('\r') {
                            true => Cow::Owned(value.replace("\r\n", "\n")),
                            false => Cow::Borrowed(value),
                        };
                        for c in value.chars() {
                            match PROBE.iter().position(|p| *p == c) {
                                Some(i) => out.push_str(&replacements[i]),
                                None => out.push(c),
                            }
                        }
                    }
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
pub(super) struct Markers {
    nonce: Arc<str>,
}

impl Markers {
    const OPEN: char = '\u{E000}';
    const CLOSE: char = '\u{E001}';

    pub(super) fn new() -> Self {
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
    pub(super) fn format(
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
        write!(out, "{}{}{field}{mode}", Self::OPEN, self.nonce)?;
        if mode == 'h' {
            for c in PROBE {
                write!(out, "{}{PROBE_END}", HtmlEscape(c.encode_utf8(&mut [0; 4])))?;
            }
        }
        write!(out, "{}", Self::CLOSE).map_err(minijinja::Error::from)
    }

    /// Splits rendered text at the printed markers; `Err` if a marker
    /// reached the output other than through the formatter, or if, in
    /// `inlined` HTML, a reader value is printed without HTML escaping
    /// (its markup would be parsed with the document).
    fn parse(&self, text: &str, inlined: bool) -> Result<Vec<Piece>, String> {
        let broken = || "a reader value is printed other than with `{{ … }}`".to_string();
        let open = format!("{}{}", Self::OPEN, self.nonce);
        let mut parts = text.split(open.as_str());
        let mut pieces = vec![Piece::Text(parts.next().ok_or_else(broken)?.to_string())];
        for part in parts {
            let mut chars = part.chars();
            let field = chars
                .next()
                .and_then(|c| c.to_digit(10))
                .ok_or_else(broken)? as usize;
            let escape = match chars.next() {
                Some('h') => {
                    let rest = chars.as_str();
                    let close = rest.find(Self::CLOSE).ok_or_else(broken)?;
                    let replacements: Vec<String> =
                        rest[..close].split(PROBE_END).map(str::to_string).collect();
                    let replacements: [String; PROBE.len() + 1] =
                        replacements.try_into().map_err(|_| broken())?;
                    let [replacements @ .., _] = replacements;
                    chars = rest[close..].chars();
                    if inlined {
                        Escape::Learned(Arc::new(replacements))
                    } else {
                        Escape::Html
                    }
                }
                Some('n') if inlined => {
                    return Err("a reader value is printed without HTML escaping \
                                (`{% autoescape false %}`) in HTML whose CSS is inlined"
                        .to_string());
                }
                Some('n') => Escape::None,
                _ => return Err(broken()),
            };
            if field >= FIELDS || chars.next() != Some(Self::CLOSE) {
                return Err(broken());
            }
            pieces.push(Piece::Value { field, escape });
            pieces.push(Piece::Text(chars.as_str().to_string()));
        }
        pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
        Ok(pieces)
    }

    /// How many markers `text` holds.
    fn count(&self, text: &str) -> usize {
        text.matches(&format!("{}{}", Self::OPEN, self.nonce))
            .count()
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
///
/// `Err` says where the first use that is not printing or testing is:
/// template, line and expression.
pub(super) fn reader_values_only_printed(
    env: &Environment<'_>,
    name: &str,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let template = env
        .get_template(name)
        .map_err(|_| format!("{name}: the template does not load"))?;
    let compiled = machinery::get_compiled_template(&template);
    std::iter::once(&compiled.instructions)
        .chain(compiled.blocks.values())
        .try_for_each(|code| instructions_only_print(env, code, seen))
}

/// Where instruction `i` of `code` is: template, line and its expression.
fn whereabouts(code: &machinery::Instructions<'_>, i: usize) -> String {
    let i = u32::try_from(i).unwrap_or(u32::MAX);
    let mut out = code.name().to_string();
    if let Some(line) = code.get_line(i) {
        out.push_str(&format!(", line {line}"));
    }
    // (The whole tag the instruction is in: `{{ subscriber.name|upper }}`.)
    let source = code.source();
    let text = code.get_span(i).and_then(|span| {
        let (start, end) = (span.start_offset as usize, span.end_offset as usize);
        let before = source.get(..start)?;
        let open = before.rfind("{{").max(before.rfind("{%"))?;
        let after = source.get(end..)?;
        let close = [after.find("}}"), after.find("%}")]
            .into_iter()
            .flatten()
            .min()?;
        source.get(open..end + close + 2)
    });
    if let Some(text) = text.map(str::trim).filter(|t| !t.is_empty()) {
        out.push_str(&format!(": `{}`", one_line_of(text)));
    }
    out
}

/// `text` on one line, shortened to 80 characters.
fn one_line_of(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(80) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn instructions_only_print(
    env: &Environment<'_>,
    code: &machinery::Instructions<'_>,
    seen: &mut HashSet<String>,
) -> Result<(), String> {
    use machinery::Instruction as I;
    let at = |i: usize| u32::try_from(i).ok().and_then(|i| code.get(i));
    for i in 0..code.len() {
        let ok = match at(i) {
            // A reader value: only printed, or tested for truth.
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
            // `self` gives access to blocks, which render into values.
            Some(I::Lookup("self")) => false,
            // Functions that render template code into a value.
            Some(I::CallFunction(f, _)) => !matches!(*f, "super" | "loop" | "caller" | "self"),
            // Other templates, when their name is a constant: checked too.
            Some(I::Include(_) | I::LoadBlocks) => match i.checked_sub(1).and_then(at) {
                Some(I::LoadConst(included)) => match included.as_str() {
                    Some(included) => {
                        reader_values_only_printed(env, included, seen)?;
                        true
                    }
                    None => false,
                },
                _ => false,
            },
            // The instructions known to neither capture output nor pass a
            // reader value anywhere but to `Emit` (checked above): values,
            // operators, filters and tests of other values, loops,
            // conditions, blocks and escaping.
            Some(
                I::EmitRaw(_)
                | I::Emit
                | I::StoreLocal(_)
                | I::Lookup(_)
                | I::GetAttr(_)
                | I::GetItem
                | I::Slice
                | I::LoadConst(_)
                | I::BuildMap(_)
                | I::BuildKwargs(_)
                | I::MergeKwargs(_)
                | I::BuildList(_)
                | I::UnpackList(_)
                | I::UnpackLists(_)
                | I::Add
                | I::Sub
                | I::Mul
                | I::Div
                | I::IntDiv
                | I::Rem
                | I::Pow
                | I::Neg
                | I::Eq
                | I::Ne
                | I::Gt
                | I::Gte
                | I::Lt
                | I::Lte
                | I::Not
                | I::StringConcat
                | I::In
                | I::CompareAndPreserve(_)
                | I::ApplyFilter(..)
                | I::PerformTest(..)
                | I::PushLoop(_)
                | I::PushWith
                | I::Iterate(_)
                | I::PushDidNotIterate
                | I::PopFrame
                | I::PopLoopFrame
                | I::Jump(_)
                | I::JumpIfFalse(_)
                | I::JumpIfFalseOrPop(_)
                | I::JumpIfTrueOrPop(_)
                | I::PushAutoEscape
                | I::PopAutoEscape
                | I::CallMethod(..)
                | I::DupTop
                | I::DiscardTop
                | I::Swap
                | I::CallBlock(_),
            ) => true,
            // Everything else: known to capture output (`{% set %}` blocks,
            // filter blocks, macros, `super()`, recursive loops, calling a
            // value), or unknown to this analysis (an instruction of a
            // later minijinja). The digest is rendered in full.
            _ => false,
        };
        if !ok {
            return Err(whereabouts(code, i));
        }
    }
    Ok(())
}

impl Markers {
    /// The values a skeleton of `pattern` is rendered with: a marker for
    /// each value that is there and not empty.
    pub(super) fn stand_ins(&self, pattern: Pattern) -> [Option<String>; FIELDS] {
        std::array::from_fn(|field| match pattern.0[field] {
            Slot::Absent => None,
            Slot::Empty => Some(String::new()),
            Slot::Marker => Some(self.value(field)),
        })
    }
}

/// The emails of a run for every reader whose values fit one pattern,
/// rendered from `templates` (subject, HTML, text) with `ctx`, which holds
/// the pattern's [`Markers::stand_ins`], the HTML inlined once if it has a
/// `<style>` block. `Err` says why no skeleton can stand for the emails:
/// a template fails (rendering in full says how), prints a marker other
/// than through `{{ … }}`, or, in HTML whose CSS is inlined, prints a
/// reader value unescaped or inside `<style>`.
pub(super) fn build(
    env: &Environment<'_>,
    markers: &Markers,
    inliner: &Inliner,
    templates: [&str; 3],
    ctx: &Value,
) -> Result<Skeleton, String> {
    let render = |name: &str| -> Result<String, String> {
        env.get_template(name)
            .and_then(|t| t.render(ctx))
            .map_err(|e| format!("{name}: {e}"))
    };
    let [subject, html, text] = templates;
    let html_text = render(html)?;
    let inlined = inline::has_style(&html_text);
    let html_text = if inlined {
        if inline::style_blocks(&html_text).any(|block| markers.count(&html_text[block]) > 0) {
            return Err(format!(
                "{html}: a reader value is printed inside a `<style>` block"
            ));
        }
        let out = inliner.inline(&html_text)?;
        // (Each hole is in the rewritten document once, as in the template.)
        if markers.count(&out) != markers.count(&html_text) {
            return Err(format!(
                "{html}: CSS inlining moved or dropped a reader value"
            ));
        }
        out
    } else {
        html_text
    };
    Ok(Skeleton::new(
        markers.parse(&render(subject)?, false)?,
        markers
            .parse(&html_text, inlined)
            .map_err(|e| format!("{html}: {e}"))?,
        markers.parse(&render(text)?, false)?,
    ))
}
