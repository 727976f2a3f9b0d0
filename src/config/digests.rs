//! `[[digests]]`: what each digest sends, when, and from which templates.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use serde::Deserialize;

use super::check::{Problems, parse_duration};
use crate::domain::DigestName;

fn default_subject() -> String {
    "{{ digest.title }} — {{ date }}".into()
}
fn default_timezone() -> String {
    "UTC".into()
}
fn default_template() -> String {
    "digest".into()
}
fn default_max_articles() -> u32 {
    10
}
fn default_window() -> String {
    "24h".into()
}
fn default_catch_up() -> String {
    "2h".into()
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDigest {
    name: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default = "default_subject")]
    subject: String,
    schedule: String,
    #[serde(default = "default_timezone")]
    timezone: String,
    #[serde(default = "default_template")]
    template: String,
    #[serde(default = "default_max_articles")]
    max_articles: u32,
    #[serde(default = "default_window")]
    window: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "default_true")]
    skip_if_empty: bool,
    #[serde(default = "default_catch_up")]
    catch_up: String,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    paused: bool,
}

/// A cron schedule as the operator wrote it, parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub text: String,
    pub cron: Cron,
}

impl Schedule {
    /// Standard 5-field crontab, or 6 fields with seconds first.
    pub fn parse(text: &str) -> Result<Self, String> {
        let fields = text.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "`{text}` has {fields} fields; expected a 5-field crontab line such as `0 7 * * *` (minute hour day-of-month month day-of-week)"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(text)
            .map_err(|e| match out_of_range(text) {
                Some(field) => format!("`{text}`: {field}"),
                None => format!("`{text}` is not a valid cron schedule: {e}"),
            })?;
        Ok(Self {
            text: text.to_string(),
            cron,
        })
    }
}

/// The first field of a crontab line with a number outside its range, in
/// words (croner says only "Number out of bounds").
fn out_of_range(text: &str) -> Option<String> {
    const FIELDS: [(&str, u32, u32); 6] = [
        ("second", 0, 59),
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day-of-month", 1, 31),
        ("month", 1, 12),
        ("day-of-week", 0, 7),
    ];
    let fields: Vec<&str> = text.split_whitespace().collect();
    // Five fields have no seconds.
    let names = &FIELDS[FIELDS.len() - fields.len()..];
    fields
        .iter()
        .zip(names)
        .find_map(|(field, (name, low, high))| {
            let numbers = field
                .split([',', '-', '/'])
                .filter_map(|n| n.parse::<u32>().ok());
            let step = field.split_once('/').map(|(_, s)| s);
            numbers
                .filter(|n| step != Some(&n.to_string()))
                .find(|n| n < low || n > high)
                .map(|n| {
                    if *field == n.to_string() {
                        format!("the {name} field is {n}, outside {low}–{high}")
                    } else {
                        format!("the {name} field `{field}` has {n}, outside {low}–{high}")
                    }
                })
        })
}

#[derive(Debug, Clone)]
pub struct Digest {
    pub name: DigestName,
    pub title: String,
    /// A minijinja template for the subject line.
    pub subject: String,
    pub schedule: Schedule,
    pub timezone: Tz,
    /// Base name of the templates: `{template}.html.j2` and `{template}.txt.j2`.
    pub template: String,
    pub max_articles: u32,
    /// How far back the first run of this digest looks for articles.
    pub window: Duration,
    pub tags: Vec<String>,
    pub skip_if_empty: bool,
    /// A slot missed by at most this much (downtime) is still sent.
    pub catch_up: Duration,
    /// Listed in the web archive (`/archive`).
    pub public: bool,
    /// `paused = true`: its slots are recorded as missed, not sent.
    pub paused: bool,
}

/// Every digest, checked: a digest with a problem is left out, and the
/// problem recorded. `templates_dir` is `templates.dir`.
pub(super) fn validate(
    raw: &[RawDigest],
    templates_dir: &Path,
    problems: &mut Problems,
) -> Vec<Digest> {
    let mut digests = Vec::new();
    // (A missing directory is one problem of `templates.dir`, not one per
    // template.)
    let templates_found = templates_dir.is_dir();
    for (i, rd) in raw.iter().enumerate() {
        let before = problems.list.len();
        let mut bad = |field: &str, message: String| problems.digest(i, &rd.name, field, message);
        let name = DigestName::parse(&rd.name).map_err(|e| bad("name", e.to_string()));
        if raw[..i].iter().any(|o| o.name == rd.name) {
            bad("name", "another digest has the same name".into());
        }
        let schedule = Schedule::parse(&rd.schedule).map_err(|e| bad("schedule", e));
        let timezone = Tz::from_str(&rd.timezone).map_err(|_| {
            bad(
                "timezone",
                format!(
                    "`{}` is not an IANA time zone name (such as `Europe/Berlin` or `UTC`)",
                    rd.timezone
                ),
            )
        });
        let window = parse_duration(&rd.window).map_err(|e| bad("window", e));
        let catch_up = parse_duration(&rd.catch_up).map_err(|e| bad("catch_up", e));
        if rd.max_articles == 0 {
            bad("max_articles", "must be at least 1".into());
        }
        if rd.template.is_empty() || rd.template.contains(['/', '\\']) || rd.template.contains("..")
        {
            bad(
                "template",
                format!(
                    "`{}` must be a base name such as `digest` (for digest.html.j2 and digest.txt.j2)",
                    rd.template
                ),
            );
        } else if templates_found {
            for ext in ["html", "txt"] {
                let path = templates_dir.join(format!("{}.{ext}.j2", rd.template));
                if !path.is_file() {
                    bad(
                        "template",
                        format!("template file {} does not exist", path.display()),
                    );
                }
            }
        }
        if problems.list.len() > before {
            continue;
        }
        if let (Ok(name), Ok(schedule), Ok(timezone), Ok(window), Ok(catch_up)) =
            (name, schedule, timezone, window, catch_up)
        {
            digests.push(Digest {
                name,
                title: rd.title.clone().unwrap_or_else(|| rd.name.clone()),
                subject: rd.subject.clone(),
                schedule,
                timezone,
                template: rd.template.clone(),
                max_articles: rd.max_articles,
                window,
                tags: rd.tags.clone(),
                skip_if_empty: rd.skip_if_empty,
                catch_up,
                public: rd.public,
                paused: rd.paused,
            });
        }
    }
    digests
}
