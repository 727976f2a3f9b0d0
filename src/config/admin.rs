//! `[admin]`: the operators' port, apart from the readers' pages.

use std::net::SocketAddr;

use serde::Deserialize;

use super::check::Problems;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawAdmin {
    bind: String,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where `gazette run` serves `/metrics` (Prometheus); `None`: nowhere.
    pub bind: Option<SocketAddr>,
}

pub(super) fn validate(raw: &RawAdmin, problems: &mut Problems) -> Option<AdminSettings> {
    let bind = match raw.bind.trim() {
        "" => None,
        text => match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.key(
                    "admin.bind",
                    format!("`{text}` is not an address and port such as 127.0.0.1:9090"),
                );
                return None;
            }
        },
    };
    Some(AdminSettings { bind })
}
