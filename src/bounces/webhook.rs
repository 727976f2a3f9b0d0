//! The reports relays send by webhook, as JSON: Gazette's own
//! (`{"email", "kind", "reason"?}`) and Postmark's bounce and spam
//! complaint webhooks. Each becomes the reports it holds, or the reason it
//! holds none.

use serde_json::Value;

use crate::domain::{BounceKind, EmailAddress};

/// One reader reported by a webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub email: EmailAddress,
    pub kind: BounceKind,
    pub reason: String,
}

/// What a webhook's body holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Reports(Vec<Reported>),
    /// A well-formed notice that reports no bounce (an auto-responder, a
    /// delivery): 200, nothing recorded.
    Ignored(String),
}

/// A body that is none of the known forms: 422 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadPayload(pub String);

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn address(value: &Value, key: &str) -> Result<EmailAddress, BadPayload> {
    let given = text(value, key).ok_or_else(|| BadPayload(format!("`{key}` is missing")))?;
    EmailAddress::parse(given).map_err(|e| BadPayload(format!("`{key}`: {e}")))
}

/// Reads a webhook body.
pub fn parse(body: &Value) -> Result<Payload, BadPayload> {
    if body.get("RecordType").is_some() {
        return postmark(body);
    }
    let kind = text(body, "kind").ok_or_else(|| {
        BadPayload(
            "expected {\"email\", \"kind\": \"hard\"|\"soft\"|\"complaint\", \"reason\"?} or a Postmark webhook"
                .into(),
        )
    })?;
    let kind = BounceKind::parse(kind).ok_or_else(|| {
        BadPayload(format!(
            "`kind` is `{kind}`: use \"hard\", \"soft\" or \"complaint\""
        ))
    })?;
    let email = address(body, "email")?;
    let reason = text(body, "reason").unwrap_or("reported by webhook");
    Ok(Payload::Reports(vec![Reported {
        email,
        kind,
        reason: reason.chars().take(500).collect(),
    }]))
}

/// Postmark: the Bounce webhook (`RecordType: "Bounce"`, its `Type`) and
/// the Spam Complaint one (`RecordType: "SpamComplaint"`).
fn postmark(body: &Value) -> Result<Payload, BadPayload> {
    let record = text(body, "RecordType").unwrap_or_default();
    let kind_of = |t: &str| match t {
        "HardBounce" | "BadEmailAddress" | "ManuallyDeactivated" => Some(BounceKind::Hard),
        "SoftBounce" | "Transient" | "DnsError" => Some(BounceKind::Soft),
        "SpamComplaint" => Some(BounceKind::Complaint),
        _ => None,
    };
    let kind = match record {
        "Bounce" => {
            let t = text(body, "Type").unwrap_or_default();
            match kind_of(t) {
                Some(kind) => kind,
                None => {
                    return Ok(Payload::Ignored(format!(
                        "ignored: a Postmark bounce of type `{t}`, not a failed delivery"
                    )));
                }
            }
        }
        "SpamComplaint" => BounceKind::Complaint,
        other => {
            return Ok(Payload::Ignored(format!(
                "ignored: a Postmark `{other}` record, not a bounce or complaint"
            )));
        }
    };
    let email = address(body, "Email")?;
    let reason = [
        text(body, "Type"),
        text(body, "Description"),
        text(body, "Details"),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(": ");
    Ok(Payload::Reports(vec![Reported {
        email,
        kind,
        reason: format!("postmark {reason}").chars().take(500).collect(),
    }]))
}
