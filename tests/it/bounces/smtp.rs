//! The relay refuses a recipient at RCPT because the mailbox does not
//! exist: with `[bounces]` configured, a hard bounce, and the reader is
//! not mailed again.

use serde_json::Value;

use super::WITH_RETURN_PATH;
use crate::helpers::{Backend, SmtpServer, TestDb, Workspace, digest_section, stderr, stdout};
use crate::on_both_backends;

on_both_backends!(a_mailbox_refused_at_rcpt_is_a_hard_bounce);

fn runs(ws: &Workspace) -> Vec<Value> {
    let out = ws.run(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn a_mailbox_refused_at_rcpt_is_a_hard_bounce(backend: Backend) {
    // The loopback relay answers `550 5.1.1` to RCPT for reader1.
    let smtp = SmtpServer::start_rejecting(&["reader1@example.org"]);
    let db = TestDb::new(backend).await;
    let sections = format!(
        "{}{WITH_RETURN_PATH}",
        digest_section("daily", "skip_if_empty = false")
    );
    let ws = Workspace::new(&db.url, Some(smtp.port), &sections);
    ws.import_readers(3);
    ws.add_article("First news");
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 sent, 1 failed"),
        "{}",
        stdout(&out)
    );

    let first = &runs(&ws)[0];
    assert_eq!(
        (first["failed"].as_i64(), first["hard_bounces"].as_i64()),
        (Some(1), Some(1)),
        "{first}"
    );
    let listed = stdout(&ws.run(&["subscribers", "list", "--status", "bounced"]));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with("reader1@example.org\t"), "{listed}");

    // The next digest does not try that reader again.
    ws.add_article("Second news");
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let second = &runs(&ws)[0];
    assert_eq!(
        (second["sent"].as_i64(), second["failed"].as_i64()),
        (Some(2), Some(0)),
        "{second}"
    );
    assert_eq!(smtp.received_by("reader0@example.org").len(), 2);

    // The operator confirms the reader again: the next digest tries them.
    let out = ws.run(&[
        "subscribers",
        "set",
        "reader1@example.org",
        "--status",
        "confirmed",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    ws.add_article("Third news");
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let third = &runs(&ws)[0];
    assert_eq!(third["failed"].as_i64(), Some(1), "{third}");
}
