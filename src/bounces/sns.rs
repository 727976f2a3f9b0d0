//! Amazon SNS's HTTP(S) deliveries, as SES's bounce and complaint
//! notifications arrive: the message read from its JSON, its signature
//! verified ("Verifying the signatures of Amazon SNS messages" in AWS's
//! documentation), and a subscription confirmed by visiting its
//! `SubscribeURL`.
//!
//! The signing certificate is fetched over HTTPS from the SNS host that
//! `SigningCertURL` names, and only from `sns.<region>.amazonaws.com`
//! (or `.amazonaws.com.cn`): the TLS connection to that AWS host, checked
//! against the public roots, is what vouches for the certificate, as in
//! AWS's own validators. The PEM itself is therefore not chain-checked;
//! its public key verifies the signature.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm, alg_id,
};
use serde_json::Value;
use tracing::warn;
use url::Url;

/// The header that tells an SNS delivery, and its type.
pub const TYPE_HEADER: &str = "x-amz-sns-message-type";

/// Certificates kept, by URL; beyond, the cache starts again (SNS signs
/// with one certificate per region, rotated rarely).
const CACHED_CERTS: usize = 16;
/// A certificate or a confirmation answer larger than this is refused.
const FETCH_LIMIT: usize = 64 * 1024;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The three kinds of message SNS posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SubscriptionConfirmation,
    Notification,
    UnsubscribeConfirmation,
}

impl Kind {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "SubscriptionConfirmation" => Some(Self::SubscriptionConfirmation),
            "Notification" => Some(Self::Notification),
            "UnsubscribeConfirmation" => Some(Self::UnsubscribeConfirmation),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    /// SHA1withRSA.
    One,
    /// SHA256withRSA.
    Two,
}

/// An SNS message as posted: read, not yet trusted (see
/// [`Verifier::verify`]).
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: Kind,
    pub message: String,
    pub message_id: String,
    pub subject: Option<String>,
    pub timestamp: String,
    pub topic_arn: String,
    /// Confirmations only.
    pub token: Option<String>,
    /// Confirmations only; an SNS host's address (checked when read),
    /// as sent (it is signed so).
    pub subscribe_url: Option<String>,
    version: Version,
    signature: Vec<u8>,
    signing_cert_url: Url,
}

/// Why a message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not a well-formed SNS message: 400.
    #[error("{0}")]
    Malformed(String),
    /// Not provably from SNS (a URL off AWS's hosts, a signature that does
    /// not verify): 403.
    #[error("{0}")]
    Forged(String),
    /// SNS's host could not be reached for the certificate or the
    /// confirmation: 502, and SNS tries again.
    #[error("{0}")]
    Unreachable(String),
}

fn field<'a>(body: &'a Value, key: &str) -> Result<&'a str, Refused> {
    body.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Refused::Malformed(format!("the SNS message has no `{key}`")))
}

/// Whether `host` is `sns.<region>.amazonaws.com` (or `….com.cn`), the
/// pattern of AWS's own validators with the region spelled strictly.
fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let Some(region) = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"))
    else {
        return false;
    };
    region.len() >= 3
        && region.starts_with(|c: char| c.is_ascii_lowercase())
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `text` as an `https://sns.<region>.amazonaws.com/…` URL, with no user,
/// no password, no other port.
fn sns_url(text: &str, key: &str) -> Result<Url, Refused> {
    let refuse = |why: &str| Refused::Forged(format!("`{key}` {why}"));
    let url = Url::parse(text).map_err(|_| refuse("is not a URL"))?;
    let host = url.host_str().unwrap_or_default();
    if url.scheme() != "https"
        || !url.username().is_empty()
        || url.password().is_some()
        || url.port().is_some()
        || !is_sns_host(host)
    {
        return Err(refuse(
            "is not an https address on an Amazon SNS host (sns.REGION.amazonaws.com)",
        ));
    }
    Ok(url)
}

fn subscribe_url(body: &Value) -> Result<String, Refused> {
    let text = field(body, "SubscribeURL")?;
    sns_url(text, "SubscribeURL")?;
    Ok(text.to_string())
}

/// Reads an SNS message's JSON body.
pub fn parse(body: &Value) -> Result<Message, Refused> {
    let type_ = field(body, "Type")?;
    let kind = Kind::parse(type_)
        .ok_or_else(|| Refused::Malformed(format!("`Type` is `{type_}`: not an SNS message")))?;
    let version = match field(body, "SignatureVersion")? {
        "1" => Version::One,
        "2" => Version::Two,
        other => {
            return Err(Refused::Malformed(format!(
                "`SignatureVersion` is `{other}`: only 1 and 2 are known"
            )));
        }
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(field(body, "Signature")?)
        .map_err(|_| Refused::Malformed("`Signature` is not base64".into()))?;
    let signing_cert_url = sns_url(field(body, "SigningCertURL")?, "SigningCertURL")?;
    if !signing_cert_url.path().ends_with(".pem")
        || signing_cert_url.query().is_some()
        || signing_cert_url.fragment().is_some()
    {
        return Err(Refused::Forged(
            "`SigningCertURL` is not the address of a .pem file".into(),
        ));
    }
    let confirmation = kind != Kind::Notification;
    let (token, subscribe_url) = if confirmation {
        (
            Some(field(body, "Token")?.to_string()),
            Some(subscribe_url(body)?),
        )
    } else {
        (None, None)
    };
    let subject = match body.get("Subject") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(Refused::Malformed("`Subject` is not a string".into())),
    };
    Ok(Message {
        kind,
        message: field(body, "Message")?.to_string(),
        message_id: field(body, "MessageId")?.to_string(),
        subject: if confirmation { None } else { subject },
        timestamp: field(body, "Timestamp")?.to_string(),
        topic_arn: field(body, "TopicArn")?.to_string(),
        token,
        subscribe_url,
        version,
        signature,
        signing_cert_url,
    })
}

impl Message {
    /// The string SNS signs: each field as `Key\nvalue\n`, in AWS's order.
    pub fn canonical(&self) -> String {
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        match self.kind {
            Kind::Notification => {
                if let Some(subject) = &self.subject {
                    fields.push(("Subject", subject));
                }
                fields.push(("Timestamp", &self.timestamp));
            }
            Kind::SubscriptionConfirmation | Kind::UnsubscribeConfirmation => {
                fields.push((
                    "SubscribeURL",
                    self.subscribe_url.as_deref().unwrap_or_default(),
                ));
                fields.push(("Timestamp", &self.timestamp));
                fields.push(("Token", self.token.as_deref().unwrap_or_default()));
            }
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push((
            "Type",
            match self.kind {
                Kind::SubscriptionConfirmation => "SubscriptionConfirmation",
                Kind::Notification => "Notification",
                Kind::UnsubscribeConfirmation => "UnsubscribeConfirmation",
            },
        ));
        let mut out = String::new();
        for (key, value) in fields {
            out.push_str(key);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
        out
    }
}

/// SHA1withRSA (`SignatureVersion` 1), which webpki does not offer:
/// ring's legacy verifier over the certificate's RSA key.
#[derive(Debug)]
struct RsaPkcs1Sha1;

/// sha1WithRSAEncryption (1.2.840.113549.1.1.5) with NULL parameters.
const SHA1_WITH_RSA: AlgorithmIdentifier = AlgorithmIdentifier::from_slice(&[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05, 0x05, 0x00,
]);

impl SignatureVerificationAlgorithm for RsaPkcs1Sha1 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            public_key,
        )
        .verify(message, signature)
        .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        SHA1_WITH_RSA
    }
}

/// Verifies SNS messages and confirms subscriptions, keeping the signing
/// certificates it fetched.
pub struct Verifier {
    client: reqwest::Client,
    /// DER, by `SigningCertURL`.
    certs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// Tests only: where SNS's hosts are reached instead (plain HTTP on
    /// loopback); the URLs are checked as ever.
    endpoint: Option<Url>,
}

impl Verifier {
    /// `endpoint` is for tests only (`GAZETTE_TEST_SNS_ENDPOINT`): a plain
    /// HTTP base address that stands for every SNS host; `None` in use.
    pub fn new(endpoint: Option<&str>) -> Self {
        let endpoint = endpoint.and_then(|e| Url::parse(e).ok());
        if let Some(endpoint) = &endpoint {
            warn!(
                "Amazon SNS certificates and subscription addresses are fetched from {endpoint}, not from AWS: for tests only"
            );
        }
        // (TLS: rustls with ring and the public roots; no redirect is
        // followed, so nothing but the SNS host answers.)
        let client = reqwest::Client::builder()
            .user_agent(format!("Gazette/{}", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .https_only(endpoint.is_none())
            .timeout(FETCH_TIMEOUT)
            .build()
            .expect("reqwest's TLS (rustls with ring) cannot fail to start");
        Self {
            client,
            certs: Mutex::new(HashMap::new()),
            endpoint,
        }
    }

    /// Where `url` (an SNS host's, checked) is fetched from.
    fn location(&self, url: &Url) -> Url {
        match &self.endpoint {
            None => url.clone(),
            Some(endpoint) => {
                let mut moved = endpoint.clone();
                moved.set_path(url.path());
                moved.set_query(url.query());
                moved
            }
        }
    }

    async fn get(&self, url: &Url) -> Result<Vec<u8>, String> {
        let mut response = self
            .client
            .get(self.location(url))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot reach {}: {}",
                    url.host_str().unwrap_or_default(),
                    crate::errors::chain(&anyhow::Error::from(e))
                )
            })?;
        if !response.status().is_success() {
            return Err(format!(
                "{} answered {}",
                url.host_str().unwrap_or_default(),
                response.status()
            ));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > FETCH_LIMIT {
                return Err(format!(
                    "{} sent more than {FETCH_LIMIT} bytes",
                    url.host_str().unwrap_or_default()
                ));
            }
        }
        Ok(body)
    }

    async fn certificate(&self, url: &Url) -> Result<Arc<Vec<u8>>, Refused> {
        if let Some(der) = self.certs.lock().expect("cache lock").get(url.as_str()) {
            return Ok(der.clone());
        }
        let pem = self
            .get(url)
            .await
            .map_err(|e| Refused::Unreachable(format!("the signing certificate: {e}")))?;
        let der = CertificateDer::from_pem_slice(&pem).map_err(|e| {
            Refused::Forged(format!(
                "the signing certificate is not a PEM certificate: {e}"
            ))
        })?;
        let der = Arc::new(der.as_ref().to_vec());
        let mut certs = self.certs.lock().expect("cache lock");
        if certs.len() >= CACHED_CERTS {
            certs.clear();
        }
        certs.insert(url.as_str().to_string(), der.clone());
        Ok(der)
    }

    /// Verifies `message`'s signature with the certificate its
    /// `SigningCertURL` names.
    pub async fn verify(&self, message: &Message) -> Result<(), Refused> {
        // (No chain, name or date check of the certificate: it is trusted
        // because it came over HTTPS from the SNS host, as AWS's own
        // validators do; only its key is used.)
        let der = self.certificate(&message.signing_cert_url).await?;
        let der = CertificateDer::from(der.as_slice());
        let cert = webpki::EndEntityCert::try_from(&der)
            .map_err(|e| Refused::Forged(format!("the signing certificate cannot be read: {e}")))?;
        let algorithm: &dyn SignatureVerificationAlgorithm = match message.version {
            Version::One => &RsaPkcs1Sha1,
            Version::Two => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
        };
        cert.verify_signature(
            algorithm,
            message.canonical().as_bytes(),
            &message.signature,
        )
        .map_err(|_| Refused::Forged("the SNS signature does not verify".into()))
    }

    /// Confirms a subscription: GETs its `SubscribeURL`.
    pub async fn confirm(&self, message: &Message) -> Result<(), Refused> {
        let Some(url) = &message.subscribe_url else {
            return Err(Refused::Malformed(
                "the SNS message has no `SubscribeURL`".into(),
            ));
        };
        let url = sns_url(url, "SubscribeURL")?;
        self.get(&url)
            .await
            .map(drop)
            .map_err(|e| Refused::Unreachable(format!("the subscription was not confirmed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sns_hosts_are_accepted() {
        for good in [
            "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-1.pem",
            "https://sns.us-gov-west-1.amazonaws.com/a.pem",
        ] {
            assert!(sns_url(good, "SigningCertURL").is_ok(), "{good}");
        }
        for bad in [
            "http://sns.us-west-2.amazonaws.com/a.pem",
            "https://sns.us-west-2.amazonaws.com:8443/a.pem",
            "https://user@sns.us-west-2.amazonaws.com/a.pem",
            "https://sns.us-west-2.amazonaws.com.evil.example/a.pem",
            "https://evil.example/sns.us-west-2.amazonaws.com/a.pem",
            "https://sns.evil.example.amazonaws.com.evil/a.pem",
            "https://xsns.us-west-2.amazonaws.com/a.pem",
            "https://sns.US-WEST-2.amazonaws.com.evil/a.pem",
            "https://sns.a.amazonaws.com/a.pem",
            "https://s3.us-west-2.amazonaws.com/a.pem",
            "https://sns..amazonaws.com/a.pem",
            "not a url",
        ] {
            assert!(sns_url(bad, "SigningCertURL").is_err(), "{bad}");
        }
    }
}
