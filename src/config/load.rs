//! Reading the configuration: `config/default.toml`, the `--config` file,
//! then `GAZETTE__SECTION__KEY` variables of the environment it is given;
//! then each section's validator.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::admin::{self, RawAdmin};
use super::api::{self, RawApi};
use super::bounces::{self, RawBounces};
use super::check::{ConfigError, Problems, Sources};
use super::database::{self, RawDatabase, is_secret_key};
use super::delivery::{self, RawDelivery};
use super::digests::{self, RawDigest};
use super::dkim::{self, RawDkim};
use super::feeds::{self, RawFeed};
use super::log::{self, RawLog};
use super::mail::{self, RawMail};
use super::settings::Settings;
use super::smtp::{self, RawSmtp};
use super::web::{self, RawWeb};

/// The configuration file that is always read first when it exists.
pub const DEFAULT_FILE: &str = "config/default.toml";
/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "GAZETTE";
/// Tests only: a loopback base URL that stands for Amazon SNS's hosts.
#[doc(hidden)]
pub const SNS_TEST_ENDPOINT: &str = "GAZETTE_TEST_SNS_ENDPOINT";

/// What the files say. Every field has a default so that any file may set
/// only some keys; unknown keys are refused.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSettings {
    database: RawDatabase,
    mail: RawMail,
    smtp: RawSmtp,
    relays: Vec<RawSmtp>,
    web: RawWeb,
    templates: RawTemplates,
    delivery: RawDelivery,
    log: RawLog,
    admin: RawAdmin,
    digests: Vec<RawDigest>,
    feeds: Vec<RawFeed>,
    dkim: Vec<RawDkim>,
    api: RawApi,
    bounces: RawBounces,
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

/// Loads and validates the configuration, with this process's
/// environment. `explicit` is `--config FILE`; the default file is
/// `config/default.toml` under `base_dir`.
pub fn load(base_dir: &Path, explicit: Option<&Path>) -> Result<Settings, ConfigError> {
    load_from(base_dir, explicit, std::env::vars())
}

/// [`load`] with the environment variables given (those that do not start
/// with `GAZETTE__` are ignored).
pub fn load_from(
    base_dir: &Path,
    explicit: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Settings, ConfigError> {
    // (Each file with the directory its relative paths are from: for the
    // default file, the directory it is found from; for `--config FILE`,
    // FILE's own directory.)
    let mut files = Vec::new();
    let default = base_dir.join(DEFAULT_FILE);
    let default_found = default.exists();
    if default_found {
        files.push((default.clone(), base_dir.to_path_buf()));
    }
    if let Some(path) = explicit {
        if !path.exists() {
            return Err(ConfigError(vec![format!(
                "{}: configuration file not found",
                path.display()
            )]));
        }
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        files.push((path.to_path_buf(), dir));
    }

    let mut problems = Vec::new();
    let mut sources = Sources::default();
    let mut builder = config::Config::builder();
    for (path, dir) in &files {
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                problems.push(format!("{shown}: cannot read: {e}"));
                continue;
            }
        };
        // Each file alone must be well-formed with known keys of the right
        // type; toml's errors carry the line and column (and the line
        // itself, hidden where it may hold a secret).
        if let Err(e) = toml::from_str::<RawSettings>(&text) {
            problems.push(format!(
                "{shown}: {}",
                hide_secrets(e.to_string().trim_end())
            ));
            continue;
        }
        let table: toml::Table = text.parse().unwrap_or_default();
        sources.files.push((shown, table, dir.clone()));
        builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
    }
    if !problems.is_empty() {
        return Err(ConfigError(problems));
    }

    let env_prefix = format!("{ENV_PREFIX}__");
    let mut sns_test_endpoint = None;
    let env: config::Map<String, String> = env
        .into_iter()
        .filter(|(var, value)| {
            if var == SNS_TEST_ENDPOINT {
                sns_test_endpoint = Some(value.clone());
            }
            var.starts_with(&env_prefix)
        })
        .collect();
    for var in env.keys() {
        let key = var[env_prefix.len()..].to_lowercase().replace("__", ".");
        sources.env.push((key, var.clone()));
    }
    builder = builder.add_source(
        config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(env)),
    );
    let mut raw: RawSettings = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| {
            let vars: Vec<&str> = sources.env.iter().map(|(_, v)| v.as_str()).collect();
            ConfigError(vec![format!("environment ({}): {e}", vars.join(", "))])
        })?;

    let explicit_dir = explicit.map(|_| files[files.len() - 1].1.as_path());
    anchor_relative_paths(&mut raw, &sources, explicit_dir);

    let mut shown: Vec<String> = Vec::new();
    if !default_found {
        // (Said, not skipped silently: a command run from another directory
        // would otherwise take built-in defaults without a word.)
        let dir = std::fs::canonicalize(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
        shown.push(format!(
            "no {DEFAULT_FILE} in {}: built-in defaults",
            dir.display()
        ));
    }
    shown.extend(sources.files.iter().map(|(f, _, _)| f.clone()));
    if !sources.env.is_empty() {
        shown.push(format!("{env_prefix}* environment variables"));
    }
    let mut settings = validate(&raw, &sources, shown)?;
    settings.bounces.sns_test_endpoint = sns_test_endpoint;
    Ok(settings)
}

/// Makes each relative path that a file sets relative to that file's
/// directory (see `files` in [`load_from`]), and a built-in default
/// relative to the `--config` file's directory (`explicit_dir`), where the
/// configuration lives; a path from the environment stays relative to the
/// working directory.
fn anchor_relative_paths(raw: &mut RawSettings, sources: &Sources, explicit_dir: Option<&Path>) {
    let base_of = |key: &str| -> Option<&Path> {
        if sources.variable_of(key).is_some() {
            return None;
        }
        let dir = match sources.file_of(key) {
            Some(i) => sources.files[i].2.as_path(),
            None => explicit_dir?,
        };
        (!dir.as_os_str().is_empty() && dir != Path::new(".")).then_some(dir)
    };
    let anchor = |key: &str, path: &mut PathBuf| {
        if let Some(base) =
            base_of(key).filter(|_| path.is_relative() && !path.as_os_str().is_empty())
        {
            *path = base.join(&*path);
        }
    };
    anchor("templates.dir", &mut raw.templates.dir);
    anchor("mail.outbox_dir", &mut raw.mail.outbox_dir);
    anchor("web.token_key_file", &mut raw.web.token_key_file);
    for section in &mut raw.dkim {
        anchor("dkim", &mut section.key_file);
    }
    let mut ca_file = PathBuf::from(raw.smtp.ca_file.trim());
    anchor("smtp.ca_file", &mut ca_file);
    raw.smtp.ca_file = ca_file.display().to_string();
    for (i, relay) in raw.relays.iter_mut().enumerate() {
        let mut ca_file = PathBuf::from(relay.ca_file.trim());
        anchor(&format!("relays[{i}].ca_file"), &mut ca_file);
        relay.ca_file = ca_file.display().to_string();
    }
    if let Some(base) = base_of("database.url") {
        raw.database.url = database::anchor_sqlite_url(&raw.database.url, base);
    }
}

/// Each section's validator in turn; every problem of every section is
/// reported at once.
fn validate(
    raw: &RawSettings,
    sources: &Sources,
    shown: Vec<String>,
) -> Result<Settings, ConfigError> {
    let mut problems = Problems::new(sources);
    let database = database::validate(&raw.database, &mut problems);
    let mail = mail::validate(&raw.mail, &mut problems);
    if !raw.relays.is_empty() {
        exclusive_relays(sources, &mut problems);
    }
    let relays = smtp::validate_relays(&raw.smtp, &raw.relays, &mut problems);
    let web = web::validate(&raw.web, &mut problems);
    let pool_size = match raw.relays.as_slice() {
        [] => raw.smtp.pool_size,
        relays => relays.iter().map(|r| r.pool_size).sum(),
    };
    let delivery = delivery::validate(&raw.delivery, pool_size, &mut problems);
    let log = log::validate(&raw.log, &mut problems);
    let admin = admin::validate(&raw.admin, &mut problems);
    let api = api::validate(&raw.api, &mut problems);
    let bounces = bounces::validate(&raw.bounces, &mut problems);
    let feeds = feeds::validate(&raw.feeds, &mut problems);
    let dkim = dkim::validate(&raw.dkim, &mut problems);
    if !raw.templates.dir.is_dir() {
        problems.key(
            "templates.dir",
            format!("`{}` is not a directory", raw.templates.dir.display()),
        );
    }
    let digests = digests::validate(&raw.digests, &raw.templates.dir, &mut problems);
    match (
        database, mail, relays, web, delivery, log, admin, api, bounces,
    ) {
        (
            Some(database),
            Some(mail),
            Some(relays),
            Some(web),
            Some(delivery),
            Some(log),
            Some(admin),
            Some(api),
            Some(bounces),
        ) if problems.list.is_empty() => Ok(Settings {
            database,
            mail,
            smtp: relays[0].smtp.clone(),
            relays,
            web,
            templates_dir: raw.templates.dir.clone(),
            delivery,
            log,
            admin,
            digests,
            feeds,
            dkim,
            api,
            bounces,
            sources: shown,
        }),
        _ => Err(ConfigError(problems.list)),
    }
}

/// `[smtp]` and `[[relays]]` describe the same thing: one source (a file
/// or the environment) may not set both. (`[[relays]]` in the `--config`
/// file replaces the `[smtp]` of `config/default.toml`.)
fn exclusive_relays(sources: &Sources, problems: &mut Problems) {
    for (file, table, _) in &sources.files {
        if table.contains_key("relays") && table.contains_key("smtp") {
            problems.list.push(format!(
                "{file}: `[smtp]` and `[[relays]]` in one file: describe one relay in `[smtp]`, or every relay in `[[relays]]`"
            ));
        }
    }
    for (key, var) in &sources.env {
        if key.starts_with("smtp.") {
            problems.list.push(format!(
                "environment variable {var}: sets `{key}`, but the relays are those of `[[relays]]`"
            ));
        }
    }
}

/// A TOML error shows the line at fault: where that line sets a secret
/// (a password, a token) or a database address with credentials, its
/// value is replaced with `…`.
fn hide_secrets(message: &str) -> String {
    message
        .lines()
        .map(|line| {
            // The quoted lines look like `12 | key = value`.
            let Some((gutter, source)) = line.split_once('|') else {
                return line.to_string();
            };
            if !gutter.trim().chars().all(|c| c.is_ascii_digit()) || gutter.trim().is_empty() {
                return line.to_string();
            }
            let Some((key, _)) = source.split_once('=') else {
                return line.to_string();
            };
            if is_secret_key(key) || (source.contains("://") && source.contains('@')) {
                format!("{gutter}|{key}= … (hidden: it may hold a secret)")
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
