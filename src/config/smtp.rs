//! `[smtp]`: the relay, its TLS, its credentials.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use super::check::Problems;
use crate::domain::Secret;

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

impl TlsMode {
    /// As the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Starttls => "starttls",
            TlsMode::Tls => "tls",
        }
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSmtp {
    host: String,
    pub(super) port: u16,
    tls: TlsMode,
    username: String,
    password: String,
    pub(super) pool_size: u32,
    timeout_secs: u64,
    hello_name: String,
    pub(super) ca_file: String,
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

pub(super) fn validate(raw: &RawSmtp, problems: &mut Problems) -> Option<SmtpSettings> {
    let before = problems.list.len();
    if raw.host.trim().is_empty() {
        problems.key("smtp.host", "must not be empty");
    }
    if raw.pool_size == 0 {
        problems.key("smtp.pool_size", "must be at least 1");
    }
    if raw.timeout_secs == 0 {
        problems.key("smtp.timeout_secs", "must be at least 1");
    }
    let extra_roots = match raw.ca_file.trim() {
        "" => Vec::new(),
        path => read_certificates(Path::new(path)).unwrap_or_else(|message| {
            problems.key("smtp.ca_file", format!("`{path}`: {message}"));
            Vec::new()
        }),
    };
    if raw.password.is_empty() != raw.username.is_empty() {
        problems.key(
            "smtp.username",
            "set both `smtp.username` and `smtp.password`, or neither",
        );
    }
    if problems.list.len() > before {
        return None;
    }
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    Some(SmtpSettings {
        host: raw.host.trim().to_string(),
        port: raw.port,
        tls: raw.tls,
        username: non_empty(&raw.username),
        password: non_empty(&raw.password).map(Secret::new),
        pool_size: raw.pool_size as usize,
        timeout: Duration::from_secs(raw.timeout_secs),
        hello_name: non_empty(raw.hello_name.trim()),
        extra_roots,
    })
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
