//! DKIM signatures (RFC 6376): relaxed/relaxed canonicalization, with
//! RSA-SHA256 or Ed25519-SHA256 (RFC 8463), on aws-lc-rs.
//!
//! Every message differs (each reader has their own unsubscribe link), so
//! every message is hashed and signed: an RSA-2048 signature costs about
//! 0.3 ms of CPU, which is why [`super::seal`] signs on threads of their
//! own. aws-lc-rs signs RSA about twice as fast as ring (see
//! docs/benchmarks.md).

use std::fmt;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{self, KeySize};
use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// The headers each signature covers, when the message has them: the ones
/// a reader sees, the MIME structure, and the list headers (Gmail shows
/// its unsubscribe button only when List-Unsubscribe and
/// List-Unsubscribe-Post are signed).
pub const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// The smallest RSA key accepted (RFC 8301 asks verifiers to refuse keys
/// under 1024 bits, and signers to use 2048).
pub const RSA_MIN_BITS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Rsa,
    Ed25519,
}

impl Algorithm {
    /// The `a=` tag of a signature.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa-sha256",
            Algorithm::Ed25519 => "ed25519-sha256",
        }
    }

    /// The `k=` tag of the DNS record, and the name in the configuration.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }

    /// "an RSA key", "an Ed25519 key".
    pub fn label(self) -> &'static str {
        match self {
            Algorithm::Rsa => "an RSA key",
            Algorithm::Ed25519 => "an Ed25519 key",
        }
    }
}

enum Private {
    Rsa(rsa::KeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One signing identity: a domain, a selector and a private key.
#[derive(Clone)]
pub struct DkimKey {
    /// The `d=` tag (lowercase).
    pub domain: String,
    /// The `s=` tag.
    pub selector: String,
    key: Arc<Private>,
    /// The `p=` tag of the DNS record.
    public: String,
}

impl fmt::Debug for DkimKey {
    // (The private key stays out of logs and errors.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DkimKey")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl DkimKey {
    /// Reads a PEM private key from `path`: RSA (PKCS#1 or PKCS#8, 2048
    /// bits or more) or Ed25519 (PKCS#8). The error says what is wrong
    /// with the file, never what is in it.
    pub fn load(domain: &str, selector: &str, path: &Path) -> Result<Self, String> {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read the key file: {e}"))?;
        Self::from_pem(domain, selector, &pem)
    }

    /// A key from the text of a PEM file.
    pub fn from_pem(domain: &str, selector: &str, pem: &[u8]) -> Result<Self, String> {
        let der = match PrivateKeyDer::from_pem_slice(pem) {
            Ok(der) => der,
            Err(rustls_pki_types::pem::Error::NoItemsFound) => {
                let hint = if memchr::memmem::find(pem, b"ENCRYPTED PRIVATE KEY").is_some() {
                    "the key is encrypted: write it unencrypted (`openssl pkey -in FILE -out NEW`)"
                } else {
                    "expected `-----BEGIN PRIVATE KEY-----` (PKCS#8) or \
                     `-----BEGIN RSA PRIVATE KEY-----` (PKCS#1)"
                };
                return Err(format!("not a PEM private key: {hint}"));
            }
            Err(e) => return Err(format!("not a readable PEM file ({e})")),
        };
        let key = match &der {
            PrivateKeyDer::Pkcs1(der) => {
                let der = der.secret_pkcs1_der();
                rsa::KeyPair::from_der(der)
                    .map(Private::Rsa)
                    .map_err(|e| rsa_rejected(e.description_(), rsa_modulus_bits(der, false)))?
            }
            PrivateKeyDer::Pkcs8(der) => {
                let der = der.secret_pkcs8_der();
                match rsa::KeyPair::from_pkcs8(der) {
                    Ok(key) => Private::Rsa(key),
                    Err(e) if e.description_() == "WrongAlgorithm" => {
                        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                            .map(Private::Ed25519)
                            .map_err(|_| {
                                "a PKCS#8 key that is neither RSA nor Ed25519: DKIM signs \
                                 with RSA (2048 bits or more) or Ed25519"
                                    .to_string()
                            })?
                    }
                    Err(e) => {
                        return Err(rsa_rejected(e.description_(), rsa_modulus_bits(der, true)));
                    }
                }
            }
            PrivateKeyDer::Sec1(_) => {
                return Err("an elliptic-curve (SEC1) key: DKIM signs with RSA \
                            (2048 bits or more) or Ed25519"
                    .into());
            }
            _ => return Err("a key of an unknown kind".into()),
        };
        Ok(Self::new(domain, selector, key))
    }

    fn new(domain: &str, selector: &str, key: Private) -> Self {
        let public = match &key {
            Private::Rsa(k) => {
                let der: Result<PublicKeyX509Der<'static>, _> = k.public_key().as_der();
                BASE64.encode(der.expect("an RSA public key encodes").as_ref())
            }
            Private::Ed25519(k) => BASE64.encode(k.public_key().as_ref()),
        };
        Self {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            key: Arc::new(key),
            public,
        }
    }

    /// A new key: RSA 2048 bits, or Ed25519; with its PKCS#8 PEM text.
    pub fn generate(
        domain: &str,
        selector: &str,
        algorithm: Algorithm,
    ) -> Result<(Self, String), String> {
        let (key, der) = match algorithm {
            Algorithm::Rsa => {
                let key = rsa::KeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| "cannot generate an RSA key".to_string())?;
                let der: Pkcs8V1Der<'static> = key
                    .as_der()
                    .map_err(|_| "cannot encode the RSA key".to_string())?;
                let der = der.as_ref().to_vec();
                (Private::Rsa(key), der)
            }
            Algorithm::Ed25519 => {
                let key = Ed25519KeyPair::generate()
                    .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
                let der = key
                    .to_pkcs8v1()
                    .map_err(|_| "cannot encode the Ed25519 key".to_string())?
                    .as_ref()
                    .to_vec();
                (Private::Ed25519(key), der)
            }
        };
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        let text = BASE64.encode(&der);
        for line in text.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok((Self::new(domain, selector, key), pem))
    }

    pub fn algorithm(&self) -> Algorithm {
        match *self.key {
            Private::Rsa(_) => Algorithm::Rsa,
            Private::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The key's size in bits.
    pub fn bits(&self) -> usize {
        match &*self.key {
            Private::Rsa(k) => k.public_modulus_len() * 8,
            Private::Ed25519(_) => 256,
        }
    }

    /// Where the public key is published: `SELECTOR._domainkey.DOMAIN`.
    pub fn dns_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The TXT record to publish at [`DkimKey::dns_name`].
    pub fn txt_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().key_type(),
            self.public
        )
    }

    /// Whether a message from `from_domain` passes DMARC with this
    /// signature (relaxed alignment): the same domain, or a subdomain.
    pub fn aligns_with(&self, from_domain: &str) -> bool {
        let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
        from == self.domain
            || from
                .strip_suffix(self.domain.as_str())
                .is_some_and(|head| head.ends_with('.'))
    }

    fn sign(&self, data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        match &*self.key {
            Private::Rsa(k) => {
                let mut sig = vec![0u8; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    data,
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_string())?;
                out.extend_from_slice(&sig);
            }
            // RFC 8463: Ed25519 signs the SHA-256 hash of the data.
            Private::Ed25519(k) => {
                let hash = digest::digest(&digest::SHA256, data);
                out.extend_from_slice(k.sign(hash.as_ref()).as_ref());
            }
        }
        Ok(())
    }
}

fn rsa_rejected(reason: &str, bits: Option<usize>) -> String {
    match (reason, bits) {
        ("TooSmall", Some(bits)) => format!(
            "an RSA key of {bits} bits: DKIM keys must have {RSA_MIN_BITS} bits or more \
             (`gazette dkim keygen` writes one)"
        ),
        ("TooSmall", None) => format!(
            "an RSA key under {RSA_MIN_BITS} bits: DKIM keys must have {RSA_MIN_BITS} bits \
             or more (`gazette dkim keygen` writes one)"
        ),
        ("TooLarge", _) => "an RSA key over 8192 bits".into(),
        _ => format!("not a usable RSA private key ({reason})"),
    }
}

/// The size of an RSA key's modulus, read from its DER (PKCS#1
/// `RSAPrivateKey`, or PKCS#8 around one), to say how small a refused key
/// is.
fn rsa_modulus_bits(der: &[u8], pkcs8: bool) -> Option<usize> {
    /// One DER element: its tag, its content and what follows it.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    let (0x30, body, _) = element(der)? else {
        return None;
    };
    let (_, _, rest) = element(body)?; // version
    if pkcs8 {
        let (_, _, rest) = element(rest)?; // algorithm
        let (0x04, inner, _) = element(rest)? else {
            return None;
        };
        return rsa_modulus_bits(inner, false);
    }
    let (0x02, modulus, _) = element(rest)? else {
        return None;
    };
    let start = modulus.iter().position(|&b| b != 0)?;
    let modulus = &modulus[start..];
    Some(modulus.len() * 8 - modulus[0].leading_zeros() as usize)
}

/// The DKIM-Signature header fields for `message` (a whole message as
/// sent, CRLF line ends), one for each key in order, each ending in CRLF:
/// to be written before the message. `now` is the signing time (`t=`, in
/// seconds since 1970).
pub fn sign(keys: &[DkimKey], message: &[u8], now: u64) -> Result<Vec<u8>, String> {
    let (head, body) = match memchr::memmem::find(message, b"\r\n\r\n") {
        Some(at) => (&message[..at + 2], &message[at + 4..]),
        None => (message, &message[message.len()..]),
    };
    let body_hash = BASE64.encode(body_hash(body));
    let fields: Vec<(&[u8], &[u8])> = header_fields(head).collect();
    // The canonical form of the signed headers, then (per key) of the
    // signature's own header with `b=` empty.
    let mut data = Vec::with_capacity(head.len() + 512);
    let mut names: Vec<&str> = Vec::new();
    for name in SIGNED_HEADERS {
        // (The last instance, as verifiers select them bottom-up.)
        if let Some((_, value)) = fields
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            names.push(name);
            relaxed_header(name.as_bytes(), value, &mut data);
            data.extend_from_slice(b"\r\n");
        }
    }
    // Each name twice: the second names an instance that does not exist
    // (it adds nothing to the hash), so that a header added in transit,
    // a second Subject or List-Unsubscribe, breaks the signature
    // ("oversigning", RFC 6376, 8.15).
    let signed: Vec<&str> = names.iter().flat_map(|n| [*n, *n]).collect();
    let signed = fold_list(&signed.join(":"));
    let mut out = Vec::with_capacity(keys.len() * 700);
    let mut signature = Vec::with_capacity(512);
    for key in keys {
        let value = format!(
            "v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={now}; h={signed};\r\n\tbh={body_hash};\r\n\tb=",
            key.algorithm().tag(),
            key.domain,
            key.selector,
        );
        let start = data.len();
        relaxed_header(b"DKIM-Signature", value.as_bytes(), &mut data);
        signature.clear();
        key.sign(&data, &mut signature)?;
        data.truncate(start);
        let _ = write!(out, "DKIM-Signature: {value}");
        let b = BASE64.encode(&signature);
        for (i, chunk) in b.as_bytes().chunks(72).enumerate() {
            if i > 0 {
                out.extend_from_slice(b"\r\n\t  ");
            }
            out.extend_from_slice(chunk);
        }
        out.extend_from_slice(b"\r\n");
    }
    Ok(out)
}

/// `h=`'s names, folded onto lines of about 70 characters.
fn fold_list(names: &str) -> String {
    let mut out = String::new();
    let mut line = 0;
    for (i, name) in names.split(':').enumerate() {
        if i > 0 {
            out.push(':');
            line += 1;
            if line + name.len() > 64 {
                out.push_str("\r\n\t  ");
                line = 0;
            }
        }
        out.push_str(name);
        line += name.len();
    }
    out
}

/// The header fields of `head` (which ends in CRLF): name and value (with
/// its folding), in order.
fn header_fields(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = head;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            // A field ends at a CRLF not followed by a space or a tab.
            let mut end = 0;
            let next = loop {
                match memchr::memmem::find(&rest[end..], b"\r\n") {
                    Some(at) => {
                        let at = end + at;
                        match rest.get(at + 2) {
                            Some(b' ' | b'\t') => end = at + 2,
                            _ => break at,
                        }
                    }
                    None => break rest.len(),
                }
            };
            let field = &rest[..next];
            rest = &rest[(next + 2).min(rest.len())..];
            if let Some(colon) = memchr::memchr(b':', field) {
                return Some((&field[..colon], &field[colon + 1..]));
            }
        }
        None
    })
}

fn is_wsp(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Relaxed header canonicalization (RFC 6376, 3.4.2): the name in lower
/// case, the value unfolded with runs of whitespace made one space and
/// none at either end, no space around the colon. (No CRLF added.)
fn relaxed_header(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    while out.last().is_some_and(|&b| b == b' ' || b == b'\t') {
        out.pop();
    }
    out.push(b':');
    let mut space = false;
    let mut started = false;
    for &b in value {
        if is_wsp(b) {
            space = true;
        } else {
            if space && started {
                out.push(b' ');
            }
            space = false;
            started = true;
            out.push(b);
        }
    }
}

/// The SHA-256 of the body in relaxed canonicalization (RFC 6376, 3.4.4):
/// runs of spaces and tabs made one space, none at the end of a line, no
/// empty lines at the end, and a final CRLF unless the body is empty.
fn body_hash(body: &[u8]) -> digest::Digest {
    let mut hash = digest::Context::new(&digest::SHA256);
    let mut empty_lines = 0usize;
    let mut line = Vec::with_capacity(128);
    let mut rest = body;
    while !rest.is_empty() {
        let (raw, next) = match memchr::memmem::find(rest, b"\r\n") {
            Some(at) => (&rest[..at], &rest[at + 2..]),
            None => (rest, &rest[rest.len()..]),
        };
        rest = next;
        line.clear();
        let mut space = false;
        for &b in raw {
            if b == b' ' || b == b'\t' {
                space = true;
            } else {
                if space {
                    line.push(b' ');
                }
                space = false;
                line.push(b);
            }
        }
        if line.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            hash.update(b"\r\n");
        }
        empty_lines = 0;
        hash.update(&line);
        hash.update(b"\r\n");
    }
    hash.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_headers_are_unfolded_lowercased_and_trimmed() {
        let mut out = Vec::new();
        relaxed_header(b"Subject ", b" A  \t b\r\n\t c  ", &mut out);
        assert_eq!(out, b"subject:A b c");
    }

    #[test]
    fn the_relaxed_body_drops_trailing_space_and_empty_lines() {
        // RFC 6376, 3.4.6's example, and the empty body.
        let a = body_hash(b" C \r\nD \t E\r\n\r\n\r\n");
        let b = digest::digest(&digest::SHA256, b" C\r\nD E\r\n");
        assert_eq!(a.as_ref(), b.as_ref());
        let empty = digest::digest(&digest::SHA256, b"");
        assert_eq!(body_hash(b"").as_ref(), empty.as_ref());
        assert_eq!(body_hash(b"\r\n\r\n").as_ref(), empty.as_ref());
    }

    #[test]
    fn fields_are_split_at_unfolded_line_ends() {
        let head = b"From: a\r\nContent-Type: x;\r\n boundary=y\r\nTo: b\r\n";
        let fields: Vec<_> = header_fields(head).collect();
        assert_eq!(
            fields,
            vec![
                (&b"From"[..], &b" a"[..]),
                (&b"Content-Type"[..], &b" x;\r\n boundary=y"[..]),
                (&b"To"[..], &b" b"[..]),
            ]
        );
    }

    #[test]
    fn alignment_is_the_domain_or_a_subdomain() {
        let (key, _) = DkimKey::generate("Example.org", "s", Algorithm::Ed25519).unwrap();
        assert!(key.aligns_with("example.org"));
        assert!(key.aligns_with("news.example.org"));
        assert!(!key.aligns_with("badexample.org"));
        assert!(!key.aligns_with("example.com"));
    }
}
