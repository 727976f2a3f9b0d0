//! The reports relays send by webhook, as JSON: Gazette's own
//! (`{"email", "kind", "reason"?}`), Postmark's bounce and spam
//! complaint webhooks, and Amazon SES's notifications (the `Message` of an
//! SNS notification, see [`super::sns`]). Each becomes the reports it
//! holds, or the reason it holds none.

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

/// Amazon SES: a notification (`notificationType`) or a published event
/// (`eventType`), as the `Message` of an SNS notification. `Bounce` with
/// `bounceType` `Permanent` is hard; `Transient` and `Undetermined` are
/// soft (counted, so that only `soft_limit` of them in a row stop the
/// mail); `Complaint` is a complaint, unless its feedback type is
/// `not-spam`; the other types (`Delivery`, `Send`, `Open`, …) are
/// ignored.
pub fn ses(message: &str) -> Result<Payload, BadPayload> {
    let body: Value = serde_json::from_str(message)
        .map_err(|e| BadPayload(format!("the SNS `Message` is not JSON: {e}")))?;
    let Some(type_) = text(&body, "notificationType").or_else(|| text(&body, "eventType")) else {
        return Err(BadPayload(
            "the SNS `Message` has no `notificationType` or `eventType`: not an Amazon SES notification"
                .into(),
        ));
    };
    let (kind, reason, recipients) = match type_ {
        "Bounce" => {
            let bounce = body
                .get("bounce")
                .ok_or_else(|| BadPayload("`bounce` is missing".into()))?;
            let bounce_type = text(bounce, "bounceType").unwrap_or_default();
            let kind = match bounce_type {
                "Permanent" => BounceKind::Hard,
                "Transient" | "Undetermined" => BounceKind::Soft,
                other => {
                    return Ok(Payload::Ignored(format!(
                        "ignored: an Amazon SES bounce of type `{other}`"
                    )));
                }
            };
            let sub_type = text(bounce, "bounceSubType").unwrap_or_default();
            let recipients = bounce
                .get("bouncedRecipients")
                .and_then(Value::as_array)
                .ok_or_else(|| BadPayload("`bounce.bouncedRecipients` is missing".into()))?;
            (kind, format!("ses {bounce_type}/{sub_type}"), recipients)
        }
        "Complaint" => {
            let complaint = body
                .get("complaint")
                .ok_or_else(|| BadPayload("`complaint` is missing".into()))?;
            let feedback = text(complaint, "complaintFeedbackType");
            if feedback == Some("not-spam") {
                return Ok(Payload::Ignored(
                    "ignored: an Amazon SES complaint of type `not-spam`".into(),
                ));
            }
            let recipients = complaint
                .get("complainedRecipients")
                .and_then(Value::as_array)
                .ok_or_else(|| BadPayload("`complaint.complainedRecipients` is missing".into()))?;
            let reason = match feedback {
                Some(feedback) => format!("ses complaint: {feedback}"),
                None => "ses complaint".to_string(),
            };
            (BounceKind::Complaint, reason, recipients)
        }
        other => {
            return Ok(Payload::Ignored(format!(
                "ignored: an Amazon SES `{other}` notification, not a bounce or complaint"
            )));
        }
    };
    if recipients.is_empty() {
        return Ok(Payload::Ignored(format!(
            "ignored: an Amazon SES {type_} that names no recipient"
        )));
    }
    let mut reports = Vec::new();
    for recipient in recipients {
        let email = address(recipient, "emailAddress")?;
        let detail = text(recipient, "diagnosticCode").or_else(|| text(recipient, "status"));
        let reason = match detail {
            Some(detail) => format!("{reason}: {detail}"),
            None => reason.clone(),
        };
        reports.push(Reported {
            email,
            kind,
            reason: reason.chars().take(500).collect(),
        });
    }
    Ok(Payload::Reports(reports))
}
