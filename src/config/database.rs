//! `[database]`: where the store is.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::check::Problems;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDatabase {
    pub(super) url: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "sqlite://data/gazette.db".into(),
        }
    }
}

impl fmt::Debug for RawDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawDatabase")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

#[derive(Clone)]
pub struct DatabaseSettings {
    /// `sqlite:…` or `postgres://…`; may hold a password: print
    /// [`DatabaseSettings::redacted_url`] instead.
    pub url: String,
}

impl DatabaseSettings {
    /// The address with its password hidden, for messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.redacted_url())
            .finish()
    }
}

pub(super) fn validate(raw: &RawDatabase, problems: &mut Problems) -> Option<DatabaseSettings> {
    let url = raw.url.trim().to_string();
    let known = url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://");
    if !known {
        // (The address may hold a password: only its scheme is shown.)
        let scheme = match url.split_once(':') {
            Some((scheme, _))
                if !scheme.is_empty()
                    && scheme.len() <= 20
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
            {
                format!("its scheme is `{scheme}`")
            }
            _ => "it has no scheme".to_string(),
        };
        problems.key(
            "database.url",
            format!(
                "the address is neither `sqlite://PATH` nor `postgres://USER@HOST/DB` ({scheme})"
            ),
        );
        return None;
    }
    Some(DatabaseSettings { url })
}

/// A SQLite URL whose file path is relative, made relative to `base`
/// instead; any other URL unchanged.
pub(super) fn anchor_sqlite_url(url: &str, base: &Path) -> String {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return url.to_string();
    };
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() || path.starts_with(':') || Path::new(path).is_absolute() {
        return url.to_string();
    }
    let path = base.join(path);
    match query {
        Some(query) => format!("sqlite://{}?{query}", path.display()),
        None => format!("sqlite://{}", path.display()),
    }
}

/// A database address with its password hidden, for messages: the one in
/// the authority part (`user:password@`) and any `password` parameter of
/// the query string.
pub fn redact_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let mut out = match (base.find("://"), base.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &base[scheme + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &base[..scheme + 3],
                    &userinfo[..colon],
                    &base[at..]
                ),
                None => base.to_string(),
            }
        }
        _ => base.to_string(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|param| match param.split_once('=') {
                Some((key, _)) if is_secret_key(key) => format!("{key}=***"),
                _ => param.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

/// Whether a URL parameter or configuration key holds a secret.
pub(super) fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "secret", "token", "sslkey"]
        .iter()
        .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_hidden_in_the_authority_and_the_query() {
        assert_eq!(
            redact_url("postgres://gazette:hunter2@db/gazette"),
            "postgres://gazette:***@db/gazette"
        );
        assert_eq!(
            redact_url("postgres://db/gazette?user=gazette&password=hunter2&sslmode=require"),
            "postgres://db/gazette?user=gazette&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite://data/gazette.db"),
            "sqlite://data/gazette.db"
        );
    }
}
