//! The delivery engine under faults, against a real Postgres: relays that
//! answer 4xx and 5xx or drop connections, a relay that is down, a sender
//! killed mid-run, several replicas, and database connections cut mid-run.
//! Promise: nobody is lost; duplicates only for messages in flight at a
//! crash or dropped after DATA, and those carry the same Message-ID.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::helpers::{
    Backend, Log, TestDb, Workspace, digest_section, duplicates, kill_9, stderr, stdout, wait_for,
};
use crate::in_plain_text_and_over_starttls;
use crate::smtp::{Behaviour, Fault, SmtpServer, Tls, closed_port};

const FAST_RETRIES: &str =
    "retry_base_ms = 20\nretry_max_ms = 100\nmax_attempts = 10\nlease_secs = 2\nbatch_size = 20";

// Relay faults hit a session the same way in plain text and after
// STARTTLS, where transactions are pipelined and chained alike.
in_plain_text_and_over_starttls!(
    a_flaky_relay_delivers_everyone_and_fails_only_the_rejected,
    chained_transactions_keep_every_reader_to_one_email_through_refusals,
    a_relay_that_is_down_pauses_delivery_instead_of_burning_attempts,
    a_sender_killed_mid_run_loses_nobody,
    retry_re_sends_only_the_failed_deliveries_of_a_run,
);

async fn a_flaky_relay_delivers_everyone_and_fails_only_the_rejected(tls: Tls) {
    let db = TestDb::new(Backend::Postgres).await;
    let rejected = [
        "reader7@example.org",
        "reader19@example.org",
        "reader33@example.org",
    ];
    let smtp = refusing_relay(tls, &rejected, |n| match n {
        n if n % 3 == 0 => Fault::TempFail,
        n if n % 11 == 5 => Fault::DropMidData,
        8 | 20 => Fault::DropAfterData,
        _ => Fault::Accept,
    });
    let readers = 40;
    let ws = sent_daily(&db, &smtp, tls, FAST_RETRIES, readers, "37 sent, 3 failed");

    assert!(smtp.faults(Fault::TempFail) > 5);
    assert!(smtp.faults(Fault::DropMidData) > 0);
    let mut extra = 0;
    for i in 0..readers {
        let email = format!("reader{i}@example.org");
        let got = smtp.received_by(&email);
        if rejected.contains(&email.as_str()) {
            assert!(got.is_empty());
            continue;
        }
        assert!(!got.is_empty(), "{email} received nothing");
        assert!(got.iter().all(|m| m.message_id() == got[0].message_id()));
        extra += got.len() - 1;
    }
    // A message dropped after DATA was kept, and its reader gets it again.
    assert_eq!(
        extra,
        smtp.faults(Fault::DropAfterData),
        "duplicates against messages dropped after DATA"
    );

    assert_refused_with_550(&ws, &rejected);
}

/// A workspace on `db` and `smtp` (speaking TLS as `tls`) with these
/// `[delivery]` keys, `readers` readers of the daily digest and an article
/// to send them.
fn daily_workspace(
    db: &TestDb,
    smtp: &SmtpServer,
    tls: Tls,
    delivery: &str,
    readers: usize,
) -> Workspace {
    let ws = Workspace::with_delivery(
        &db.url,
        Some(smtp.port),
        delivery,
        &digest_section("daily", ""),
    );
    ws.set_smtp(&tls.keys());
    ws.import_readers(readers);
    ws.add_article("Daily news");
    ws
}

/// [`daily_workspace`] after a `gazette send daily` that must report
/// `counts` for run 1.
fn sent_daily(
    db: &TestDb,
    smtp: &SmtpServer,
    tls: Tls,
    delivery: &str,
    readers: usize,
    counts: &str,
) -> Workspace {
    let ws = daily_workspace(db, smtp, tls, delivery, readers);
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("run 1: {counts}, 0 skipped")),
        "{}",
        stdout(&out)
    );
    ws
}

/// `gazette status 1` lists each of `rejected` with the relay's 550.
fn assert_refused_with_550(ws: &Workspace, rejected: &[&str]) {
    let report = stdout(&ws.run(&["status", "1"]));
    for email in rejected {
        let line = report
            .lines()
            .find(|l| l.contains(email))
            .unwrap_or_else(|| panic!("{report}"));
        assert!(line.contains("550"), "{line}");
    }
}

/// A relay speaking TLS as `tls` that refuses `rejected` (550) and fails
/// transactions by `policy`.
fn refusing_relay(tls: Tls, rejected: &[&str], policy: fn(u64) -> Fault) -> SmtpServer {
    SmtpServer::start_with(Behaviour {
        reject: rejected.iter().map(|s| s.to_string()).collect(),
        policy: Arc::new(policy),
        tls,
        ..Behaviour::default()
    })
}

/// One connection sends a message's content and the next message's MAIL,
/// RCPT and DATA in one write. A refused recipient in a transaction started
/// that way, and a 451 after a message that had started the next one, cost
/// a new connection each, and neither loses nor repeats a message.
async fn chained_transactions_keep_every_reader_to_one_email_through_refusals(tls: Tls) {
    let db = TestDb::new(Backend::Postgres).await;
    let rejected = ["reader4@example.org", "reader11@example.org"];
    let smtp = refusing_relay(tls, &rejected, |n| {
        if n % 7 == 3 {
            Fault::TempFail
        } else {
            Fault::Accept
        }
    });
    let readers = 30;
    let delivery = format!("{FAST_RETRIES}\nconcurrency = 1");
    let ws = sent_daily(&db, &smtp, tls, &delivery, readers, "28 sent, 2 failed");
    assert!(smtp.faults(Fault::TempFail) > 0);
    // (How many are chained depends on whether the next job was waiting.)
    assert!(
        smtp.chained() > 0,
        "no message was followed by the next transaction in one write"
    );
    for i in 0..readers {
        let email = format!("reader{i}@example.org");
        let got = smtp.received_by(&email);
        if rejected.contains(&email.as_str()) {
            assert!(got.is_empty(), "{email} was refused but received mail");
        } else {
            assert_eq!(got.len(), 1, "{email} received {} emails", got.len());
        }
    }
    assert_refused_with_550(&ws, &rejected);
}

async fn a_relay_that_is_down_pauses_delivery_instead_of_burning_attempts(tls: Tls) {
    let db = TestDb::new(Backend::Postgres).await;
    let port = closed_port();
    let ws = Workspace::with_delivery(
        &db.url,
        Some(port),
        FAST_RETRIES,
        &digest_section("daily", ""),
    );
    ws.set_smtp(&tls.keys());
    let readers = 60;
    ws.import_readers(readers);
    ws.add_article("Outage news");

    // Three failures in a row (one per connection) pause delivery for 1 s,
    // then three more for 2 s: stopped during that pause, it has made two
    // rounds of attempts, and the operator was told each time.
    let mut child = ws.spawn(&["send", "daily"]);
    let mut log = Log::of(&mut child);
    for pause in ["pause_secs=1", "pause_secs=2"] {
        log.wait_for(&format!("a pause with {pause}"), |l| {
            l.contains("the SMTP relay keeps failing: pausing deliveries") && l.ends_with(pause)
        });
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    let log = log.all();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains("interrupted: run `gazette send daily` again to finish"),
        "{log}"
    );

    let engine = ws.engine().await;
    let counts = engine.store.delivery_counts(1).await.unwrap();
    assert_eq!((counts.sent, counts.failed), (0, 0), "{counts:?}");
    assert_eq!(counts.sending, 0, "released on shutdown");
    let attempts: i64 = match &engine.store {
        gazette::store::Store::Postgres(pool) => {
            sqlx::query_scalar("select sum(attempts)::bigint from deliveries")
                .fetch_one(pool)
                .await
                .unwrap()
        }
        _ => unreachable!(),
    };
    // Each round ends at the third failure in a row; the other two
    // connections may each have one attempt under way by then.
    assert!(
        (6..=10).contains(&attempts),
        "{attempts} attempts in two rounds"
    );

    // The relay comes back: everyone gets the digest once.
    let smtp = SmtpServer::start_on(
        port,
        Behaviour {
            tls,
            ..Behaviour::default()
        },
    );
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(duplicates(&smtp, readers), 0);
    assert_eq!(smtp.received().len(), readers);
}

/// A Postgres database, a relay that answers after 5 ms, and 300 readers
/// with one new article: a run that lasts long enough to interrupt.
async fn slow_run_setup(title: &str, tls: Tls) -> (TestDb, SmtpServer, Workspace, usize) {
    let db = TestDb::new(Backend::Postgres).await;
    let smtp = SmtpServer::start_with(Behaviour {
        delay: Duration::from_millis(5),
        tls,
        ..Behaviour::default()
    });
    let ws = Workspace::with_delivery(
        &db.url,
        Some(smtp.port),
        FAST_RETRIES,
        &digest_section("daily", ""),
    );
    ws.set_smtp(&tls.keys());
    let readers = 300;
    ws.import_readers(readers);
    ws.add_article(title);
    (db, smtp, ws, readers)
}

async fn crash_at(point: usize, tls: Tls) {
    let (_db, smtp, ws, readers) = slow_run_setup("Crash news", tls).await;

    let mut child = ws.spawn(&["send", "daily"]);
    wait_for("the run to get going", || smtp.received().len() >= point);
    kill_9(&mut child);
    let before = smtp.received().len();
    assert!(before < readers, "the run finished before the crash");

    // The same command again finishes the crashed run and sends nothing new.
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("run 1: 300 sent"), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("nothing new since the last digest"),
        "{}",
        stdout(&out)
    );
    let extra = duplicates(&smtp, readers);
    // Sent but not yet recorded at the crash: per worker (3 of them), four
    // outcomes being written or buffered, one in the channel, one just sent.
    assert!(extra <= 18, "{extra} duplicates after a crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_early_in_a_run_loses_nobody() {
    crash_at(10, Tls::None).await;
}

async fn a_sender_killed_mid_run_loses_nobody(tls: Tls) {
    crash_at(150, tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_late_in_a_run_loses_nobody() {
    crash_at(280, Tls::None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_run_and_send_each_reader_one_email() {
    replicas_send_each_reader_one_email(
        3,
        3000,
        "batch_size = 50\nmax_attempts = 3\nretry_base_ms = 50\nretry_max_ms = 100",
    )
    .await;
}

/// `replicas` processes send one run of `readers` readers with these
/// `[delivery]` keys: each reader gets exactly one email.
async fn replicas_send_each_reader_one_email(replicas: usize, readers: usize, delivery: &str) {
    let db = TestDb::new(Backend::Postgres).await;
    let smtp = SmtpServer::start();
    let ws = daily_workspace(&db, &smtp, Tls::None, delivery, readers);
    let slot = Utc::now().to_rfc3339();

    let children: Vec<_> = (0..replicas)
        .map(|_| ws.spawn(&["send", "daily", "--slot", &slot]))
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(smtp.received().len(), readers);
    assert_eq!(duplicates(&smtp, readers), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_survives_its_database_connections_being_killed() {
    let (db, smtp, ws, readers) = slow_run_setup("Database news", Tls::None).await;
    let name = db.url.rsplit('/').next().unwrap().to_string();

    let child = ws.spawn(&["send", "daily"]);
    wait_for("the run to get going", || smtp.received().len() >= 50);
    use sqlx::Connection;
    let mut admin = sqlx::PgConnection::connect(&crate::helpers::postgres_admin_url())
        .await
        .unwrap();
    let killed: Vec<(bool,)> = sqlx::query_as(
        "select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
    )
    .bind(&name)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(!killed.is_empty(), "no connection to kill");

    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("run 1: 300 sent"), "{}", stdout(&out));
    assert!(duplicates(&smtp, readers) <= 12);
}

async fn retry_re_sends_only_the_failed_deliveries_of_a_run(tls: Tls) {
    let db = TestDb::new(Backend::Postgres).await;
    let first = refusing_relay(tls, &["reader3@example.org", "reader5@example.org"], |_| {
        Fault::Accept
    });
    let ws = Workspace::with_delivery(
        &db.url,
        Some(first.port),
        FAST_RETRIES,
        &digest_section("daily", ""),
    );
    ws.set_smtp(&tls.keys());
    ws.import_readers(8);
    ws.add_article("Retry news");
    let out = ws.run(&["send", "daily"]);
    assert!(
        stdout(&out).contains("run 1: 6 sent, 2 failed"),
        "{}",
        stdout(&out)
    );

    // The mailboxes exist now, on a relay that accepts them.
    let second = refusing_relay(tls, &[], |_| Fault::Accept);
    let config = std::fs::read_to_string(&ws.config).unwrap().replace(
        &format!("port = {}", first.port),
        &format!("port = {}", second.port),
    );
    std::fs::write(&ws.config, config).unwrap();

    let out = ws.run(&["retry", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 failed deliveries re-queued"),
        "{}",
        stdout(&out)
    );
    // It says what the retry did, not the run's totals.
    assert!(
        stdout(&out).contains("run 1: of the 2 retried, 2 sent, 0 failed again, 0 skipped"),
        "{}",
        stdout(&out)
    );
    let status = stdout(&ws.run(&["status", "1", "--json"]));
    let run: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(
        (run["sent"].as_i64(), run["failed"].as_i64()),
        (Some(8), Some(0))
    );
    let mut to: Vec<String> = second
        .received()
        .iter()
        .flat_map(|m| m.to.clone())
        .collect();
    to.sort();
    assert_eq!(to, ["reader3@example.org", "reader5@example.org"]);
    assert_eq!(first.received().len(), 6);

    let out = ws.run(&["status"]);
    let line = stdout(&out)
        .lines()
        .find(|l| l.trim_start().starts_with("1 "))
        .unwrap()
        .to_string();
    assert!(line.contains("finished"), "{line}");
}

/// Rows wait behind a slow rate limit for longer than their lease: the
/// process that claimed them must not send them once another may have
/// claimed them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_a_rate_limit_never_send_a_row_whose_lease_ran_out() {
    replicas_send_each_reader_one_email(
        2,
        36,
        "rate_per_second = 6\nlease_secs = 2\nbatch_size = 40",
    )
    .await;
}
