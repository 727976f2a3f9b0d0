//! Values parsed once at the edge and carried as types: inside the crate an
//! `EmailAddress` is always valid and a `DigestName` always well-formed.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("`{0}` is not a valid email address")]
    InvalidEmail(String),
    #[error(
        "`{0}` has characters outside ASCII: internationalized addresses are not supported; use the address's ASCII form"
    )]
    NonAsciiEmail(String),
    #[error(
        "`{0}` is not a valid digest name (use lowercase letters, digits, `-` and `_`, at most 64)"
    )]
    InvalidDigestName(String),
    #[error("the name contains a control character ({0:?}); names are one line of text")]
    ControlInName(char),
}

/// Refuses a reader's name given on the command line or in a file if it
/// has a control character (a line break, a tab, a NUL): a name is one line
/// of text, written into headers and pages.
pub fn check_name(name: &str) -> Result<(), DomainError> {
    match name.chars().find(|c| c.is_control()) {
        Some(c) => Err(DomainError::ControlInName(c)),
        None => Ok(()),
    }
}

/// Collapses control characters (CR, LF, tab, NUL) and runs of spaces into
/// single spaces, and trims the ends: a header value can never be split or
/// extended.
pub fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A reader's name typed in a form: on [`one_line`], at most 100
/// characters; `None` if nothing is left.
pub fn form_name(raw: &str) -> Option<String> {
    let name = one_line(raw);
    (!name.is_empty()).then(|| name.chars().take(100).collect())
}

/// A syntactically valid email address. Comparison is case-insensitive
/// through [`EmailAddress::key`], which the store uses for uniqueness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(lettre::Address);

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let trimmed = input.trim();
        let invalid = || DomainError::InvalidEmail(input.to_string());
        // lettre accepts some forms that are legal but useless for a mailing
        // list (no dot in the domain, quoted local parts with spaces).
        if trimmed.len() > 254 || trimmed.contains(char::is_whitespace) {
            return Err(invalid());
        }
        // Headers and envelopes are written in ASCII: an address with
        // other characters would need SMTPUTF8 from every relay on its way.
        if !trimmed.is_ascii() {
            return Err(DomainError::NonAsciiEmail(input.to_string()));
        }
        let address: lettre::Address = trimmed.parse().map_err(|_| invalid())?;
        if !address.domain().contains('.') || address.domain().starts_with('[') {
            return Err(invalid());
        }
        Ok(Self(address))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }

    /// The lowercase form used to find a subscriber regardless of case.
    pub fn key(&self) -> String {
        self.as_str().to_lowercase()
    }

    pub fn address(&self) -> &lettre::Address {
        &self.0
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name of a digest as written in the configuration (`daily`, `weekly-tech`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DigestName(String);

impl DigestName {
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let ok = !input.is_empty()
            && input.len() <= 64
            && input
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(input.to_string()))
        } else {
            Err(DomainError::InvalidDigestName(input.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DigestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A secret (the SMTP password): never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The SHA-256 of `text`, hex: what the store keeps of a token.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104) with one key, its padded key blocks hashed
/// once: a MAC then costs two SHA-256 compressions instead of four.
#[derive(Clone)]
pub(crate) struct Hmac {
    inner: Sha256,
    outer: Sha256,
}

impl Hmac {
    pub(crate) fn new(key: &[u8]) -> Self {
        const BLOCK: usize = 64;
        let mut block = [0u8; BLOCK];
        if key.len() > BLOCK {
            block[..32].copy_from_slice(&Sha256::digest(key));
        } else {
            block[..key.len()].copy_from_slice(key);
        }
        let pad = |byte: u8| block.map(|b| b ^ byte);
        Self {
            inner: Sha256::new().chain_update(pad(0x36)),
            outer: Sha256::new().chain_update(pad(0x5c)),
        }
    }

    pub(crate) fn mac(&self, message: &[u8]) -> [u8; 32] {
        let inner = self.inner.clone().chain_update(message).finalize();
        self.outer.clone().chain_update(inner).finalize().into()
    }
}

/// The tokens of readers' links (unsubscribe, preferences, web view):
/// `{subscriber id}.{MAC}`, signed with a key the store never sees, so
/// the store holds nothing that opens a reader's pages. A token is checked
/// by computing its MAC again.
#[derive(Clone)]
pub struct ReaderTokens {
    hmac: Arc<Hmac>,
}

impl fmt::Debug for ReaderTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReaderTokens(***)")
    }
}

impl ReaderTokens {
    /// 128 bits of MAC, 32 hex digits.
    const MAC_HEX: usize = 32;

    pub fn new(key: &[u8]) -> Self {
        Self {
            hmac: Arc::new(Hmac::new(key)),
        }
    }

    fn mac(&self, subscriber_id: i64) -> String {
        let mac = self.hmac.mac(format!("reader:{subscriber_id}").as_bytes());
        hex(&mac[..Self::MAC_HEX / 2])
    }

    /// The token of a reader's links.
    pub fn for_reader(&self, subscriber_id: i64) -> String {
        format!("{subscriber_id}.{}", self.mac(subscriber_id))
    }

    /// The reader a token names, if it is one of ours.
    pub fn verify(&self, token: &str) -> Option<i64> {
        let (id, mac) = token.split_once('.')?;
        let subscriber_id = id.parse::<i64>().ok().filter(|n| *n > 0)?;
        // (One spelling per id: `007` is not `7`.)
        if subscriber_id.to_string() != id || mac.len() != Self::MAC_HEX {
            return None;
        }
        let expected = self.mac(subscriber_id);
        let differ = expected
            .bytes()
            .zip(mac.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        (differ == 0).then_some(subscriber_id)
    }

    /// Names the key without giving it away: the store keeps it, so that a
    /// process with another key is refused instead of sending links that
    /// the others cannot open.
    pub fn fingerprint(&self) -> String {
        let mac = self.hmac.mac(b"gazette key fingerprint");
        hex(&mac[..8])
    }
}

/// A fresh random token of 256 bits, hex encoded: unguessable links.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A state enum written in the store as a lowercase word: `as_str`,
/// `parse`, `Display`, and comparison with the word.
macro_rules! states {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }

            pub fn parse(input: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|s| s.as_str() == input)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}

states!(
    /// A subscriber's state.
    SubscriberStatus {
        /// Asked to subscribe; the confirmation link was not followed yet.
        Pending => "pending",
        Confirmed => "confirmed",
        Unsubscribed => "unsubscribed",
        Bounced => "bounced",
    }
);

states!(
    /// A run's state.
    RunStatus {
        /// Planned; deliveries are open.
        Sending => "sending",
        /// Every delivery is sent, failed or skipped.
        Finished => "finished",
        /// Nothing new since the previous run: no mail.
        Skipped => "skipped",
        /// Found too late after downtime: recorded, not sent.
        Missed => "missed",
    }
);

states!(
    /// A delivery's state in the ledger.
    DeliveryStatus {
        Pending => "pending",
        /// Claimed by a worker, under a lease.
        Sending => "sending",
        Sent => "sent",
        Failed => "failed",
        /// Not sent: the reader left before their turn.
        Skipped => "skipped",
    }
);

states!(
    /// What a bounce report says of a delivery.
    BounceKind {
        /// The address does not exist or refuses mail for good.
        Hard => "hard",
        /// A temporary failure (a full mailbox, a delay).
        Soft => "soft",
        /// The reader marked the message as spam.
        Complaint => "complaint",
    }
);

states!(
    /// Where a bounce report came from.
    BounceSource {
        /// A delivery status notification (RFC 3464) mailed back.
        Dsn => "dsn",
        /// A feedback report (RFC 5965) from a mailbox provider.
        Arf => "arf",
        /// A relay's webhook.
        Webhook => "webhook",
        /// The relay's reply to RCPT during the send.
        Smtp => "smtp",
    }
);

/// `b…@example.org`: an address as messages and logs show it.
pub fn abbreviate(email: &str) -> String {
    match email.rsplit_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}…@{domain}")
        }
        None => "…".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_removes_line_breaks_and_control_characters() {
        assert_eq!(
            one_line(" Hello\r\nBcc: evil@example.org\t\u{7}x  "),
            "Hello Bcc: evil@example.org x"
        );
    }

    #[test]
    fn a_form_name_is_one_line_of_at_most_100_characters() {
        assert_eq!(form_name(" \0\r\n "), None);
        assert_eq!(
            form_name("Ada\0\nLovelace").as_deref(),
            Some("Ada Lovelace")
        );
        assert_eq!(form_name(&"é".repeat(150)), Some("é".repeat(100)));
    }

    #[test]
    fn email_addresses_are_trimmed_and_keyed_case_insensitively() {
        let a = EmailAddress::parse("  Ada@Example.ORG ").unwrap();
        assert_eq!(a.as_str(), "Ada@Example.ORG");
        assert_eq!(a.key(), "ada@example.org");
    }

    #[test]
    fn malformed_email_addresses_are_rejected() {
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.org",
            "ada@localhost",
            "a da@example.org",
            "ada@example.org\r\nBcc: x@y.z",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn internationalized_addresses_are_refused_with_their_own_reason() {
        for idn in ["zoë@example.org", "ada@exämple.org", "пример@example.org"] {
            assert_eq!(
                EmailAddress::parse(idn),
                Err(DomainError::NonAsciiEmail(idn.to_string()))
            );
        }
        assert!(EmailAddress::parse("ada@xn--exmple-cua.org").is_ok());
    }

    #[test]
    fn digest_names_are_restricted_to_a_safe_alphabet() {
        assert!(DigestName::parse("weekly-tech_2").is_ok());
        for bad in ["", "Daily", "a b", "x/y", &"a".repeat(65)] {
            assert!(DigestName::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn reader_tokens_verify_their_own_and_nothing_else() {
        let tokens = ReaderTokens::new(b"a key of thirty-two bytes or more...");
        let token = tokens.for_reader(42);
        assert_eq!(tokens.verify(&token), Some(42));
        let (_, mac) = token.split_once('.').unwrap();
        assert_eq!(mac.len(), 32);
        // Another id with the same MAC, a changed MAC, another key.
        assert_eq!(tokens.verify(&format!("43.{mac}")), None);
        let mut forged = token.clone().into_bytes();
        let last = forged.last_mut().unwrap();
        *last = if *last == b'0' { b'1' } else { b'0' };
        assert_eq!(tokens.verify(std::str::from_utf8(&forged).unwrap()), None);
        assert_eq!(ReaderTokens::new(b"another key").verify(&token), None);
        for bad in [
            "",
            "42",
            "42.",
            "0.00",
            "-1.00",
            "042.00",
            &format!("042.{mac}"),
        ] {
            assert_eq!(tokens.verify(bad), None, "{bad}");
        }
        assert_ne!(
            tokens.fingerprint(),
            ReaderTokens::new(b"another key").fingerprint()
        );
    }

    #[test]
    fn hmac_matches_the_rfc_4231_test_vectors() {
        // RFC 4231, test case 6: a key longer than a block.
        let long =
            Hmac::new(&[0xaa; 131]).mac(b"Test Using Larger Than Block-Size Key - Hash Key First");
        assert_eq!(
            hex(&long),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
        // Test case 2.
        let mac = Hmac::new(b"Jefe").mac(b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
