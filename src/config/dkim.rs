//! `[[dkim]]`: one section per DKIM signature that every message carries
//! (RFC 8463 recommends an RSA and an Ed25519 signature together). Each key
//! file is read and checked here, so that a wrong path or a bad key stops
//! `gazette check` and every command, not a run.

use std::path::PathBuf;

use serde::Deserialize;

use super::check::Problems;
use crate::mail::{Algorithm, DkimKey};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    domain: String,
    selector: String,
    pub(super) key_file: PathBuf,
    /// `rsa` or `ed25519`: the kind of key the file must hold (any of the
    /// two when left out).
    #[serde(default)]
    algorithm: Option<String>,
}

/// A domain name or selector: dot-separated labels of letters, digits and
/// hyphens.
fn is_dns_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Every section's key, loaded; a section with a problem is left out and
/// the problem recorded against `dkim[N].key`, naming the key file.
pub(super) fn validate(raw: &[RawDkim], problems: &mut Problems) -> Vec<DkimKey> {
    let mut keys: Vec<DkimKey> = Vec::new();
    for (i, rd) in raw.iter().enumerate() {
        let before = problems.list.len();
        let domain = rd.domain.trim().trim_end_matches('.');
        let selector = rd.selector.trim();
        let mut bad =
            |field: &str, message: String| problems.dkim(i, domain, selector, field, message);
        if !is_dns_name(domain) || !domain.contains('.') {
            bad(
                "domain",
                format!(
                    "`{}` is not a domain name such as `example.org` (in its ASCII form)",
                    rd.domain
                ),
            );
        }
        if !is_dns_name(selector) {
            bad(
                "selector",
                format!(
                    "`{}` is not a selector: letters, digits, hyphens and dots, such as `gazette2026`",
                    rd.selector
                ),
            );
        }
        let wanted = match rd.algorithm.as_deref().map(str::trim) {
            None => None,
            Some("rsa") => Some(Algorithm::Rsa),
            Some("ed25519") => Some(Algorithm::Ed25519),
            Some(other) => {
                bad("algorithm", format!("`{other}` is not `rsa` or `ed25519`"));
                None
            }
        };
        let file = rd.key_file.display();
        if rd.key_file.as_os_str().is_empty() {
            bad("key_file", "is empty: name a PEM private key file".into());
        } else {
            match DkimKey::load(domain, selector, &rd.key_file) {
                Ok(key) => match wanted {
                    Some(a) if a != key.algorithm() => bad(
                        "key_file",
                        format!(
                            "`{file}` holds {}, but `algorithm = \"{}\"`",
                            key.algorithm().label(),
                            a.key_type()
                        ),
                    ),
                    _ => {
                        if keys
                            .iter()
                            .any(|k| k.domain == key.domain && k.selector == key.selector)
                        {
                            bad(
                                "selector",
                                format!(
                                    "another [[dkim]] section signs for `{}` with the selector `{}`: \
                                     each key needs a selector of its own",
                                    key.domain, key.selector
                                ),
                            );
                        } else if problems.list.len() == before {
                            keys.push(key);
                        }
                    }
                },
                Err(e) => bad("key_file", format!("`{file}`: {e}")),
            }
        }
    }
    keys
}
