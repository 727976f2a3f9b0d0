//! Parsing of import files. Every record is checked before anything is
//! stored; a bad record is reported with its line (or index) and the whole
//! file is refused.

use std::collections::BTreeSet;
use std::io::Read;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::domain::{DigestName, EmailAddress, check_name};
use crate::store::{NewArticle, NewSubscriber, Timestamp};

/// Reads a file, or standard input for `-`.
pub fn read_input(path: &str) -> Result<String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    }
    Ok(text)
}

/// One article as given in an import file or on the command line.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArticleInput {
    pub url: String,
    pub title: String,
    #[serde(default)]
    pub summary: Option<String>,
    #[serde(default)]
    pub body: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// RFC 3339; absent: now.
    #[serde(default)]
    pub published_at: Option<String>,
    /// An image shown with the article: an http:// or https:// address.
    #[serde(default)]
    pub image_url: Option<String>,
}

/// What is wrong with one article record, and in which field (`None`: the
/// record as a whole, such as a line that is not a JSON object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub field: Option<String>,
    pub message: String,
}

impl RecordError {
    fn field(field: &str, message: String) -> Self {
        Self {
            field: Some(field.to_string()),
            message,
        }
    }
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Whether `text` is an http:// or https:// address without spaces.
fn is_web_address(text: &str) -> bool {
    (text.starts_with("http://") || text.starts_with("https://"))
        && !text.contains(char::is_whitespace)
}

/// The fields of an article record, with the JSON type each takes.
const ARTICLE_FIELDS: [(&str, &str); 8] = [
    ("url", "string"),
    ("title", "string"),
    ("summary", "string or null"),
    ("body", "string or null"),
    ("author", "string or null"),
    ("tags", "array of strings"),
    ("published_at", "string or null"),
    ("image_url", "string or null"),
];

impl ArticleInput {
    /// Reads one record of an import file or of the API, naming the field
    /// at fault: unknown, missing, or of the wrong JSON type.
    pub fn from_json(value: serde_json::Value) -> Result<Self, RecordError> {
        use serde_json::Value;
        let Value::Object(map) = &value else {
            return Err(RecordError {
                field: None,
                message: "expected a JSON object with `url` and `title`".into(),
            });
        };
        for (key, value) in map {
            let Some((_, kind)) = ARTICLE_FIELDS.iter().find(|(name, _)| name == key) else {
                let known: Vec<&str> = ARTICLE_FIELDS.iter().map(|(n, _)| *n).collect();
                return Err(RecordError::field(
                    key,
                    format!("unknown field `{key}` (known: {})", known.join(", ")),
                ));
            };
            let fits = match *kind {
                "string" => value.is_string(),
                "string or null" => value.is_string() || value.is_null(),
                _ => value
                    .as_array()
                    .is_some_and(|items| items.iter().all(Value::is_string)),
            };
            if !fits {
                return Err(RecordError::field(key, format!("`{key}` must be a {kind}")));
            }
        }
        for required in ["url", "title"] {
            if !map.contains_key(required) {
                return Err(RecordError::field(
                    required,
                    format!("missing field `{required}`"),
                ));
            }
        }
        serde_json::from_value(value).map_err(|e| RecordError {
            field: None,
            message: e.to_string(),
        })
    }

    /// Checks the fields; the error names the field at fault.
    pub fn validate(self, now: DateTime<Utc>) -> Result<NewArticle, RecordError> {
        let url = self.url.trim();
        if !is_web_address(url) {
            return Err(RecordError::field(
                "url",
                format!("`url`: `{url}` is not an http:// or https:// address"),
            ));
        }
        let title = self.title.trim();
        if title.is_empty() {
            return Err(RecordError::field(
                "title",
                "`title` must not be empty".into(),
            ));
        }
        let published_at = match self.published_at.as_deref() {
            None => now,
            Some(text) => DateTime::parse_from_rfc3339(text.trim())
                .map_err(|e| {
                    RecordError::field("published_at", format!(
                        "`published_at`: `{text}` is not an RFC 3339 time such as 2026-11-29T07:00:00Z ({e})"
                    ))
                })?
                .with_timezone(&Utc),
        };
        let image_url = match self.image_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(image) if is_web_address(image) => Some(image.to_string()),
            Some(image) => {
                return Err(RecordError::field(
                    "image_url",
                    format!("`image_url`: `{image}` is not an http:// or https:// address"),
                ));
            }
        };
        let tags: BTreeSet<String> = self
            .tags
            .iter()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect();
        let clean = |s: Option<String>| s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        Ok(NewArticle {
            url: url.to_string(),
            title: title.to_string(),
            summary: clean(self.summary),
            body: clean(self.body),
            author: clean(self.author),
            tags: tags.into_iter().collect(),
            published_at: Timestamp::from(published_at),
            image_url,
            summary_text: None,
            html: false,
        })
    }
}

/// At most this many bad records are listed; the count of the others follows.
const SHOWN_PROBLEMS: usize = 20;

/// Every problem found, as one error (the first `SHOWN_PROBLEMS`, then how
/// many more).
fn problems_error(problems: &[String]) -> anyhow::Error {
    let shown = problems.len().min(SHOWN_PROBLEMS);
    let mut message = problems[..shown].join("\n");
    if problems.len() > shown {
        message.push_str(&format!("\n… and {} more", problems.len() - shown));
    }
    anyhow::anyhow!("{message}")
}

/// Parses a JSON array of articles, or NDJSON (one object per line). Every
/// bad record is reported, each with its index or line, and nothing is
/// returned unless all are good.
pub fn parse_articles(text: &str, now: DateTime<Utc>) -> Result<Vec<NewArticle>> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut take = |place: String, record: Result<ArticleInput, RecordError>| match record
        .and_then(|r| r.validate(now))
    {
        Ok(article) => out.push(article),
        Err(e) => problems.push(format!("{place}: {e}")),
    };
    if text.trim_start().starts_with('[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_str(text).context("the file is not a valid JSON array")?;
        for (i, value) in values.into_iter().enumerate() {
            take(
                format!("record {} of the array", i + 1),
                ArticleInput::from_json(value),
            );
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = serde_json::from_str(line)
                .map_err(|e| RecordError {
                    field: None,
                    message: e.to_string(),
                })
                .and_then(ArticleInput::from_json);
            take(format!("line {}", i + 1), record);
        }
    }
    if !problems.is_empty() {
        return Err(problems_error(&problems));
    }
    if out.is_empty() {
        bail!("no articles found: expected a JSON array or one JSON object per line");
    }
    Ok(out)
}

/// Parses the `digests` column (`daily;weekly`); empty means every digest.
pub fn parse_digest_list(text: &str, known: &[DigestName]) -> Result<Vec<DigestName>, String> {
    let names: Vec<&str> = text
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Ok(known.to_vec());
    }
    names
        .into_iter()
        .map(|name| {
            known
                .iter()
                .find(|k| k.as_str() == name)
                .cloned()
                .ok_or_else(|| {
                    let list: Vec<&str> = known.iter().map(DigestName::as_str).collect();
                    format!(
                        "unknown digest `{name}` (configured: {})",
                        if list.is_empty() {
                            "none".into()
                        } else {
                            list.join(", ")
                        }
                    )
                })
        })
        .collect()
}

/// The rows of a subscribers CSV, and what is worth a warning.
#[derive(Debug, Clone)]
pub struct SubscriberRows {
    pub subscribers: Vec<NewSubscriber>,
    /// An address on more than one line, say.
    pub warnings: Vec<String>,
}

/// A CSV reading error in one plain sentence, with its line.
fn csv_problem(e: &csv::Error) -> String {
    let line = e.position().map_or(0, |p| p.line());
    match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!(
            "line {line}: {len} field{}, where the header has {expected_len}",
            if *len == 1 { "" } else { "s" }
        ),
        csv::ErrorKind::Utf8 { .. } => format!("line {line}: the text is not UTF-8"),
        _ => format!("line {line}: {e}"),
    }
}

/// The problems of a file: the first [`SHOWN_PROBLEMS`] in full, and how
/// many more (so a file of a million bad rows costs no memory).
#[derive(Debug, Default)]
pub struct Problems {
    shown: Vec<String>,
    more: u64,
}

impl Problems {
    pub fn push(&mut self, problem: String) {
        if self.shown.len() < SHOWN_PROBLEMS {
            self.shown.push(problem);
        } else {
            self.more += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }

    /// Every problem as one error (the first ones, then how many more).
    pub fn into_error(self) -> anyhow::Error {
        let mut message = self.shown.join("\n");
        if self.more > 0 {
            message.push_str(&format!("\n… and {} more", self.more));
        }
        anyhow::anyhow!("{message}")
    }
}

/// A subscribers CSV (`email,name,digests`) read a row at a time.
pub struct SubscriberCsv<R: Read> {
    reader: csv::Reader<R>,
    record: csv::StringRecord,
    email_col: usize,
    name_col: Option<usize>,
    digests_col: Option<usize>,
    known: Vec<DigestName>,
}

impl<R: Read> SubscriberCsv<R> {
    /// Reads and checks the header line.
    pub fn new(input: R, known: &[DigestName]) -> Result<Self> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .flexible(false)
            .from_reader(input);
        let headers = reader
            .headers()
            .context("cannot read the CSV header line")?
            .clone();
        let mut email_col = None;
        let mut name_col = None;
        let mut digests_col = None;
        for (i, h) in headers.iter().enumerate() {
            match h.to_lowercase().as_str() {
                "email" => email_col = Some(i),
                "name" => name_col = Some(i),
                "digests" => digests_col = Some(i),
                other => {
                    bail!("line 1: unknown column `{other}`; the header is `email,name,digests`")
                }
            }
        }
        let Some(email_col) = email_col else {
            bail!("line 1: no `email` column; the header is `email,name,digests`");
        };
        Ok(Self {
            reader,
            record: csv::StringRecord::new(),
            email_col,
            name_col,
            digests_col,
            known: known.to_vec(),
        })
    }

    /// The next row with its line, or what is wrong with it (naming its
    /// line); `None` at the end of the file.
    pub fn next_row(&mut self) -> Option<Result<(u64, NewSubscriber), String>> {
        match self.reader.read_record(&mut self.record) {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => return Some(Err(csv_problem(&e))),
        }
        let record = &self.record;
        let line = record.position().map_or(0, |p| p.line());
        let email = match EmailAddress::parse(record.get(self.email_col).unwrap_or_default()) {
            Ok(e) => e,
            Err(e) => return Some(Err(format!("line {line}: {e}"))),
        };
        let name = self
            .name_col
            .and_then(|c| record.get(c))
            .filter(|n| !n.is_empty())
            .map(str::to_string);
        if let Some(Err(e)) = name.as_deref().map(check_name) {
            return Some(Err(format!("line {line}: {e}")));
        }
        let digests = self.digests_col.and_then(|c| record.get(c)).unwrap_or("");
        let digests = match parse_digest_list(digests, &self.known) {
            Ok(d) => d,
            Err(e) => return Some(Err(format!("line {line}: {e}"))),
        };
        Some(Ok((
            line,
            NewSubscriber {
                email,
                name,
                digests,
            },
        )))
    }
}

/// How many records a subscribers CSV has below its header, read quickly
/// and without keeping any (a progress bar's total); unreadable ones count.
pub fn count_csv_records<R: Read>(input: R) -> u64 {
    let mut reader = csv::ReaderBuilder::new().flexible(true).from_reader(input);
    let mut record = csv::ByteRecord::new();
    let mut count = 0;
    loop {
        match reader.read_byte_record(&mut record) {
            Ok(true) => count += 1,
            Ok(false) => return count,
            Err(e) if e.is_io_error() => return count,
            Err(_) => count += 1,
        }
    }
}

/// Reads a whole subscribers CSV (`email,name,digests`) into memory:
/// validates every row, reporting bad ones by line, and returns the rows
/// in file order. (`subscribers import` streams instead.)
pub fn parse_subscribers_csv<R: Read>(input: R, known: &[DigestName]) -> Result<SubscriberRows> {
    let mut csv = SubscriberCsv::new(input, known)?;
    let mut problems = Problems::default();
    let mut warnings = Vec::new();
    let mut out = Vec::new();
    // The line each address was first seen on.
    let mut seen: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    while let Some(row) = csv.next_row() {
        let (line, subscriber) = match row {
            Ok(row) => row,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let key = subscriber.email.key();
        if let Some(first) = seen.get(&key) {
            warnings.push(format!(
                "line {line}: {} is also on line {first}: both lines are applied, in order",
                subscriber.email
            ));
        } else {
            seen.insert(key, line);
        }
        out.push(subscriber);
    }
    if !problems.is_empty() {
        return Err(problems.into_error());
    }
    if out.is_empty() {
        bail!("no subscribers found below the header line");
    }
    Ok(SubscriberRows {
        subscribers: out,
        warnings,
    })
}
