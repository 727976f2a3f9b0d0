//! `[smtp]`, or `[[relays]]`: the relays, their TLS, their credentials,
//! and each one's share of the deliveries.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
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
    /// Only in `[[relays]]`: the relay's share of the deliveries.
    pub(super) weight: Option<u32>,
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
            weight: None,
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
    /// How the relay's certificate is checked, for `tls` and `starttls`:
    /// the public certificate authorities and those of `smtp.ca_file` (a
    /// private relay). Built once, here, and shared by every connection.
    pub tls_client: Option<Arc<rustls::ClientConfig>>,
}

/// One relay of `[[relays]]`, or the one of `[smtp]`, with its share.
#[derive(Debug, Clone)]
pub struct Relay {
    /// `host:port`: how logs, metrics and `gazette check` name it.
    pub name: String,
    /// Its share of the deliveries against the other relays' weights.
    pub weight: u32,
    pub smtp: SmtpSettings,
}

/// The relays: those of `[[relays]]` if any, else the one of `[smtp]`.
pub(super) fn validate_relays(
    smtp: &RawSmtp,
    relays: &[RawSmtp],
    problems: &mut Problems,
) -> Option<Vec<Relay>> {
    let before = problems.list.len();
    if relays.is_empty() {
        if smtp.weight.is_some() {
            problems.key("smtp.weight", "only relays of `[[relays]]` have a weight");
        }
        let settings = validate(smtp, "smtp", problems);
        return settings.map(|smtp| vec![relay(smtp, 1)]);
    }
    let mut valid = Vec::new();
    for (i, raw) in relays.iter().enumerate() {
        let prefix = format!("relays[{i}]");
        let weight = raw.weight.unwrap_or(1);
        if weight == 0 {
            problems.key(&format!("{prefix}.weight"), "must be at least 1");
        }
        if let Some(smtp) = validate(raw, &prefix, problems) {
            valid.push(relay(smtp, weight));
        }
    }
    for (i, r) in valid.iter().enumerate() {
        if valid[..i].iter().any(|other| other.name == r.name) {
            problems.key(
                &format!("relays[{i}].host"),
                format!("`{}` is listed twice", r.name),
            );
        }
    }
    (problems.list.len() == before).then_some(valid)
}

fn relay(smtp: SmtpSettings, weight: u32) -> Relay {
    Relay {
        name: format!("{}:{}", smtp.host, smtp.port),
        weight,
        smtp,
    }
}

/// The settings of one relay, whose keys are under `prefix` (`smtp`, or
/// `relays[1]`).
fn validate(raw: &RawSmtp, prefix: &str, problems: &mut Problems) -> Option<SmtpSettings> {
    let before = problems.list.len();
    let key = |name: &str| format!("{prefix}.{name}");
    if raw.host.trim().is_empty() {
        problems.key(&key("host"), "must not be empty");
    }
    if raw.pool_size == 0 {
        problems.key(&key("pool_size"), "must be at least 1");
    }
    if raw.timeout_secs == 0 {
        problems.key(&key("timeout_secs"), "must be at least 1");
    }
    let extra_roots = match raw.ca_file.trim() {
        "" => Vec::new(),
        path => read_certificates(Path::new(path)).unwrap_or_else(|message| {
            problems.key(&key("ca_file"), format!("`{path}`: {message}"));
            Vec::new()
        }),
    };
    if raw.password.is_empty() != raw.username.is_empty() {
        problems.key(
            &key("username"),
            format!(
                "set both `{}` and `{}`, or neither",
                key("username"),
                key("password")
            ),
        );
    }
    let tls_client = (raw.tls != TlsMode::None)
        .then(|| tls_client(extra_roots))
        .transpose()
        .unwrap_or_else(|message| {
            problems.key(&key("ca_file"), message);
            None
        });
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
        tls_client,
    })
}

/// The TLS client for the relay: trusting the public certificate
/// authorities and `extra_roots`, with ring (as the feeds' HTTP client).
fn tls_client(
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for cert in extra_roots {
        roots
            .add(cert)
            .map_err(|e| format!("unusable certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
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
