//! Typed settings: `config/default.toml`, then `--config FILE` (or
//! `GAZETTE_CONFIG`), then `GAZETTE__SECTION__KEY` environment variables,
//! later sources overriding earlier ones. Every problem is reported with
//! the file (and line) or the environment variable it came from.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds};
use lettre::message::Mailbox;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::domain::DigestName;

/// The configuration file that is always read first when it exists.
pub const DEFAULT_FILE: &str = "config/default.toml";
/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "GAZETTE";

/// Every problem found while loading the configuration, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration:")?;
        for problem in &self.0 {
            write!(f, "\n  - {}", problem.replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ---------------------------------------------------------------------------
// What the files say. Every field has a default so that any file may set
// only some keys; unknown keys are refused.

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    database: RawDatabase,
    mail: RawMail,
    smtp: RawSmtp,
    web: RawWeb,
    templates: RawTemplates,
    delivery: RawDelivery,
    digests: Vec<RawDigest>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "sqlite://data/gazette.db".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Write one `.eml` file per message into `mail.outbox_dir`.
    Outbox,
    /// Deliver over SMTP to `[smtp]`.
    Smtp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMail {
    transport: TransportKind,
    outbox_dir: PathBuf,
    from: String,
}

impl Default for RawMail {
    fn default() -> Self {
        Self {
            transport: TransportKind::Outbox,
            outbox_dir: "outbox".into(),
            from: "Gazette <digest@example.org>".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain text: only for a relay on loopback or a trusted network.
    None,
    /// Connect in plain text, then upgrade with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    host: String,
    port: u16,
    tls: TlsMode,
    username: String,
    password: String,
    pool_size: u32,
    timeout_secs: u64,
    hello_name: String,
    ca_file: String,
}

impl Default for RawSmtp {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 2525,
            tls: TlsMode::None,
            username: String::new(),
            password: String::new(),
            pool_size: 8,
            timeout_secs: 30,
            hello_name: String::new(),
            ca_file: String::new(),
        }
    }
}

impl fmt::Debug for RawSmtp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawSmtp")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWeb {
    base_url: String,
    bind: String,
    confirm_ttl: String,
    subscribe_per_hour: u32,
}

impl Default for RawWeb {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".into(),
            bind: "127.0.0.1:8080".into(),
            confirm_ttl: "48h".into(),
            subscribe_per_hour: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTemplates {
    dir: PathBuf,
}

impl Default for RawTemplates {
    fn default() -> Self {
        Self {
            dir: "templates".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDelivery {
    concurrency: u32,
    rate_per_second: f64,
    batch_size: u32,
    lease_secs: u64,
    max_attempts: u32,
    retry_base_ms: u64,
    retry_max_ms: u64,
}

impl Default for RawDelivery {
    fn default() -> Self {
        Self {
            concurrency: 0,
            rate_per_second: 0.0,
            batch_size: 200,
            lease_secs: 300,
            max_attempts: 8,
            retry_base_ms: 30_000,
            retry_max_ms: 3_600_000,
        }
    }
}

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
struct RawDigest {
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
}

// ---------------------------------------------------------------------------
// What the rest of the program uses: validated, typed values.

/// A secret (the SMTP password): never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub mail: MailSettings,
    pub smtp: SmtpSettings,
    pub web: WebSettings,
    pub templates_dir: PathBuf,
    pub delivery: DeliverySettings,
    pub digests: Vec<Digest>,
    /// The sources that were read, in order, for messages.
    pub sources: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: String,
}

#[derive(Debug, Clone)]
pub struct MailSettings {
    pub transport: TransportKind,
    pub outbox_dir: PathBuf,
    pub from: Mailbox,
}

#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub pool_size: usize,
    pub timeout: Duration,
    /// The name sent in EHLO; empty: this machine's host name.
    pub hello_name: Option<String>,
    /// Certificate authorities trusted for the relay's TLS certificate
    /// besides the public ones (`smtp.ca_file`: a private relay).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Without a trailing slash.
    pub base_url: String,
    pub bind: std::net::SocketAddr,
    /// How long a confirmation link works.
    pub confirm_ttl: Duration,
    /// Subscribe requests accepted per client address per hour.
    pub subscribe_per_hour: u32,
}

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Workers, each with its own SMTP connection: messages in flight.
    pub concurrency: usize,
    /// Messages per second across this process's workers; `None`: unlimited.
    pub rate_per_second: Option<f64>,
    pub batch_size: u32,
    pub lease: Duration,
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
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
            .map_err(|e| format!("`{text}` is not a valid cron schedule: {e}"))?;
        Ok(Self {
            text: text.to_string(),
            cron,
        })
    }
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
}

impl Settings {
    pub fn digest(&self, name: &str) -> Option<&Digest> {
        self.digests.iter().find(|d| d.name.as_str() == name)
    }

    /// The digest named `name`, or an error listing the configured ones.
    pub fn require_digest(&self, name: &str) -> anyhow::Result<&Digest> {
        self.digest(name).ok_or_else(|| {
            let known: Vec<&str> = self.digests.iter().map(|d| d.name.as_str()).collect();
            anyhow::anyhow!(
                "no digest named `{name}` in the configuration ({}); configured: {}",
                self.sources.join(", "),
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )
        })
    }
}

// ---------------------------------------------------------------------------
// Loading

/// Where each key came from, so that errors can name the file or variable.
struct Sources {
    files: Vec<(String, toml::Table)>,
    env: Vec<(String, String)>,
}

impl Sources {
    /// The source that gave `path` (a dotted key such as `smtp.port`) its value.
    fn origin(&self, path: &str) -> String {
        if let Some((_, var)) = self.env.iter().rev().find(|(key, _)| key == path) {
            return format!("environment variable {var}");
        }
        let parts: Vec<&str> = path.split('.').collect();
        for (file, table) in self.files.iter().rev() {
            let mut node = Some(table);
            let mut found = false;
            for (i, part) in parts.iter().enumerate() {
                let Some(t) = node else { break };
                match t.get(*part) {
                    Some(toml::Value::Table(inner)) if i + 1 < parts.len() => node = Some(inner),
                    Some(_) if i + 1 == parts.len() => found = true,
                    _ => break,
                }
            }
            if found {
                return file.clone();
            }
        }
        "built-in default".into()
    }
}

/// Loads and validates the configuration. `explicit` is `--config FILE`.
/// The default file is `config/default.toml` under `base_dir`.
pub fn load(base_dir: &Path, explicit: Option<&Path>) -> Result<Settings, ConfigError> {
    let mut problems = Vec::new();
    let mut files = Vec::new();
    let default = base_dir.join(DEFAULT_FILE);
    if default.exists() {
        files.push(default);
    }
    if let Some(path) = explicit {
        if !path.exists() {
            return Err(ConfigError(vec![format!(
                "{}: configuration file not found",
                path.display()
            )]));
        }
        files.push(path.to_path_buf());
    }

    let mut sources = Sources {
        files: Vec::new(),
        env: Vec::new(),
    };
    let mut builder = config::Config::builder();
    for path in &files {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("{shown}: cannot read: {e}"));
                continue;
            }
        };
        // Each file alone must be well-formed with known keys of the right
        // type; toml's errors carry the line and column.
        if let Err(e) = toml::from_str::<RawSettings>(&text) {
            problems.push(format!("{shown}: {}", e.to_string().trim_end()));
            continue;
        }
        let table: toml::Table = text.parse().unwrap_or_default();
        sources.files.push((shown, table));
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    if !problems.is_empty() {
        return Err(ConfigError(problems));
    }

    let env_prefix = format!("{ENV_PREFIX}__");
    for (var, _) in std::env::vars() {
        if let Some(rest) = var.strip_prefix(&env_prefix) {
            sources
                .env
                .push((rest.to_lowercase().replace("__", "."), var.clone()));
        }
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__"),
    );
    let raw: RawSettings = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| {
            let vars: Vec<&str> = sources.env.iter().map(|(_, v)| v.as_str()).collect();
            ConfigError(vec![format!("environment ({}): {e}", vars.join(", "))])
        })?;

    let mut shown: Vec<String> = sources.files.iter().map(|(f, _)| f.clone()).collect();
    if !sources.env.is_empty() {
        shown.push(format!("{env_prefix}* environment variables"));
    }
    if shown.is_empty() {
        shown.push("built-in defaults".into());
    }
    validate(raw, &sources, shown)
}

/// The certificates of a PEM file: at least one, and nothing unreadable.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certificates.is_empty() {
        return Err("holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)".into());
    }
    Ok(certificates)
}

fn validate(raw: RawSettings, src: &Sources, shown: Vec<String>) -> Result<Settings, ConfigError> {
    let mut problems = Vec::new();
    let mut bad = |key: &str, message: String| {
        problems.push(format!("{}: key `{key}`: {message}", src.origin(key)));
    };

    let url = raw.database.url.trim().to_string();
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        bad(
            "database.url",
            format!("`{url}` is neither a `sqlite://PATH` nor a `postgres://USER@HOST/DB` address"),
        );
    }

    let from = match raw.mail.from.parse::<Mailbox>() {
        Ok(m) => Some(m),
        Err(e) => {
            bad(
                "mail.from",
                format!(
                    "`{}` is not a valid sender ({e}); write `Name <address@example.org>`",
                    raw.mail.from
                ),
            );
            None
        }
    };

    if raw.smtp.host.trim().is_empty() {
        bad("smtp.host", "must not be empty".into());
    }
    if raw.smtp.pool_size == 0 {
        bad("smtp.pool_size", "must be at least 1".into());
    }
    if raw.smtp.timeout_secs == 0 {
        bad("smtp.timeout_secs", "must be at least 1".into());
    }
    let extra_roots = match raw.smtp.ca_file.trim() {
        "" => Vec::new(),
        path => match read_certificates(Path::new(path)) {
            Ok(roots) => roots,
            Err(message) => {
                bad("smtp.ca_file", format!("`{path}`: {message}"));
                Vec::new()
            }
        },
    };
    if raw.smtp.password.is_empty() != raw.smtp.username.is_empty() {
        bad(
            "smtp.username",
            "set both `smtp.username` and `smtp.password`, or neither".into(),
        );
    }

    let base_url = raw.web.base_url.trim().trim_end_matches('/').to_string();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
        || base_url.contains(char::is_whitespace)
    {
        bad(
            "web.base_url",
            format!("`{base_url}` is not an http:// or https:// address"),
        );
    }

    let bind = raw
        .web
        .bind
        .trim()
        .parse::<std::net::SocketAddr>()
        .map_err(|_| {
            bad(
                "web.bind",
                format!(
                    "`{}` is not an address and port such as 127.0.0.1:8080",
                    raw.web.bind
                ),
            )
        });
    let confirm_ttl = parse_duration(&raw.web.confirm_ttl).map_err(|e| bad("web.confirm_ttl", e));

    let d = &raw.delivery;
    if d.batch_size == 0 {
        bad("delivery.batch_size", "must be at least 1".into());
    }
    if d.max_attempts == 0 {
        bad("delivery.max_attempts", "must be at least 1".into());
    }
    if d.concurrency as usize > raw.smtp.pool_size as usize && raw.smtp.pool_size > 0 {
        bad(
            "delivery.concurrency",
            format!(
                "{} workers need {} SMTP connections but smtp.pool_size is {}: raise smtp.pool_size or set concurrency = 0 (one worker per connection)",
                d.concurrency, d.concurrency, raw.smtp.pool_size
            ),
        );
    }
    if !(d.rate_per_second.is_finite() && d.rate_per_second >= 0.0) {
        bad(
            "delivery.rate_per_second",
            "must be 0 (unlimited) or a positive number".into(),
        );
    }
    if d.lease_secs == 0 {
        bad("delivery.lease_secs", "must be at least 1".into());
    }

    let mut digests = Vec::new();
    for (i, rd) in raw.digests.iter().enumerate() {
        let key = |field: &str| format!("digests[{i}].{field}");
        let mut dbad = |field: &str, message: String| {
            problems.push(format!(
                "{}: key `{}` (digest `{}`): {message}",
                src.origin("digests"),
                key(field),
                rd.name
            ));
        };
        let name = DigestName::parse(&rd.name).map_err(|e| dbad("name", e.to_string()));
        if raw.digests[..i].iter().any(|o| o.name == rd.name) {
            dbad("name", "another digest has the same name".into());
        }
        let schedule = Schedule::parse(&rd.schedule).map_err(|e| dbad("schedule", e));
        let timezone = Tz::from_str(&rd.timezone).map_err(|_| {
            dbad(
                "timezone",
                format!(
                    "`{}` is not an IANA time zone name (such as `Europe/Berlin` or `UTC`)",
                    rd.timezone
                ),
            )
        });
        let window = parse_duration(&rd.window).map_err(|e| dbad("window", e));
        let catch_up = parse_duration(&rd.catch_up).map_err(|e| dbad("catch_up", e));
        if rd.max_articles == 0 {
            dbad("max_articles", "must be at least 1".into());
        }
        if rd.template.is_empty() || rd.template.contains(['/', '\\']) || rd.template.contains("..")
        {
            dbad(
                "template",
                format!(
                    "`{}` must be a base name such as `digest` (for digest.html.j2 and digest.txt.j2)",
                    rd.template
                ),
            );
        } else {
            for ext in ["html", "txt"] {
                let path = raw.templates.dir.join(format!("{}.{ext}.j2", rd.template));
                if !path.is_file() {
                    dbad(
                        "template",
                        format!("template file {} does not exist", path.display()),
                    );
                }
            }
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
            });
        }
    }

    if !problems.is_empty() {
        return Err(ConfigError(problems));
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Ok(Settings {
        database: DatabaseSettings { url },
        mail: MailSettings {
            transport: raw.mail.transport,
            outbox_dir: raw.mail.outbox_dir,
            from: from.expect("validated above"),
        },
        smtp: SmtpSettings {
            host: raw.smtp.host.trim().to_string(),
            port: raw.smtp.port,
            tls: raw.smtp.tls,
            username: non_empty(&raw.smtp.username),
            password: non_empty(&raw.smtp.password).map(Secret),
            pool_size: raw.smtp.pool_size as usize,
            timeout: Duration::from_secs(raw.smtp.timeout_secs),
            hello_name: non_empty(raw.smtp.hello_name.trim()),
            extra_roots,
        },
        web: WebSettings {
            base_url,
            bind: bind.expect("validated above"),
            confirm_ttl: confirm_ttl.expect("validated above"),
            subscribe_per_hour: raw.web.subscribe_per_hour,
        },
        templates_dir: raw.templates.dir,
        delivery: DeliverySettings {
            concurrency: if d.concurrency == 0 {
                raw.smtp.pool_size as usize
            } else {
                d.concurrency as usize
            },
            rate_per_second: (d.rate_per_second > 0.0).then_some(d.rate_per_second),
            batch_size: d.batch_size,
            lease: Duration::from_secs(d.lease_secs),
            max_attempts: d.max_attempts,
            retry_base: Duration::from_millis(d.retry_base_ms),
            retry_max: Duration::from_millis(d.retry_max_ms.max(d.retry_base_ms)),
        },
        digests,
        sources: shown,
    })
}

/// `24h`, `90m`, `7d`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration such as `24h`, `90m` or `7d` ({e})"))
}
