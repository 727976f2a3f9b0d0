//! What every section's validator shares: where each key came from, and
//! the list of problems found, each naming its file (or environment
//! variable) and key.

use std::fmt;
use std::time::Duration;

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

/// Where each key came from, so that errors can name the file or variable.
#[derive(Default)]
pub(super) struct Sources {
    /// (file as shown, its keys, the directory its relative paths are from)
    pub(super) files: Vec<(String, toml::Table, std::path::PathBuf)>,
    /// (dotted key, variable name)
    pub(super) env: Vec<(String, String)>,
}

impl Sources {
    /// The source that gave `path` (a dotted key such as `smtp.port`) its value.
    pub(super) fn origin(&self, path: &str) -> String {
        if let Some(var) = self.variable_of(path) {
            return format!("environment variable {var}");
        }
        match self.file_of(path) {
            Some(i) => self.files[i].0.clone(),
            None => "built-in default".into(),
        }
    }

    /// The environment variable that set `path`, if one did.
    pub(super) fn variable_of(&self, path: &str) -> Option<&str> {
        let found = self.env.iter().rev().find(|(key, _)| key == path);
        found.map(|(_, var)| var.as_str())
    }

    /// The index in `files` of the last file that sets `path` (a part of
    /// it may name an element of an array of tables: `relays[1].host`).
    pub(super) fn file_of(&self, path: &str) -> Option<usize> {
        let parts: Vec<&str> = path.split('.').collect();
        self.files.iter().rposition(|(_, table, _)| {
            let mut node = table;
            for (i, part) in parts.iter().enumerate() {
                let (name, index) = match part.strip_suffix(']').and_then(|p| p.split_once('[')) {
                    Some((name, index)) => (name, index.parse::<usize>().ok()),
                    None => (*part, None),
                };
                let value = match (node.get(name), index) {
                    (Some(toml::Value::Array(items)), Some(index)) => items.get(index),
                    (value, None) => value,
                    _ => None,
                };
                match value {
                    Some(toml::Value::Table(inner)) if i + 1 < parts.len() => node = inner,
                    Some(_) => return i + 1 == parts.len(),
                    None => return false,
                }
            }
            false
        })
    }
}

/// The problems a validation finds, each with the origin of its key.
pub(super) struct Problems<'a> {
    sources: &'a Sources,
    pub(super) list: Vec<String>,
}

impl<'a> Problems<'a> {
    pub(super) fn new(sources: &'a Sources) -> Self {
        Self {
            sources,
            list: Vec::new(),
        }
    }

    /// A problem with the key `key` (dotted, such as `smtp.port`).
    pub(super) fn key(&mut self, key: &str, message: impl fmt::Display) {
        let origin = self.sources.origin(key);
        self.list.push(format!("{origin}: key `{key}`: {message}"));
    }

    /// A problem with `field` of the digest at `index` (named `name`).
    pub(super) fn digest(
        &mut self,
        index: usize,
        name: &str,
        field: &str,
        message: impl fmt::Display,
    ) {
        let origin = self.sources.origin("digests");
        self.list.push(format!(
            "{origin}: key `digests[{index}].{field}` (digest `{name}`): {message}"
        ));
    }
}

impl Problems<'_> {
    /// A problem with `field` of the feed at `index`.
    pub(super) fn feed(&mut self, index: usize, field: &str, message: impl fmt::Display) {
        let origin = self.sources.origin("feeds");
        self.list
            .push(format!("{origin}: key `feeds[{index}].{field}`: {message}"));
    }
}

impl Problems<'_> {
    /// A problem with `field` of the `[[dkim]]` section at `index`.
    pub(super) fn dkim(
        &mut self,
        index: usize,
        domain: &str,
        selector: &str,
        field: &str,
        message: impl fmt::Display,
    ) {
        let origin = self.sources.origin("dkim");
        self.list.push(format!(
            "{origin}: key `dkim[{index}].{field}` ([[dkim]] section {}, domain `{domain}`, selector `{selector}`): {message}",
            index + 1
        ));
    }
}

/// `24h`, `90m`, `7d`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration such as `24h`, `90m` or `7d` ({e})"))
}
