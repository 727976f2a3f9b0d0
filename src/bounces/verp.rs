//! The return path that names its delivery (VERP): each message's
//! envelope sender is `LOCAL+RUN-READER-MAC@DOMAIN`, where MAC is an
//! HMAC-SHA256 of the run and reader with a secret kept in the store (the
//! same for every replica). A bounce comes back to that address: its token
//! says exactly which delivery failed, and a forged one, without the
//! secret, names nobody.

use std::fmt;
use std::sync::Arc;

use crate::domain::{EmailAddress, Hmac, hex};

/// The delivery a return path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// `None`: the confirmation email.
    pub run_id: Option<i64>,
    pub subscriber_id: i64,
}

/// Makes and checks the return paths of `[bounces] return_path`.
#[derive(Clone)]
pub struct ReturnPath {
    local: String,
    domain: String,
    hmac: Arc<Hmac>,
}

impl fmt::Debug for ReturnPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReturnPath({}+…@{})", self.local, self.domain)
    }
}

/// 80 bits of MAC, 20 hex digits.
const MAC_HEX: usize = 20;

impl ReturnPath {
    /// The store's name of the secret that signs return paths.
    pub const SECRET: &'static str = "return_path";

    pub fn new(address: &EmailAddress, secret: &[u8]) -> Self {
        let (local, domain) = address
            .as_str()
            .rsplit_once('@')
            .expect("a parsed address has an @");
        Self {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
            hmac: Arc::new(Hmac::new(secret)),
        }
    }

    fn mac(&self, run: i64, subscriber_id: i64) -> String {
        let mac = self
            .hmac
            .mac(format!("return-path:{run}:{subscriber_id}").as_bytes());
        hex(&mac[..MAC_HEX / 2])
    }

    /// The envelope sender of reader `subscriber_id`'s digest of `run_id`
    /// (`None`: their confirmation email).
    pub fn for_delivery(&self, run_id: Option<i64>, subscriber_id: i64) -> lettre::Address {
        let run = run_id.unwrap_or(0);
        let local = format!(
            "{}+{run}-{subscriber_id}-{}",
            self.local,
            self.mac(run, subscriber_id)
        );
        lettre::Address::new(local, &self.domain).expect("a return path is a valid address")
    }

    /// The delivery `address` names, if it is one of ours and its MAC
    /// holds. Case does not matter: some relays lowercase addresses.
    pub fn verify(&self, address: &str) -> Option<Named> {
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let (local, domain) = address.rsplit_once('@')?;
        if !domain.eq_ignore_ascii_case(&self.domain) {
            return None;
        }
        let (base, token) = local.split_once('+')?;
        if !base.eq_ignore_ascii_case(&self.local) {
            return None;
        }
        let mut parts = token.split('-');
        let (run, reader, mac) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || mac.len() != MAC_HEX {
            return None;
        }
        let run_id: i64 = run.parse().ok().filter(|n| *n >= 0)?;
        let subscriber_id: i64 = reader.parse().ok().filter(|n| *n > 0)?;
        // (One spelling per number: `007` is not `7`.)
        if run_id.to_string() != run || subscriber_id.to_string() != reader {
            return None;
        }
        let expected = self.mac(run_id, subscriber_id);
        let differ = expected
            .bytes()
            .zip(mac.to_ascii_lowercase().bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        (differ == 0).then_some(Named {
            run_id: (run_id > 0).then_some(run_id),
            subscriber_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(secret: &[u8]) -> ReturnPath {
        ReturnPath::new(
            &EmailAddress::parse("bounces@News.Example.org").unwrap(),
            secret,
        )
    }

    #[test]
    fn a_return_path_names_its_delivery_and_nothing_else() {
        let rp = path(b"a secret");
        let address = rp.for_delivery(Some(12), 345);
        let text = address.to_string();
        assert!(text.starts_with("bounces+12-345-"), "{text}");
        assert!(text.ends_with("@news.example.org"), "{text}");
        assert!(text.split('@').next().unwrap().len() <= 64);
        let named = Named {
            run_id: Some(12),
            subscriber_id: 345,
        };
        assert_eq!(rp.verify(&text), Some(named));
        assert_eq!(rp.verify(&text.to_uppercase()), Some(named));
        assert_eq!(rp.verify(&format!("<{text}>")), Some(named));
        let confirmation = rp.for_delivery(None, 7).to_string();
        assert_eq!(
            rp.verify(&confirmation),
            Some(Named {
                run_id: None,
                subscriber_id: 7
            })
        );
        // Another reader with the same MAC, another secret, another domain.
        let mac = text.split('-').nth(2).unwrap().split('@').next().unwrap();
        assert_eq!(
            rp.verify(&format!("bounces+12-346-{mac}@news.example.org")),
            None
        );
        assert_eq!(path(b"another secret").verify(&text), None);
        assert_eq!(
            rp.verify(&text.replace("news.example.org", "example.org")),
            None
        );
        assert_eq!(rp.verify(&text.replace("bounces+", "other+")), None);
        for bad in [
            "",
            "bounces@news.example.org",
            "bounces+1-2@news.example.org",
            "x",
        ] {
            assert_eq!(rp.verify(bad), None, "{bad}");
        }
    }
}
