//! `gazette bounces ingest`, as Postfix's pipe hands it a message: real
//! digests sent through the loopback relay, the messages that come back
//! (shaped after Postfix, Exim, Gmail, Microsoft, Yahoo and AOL ones) with
//! what Gazette actually sent filled in, and the binary's output, exit
//! code and rows; then the next digest, which the bounced readers do not
//! get.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::WITH_RETURN_PATH;
use crate::helpers::{Backend, SmtpServer, TestDb, Workspace, digest_section, stderr, stdout};
use crate::on_both_backends;

on_both_backends!(
    delivery_status_notifications_stop_dead_addresses_and_nothing_else_does,
    complaints_unsubscribe_the_reader_named_by_the_return_path_or_the_unsubscribe_link,
);

/// What the relay received for one reader: the headers a report returns.
struct Sent {
    to: String,
    return_path: String,
    message_id: String,
    list_unsubscribe: String,
}

fn sent_to(smtp: &SmtpServer, email: &str) -> Sent {
    let got = smtp.received_by(email);
    let m = got
        .last()
        .unwrap_or_else(|| panic!("{email} received nothing"));
    let parsed = m.parsed();
    Sent {
        to: email.to_string(),
        return_path: m.from.clone(),
        message_id: format!("<{}>", parsed.message_id().unwrap()),
        list_unsubscribe: parsed
            .header_raw("List-Unsubscribe")
            .unwrap()
            .trim()
            .to_string(),
    }
}

/// A fixture with the placeholders filled in from `sent`.
fn fixture(name: &str, sent: &Sent) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bounces")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    // The same address with its last MAC digit changed: a forgery.
    let mut forged = sent.return_path.clone().into_bytes();
    let at = sent.return_path.find('@').unwrap() - 1;
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    text.replace("{{RETURN_PATH}}", &sent.return_path)
        .replace("{{FORGED}}", std::str::from_utf8(&forged).unwrap())
        .replace("{{TO}}", &sent.to)
        .replace("{{MESSAGE_ID}}", &sent.message_id)
        .replace("{{LIST_UNSUBSCRIBE}}", &sent.list_unsubscribe)
        .into_bytes()
}

/// Runs `gazette bounces ingest ARGS` with `input` on standard input.
fn ingest(ws: &Workspace, input: &[u8], args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["bounces", "ingest"])
        .args(args)
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .env_remove("GAZETTE_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// Ingests `input`, expecting success, and returns what it printed.
fn said(ws: &Workspace, input: &[u8], args: &[&str]) -> String {
    let out = ingest(ws, input, args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    stdout(&out).trim_end().to_string()
}

fn statuses(ws: &Workspace) -> Vec<(String, String)> {
    let out = ws.run(&["subscribers", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["email"].as_str().unwrap().to_string(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn runs(ws: &Workspace) -> Vec<Value> {
    let out = ws.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn send(ws: &Workspace) {
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn reader(i: usize) -> String {
    format!("reader{i}@example.org")
}

async fn delivery_status_notifications_stop_dead_addresses_and_nothing_else_does(backend: Backend) {
    let smtp = SmtpServer::start();
    let db = TestDb::new(backend).await;
    let sections = format!(
        "{}{WITH_RETURN_PATH}",
        digest_section("daily", "skip_if_empty = false")
    );
    let ws = Workspace::new(&db.url, Some(smtp.port), &sections);
    ws.import_readers(6);
    ws.add_article("First news");
    send(&ws);

    // Each message's envelope sender names its delivery.
    let sent: Vec<Sent> = (0..6).map(|i| sent_to(&smtp, &reader(i))).collect();
    for s in &sent {
        assert!(
            s.return_path.starts_with("bounces+") && s.return_path.ends_with("@news.example.org"),
            "{}",
            s.return_path
        );
    }
    let mut distinct: Vec<&str> = sent.iter().map(|s| s.return_path.as_str()).collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6);

    // Postfix, as its pipe hands it over with ${recipient}.
    let postfix = fixture("postfix-hard.eml", &sent[0]);
    let recipient = ["--recipient", sent[0].return_path.as_str()];
    assert_eq!(
        said(&ws, &postfix, &recipient),
        "hard bounce for r…@example.org recorded: r…@example.org is bounced and will not be mailed again"
    );
    // The MTA hands the same message over again: it counts once.
    assert_eq!(
        said(&ws, &postfix, &recipient),
        "duplicate: hard bounce for r…@example.org was already recorded for this delivery"
    );
    // Gmail's, found by its Delivered-To; Microsoft's, from a file, by its To.
    assert!(
        said(&ws, &fixture("gmail-hard.eml", &sent[1]), &[])
            .starts_with("hard bounce for r…@example.org recorded")
    );
    let file = ws.dir.path().join("microsoft.eml");
    std::fs::write(&file, fixture("microsoft-hard.eml", &sent[2])).unwrap();
    assert!(
        said(&ws, b"", &[file.to_str().unwrap()])
            .starts_with("hard bounce for r…@example.org recorded")
    );
    // Exim's warning of a delay: one soft bounce, the reader stays.
    assert_eq!(
        said(&ws, &fixture("exim-delayed.eml", &sent[3]), &[]),
        "soft bounce for r…@example.org recorded"
    );
    // A vacation notice, a challenge, a forged bounce: nothing changes.
    assert_eq!(
        said(&ws, &fixture("vacation.eml", &sent[4]), &[]),
        "ignored: an automatic reply (out of office, vacation), not a delivery status notification"
    );
    assert_eq!(
        said(&ws, &fixture("challenge.eml", &sent[4]), &[]),
        "ignored: not a delivery status notification"
    );
    assert_eq!(
        said(&ws, &fixture("forged-hard.eml", &sent[4]), &[]),
        "ignored: a bounce whose return path is not one of ours (its token does not verify)"
    );
    // What is not mail at all is refused with 75: the MTA keeps it.
    for junk in [&b""[..], b"\x00\x01\x02 not mail\n"] {
        let out = ingest(&ws, junk, &[]);
        assert_eq!(out.status.code(), Some(75), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("cannot read the message"),
            "{}",
            stderr(&out)
        );
    }

    let expected: Vec<(String, String)> = (0..6)
        .map(|i| {
            let status = if i < 3 { "bounced" } else { "confirmed" };
            (reader(i), status.to_string())
        })
        .collect();
    assert_eq!(statuses(&ws), expected);
    let first = &runs(&ws)[0];
    assert_eq!(
        (
            first["bounced"].as_i64(),
            first["hard_bounces"].as_i64(),
            first["soft_bounces"].as_i64()
        ),
        (Some(4), Some(3), Some(1)),
        "{first}"
    );
    let id = first["run"].as_i64().unwrap().to_string();
    let text = stdout(&ws.run(&["status", &id]));
    assert!(
        text.contains("bounces: 3 hard, 1 soft, 0 complaints"),
        "{text}"
    );
    // Nothing of the readers' addresses in what ingest logged.
    let logged = stderr(&ingest(&ws, &postfix, &recipient));
    assert!(!logged.contains("reader0@"), "{logged}");

    // The next digest goes to the three readers left, and only to them.
    ws.add_article("Second news");
    send(&ws);
    for i in 0..6 {
        let expected = if i < 3 { 1 } else { 2 };
        assert_eq!(
            smtp.received_by(&reader(i)).len(),
            expected,
            "{}",
            reader(i)
        );
    }
    let second = &runs(&ws)[0];
    assert_eq!(second["sent"].as_i64(), Some(3), "{second}");
    assert_eq!(second["bounced"].as_i64(), Some(0), "{second}");
}

async fn complaints_unsubscribe_the_reader_named_by_the_return_path_or_the_unsubscribe_link(
    backend: Backend,
) {
    let smtp = SmtpServer::start();
    let db = TestDb::new(backend).await;
    let sections = format!(
        "{}{WITH_RETURN_PATH}",
        digest_section("daily", "skip_if_empty = false")
    );
    let ws = Workspace::new(&db.url, Some(smtp.port), &sections);
    ws.import_readers(3);
    ws.add_article("First news");
    send(&ws);
    let sent: Vec<Sent> = (0..3).map(|i| sent_to(&smtp, &reader(i))).collect();

    // Yahoo's report keeps the original's Return-Path; AOL's only its
    // List-Unsubscribe (and Message-ID). Both go to a feedback address.
    let fbl = ["--recipient", "fbl@news.example.org"];
    assert_eq!(
        said(&ws, &fixture("yahoo-complaint.eml", &sent[0]), &fbl),
        "complaint from r…@example.org recorded: r…@example.org is unsubscribed"
    );
    assert_eq!(
        said(&ws, &fixture("aol-complaint.eml", &sent[1]), &fbl),
        "complaint from r…@example.org recorded: r…@example.org is unsubscribed"
    );
    assert_eq!(
        said(&ws, &fixture("aol-complaint.eml", &sent[1]), &fbl),
        "duplicate: complaint from r…@example.org was already recorded for this delivery"
    );
    // A report about a message that is not ours names nobody.
    let strange = String::from_utf8(fixture("aol-complaint.eml", &sent[2]))
        .unwrap()
        .replace(
            &sent[2].list_unsubscribe,
            "<https://news.example.org/unsubscribe/3.0123456789abcdef0123456789abcdef>",
        );
    assert_eq!(
        said(&ws, strange.as_bytes(), &fbl),
        "ignored: a complaint about a message that is not one of ours (no token verifies)"
    );

    assert_eq!(
        statuses(&ws),
        vec![
            (reader(0), "unsubscribed".to_string()),
            (reader(1), "unsubscribed".to_string()),
            (reader(2), "confirmed".to_string()),
        ]
    );
    let run = &runs(&ws)[0];
    assert_eq!(run["complaints"].as_i64(), Some(2), "{run}");
    assert_eq!(run["bounced"].as_i64(), Some(0), "{run}");

    ws.add_article("Second news");
    send(&ws);
    assert_eq!(smtp.received_by(&reader(0)).len(), 1);
    assert_eq!(smtp.received_by(&reader(1)).len(), 1);
    assert_eq!(smtp.received_by(&reader(2)).len(), 2);
}
