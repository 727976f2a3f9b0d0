//! The digest email's headers, whatever the titles, names, subjects and
//! unsubscribe links: every message parses with the same header set, the
//! subject and the reader's name read back as written (on one line), and no
//! line breaks the SMTP rules (998 bytes at most, CRLF only).

use gazette::mail::{self, BodyEncoder, ListHeaders, MessageMeta, one_line};
use lettre::message::Mailbox;
use proptest::prelude::*;

/// The headers every digest carries, each once, and no other.
const HEADERS: [&str; 10] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
];

/// Pieces that header encoders get wrong: line breaks, white space, encoded
/// word markers, quotes, angle brackets, non-ASCII and words of up to
/// `longest` characters.
fn piece(longest: usize) -> impl Strategy<Value = String> {
    let long =
        |class: &str| proptest::string::string_regex(&format!("{class}{{20,{longest}}}")).unwrap();
    prop_oneof![
        Just("\r".to_string()),
        Just("\n".to_string()),
        Just("\r\n".to_string()),
        Just(" ".to_string()),
        Just("  \t ".to_string()),
        Just("=?".to_string()),
        Just("?=".to_string()),
        Just("=?utf-8?q?Hi?=".to_string()),
        Just("=?UTF-8?B?SGk=?=".to_string()),
        Just("\"".to_string()),
        Just("\\".to_string()),
        Just("<".to_string()),
        Just(">".to_string()),
        Just("<evil@example.org>".to_string()),
        Just("Bcc: victim@example.org".to_string()),
        Just(",;:()@[]".to_string()),
        Just("Zoë Ünal — déjà vu".to_string()),
        Just("日本語のニュース".to_string()),
        Just("😀".to_string()),
        "[a-zA-Z0-9]{1,12}",
        long("[a-z]"),
        long("[é€😀]"),
        any::<char>().prop_map(String::from),
    ]
}

/// Arbitrary text, mostly made of [`piece`]s.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(piece(1200), 0..40).prop_map(|p| p.concat()),
        1 => any::<String>(),
    ]
}

/// The end of an unsubscribe link: arbitrary too, but short enough for the
/// whole link to fit on one header line (a link cannot be folded).
fn link_end() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(100), 0..8).prop_map(|p| p.concat())
}

/// A valid ASCII address.
fn address() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,10}([._+-][a-z0-9]{1,10}){0,2}@[a-z0-9]{1,20}\\.example\\.org"
}

#[derive(Debug)]
struct Input {
    title: String,
    name: Option<String>,
    email: String,
    subject: String,
    unsubscribe_url: String,
}

fn input() -> impl Strategy<Value = Input> {
    (
        text(),
        prop::option::of(text()),
        address(),
        text(),
        link_end(),
    )
        .prop_map(|(title, name, email, subject, url)| Input {
            title,
            name,
            email,
            subject,
            unsubscribe_url: format!("https://news.example.org/unsubscribe/{url}"),
        })
}

/// The formatted message for `input`, as the delivery workers build it.
fn formatted(input: &Input) -> Vec<u8> {
    let from: Mailbox = "Gazette Test <digest@news.example.org>".parse().unwrap();
    let meta = MessageMeta {
        from: &from,
        to_email: &input.email,
        to_name: input.name.as_deref(),
        message_id: mail::message_id(&from, "daily", Some(7), 42),
        list: Some(ListHeaders {
            list_id: mail::list_id(&from, "daily", &input.title),
            unsubscribe_url: input.unsubscribe_url.clone(),
        }),
        date: chrono::DateTime::parse_from_rfc3339("2026-11-29T06:00:00Z")
            .unwrap()
            .into(),
        envelope_from: None,
    };
    let bodies = BodyEncoder::default().bodies(
        &format!("Hello {}\n", input.name.as_deref().unwrap_or("")),
        "<p>Hello</p>\n",
    );
    mail::build_message(&meta, &input.subject, bodies)
        .unwrap_or_else(|e| panic!("no message for {input:?}: {e:#}"))
        .formatted()
}

/// Checks what a receiving server and a mail client see in `bytes`.
fn check(input: &Input, bytes: &[u8]) {
    let shown = String::from_utf8_lossy(bytes);
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR in\n{shown}"),
            b'\n' => assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF in\n{shown}"),
            _ => {}
        }
    }
    for line in bytes.split(|b| *b == b'\n') {
        assert!(
            line.len() <= 999,
            "a line of {} bytes in\n{shown}",
            line.len() - 1
        );
    }

    let message = mail_parser::MessageParser::default()
        .parse(bytes)
        .unwrap_or_else(|| panic!("does not parse:\n{shown}"));
    let mut names: Vec<&str> = message.headers().iter().map(|h| h.name.as_str()).collect();
    names.sort_by_key(|n| n.to_ascii_lowercase());
    let mut expected = HEADERS.to_vec();
    expected.sort_by_key(|n| n.to_ascii_lowercase());
    assert!(
        names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .eq(expected.iter().map(|n| n.to_ascii_lowercase())),
        "headers {names:?} in\n{shown}"
    );

    let subject = one_line(&input.subject);
    assert_eq!(message.subject().unwrap_or(""), subject, "in\n{shown}");
    let to = message.to().and_then(|to| to.first());
    let to = to.unwrap_or_else(|| panic!("no To address in\n{shown}"));
    assert_eq!(to.address(), Some(input.email.as_str()), "in\n{shown}");
    let name = input
        .name
        .as_deref()
        .map(one_line)
        .filter(|n| !n.is_empty());
    assert_eq!(to.name(), name.as_deref(), "in\n{shown}");
}

proptest! {
    // (A failing case becomes a plain test below, not a file of seeds.)
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_digest_header_survives_any_title_name_subject_and_link(input in input()) {
        check(&input, &formatted(&input));
    }
}

fn case(title: &str, name: Option<&str>, subject: &str) -> Input {
    Input {
        title: title.into(),
        name: name.map(str::to_string),
        email: "ada@example.org".into(),
        subject: subject.into(),
        unsubscribe_url: "https://news.example.org/unsubscribe/0123abcd".into(),
    }
}

/// Found by the property above: lettre folds header values only at spaces,
/// so one long word made a line of over 998 bytes, which relays may refuse.
#[test]
fn a_title_name_and_subject_of_one_long_word_stay_within_998_bytes_a_line() {
    let word = "a".repeat(1200);
    let input = case(&word, Some(&word), &format!("News: {word} today"));
    let bytes = formatted(&input);
    check(&input, &bytes);
    let message = mail_parser::MessageParser::default().parse(&bytes).unwrap();
    let list_id = message.header_raw("List-Id").unwrap().replace("\r\n", "");
    assert!(
        list_id.trim_end().ends_with(" <daily.news.example.org>"),
        "{list_id}"
    );
}

/// Found by the property above: text that looks like an encoded word went
/// out as it was, and the reader's mail client decoded it.
#[test]
fn a_subject_and_name_that_look_like_encoded_words_read_as_written() {
    let input = case(
        "=?utf-8?q?Digest?=",
        Some("=?utf-8?q?Ada?= Lovelace"),
        "Why =?utf-8?q?Hi?= is not Hi",
    );
    check(&input, &formatted(&input));
}

/// Ordinary headers are left to lettre, as they were.
#[test]
fn an_ordinary_subject_and_name_are_written_as_plain_text() {
    let input = case("The daily Digest", Some("Ada Lovelace"), "The daily Digest");
    let bytes = formatted(&input);
    check(&input, &bytes);
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\r\nSubject: The daily Digest\r\n"), "{text}");
    assert!(
        text.contains("\r\nTo: \"Ada Lovelace\" <ada@example.org>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("\r\nList-Id: The daily Digest <daily.news.example.org>\r\n"),
        "{text}"
    );
}
