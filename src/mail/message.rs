//! The digest email (and the confirmation email) as a MIME message:
//! `multipart/alternative`, text then HTML, both quoted-printable, with
//! the headers a mailing list needs.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::message::header::{ContentTransferEncoding, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart};

use super::qp::EncodedBodies;

/// What a subscriber receives, before it becomes a MIME message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: String,
    pub text: String,
}

/// The headers that identify one email of a run.
#[derive(Debug, Clone)]
pub struct MessageMeta<'a> {
    pub from: &'a Mailbox,
    pub to_email: &'a str,
    pub to_name: Option<&'a str>,
    pub message_id: String,
    /// List-Id and List-Unsubscribe: digests have them, a confirmation
    /// email does not.
    pub list: Option<ListHeaders>,
    pub date: DateTime<Utc>,
}

#[derive(Debug, Clone)]
pub struct ListHeaders {
    pub list_id: String,
    pub unsubscribe_url: String,
}

/// `<digest.run.subscriber@domain>`: the same for every attempt of a
/// delivery, so a receiver can drop a copy re-sent after a crash.
pub fn message_id(from: &Mailbox, digest: &str, run: Option<i64>, subscriber: i64) -> String {
    let run = run.map_or_else(|| "preview".to_string(), |r| r.to_string());
    format!("<{digest}.{run}.{subscriber}@{}>", from.email.domain())
}

/// `Title <digest.domain>` (RFC 2919).
pub fn list_id(from: &Mailbox, digest: &str, title: &str) -> String {
    format!("{} <{digest}.{}>", one_line(title), from.email.domain())
}

fn raw_header(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

/// Builds the multipart/alternative message (text first, then HTML), both
/// parts quoted-printable.
pub fn build_message(
    env: &MessageMeta<'_>,
    subject: &str,
    bodies: EncodedBodies,
) -> Result<lettre::Message> {
    let address: lettre::Address = env
        .to_email
        .parse()
        .with_context(|| format!("invalid recipient address `{}`", env.to_email))?;
    // The envelope is given, so that lettre does not parse it back out of
    // the From and To headers it has just formatted.
    let envelope = Envelope::new(Some(env.from.email.clone()), vec![address.clone()])
        .context("cannot build the SMTP envelope")?;
    let to = Mailbox::new(env.to_name.map(one_line).filter(|n| !n.is_empty()), address);
    let mut builder = lettre::Message::builder()
        .envelope(envelope)
        .from(env.from.clone())
        .to(to)
        .subject(one_line(subject))
        .date(env.date.into())
        .message_id(Some(env.message_id.clone()));
    if let Some(list) = &env.list {
        builder = builder
            .raw_header(raw_header("List-Id", list.list_id.clone()))
            .raw_header(raw_header(
                "List-Unsubscribe",
                format!("<{}>", list.unsubscribe_url),
            ))
            .raw_header(raw_header(
                "List-Unsubscribe-Post",
                "List-Unsubscribe=One-Click".into(),
            ));
    }
    let message = builder
        .multipart(MultiPart::alternative_plain_html(
            Body::dangerous_pre_encoded(bodies.text, ContentTransferEncoding::QuotedPrintable),
            Body::dangerous_pre_encoded(bodies.html, ContentTransferEncoding::QuotedPrintable),
        ))
        .context("cannot build the email message")?;
    Ok(message)
}

/// Collapses control characters (CR, LF, tab) and runs of spaces into
/// single spaces: a header value can never be split or extended.
pub fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_line_removes_line_breaks_and_control_characters() {
        assert_eq!(
            one_line(" Hello\r\nBcc: evil@example.org\t\u{7}x  "),
            "Hello Bcc: evil@example.org x"
        );
    }
}
