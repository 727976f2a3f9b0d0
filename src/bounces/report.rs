//! Reading one message that came back: a delivery status notification
//! (RFC 3464), a feedback report (RFC 5965), or anything else (an
//! auto-reply, a vacation notice, a challenge), which changes nothing.
//! The reader is named only by what Gazette signed: the return path's
//! token, or the token of the List-Unsubscribe link in the original
//! message; a report that names nobody that way is ignored.

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};

use super::verp::{Named, ReturnPath};
use crate::domain::{BounceKind, BounceSource, ReaderTokens};

/// What a message says, once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A report that counts against a delivery.
    Report {
        named: Named,
        kind: BounceKind,
        source: BounceSource,
        reason: String,
    },
    /// Nothing to record, and why.
    Ignored(String),
}

/// What a message that cannot be read at all is refused with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// The keys a report's reader is checked with.
pub struct Keys<'a> {
    pub return_path: Option<&'a ReturnPath>,
    pub readers: &'a ReaderTokens,
}

/// Reads `raw` as it came to `recipient` (the envelope recipient, when
/// known; else the message's Delivered-To, X-Original-To or To).
pub fn read(raw: &[u8], recipient: Option<&str>, keys: &Keys<'_>) -> Result<Verdict, Unreadable> {
    let message = MessageParser::default()
        .parse(raw)
        .filter(|m| !m.headers().is_empty() && m.headers().iter().any(|h| !h.name().is_empty()))
        .ok_or_else(|| Unreadable("the input is not a mail message (no header found)".into()))?;
    let recipient = recipient
        .map(str::to_string)
        .or_else(|| envelope_recipient(&message));
    let report_type = message
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    match report_type.as_deref() {
        Some("delivery-status") => Ok(delivery_status(&message, recipient.as_deref(), keys)),
        Some("feedback-report") => Ok(feedback_report(&message, recipient.as_deref(), keys)),
        _ => Ok(Verdict::Ignored(not_a_report(&message))),
    }
}

/// Delivered-To, X-Original-To, then To: where the MTA delivered it.
fn envelope_recipient(message: &Message<'_>) -> Option<String> {
    for name in ["Delivered-To", "X-Original-To"] {
        if let Some(value) = message.header_raw(name) {
            return Some(value.trim().to_string());
        }
    }
    message
        .to()
        .and_then(|to| to.first())
        .and_then(|a| a.address())
        .map(str::to_string)
}

/// Why a message that is no report is ignored.
fn not_a_report(message: &Message<'_>) -> String {
    let header = |name: &str| {
        message
            .header_raw(name)
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let subject = message.subject().unwrap_or_default().to_ascii_lowercase();
    let auto_submitted = header("Auto-Submitted").filter(|v| v != "no");
    let precedence = header("Precedence").filter(|v| v == "auto_reply");
    let vacation = [
        "out of office",
        "automatic reply",
        "auto-reply",
        "autoreply",
        "vacation",
        "away from",
    ]
    .iter()
    .any(|w| subject.contains(w));
    if auto_submitted.is_some()
        || precedence.is_some()
        || header("X-Autoreply").is_some()
        || header("X-Autorespond").is_some()
        || vacation
    {
        "ignored: an automatic reply (out of office, vacation), not a delivery status notification"
            .into()
    } else {
        "ignored: not a delivery status notification".into()
    }
}

/// The fields of a `message/delivery-status` or `message/feedback-report`
/// body: groups separated by blank lines, each a list of (lowercase name,
/// value), folded lines unfolded.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = vec![Vec::new()];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !groups.last().is_some_and(Vec::is_empty) {
                groups.push(Vec::new());
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = groups.last_mut().and_then(|g| g.last_mut()) {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            let group = groups.last_mut().expect("never empty");
            group.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    groups.retain(|g| !g.is_empty());
    groups
}

fn field<'a>(group: &'a [(String, String)], name: &str) -> Option<&'a str> {
    group
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The text of the first part of type `message/SUBTYPE` (any of `subtypes`).
fn part_text(message: &Message<'_>, subtypes: &[&str]) -> Option<String> {
    message.parts.iter().find_map(|part| {
        let ct = part.content_type()?;
        let wanted = ct.ctype().eq_ignore_ascii_case("message")
            && ct
                .subtype()
                .is_some_and(|s| subtypes.iter().any(|w| s.eq_ignore_ascii_case(w)));
        if !wanted {
            return None;
        }
        match &part.body {
            PartType::Text(text) => Some(text.to_string()),
            PartType::Binary(bytes) | PartType::InlineBinary(bytes) => {
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => None,
        }
    })
}

/// The headers of the original message a report returns: a
/// `message/rfc822` part or a `text/rfc822-headers` one.
struct Original {
    return_path: Option<String>,
    list_unsubscribe: Option<String>,
    message_id: Option<String>,
}

fn original(message: &Message<'_>) -> Option<Original> {
    let from = |m: &Message<'_>| Original {
        return_path: m.header_raw("Return-Path").map(|v| v.trim().to_string()),
        list_unsubscribe: m
            .header_raw("List-Unsubscribe")
            .map(|v| v.trim().to_string()),
        message_id: m.message_id().map(str::to_string),
    };
    for part in &message.parts {
        match &part.body {
            PartType::Message(inner) => return Some(from(inner)),
            PartType::Text(text)
                if part.content_type().is_some_and(|ct| {
                    ct.subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
                }) =>
            {
                let headers = MessageParser::default().parse(text.as_bytes())?;
                return Some(from(&headers));
            }
            _ => {}
        }
    }
    None
}

/// The first address of ours among `candidates` whose token verifies.
fn verified(keys: &Keys<'_>, candidates: &[Option<&str>]) -> Option<Named> {
    let rp = keys.return_path?;
    candidates.iter().flatten().find_map(|c| rp.verify(c))
}

fn delivery_status(message: &Message<'_>, recipient: Option<&str>, keys: &Keys<'_>) -> Verdict {
    let Some(text) = part_text(message, &["delivery-status", "global-delivery-status"]) else {
        return Verdict::Ignored(
            "ignored: a delivery status notification without its delivery-status part".into(),
        );
    };
    // The most severe of the recipients' results (a VERP message has one).
    let mut worst: Option<(BounceKind, String)> = None;
    for group in field_groups(&text) {
        let Some(action) = field(&group, "action").map(str::to_ascii_lowercase) else {
            continue;
        };
        let status = field(&group, "status").unwrap_or("").trim();
        let status = status.split_whitespace().next().unwrap_or("");
        let kind = match (action.as_str(), status.chars().next()) {
            ("failed", Some('5')) => BounceKind::Hard,
            ("failed", Some('4')) | ("delayed", _) => BounceKind::Soft,
            _ => continue,
        };
        let diagnostic = field(&group, "diagnostic-code").unwrap_or("");
        let reason = match (status, diagnostic) {
            ("", d) => format!("{action}: {d}"),
            (s, "") => format!("{action} {s}"),
            (s, d) => format!("{action} {s} ({d})"),
        };
        if worst.as_ref().is_none_or(|(k, _)| *k == BounceKind::Soft) {
            worst = Some((kind, reason));
        }
    }
    let Some((kind, reason)) = worst else {
        return Verdict::Ignored(
            "ignored: the notification reports no failed or delayed delivery".into(),
        );
    };
    let returned = original(message);
    let returned_path = returned.as_ref().and_then(|o| o.return_path.as_deref());
    match verified(keys, &[recipient, returned_path]) {
        Some(named) => Verdict::Report {
            named,
            kind,
            source: BounceSource::Dsn,
            reason: reason.chars().take(500).collect(),
        },
        None if keys.return_path.is_none() => Verdict::Ignored(
            "ignored: [bounces] return_path is not set, so no bounce can be matched to a delivery"
                .into(),
        ),
        None => Verdict::Ignored(
            "ignored: a bounce whose return path is not one of ours (its token does not verify)"
                .into(),
        ),
    }
}

fn feedback_report(message: &Message<'_>, recipient: Option<&str>, keys: &Keys<'_>) -> Verdict {
    let Some(text) = part_text(message, &["feedback-report"]) else {
        return Verdict::Ignored(
            "ignored: a feedback report without its feedback-report part".into(),
        );
    };
    let fields: Vec<(String, String)> = field_groups(&text).into_iter().flatten().collect();
    let feedback_type = field(&fields, "feedback-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    if !matches!(feedback_type.as_str(), "abuse" | "fraud" | "virus") {
        return Verdict::Ignored(format!(
            "ignored: a feedback report of type `{feedback_type}`, not a complaint"
        ));
    }
    let returned = original(message);
    let returned_path = returned.as_ref().and_then(|o| o.return_path.as_deref());
    let named = verified(keys, &[returned_path, recipient]).or_else(|| {
        // The List-Unsubscribe link's token names the reader (no run);
        // the original's Message-ID, once the reader is known, the run.
        let original = returned.as_ref()?;
        let link = original.list_unsubscribe.as_deref()?;
        let subscriber_id = link
            .split(['<', '>', ','])
            .filter_map(|l| l.trim().split("/unsubscribe/").nth(1))
            .find_map(|token| keys.readers.verify(token.trim_end_matches('/')))?;
        let run_id = original
            .message_id
            .as_deref()
            .and_then(|id| run_of_message_id(id, subscriber_id));
        Some(Named {
            run_id,
            subscriber_id,
        })
    });
    match named {
        Some(named) => Verdict::Report {
            named,
            kind: BounceKind::Complaint,
            source: BounceSource::Arf,
            reason: format!("feedback-type {feedback_type}"),
        },
        None => Verdict::Ignored(
            "ignored: a complaint about a message that is not one of ours (no token verifies)"
                .into(),
        ),
    }
}

/// The run of a digest's Message-ID (`digest.RUN.SUBSCRIBER@domain`),
/// when it is the reader's.
fn run_of_message_id(id: &str, subscriber_id: i64) -> Option<i64> {
    let local = id.trim_matches(['<', '>']).split('@').next()?;
    let mut parts = local.rsplitn(3, '.');
    let reader: i64 = parts.next()?.parse().ok()?;
    let run: i64 = parts.next()?.parse().ok()?;
    (reader == subscriber_id && run > 0).then_some(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_status_fields_are_grouped_and_unfolded() {
        let groups = field_groups(
            "Reporting-MTA: dns; mx.example.org\r\n\r\nFinal-Recipient: rfc822; a@b.org\r\nAction: failed\r\n\
             Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1\r\n  no such user\r\n",
        );
        assert_eq!(groups.len(), 2);
        assert_eq!(field(&groups[1], "action"), Some("failed"));
        assert_eq!(
            field(&groups[1], "diagnostic-code"),
            Some("smtp; 550 5.1.1 no such user")
        );
    }

    #[test]
    fn a_message_id_gives_its_run_only_for_its_reader() {
        assert_eq!(
            run_of_message_id("<daily.12.34@news.example.org>", 34),
            Some(12)
        );
        assert_eq!(
            run_of_message_id("<daily.12.34@news.example.org>", 35),
            None
        );
        assert_eq!(
            run_of_message_id("<weekly-tech.preview.34@x.org>", 34),
            None
        );
    }
}
