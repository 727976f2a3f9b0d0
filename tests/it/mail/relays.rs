//! `[[relays]]`: deliveries spread over several relays by weight, and a
//! relay that goes down in the middle of a run hands its share to the
//! others without losing or repeating a message.

use std::time::Duration;

use crate::helpers::{
    Backend, SmtpServer, TestDb, Workspace, digest_section, stderr, stdout, wait_for,
};
use crate::smtp::{Behaviour, Received};

/// A Postgres store with `readers` readers of the daily digest and one new
/// article, sending through `relays` (`(port, weight)`, each with
/// `pool_size` connections) with these `[delivery]` keys.
async fn workspace(relays: &[(u16, u32)], delivery: &str, readers: usize) -> (TestDb, Workspace) {
    let db = TestDb::new(Backend::Postgres).await;
    let ws = Workspace::with_delivery(
        &db.url,
        Some(relays[0].0),
        delivery,
        &digest_section("daily", ""),
    );
    let mut tables = String::new();
    for (port, weight) in relays {
        tables.push_str(&format!(
            "[[relays]]\nhost = \"127.0.0.1\"\nport = {port}\npool_size = 4\ntimeout_secs = 10\nweight = {weight}\n"
        ));
    }
    replace_smtp_table(&ws, &tables);
    ws.import_readers(readers);
    ws.add_article("Shared news");
    (db, ws)
}

/// Puts `tables` where the workspace's `[smtp]` table is.
fn replace_smtp_table(ws: &Workspace, tables: &str) {
    let text = std::fs::read_to_string(&ws.config).unwrap();
    let start = text.find("[smtp]\n").unwrap();
    let end = start + text[start..].find("[web]\n").unwrap();
    let text = format!("{}{}{}", &text[..start], tables, &text[end..]);
    std::fs::write(&ws.config, text).unwrap();
}

/// Every reader got exactly one email, from one relay or the other.
fn each_reader_once(received: &[Received], readers: usize) {
    let mut count = vec![0; readers];
    for m in received {
        for to in &m.to {
            let i: usize = to
                .strip_prefix("reader")
                .and_then(|r| r.strip_suffix("@example.org"))
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("mail to {to}"));
            count[i] += 1;
        }
    }
    for (i, n) in count.iter().enumerate() {
        assert_eq!(*n, 1, "reader{i} received {n} emails");
    }
}

/// Sends the daily digest through relays `a` and `b`: every reader gets
/// it once, from one or the other; what each received.
fn send_through(
    ws: &Workspace,
    a: &SmtpServer,
    b: &SmtpServer,
    readers: usize,
) -> (Vec<Received>, Vec<Received>) {
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sent = format!("{readers} sent, 0 failed");
    assert!(stdout(&out).contains(&sent), "{}", stdout(&out));
    let (got_a, got_b) = (a.received(), b.received());
    let mut all = got_a.clone();
    all.extend(got_b.iter().cloned());
    each_reader_once(&all, readers);
    (got_a, got_b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_weighted_three_to_one_get_about_three_to_one() {
    let (a, b) = (SmtpServer::start(), SmtpServer::start());
    let readers = 400;
    let (_db, ws) = workspace(&[(a.port, 3), (b.port, 1)], "concurrency = 4", readers).await;

    let check = ws.run(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    for (port, weight) in [(a.port, 3), (b.port, 1)] {
        let line = format!("smtp: ok (127.0.0.1:{port}, tls = \"none\", weight {weight})");
        assert!(stdout(&check).contains(&line), "{}", stdout(&check));
    }
    // (Four workers: three for the first relay's pool of 4, one for the second.)
    assert!(!stdout(&check).contains("warning"), "{}", stdout(&check));

    let (got_a, got_b) = send_through(&ws, &a, &b, readers);
    // Three workers on the first relay, one on the second, alike.
    let share = got_a.len() as f64 / readers as f64;
    assert!(
        (0.65..=0.85).contains(&share),
        "{} and {} messages: a share of {share:.2} for the relay of weight 3",
        got_a.len(),
        got_b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_hold_when_every_connection_of_equal_pools_is_used() {
    // Four connections each and, by default, a worker on every one: the
    // relay of weight 1 has as many workers as the other, and still gets
    // a quarter of the messages.
    let (a, b) = (SmtpServer::start(), SmtpServer::start());
    let readers = 400;
    let (_db, ws) = workspace(&[(a.port, 3), (b.port, 1)], "", readers).await;

    // `check` says so: the first relay needs 6 of the 8 workers' worth.
    let check = ws.run(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    let warning = format!(
        "warning: relay 127.0.0.1:{}: its weight gives it the messages of 6.0 of the 8 workers, but its pool_size is 4: the other relays' workers will wait for it (raise its pool_size to 6 or lower its weight)",
        a.port
    );
    assert!(stdout(&check).contains(&warning), "{}", stdout(&check));
    assert_eq!(stdout(&check).matches("warning: relay").count(), 1);

    let (got_a, got_b) = send_through(&ws, &a, &b, readers);
    let share = got_a.len() as f64 / readers as f64;
    assert!(
        (0.65..=0.85).contains(&share),
        "{} and {} messages: a share of {share:.2} for the relay of weight 3",
        got_a.len(),
        got_b.len()
    );
    for relay in [&a, &b] {
        assert!(relay.most_sessions_at_once() <= 4, "a pool of 4 exceeded");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_relay_gets_its_share_no_less() {
    let slow = Behaviour {
        delay: Duration::from_millis(10),
        ..Behaviour::default()
    };
    let (a, b) = (SmtpServer::start(), SmtpServer::start_with(slow));
    let readers = 400;
    let (_db, ws) = workspace(&[(a.port, 1), (b.port, 1)], "", readers).await;

    let (got_a, got_b) = send_through(&ws, &a, &b, readers);
    let share = got_b.len() as f64 / readers as f64;
    assert!(
        (0.4..=0.6).contains(&share),
        "{} and {} messages: a share of {share:.2} for the slow relay of equal weight",
        got_a.len(),
        got_b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_stops_mid_run_leaves_the_run_to_the_other_with_nothing_lost_or_doubled() {
    let slow = Behaviour {
        delay: Duration::from_millis(5),
        ..Behaviour::default()
    };
    let (a, b) = (
        SmtpServer::start_with(slow.clone()),
        SmtpServer::start_with(slow),
    );
    let readers = 400;
    // (A worker on each of the 4 + 4 connections: those of the stopped
    // relay wait rather than open more to the other than its pool.)
    let delivery = "retry_base_ms = 20\nretry_max_ms = 100\nmax_attempts = 10\nlease_secs = 5\nbatch_size = 40";
    let (_db, ws) = workspace(&[(a.port, 1), (b.port, 1)], delivery, readers).await;

    let child = ws.spawn(&["send", "daily"]);
    wait_for("the second relay to take its share", || {
        b.received().len() >= 40
    });
    b.stop();
    let stopped_at = b.received().len();

    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("400 sent, 0 failed"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("its share goes to the other relays"),
        "{}",
        stderr(&out)
    );
    let (got_a, got_b) = (a.received(), b.received());
    assert!(
        a.most_sessions_at_once() <= 4,
        "{} connections at once to a relay of pool_size 4",
        a.most_sessions_at_once()
    );
    // (A message whose final dot the relay had read as it stopped is
    // kept and acknowledged: at most one per worker on it.)
    assert!(
        got_b.len() <= stopped_at + 4,
        "the stopped relay kept {} messages more",
        got_b.len() - stopped_at
    );
    assert!(
        got_a.len() > readers / 2,
        "{} on the relay that stayed",
        got_a.len()
    );
    let mut all = got_a;
    all.extend(got_b);
    each_reader_once(&all, readers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_with_bad_keys_or_beside_smtp_are_refused_naming_the_key() {
    let db = TestDb::new(Backend::Sqlite).await;
    let ws = Workspace::new(&db.url, Some(2525), &digest_section("daily", ""));
    replace_smtp_table(
        &ws,
        "[[relays]]\nhost = \"127.0.0.1\"\nweight = 2\n[[relays]]\nhost = \"\"\nweight = 0\n",
    );
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let err = stderr(&out);
    let file = ws.config.display().to_string();
    assert!(
        err.contains(&format!("{file}: key `relays[1].host`: must not be empty")),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{file}: key `relays[1].weight`: must be at least 1"
        )),
        "{err}"
    );

    // `[smtp]` and `[[relays]]` in one file.
    let text = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        format!("{text}\n[smtp]\nhost = \"127.0.0.1\"\n")
            .replace("host = \"\"\nweight = 0", "host = \"127.0.0.2\""),
    )
    .unwrap();
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("`[smtp]` and `[[relays]]` in one file"),
        "{}",
        stderr(&out)
    );
}
