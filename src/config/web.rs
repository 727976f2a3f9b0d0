//! `[web]`: the readers' pages: their public address, where they listen,
//! and what they accept.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::{Problems, parse_duration};
use crate::domain::Secret;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWeb {
    base_url: String,
    bind: String,
    confirm_ttl: String,
    subscribe_per_hour: u32,
    trusted_proxies: Vec<String>,
    forwarded_header: ForwardedHeader,
    token_key: String,
    pub(super) token_key_file: PathBuf,
    allowed_origins: Vec<String>,
}

impl Default for RawWeb {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8080".into(),
            bind: "127.0.0.1:8080".into(),
            confirm_ttl: "48h".into(),
            subscribe_per_hour: 20,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            token_key: String::new(),
            token_key_file: "data/token.key".into(),
            allowed_origins: Vec::new(),
        }
    }
}

impl fmt::Debug for RawWeb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawWeb")
            .field("base_url", &self.base_url)
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone)]
pub struct WebSettings {
    /// Without a trailing slash.
    pub base_url: String,
    pub bind: SocketAddr,
    /// How long a confirmation link works.
    pub confirm_ttl: Duration,
    /// Subscribe requests accepted per client address per hour.
    pub subscribe_per_hour: u32,
    /// Reverse proxies whose `forwarded_header` names the client.
    pub trusted_proxies: Vec<IpRange>,
    /// The header those proxies name the client in.
    pub forwarded_header: ForwardedHeader,
    /// The key that signs readers' links: `web.token_key`, or else the
    /// contents of `web.token_key_file` (made on first use).
    pub token_key: TokenKey,
    /// Other sites (`https://blog.example.org`) whose pages may post the
    /// subscribe form, or call it with JSON (CORS).
    pub allowed_origins: Vec<String>,
}

/// The header a trusted proxy names the client in: one only, since a proxy
/// passes the other on as the client wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: 203.0.113.9, 10.0.0.2` (nginx, HAProxy, most).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239: `Forwarded: for=203.0.113.9;proto=https`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

/// Where the key that signs readers' links comes from.
#[derive(Debug, Clone)]
pub enum TokenKey {
    /// `web.token_key`.
    Given(Secret),
    /// `web.token_key_file`, made with a random key if missing.
    File(PathBuf),
}

/// An address or a network (`10.0.0.0/8`, `fd00::/8`, `127.0.0.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let network: IpAddr = addr.parse().ok()?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Self { network, prefix })
    }

    /// Whether `ip` is in this range (an IPv4-mapped IPv6 address counts
    /// as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

pub(super) fn validate(raw: &RawWeb, problems: &mut Problems) -> Option<WebSettings> {
    let before = problems.list.len();
    let base_url = raw.base_url.trim().trim_end_matches('/').to_string();
    if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
        || base_url.contains(char::is_whitespace)
    {
        problems.key(
            "web.base_url",
            format!("`{base_url}` is not an http:// or https:// address"),
        );
    }
    let bind = raw.bind.trim().parse::<SocketAddr>().map_err(|_| {
        problems.key(
            "web.bind",
            format!(
                "`{}` is not an address and port such as 127.0.0.1:8080",
                raw.bind
            ),
        )
    });
    let confirm_ttl =
        parse_duration(&raw.confirm_ttl).map_err(|e| problems.key("web.confirm_ttl", e));
    let mut trusted_proxies = Vec::new();
    for text in &raw.trusted_proxies {
        match IpRange::parse(text) {
            Some(range) => trusted_proxies.push(range),
            None => problems.key(
                "web.trusted_proxies",
                format!("`{text}` is not an address or a network such as `10.0.0.0/8`"),
            ),
        }
    }
    let token_key = match raw.token_key.trim() {
        "" => TokenKey::File(raw.token_key_file.clone()),
        key if key.len() < 32 => {
            // (The key itself is not shown.)
            problems.key(
                "web.token_key",
                format!(
                    "is {} characters long: use at least 32 random ones",
                    key.len()
                ),
            );
            TokenKey::File(raw.token_key_file.clone())
        }
        key => TokenKey::Given(Secret::new(key)),
    };
    let mut allowed_origins = Vec::new();
    for origin in &raw.allowed_origins {
        let origin = origin.trim().trim_end_matches('/');
        let well_formed = origin.split_once("://").is_some_and(|(scheme, host)| {
            matches!(scheme, "http" | "https")
                && !host.is_empty()
                && !host.contains(['/', '?', '#', ' ', '*'])
        });
        if well_formed {
            allowed_origins.push(origin.to_ascii_lowercase());
        } else {
            problems.key(
                "web.allowed_origins",
                format!("`{origin}` is not an origin such as `https://blog.example.org` (scheme and host, no path)"),
            );
        }
    }
    if problems.list.len() > before {
        return None;
    }
    Some(WebSettings {
        base_url,
        bind: bind.ok()?,
        confirm_ttl: confirm_ttl.ok()?,
        subscribe_per_hour: raw.subscribe_per_hour,
        trusted_proxies,
        forwarded_header: raw.forwarded_header,
        token_key,
        allowed_origins,
    })
}

#[cfg(test)]
mod tests {
    use super::IpRange;

    #[test]
    fn ranges_contain_their_addresses_and_no_others() {
        let v4 = IpRange::parse("10.1.0.0/16").unwrap();
        assert!(v4.contains("10.1.200.3".parse().unwrap()));
        assert!(v4.contains("::ffff:10.1.0.9".parse().unwrap()));
        assert!(!v4.contains("10.2.0.1".parse().unwrap()));
        let one = IpRange::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6 = IpRange::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(
            IpRange::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["", "10.0.0.0/33", "example.org", "::1/129"] {
            assert!(IpRange::parse(bad).is_none(), "{bad}");
        }
    }
}
