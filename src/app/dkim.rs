//! `gazette dkim keygen`, and what `gazette check` says of the `[[dkim]]`
//! keys: the DNS records to publish, and whether DMARC will see them.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::config::Settings;
use crate::mail::{Algorithm, DkimKey};

/// The DNS record of `key`, as a zone file line. A TXT record's strings
/// hold 255 bytes at most (RFC 1035), and an RSA-2048 key's record is
/// about 400: it is written as several strings on the line, which
/// resolvers join (RFC 6376, 3.6.2.2).
pub fn dns_record(key: &DkimKey) -> String {
    let value = key.txt_record();
    // (The record is ASCII: base64 and `v=DKIM1; k=…; p=`.)
    let strings: Vec<String> = value
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!("{}. IN TXT {}", key.dns_name(), strings.join(" "))
}

/// What `gazette check` prints of the keys: one entry per key with its
/// DNS record, and a warning when no signing domain aligns with the From
/// address's domain (DMARC relaxed alignment).
pub fn describe_keys(settings: &Settings) -> Vec<String> {
    let keys = &settings.dkim;
    if keys.is_empty() {
        return vec!["dkim: none configured: messages go out unsigned".into()];
    }
    let mut lines = vec![format!(
        "dkim: {} per message; publish each record:",
        crate::app::counted(keys.len() as u64, "signature", "signatures")
    )];
    for key in keys {
        lines.push(format!(
            "  d={} s={}: {} ({} bits)",
            key.domain,
            key.selector,
            key.algorithm().tag(),
            key.bits()
        ));
        lines.push(format!("    {}", dns_record(key)));
    }
    let from = settings.mail.from.email.domain();
    if !keys.iter().any(|k| k.aligns_with(from)) {
        let domains: Vec<&str> = keys.iter().map(|k| k.domain.as_str()).collect();
        lines.push(format!(
            "  warning: no signing domain ({}) aligns with the From address's domain `{from}`: \
             DMARC needs the From domain to be a signing domain or a subdomain of one",
            domains.join(", ")
        ));
    }
    lines
}

/// `gazette dkim keygen`: writes a new private key (PKCS#8 PEM, readable
/// by its owner only) to `out`, which must not exist, and prints the DNS
/// record and the configuration section that use it.
pub fn dkim_keygen(domain: &str, selector: &str, out: &Path, ed25519: bool) -> Result<()> {
    let algorithm = if ed25519 {
        Algorithm::Ed25519
    } else {
        Algorithm::Rsa
    };
    let domain = domain.trim().trim_end_matches('.');
    if domain.is_empty() || !domain.contains('.') || domain.contains(char::is_whitespace) {
        return Err(anyhow!(
            "--domain `{domain}` is not a domain such as example.org"
        ));
    }
    let selector = selector.trim();
    if selector.is_empty()
        || !selector
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(anyhow!(
            "--selector `{selector}` is not a selector: letters, digits, hyphens and dots"
        ));
    }
    let (key, pem) = DkimKey::generate(domain, selector, algorithm).map_err(|e| anyhow!(e))?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => anyhow!(
                "{} exists already: a new key is never written over one (choose another --out)",
                out.display()
            ),
            _ => anyhow!("cannot create {}: {e}", out.display()),
        })?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote a new {} key ({} bits) to {}",
        algorithm.tag(),
        key.bits(),
        out.display()
    );
    println!("publish this DNS TXT record:");
    println!("  {}", dns_record(&key));
    println!("and add to the configuration:");
    println!("  [[dkim]]");
    println!("  domain = \"{}\"", key.domain);
    println!("  selector = \"{}\"", key.selector);
    println!("  key_file = \"{}\"", out.display());
    Ok(())
}
