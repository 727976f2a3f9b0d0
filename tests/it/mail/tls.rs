//! Relays that speak TLS: STARTTLS with AUTH, TLS from the first byte, and
//! a certificate gazette does not trust.

use crate::helpers::{
    Backend, SmtpServer, TestDb, Workspace, digest_section, stderr, stdout, wait_for,
};
use crate::in_plain_text_and_over_starttls;
use crate::smtp::{Behaviour, Tls, test_ca_file};

const READERS: usize = 3;

/// A SQLite store with three readers and one new article, sending through
/// `smtp` with these `[smtp]` keys.
async fn workspace(smtp: &SmtpServer, keys: &str) -> (TestDb, Workspace) {
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = Workspace::new(&db.url, Some(smtp.port), &digest_section("daily", ""));
    ws.set_smtp(keys);
    ws.import_readers(READERS);
    ws.add_article("Encrypted news");
    (db, ws)
}

/// Runs `gazette send daily` and checks that it sent all READERS digests.
fn send_every_digest(ws: &Workspace) -> std::process::Output {
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{READERS} sent, 0 failed")),
        "{}",
        stdout(&out)
    );
    out
}

fn trusting_the_test_ca(tls: &str) -> String {
    format!(
        "tls = \"{tls}\"\nca_file = \"{}\"\n",
        test_ca_file().display()
    )
}

/// A relay that wants STARTTLS and AUTH PLAIN as `mailer` with the password
/// `correct horse`; gazette logs in as `mailer` with `password`.
async fn starttls_relay_with_auth(password: &str) -> (SmtpServer, TestDb, Workspace) {
    let smtp = SmtpServer::start_with(Behaviour {
        tls: Tls::Starttls,
        auth: Some(("mailer".into(), "correct horse".into())),
        ..Behaviour::default()
    });
    let keys = trusting_the_test_ca("starttls")
        + &format!("username = \"mailer\"\npassword = \"{password}\"\n");
    let (db, ws) = workspace(&smtp, &keys).await;
    (smtp, db, ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_and_auth_carry_every_digest_encrypted_and_authenticated() {
    let (smtp, _db, ws) = starttls_relay_with_auth("correct horse").await;

    // `check` reaches the relay and spells the setting as the file does.
    let check = ws.run(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    let port = smtp.port;
    assert!(
        stdout(&check).contains(&format!("smtp: ok (127.0.0.1:{port}, tls = \"starttls\")")),
        "{}",
        stdout(&check)
    );

    let out = send_every_digest(&ws);
    let received = smtp.received();
    assert_eq!(received.len(), READERS);
    for m in &received {
        assert!(m.encrypted, "a message to {:?} came in plain text", m.to);
        assert_eq!(m.user.as_deref(), Some("mailer"));
        assert!(m.parsed().body_text(0).unwrap().contains("Encrypted news"));
    }
    assert!(
        !stderr(&out).contains("correct horse"),
        "the password was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_from_the_first_byte_delivers_every_digest_pipelined() {
    let smtp = SmtpServer::start_with(Behaviour {
        tls: Tls::Implicit,
        ..Behaviour::default()
    });
    let (_db, ws) = workspace(&smtp, &trusting_the_test_ca("tls")).await;

    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let received = smtp.received();
    assert_eq!(received.len(), READERS);
    assert!(received.iter().all(|m| m.encrypted));
    assert_eq!(smtp.pipelined(), READERS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_certificate_from_an_unknown_authority_is_refused() {
    for (tls, mode) in [(Tls::Implicit, "tls"), (Tls::Starttls, "starttls")] {
        let smtp = SmtpServer::start_with(Behaviour {
            tls,
            ..Behaviour::default()
        });
        let (_db, ws) = workspace(&smtp, &format!("tls = \"{mode}\"\n")).await;

        let out = ws.run(&["check"]);
        assert!(!out.status.success(), "{mode}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("certificate") && stderr(&out).contains("smtp.ca_file"),
            "{mode}: {}",
            stderr(&out)
        );

        // `send` stops there too, before any run is planned.
        let out = ws.run(&["send", "daily"]);
        assert_eq!(out.status.code(), Some(1), "{mode}: {}", stdout(&out));
        assert!(
            stderr(&out).contains("certificate") && stderr(&out).contains("smtp.ca_file"),
            "{mode}: {}",
            stderr(&out)
        );
        let status = ws.run(&["status"]);
        assert_eq!(stdout(&status).trim(), "no runs yet", "{mode}");
        // Each of the two connections (`check`, `send`) tells the relay
        // that its certificate authority is unknown, with TLS from the
        // first byte as after STARTTLS (both handshakes are gazette's).
        let alerts = 2;
        let mut failures = Vec::new();
        wait_for("the relay to see the alerts", || {
            failures.extend(smtp.take_failures());
            failures.len() >= alerts
        });
        assert_eq!(failures.len(), alerts, "{mode}: {failures:?}");
        assert!(
            failures
                .iter()
                .all(|f| f.ends_with("received fatal alert: UnknownCA")),
            "{mode}: {failures:?}"
        );
        assert!(smtp.received().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_stop_send_before_anything_is_planned_or_failed() {
    let (smtp, _db, ws) = starttls_relay_with_auth("wrong horse").await;

    let out = ws.run(&["send", "daily"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("SMTP authentication failed (check smtp.username and smtp.password)"),
        "{err}"
    );
    assert!(
        !err.contains("wrong horse"),
        "the password was printed: {err}"
    );
    assert!(smtp.received().is_empty());
    let status = ws.run(&["status"]);
    assert!(status.status.success(), "{}", stderr(&status));
    assert_eq!(stdout(&status).trim(), "no runs yet");

    // With the right password the same command sends every digest.
    let config = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(&ws.config, config.replace("wrong horse", "correct horse")).unwrap();
    send_every_digest(&ws);
    assert_eq!(smtp.received().len(), READERS);
}

in_plain_text_and_over_starttls!(a_message_costs_one_round_trip_in_plain_text_as_over_starttls);

/// One connection sends a run of 40 digests: every transaction's MAIL,
/// RCPT and DATA go in one write (RFC 2920), after STARTTLS as in plain
/// text (PIPELINING is read from the EHLO reply over TLS), and a message's
/// content mostly carries the next message's envelope behind it: one
/// round trip per message. (Chaining needs the next job to be waiting,
/// which it is but between batches of claims.)
async fn a_message_costs_one_round_trip_in_plain_text_as_over_starttls(tls: Tls) {
    let readers = 40;
    let smtp = SmtpServer::start_with(Behaviour {
        tls,
        ..Behaviour::default()
    });
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = Workspace::with_delivery(
        &db.url,
        Some(smtp.port),
        "concurrency = 1\nbatch_size = 20",
        &digest_section("daily", ""),
    );
    ws.set_smtp(&tls.keys());
    ws.import_readers(readers);
    ws.add_article("Pipelined news");

    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("{readers} sent, 0 failed")),
        "{}",
        stdout(&out)
    );
    let received = smtp.received();
    assert_eq!(received.len(), readers);
    assert!(
        received
            .iter()
            .all(|m| m.encrypted == (tls == Tls::Starttls)),
        "{tls:?}"
    );
    assert_eq!(
        smtp.pipelined(),
        readers as u64,
        "{tls:?}: transactions pipelined"
    );
    assert!(
        smtp.chained() >= readers as u64 / 2,
        "{tls:?}: only {} of {readers} messages carried the next envelope",
        smtp.chained()
    );
}
