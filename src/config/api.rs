//! `[api]`: the ingest API (`POST /api/articles`), on only with a token.

use std::fmt;

use serde::Deserialize;

use super::check::Problems;
use crate::domain::Secret;

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawApi {
    token: String,
}

impl fmt::Debug for RawApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawApi").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    /// The bearer token the API's callers send; `None`: no API (its
    /// routes are 404).
    pub token: Option<Secret>,
}

/// A shorter token is refused: it could be guessed.
const TOKEN_MIN: usize = 24;

pub(super) fn validate(raw: &RawApi, problems: &mut Problems) -> Option<ApiSettings> {
    let token = raw.token.trim();
    if token.is_empty() {
        return Some(ApiSettings { token: None });
    }
    // (The token itself is never part of a message.)
    if token.chars().count() < TOKEN_MIN {
        problems.key(
            "api.token",
            format!(
                "the token is {} characters long; use at least {TOKEN_MIN} (for example the output of `openssl rand -hex 32`)",
                token.chars().count()
            ),
        );
        return None;
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        problems.key(
            "api.token",
            "the token must be printable ASCII without spaces (it travels in an HTTP header)",
        );
        return None;
    }
    Some(ApiSettings {
        token: Some(Secret::new(token)),
    })
}
