//! `[[feeds]]`: the RSS and Atom feeds `gazette run` polls for articles.

use std::time::Duration;

use serde::Deserialize;

use super::check::{Problems, parse_duration};

fn default_interval() -> String {
    "15m".into()
}
fn default_timeout() -> String {
    "30s".into()
}
fn default_max_bytes() -> u64 {
    10 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeed {
    url: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default = "default_interval")]
    interval: String,
    #[serde(default = "default_timeout")]
    timeout: String,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Feed {
    /// Unique; by default the host of the URL.
    pub name: String,
    pub url: url::Url,
    /// Added to every article of the feed.
    pub tags: Vec<String>,
    /// How often it is fetched (longer after failures).
    pub interval: Duration,
    /// A fetch that takes longer fails.
    pub timeout: Duration,
    /// A larger body (after decompression) fails the fetch.
    pub max_bytes: u64,
}

/// The longest a name may be.
const NAME_MAX: usize = 64;

/// Every feed, checked: a feed with a problem is left out, and the problem
/// recorded against `feeds[N].key`.
pub(super) fn validate(raw: &[RawFeed], problems: &mut Problems) -> Vec<Feed> {
    let mut feeds: Vec<Feed> = Vec::new();
    // (index, name) of each feed so far, for duplicates.
    let mut names: Vec<(usize, String)> = Vec::new();
    for (i, rf) in raw.iter().enumerate() {
        let before = problems.list.len();
        let mut bad = |field: &str, message: String| problems.feed(i, field, message);
        let url = match url::Url::parse(rf.url.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
                Some(url)
            }
            Ok(_) => {
                bad(
                    "url",
                    format!("`{}` is not an http:// or https:// address", rf.url),
                );
                None
            }
            Err(e) => {
                bad("url", format!("`{}` is not an address ({e})", rf.url));
                None
            }
        };
        let name = match rf.name.as_deref().map(str::trim) {
            Some(name) => {
                if name.is_empty()
                    || name.len() > NAME_MAX
                    || name.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    bad(
                        "name",
                        format!(
                            "`{name}` must be 1 to {NAME_MAX} characters without spaces, such as `example-blog`"
                        ),
                    );
                    None
                } else {
                    Some((name.to_string(), false))
                }
            }
            None => url
                .as_ref()
                .and_then(|u| u.host_str())
                .map(|host| (host.to_string(), true)),
        };
        if let Some((name, derived)) = &name
            && let Some((other, _)) = names.iter().find(|(_, n)| n == name)
        {
            let how = if *derived {
                " (taken from the URL's host: set a `name`)"
            } else {
                ""
            };
            bad(
                "name",
                format!("`{name}`{how} is also the name of feeds[{other}]"),
            );
        }
        let interval = parse_duration(&rf.interval).map_err(|e| bad("interval", e));
        if interval.as_ref().is_ok_and(|d| d.is_zero()) {
            bad("interval", "must be longer than zero".into());
        }
        let timeout = parse_duration(&rf.timeout).map_err(|e| bad("timeout", e));
        if timeout.as_ref().is_ok_and(|d| d.is_zero()) {
            bad("timeout", "must be longer than zero".into());
        }
        if rf.max_bytes == 0 {
            bad("max_bytes", "must be at least 1".into());
        }
        if let Some((name, _)) = &name {
            names.push((i, name.clone()));
        }
        if problems.list.len() > before {
            continue;
        }
        if let (Some(url), Some((name, _)), Ok(interval), Ok(timeout)) =
            (url, name, interval, timeout)
        {
            feeds.push(Feed {
                name,
                url,
                tags: rf
                    .tags
                    .iter()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty())
                    .collect(),
                interval,
                timeout,
                max_bytes: rf.max_bytes,
            });
        }
    }
    feeds
}
