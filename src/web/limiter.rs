//! The per-client limit on subscribe requests: a sliding hour per client,
//! kept in memory (a restart forgets it, which is fine for a limit meant
//! to slow a flood down). Behind a reverse proxy the client is read from
//! `X-Forwarded-For`, trusting only what the configured proxies wrote.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use tokio::sync::Mutex;

use crate::config::{ForwardedHeader, IpRange};

const HOUR: Duration = Duration::from_secs(3600);
/// Beyond this many clients, those idle for an hour are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Default)]
pub struct Limiter {
    attempts: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

impl Limiter {
    /// Whether this client may make another request now, counting it if so.
    pub async fn allow(&self, client: IpAddr, per_hour: u32) -> bool {
        let now = Instant::now();
        let mut attempts = self.attempts.lock().await;
        if attempts.len() > PRUNE_ABOVE {
            attempts.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < HOUR));
        }
        let q = attempts.entry(counted_as(client)).or_default();
        while q.front().is_some_and(|t| now.duration_since(*t) >= HOUR) {
            q.pop_front();
        }
        if q.len() >= per_hour as usize {
            return false;
        }
        q.push_back(now);
        true
    }
}

/// What a client is counted as: its IPv4 address, or its IPv6 /64 (a
/// single home or host is usually given a whole /64, and can pick any
/// address in it).
fn counted_as(ip: IpAddr) -> IpAddr {
    match unmapped(ip) {
        IpAddr::V6(v6) => {
            let net = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(Ipv6Addr::from(net))
        }
        v4 => v4,
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:192.0.2.1`) as its IPv4 address.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client a request comes from. From a trusted proxy, it is the
/// right-most address of the forwarded header (`X-Forwarded-For`, or the
/// `for=` parameters of RFC 7239's `Forwarded`) that is not a trusted proxy
/// itself: entries to its left were written by the client and prove
/// nothing. From anyone else, the header is ignored.
pub fn client_address(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpRange],
    header: ForwardedHeader,
) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|range| range.contains(ip));
    let mut client = unmapped(peer);
    if !is_trusted(client) {
        return client;
    }
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        ForwardedHeader::Forwarded => "forwarded",
    };
    let entries: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect();
    for entry in entries.iter().rev() {
        let address = match header {
            ForwardedHeader::XForwardedFor => Some(*entry),
            ForwardedHeader::Forwarded => for_parameter(entry),
        };
        // Garbage where a proxy should have written an address (or an
        // obfuscated `for=unknown`): the nearest trusted hop is all that is
        // known.
        let Some(ip) = address.and_then(parse_forwarded) else {
            break;
        };
        client = unmapped(ip);
        if !is_trusted(client) {
            break;
        }
    }
    client
}

/// The value of the `for` parameter of one `Forwarded` element
/// (`for=192.0.2.60;proto=http;by=203.0.113.43`), unquoted.
fn for_parameter(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim().eq_ignore_ascii_case("for").then(|| {
            let value = value.trim();
            value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value)
        })
    })
}

/// `192.0.2.1`, `2001:db8::1`, and the forms with a port some proxies
/// write (`192.0.2.1:4711`, `[2001:db8::1]:4711`, `[2001:db8::1]`).
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            entry
                .strip_prefix('[')
                .and_then(|e| e.strip_suffix(']'))
                .and_then(|e| e.parse().ok())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append("x-forwarded-for", v.parse().unwrap());
        }
        headers
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_ipv4_by_address() {
        assert_eq!(
            counted_as(ip("2001:db8:1:2:aaaa::1")),
            counted_as(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            counted_as(ip("2001:db8:1:2::1")),
            counted_as(ip("2001:db8:1:3::1"))
        );
        assert_ne!(counted_as(ip("192.0.2.1")), counted_as(ip("192.0.2.2")));
        assert_eq!(counted_as(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn forwarded_for_counts_only_from_a_trusted_proxy() {
        let proxies = [
            IpRange::parse("127.0.0.1").unwrap(),
            IpRange::parse("10.0.0.0/8").unwrap(),
        ];
        let xff = ForwardedHeader::XForwardedFor;
        let from_proxy =
            |values: &[&str]| client_address(ip("127.0.0.1"), &forwarded(values), &proxies, xff);
        assert_eq!(from_proxy(&["203.0.113.9"]), ip("203.0.113.9"));
        // The client wrote the left part; the proxy appended the right-most.
        assert_eq!(
            from_proxy(&["198.51.100.1, 203.0.113.9"]),
            ip("203.0.113.9")
        );
        assert_eq!(
            from_proxy(&["198.51.100.1", "203.0.113.9"]),
            ip("203.0.113.9")
        );
        // Trusted hops are skipped.
        assert_eq!(
            from_proxy(&["198.51.100.1, 203.0.113.9, 10.1.2.3"]),
            ip("203.0.113.9")
        );
        assert_eq!(from_proxy(&["[2001:db8::7]:4711"]), ip("2001:db8::7"));
        assert_eq!(from_proxy(&["203.0.113.9:4711"]), ip("203.0.113.9"));
        // No header, only proxies, or garbage: the nearest trusted hop.
        assert_eq!(from_proxy(&[]), ip("127.0.0.1"));
        assert_eq!(from_proxy(&["10.9.9.9"]), ip("10.9.9.9"));
        assert_eq!(from_proxy(&["198.51.100.1, unknown"]), ip("127.0.0.1"));

        let direct = client_address(
            ip("192.0.2.50"),
            &forwarded(&["203.0.113.9"]),
            &proxies,
            xff,
        );
        assert_eq!(direct, ip("192.0.2.50"), "a forged header from a client");
        let none = client_address(ip("127.0.0.1"), &forwarded(&["203.0.113.9"]), &[], xff);
        assert_eq!(none, ip("127.0.0.1"), "no proxy configured");
    }

    #[test]
    fn the_rfc_7239_header_is_read_when_configured_and_only_then() {
        let proxies = [IpRange::parse("10.0.0.0/8").unwrap()];
        let from_proxy = |values: &[&str], header| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append("forwarded", v.parse().unwrap());
            }
            headers.append("x-forwarded-for", "198.51.100.77".parse().unwrap());
            client_address(ip("10.0.0.2"), &headers, &proxies, header)
        };
        let rfc = ForwardedHeader::Forwarded;
        assert_eq!(
            from_proxy(&["for=203.0.113.9;proto=https;by=10.0.0.2"], rfc),
            ip("203.0.113.9")
        );
        assert_eq!(
            from_proxy(&["for=198.51.100.1, For=\"[2001:db8:cafe::17]:4711\""], rfc),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            from_proxy(&["for=198.51.100.1", "for=203.0.113.9, for=10.1.1.1"], rfc),
            ip("203.0.113.9")
        );
        // Obfuscated or missing: the proxy.
        assert_eq!(from_proxy(&["for=unknown"], rfc), ip("10.0.0.2"));
        assert_eq!(from_proxy(&["proto=https"], rfc), ip("10.0.0.2"));
        // The header not configured is the client's own: ignored.
        assert_eq!(
            from_proxy(&["for=203.0.113.9"], ForwardedHeader::XForwardedFor),
            ip("198.51.100.77")
        );
        let mut only_xff = HeaderMap::new();
        only_xff.append("x-forwarded-for", "198.51.100.77".parse().unwrap());
        assert_eq!(
            client_address(ip("10.0.0.2"), &only_xff, &proxies, rfc),
            ip("10.0.0.2")
        );
    }
}
