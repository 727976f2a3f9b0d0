//! `[log]`: how gazette logs (to standard error).

use serde::Deserialize;

use super::check::Problems;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line an event (coloured on a terminal).
    Text,
    /// One JSON object an event, for a log collector.
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLog {
    format: LogFormat,
    level: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    /// gazette's own level (`error`, `warn`, `info`, `debug` or `trace`);
    /// other crates log warnings and errors. `GAZETTE_LOG` or `RUST_LOG`,
    /// when set, decide instead.
    pub level: &'static str,
}

impl LogSettings {
    /// The filter: `GAZETTE_LOG`, else `RUST_LOG`, else this level.
    pub fn filter(&self, env: impl Fn(&str) -> Option<String>) -> String {
        env("GAZETTE_LOG")
            .or_else(|| env("RUST_LOG"))
            .unwrap_or_else(|| format!("gazette={},warn", self.level))
    }
}

pub(super) fn validate(raw: &RawLog, problems: &mut Problems) -> Option<LogSettings> {
    const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let wanted = raw.level.trim().to_ascii_lowercase();
    let Some(level) = LEVELS.into_iter().find(|l| *l == wanted) else {
        problems.key(
            "log.level",
            format!("`{}` is not one of {}", raw.level, LEVELS.join(", ")),
        );
        return None;
    };
    Some(LogSettings {
        format: raw.format,
        level,
    })
}
