//! The digest email (and the confirmation email) as a MIME message:
//! `multipart/alternative`, text then HTML, both quoted-printable, with
//! the headers a mailing list needs.

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use lettre::address::Envelope;
use lettre::message::header::{ContentTransferEncoding, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart};

use super::qp::EncodedBodies;
pub use crate::domain::one_line;

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
    /// The envelope sender, where bounces go: the delivery's signed
    /// return path (`[bounces] return_path`), or `None` for the From
    /// address.
    pub envelope_from: Option<lettre::Address>,
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

fn pre_encoded(name: &'static str, value: String, encoded: String) -> HeaderValue {
    HeaderValue::dangerous_new_pre_encoded(HeaderName::new_from_ascii_str(name), value, encoded)
}

/// Whether lettre's encoding of a header's text reads back as the text,
/// within the line limit: lettre folds only at spaces and leaves ASCII
/// words as they are, so a longer word makes a longer line (RFC 5322 allows
/// 998 bytes), and text that looks like an encoded word (`=?…?=`) is
/// decoded by the reader's mail client.
fn lettre_can_encode(text: &str) -> bool {
    !text.contains("=?") && text.split(' ').all(|word| word.len() <= 76)
}

/// `text` as RFC 2047 encoded words (UTF-8, "Q"), folded one to a line:
/// each at most 75 bytes long, and of whole characters.
fn encoded_words(text: &str) -> String {
    const START: &str = "=?utf-8?q?";
    const END: &str = "?=";
    let longest = 75 - START.len() - END.len();
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut bytes = [0u8; 4];
    for c in text.chars() {
        let mut piece = String::new();
        for b in c.encode_utf8(&mut bytes).bytes() {
            match b {
                b' ' => piece.push('_'),
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'!' | b'*' | b'+' | b'-' | b'/' => {
                    piece.push(char::from(b))
                }
                _ => piece.push_str(&format!("={b:02X}")),
            }
        }
        if word.len() + piece.len() > longest {
            words.push(std::mem::take(&mut word));
        }
        word.push_str(&piece);
    }
    words.push(word);
    words
        .iter()
        .map(|w| format!("{START}{w}{END}"))
        .collect::<Vec<_>>()
        .join("\r\n ")
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
    let sender = env
        .envelope_from
        .clone()
        .unwrap_or_else(|| env.from.email.clone());
    let envelope = Envelope::new(Some(sender), vec![address.clone()])
        .context("cannot build the SMTP envelope")?;
    let name = env.to_name.map(one_line).filter(|n| !n.is_empty());
    let mut builder = lettre::Message::builder()
        .envelope(envelope)
        .from(env.from.clone());
    builder = match name {
        Some(name) if !lettre_can_encode(&name) => {
            let encoded = format!("{} <{address}>", encoded_words(&name));
            builder.raw_header(pre_encoded("To", format!("{name} <{address}>"), encoded))
        }
        name => builder.to(Mailbox::new(name, address)),
    };
    let subject = one_line(subject);
    builder = if lettre_can_encode(&subject) {
        builder.subject(subject)
    } else {
        let encoded = encoded_words(&subject);
        builder.raw_header(pre_encoded("Subject", subject, encoded))
    };
    builder = builder
        .date(env.date.into())
        .message_id(Some(env.message_id.clone()));
    if let Some(list) = &env.list {
        let list_id = match list.list_id.rsplit_once(" <") {
            Some((title, id)) if !lettre_can_encode(title) => {
                let encoded = format!("{} <{id}", encoded_words(title));
                pre_encoded("List-Id", list.list_id.clone(), encoded)
            }
            _ => raw_header("List-Id", list.list_id.clone()),
        };
        builder = builder
            .raw_header(list_id)
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
