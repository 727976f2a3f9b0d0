//! The `gazette` binary as an operator uses it.

use chrono::Timelike;

use crate::helpers::{Log, Workspace, digest_section, stderr, stdout, wait_for};

fn workspace() -> (tempfile::TempDir, Workspace) {
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    (
        db_dir,
        Workspace::new(&db, None, &digest_section("daily", "")),
    )
}

#[test]
fn the_demo_sends_a_digest_into_the_outbox() {
    let (_db, ws) = workspace();
    let out = ws.run(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("daily: run 1: 3 sent, 0 failed, 0 skipped"),
        "{text}"
    );
    let files: Vec<_> = std::fs::read_dir(ws.outbox()).unwrap().collect();
    assert_eq!(files.len(), 3);
    assert!(ws.dir.path().join("preview/daily.html").is_file());

    // Run again: the sample articles count as new again, and go out again.
    let out = ws.run(&["demo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("run 2: 3 sent"), "{}", stdout(&out));
}

#[test]
fn subscribers_and_articles_are_managed_from_the_command_line() {
    let (_db, ws) = workspace();
    let out = ws.run(&[
        "subscribers",
        "add",
        "Ada@Example.org",
        "--name",
        "Ada",
        "--digest",
        "daily",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ws.run(&["subscribers", "add", "nobody", "--digest", "daily"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("`nobody` is not a valid email address"),
        "{}",
        stderr(&out)
    );
    let out = ws.run(&["subscribers", "add", "x@example.org", "--digest", "weekly"]);
    assert!(
        stderr(&out).contains("unknown digest `weekly`"),
        "{}",
        stderr(&out)
    );
    for name in ["Eve\nBcc: x@example.org", "Eve\t"] {
        let out = ws.run(&["subscribers", "add", "eve@example.org", "--name", name]);
        assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
        assert!(
            stderr(&out).contains("the name contains a control character"),
            "{}",
            stderr(&out)
        );
    }
    let out = ws.run(&[
        "subscribers",
        "set",
        "ada@example.org",
        "--name",
        "Ada\r\nX",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("the name contains a control character ('\\r')"),
        "{}",
        stderr(&out)
    );

    let csv = ws.dir.path().join("subs.csv");
    std::fs::write(
        &csv,
        "email,name,digests\ngrace@example.org,Grace,daily\nbad@,Bad,daily\n",
    )
    .unwrap();
    let out = ws.run(&["subscribers", "import", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("subs.csv: nothing was imported") && err.contains("line 3"),
        "{err}"
    );

    let out = ws.run(&["subscribers", "list"]);
    let list = stdout(&out);
    assert_eq!(list.lines().count(), 1, "{list}");
    assert!(
        list.starts_with("Ada@Example.org\tAda\tconfirmed\tdaily"),
        "{list}"
    );

    let out = ws.run(&["subscribers", "remove", "ada@example.org"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&ws.run(&["subscribers", "list"])), "");

    let out = ws.run(&[
        "articles",
        "add",
        "--url",
        "https://example.org/x",
        "--title",
        "X marks",
        "--tags",
        "a,b",
        "--published-at",
        "2026-11-29T06:00:00Z",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ws.run(&["articles", "list"]);
    assert!(
        stdout(&out).contains("X marks  https://example.org/x  [a, b]"),
        "{}",
        stdout(&out)
    );
    let out = ws.run(&[
        "articles",
        "add",
        "--url",
        "https://example.org/y",
        "--title",
        "Y",
        "--published-at",
        "soon",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("published_at"), "{}", stderr(&out));
}

#[test]
fn send_dry_run_renders_everything_and_sends_nothing() {
    let (_db, ws) = workspace();
    assert!(
        ws.run(&["subscribers", "add", "ada@example.org"])
            .status
            .success()
    );
    let now = chrono::Utc::now().to_rfc3339();
    let out = ws.run(&[
        "articles",
        "add",
        "--url",
        "https://example.org/x",
        "--title",
        "X",
        "--published-at",
        &now,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ws.run(&["send", "daily", "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("dry run: 1 email rendered (1 article), none sent"),
        "{}",
        stdout(&out)
    );
    assert!(!ws.outbox().exists());

    let out = ws.run(&["send", "weekly"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no digest named `weekly`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn preview_prints_the_paths_it_wrote() {
    let (_db, ws) = workspace();
    let out = ws.run(&["preview", "daily", "--out", "pv"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let paths: Vec<&str> = printed.lines().map(str::trim).collect();
    assert_eq!(paths, ["pv/daily.html", "pv/daily.txt", "pv/daily.eml"]);
    assert!(stderr(&out).contains("no new articles"), "{}", stderr(&out));
    let html = std::fs::read_to_string(ws.dir.path().join("pv/daily.html")).unwrap();
    assert!(html.contains("Hello Sample Reader"), "{html}");
}

/// A `gazette run` child process and its log, killed if dropped.
pub(crate) struct Daemon {
    child: Option<std::process::Child>,
    log: Option<Log>,
}

impl Daemon {
    pub(crate) fn start(ws: &Workspace) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .arg("run")
            .current_dir(ws.dir.path())
            .env("GAZETTE_CONFIG", &ws.config)
            .env_remove("GAZETTE_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::of(&mut child);
        Self {
            child: Some(child),
            log: Some(log),
        }
    }

    pub(crate) fn log(&mut self) -> &mut Log {
        self.log.as_mut().unwrap()
    }

    /// Stops the daemon with SIGTERM: its exit status and its whole log.
    pub(crate) fn terminate(mut self) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let status = child.wait().unwrap();
        (status, self.log.take().unwrap().all())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn the_daemon_sends_the_due_slot_once_and_stops_cleanly_on_sigterm() {
    let smtp = crate::helpers::SmtpServer::start();
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    // Daily, in a zone with an odd offset, at the minute twelve hours ago
    // there: due now (within catch_up), and still the latest slot when the
    // daemon restarts. The digest ran the day before (with nothing new, so
    // it sent nothing): a digest that never ran would start with its next
    // slot instead.
    let slot = (chrono::Utc::now() - chrono::Duration::hours(12))
        .with_timezone(&chrono_tz::Asia::Kathmandu);
    let section = |name: &str| {
        digest_section(name, "catch_up = \"13h\"")
            .replace(
                "0 7 * * *",
                &format!("{} {} * * *", slot.minute(), slot.hour()),
            )
            .replace("Europe/Berlin", "Asia/Kathmandu")
    };
    let ws = Workspace::new(&db, Some(smtp.port), &section("daily"));
    assert!(
        ws.run(&["subscribers", "add", "ada@example.org"])
            .status
            .success()
    );
    assert!(
        ws.run(&["subscribers", "add", "grace@example.org"])
            .status
            .success()
    );
    let out = ws.run(&[
        "articles",
        "add",
        "--url",
        "https://example.org/d",
        "--title",
        "Daemon news",
        "--published-at",
        &(slot - chrono::Duration::hours(1)).to_rfc3339(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let day_before = (slot - chrono::Duration::days(1)).to_rfc3339();
    let ran = ws.run(&["send", "daily", "--slot", &day_before]);
    assert!(
        stdout(&ran).contains("skipped, no mail sent"),
        "{}",
        stdout(&ran)
    );

    let mut daemon = Daemon::start(&ws);
    daemon
        .log()
        .wait_for("the outlook of the daily digest", |l| {
            l.contains("digest=\"daily\"")
                && l.contains("was missed while stopped and is sent at start")
        });
    daemon
        .log()
        .wait_for("the run to be planned", |l| l.contains("planned a run"));
    wait_for("two messages", || smtp.received().len() >= 2);

    // A second process on the same SQLite store is refused.
    let second = ws.run(&["run"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another gazette process is delivering"),
        "{}",
        stderr(&second)
    );

    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("stopped"), "{log}");
    let finished = log
        .lines()
        .find(|l| l.contains("run finished"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        finished.contains("sent=2")
            && finished.contains("failed=0")
            && finished.contains("took_secs="),
        "{finished}"
    );

    // Restarted with a second digest and a reader of it: its first tick
    // finds the daily slot planned before, and sends only the new digest.
    let mut config = std::fs::read_to_string(&ws.config).unwrap();
    config.push_str(&section("briefing"));
    std::fs::write(&ws.config, config).unwrap();
    let out = ws.run(&[
        "subscribers",
        "add",
        "linus@example.org",
        "--digest",
        "briefing",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ran = ws.run(&["send", "briefing", "--slot", &day_before]);
    assert!(
        stdout(&ran).contains("skipped, no mail sent"),
        "{}",
        stdout(&ran)
    );
    let mut daemon = Daemon::start(&ws);
    daemon.log().wait_for("the briefing to be planned", |l| {
        l.contains("digest=briefing") && l.contains("planned a run")
    });
    wait_for("the briefing", || {
        !smtp.received_by("linus@example.org").is_empty()
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(log.matches("planned a run").count(), 1, "{log}");
    let subjects = |email: &str| -> Vec<String> {
        smtp.received_by(email)
            .iter()
            .map(|m| m.parsed().subject().unwrap_or_default().to_string())
            .collect()
    };
    let day = slot.format("%A, %-d %B %Y");
    let daily = format!("The daily Digest — {day}");
    assert_eq!(subjects("ada@example.org"), [daily.as_str()]);
    assert_eq!(subjects("grace@example.org"), [daily.as_str()]);
    assert_eq!(
        subjects("linus@example.org"),
        [format!("The briefing Digest — {day}")]
    );
    let m = smtp.received_by("ada@example.org")[0]
        .parsed()
        .body_text(0)
        .unwrap()
        .into_owned();
    assert!(m.contains("Daemon news"), "{m}");
}

#[test]
fn a_listing_piped_into_a_reader_that_stops_early_ends_quietly() {
    let (_dir, ws) = workspace();
    ws.import_readers(5_000);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["subscribers", "list"])
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // What `| head -1` does: read a line, then close the pipe.
    let mut first = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    assert!(first.starts_with("reader0@example.org\t"), "{first}");
    drop(out);
    let done = child.wait_with_output().unwrap();
    let err = stderr(&done);
    assert!(!err.contains("panicked"), "{err}");
    // Ended by SIGPIPE, as `seq 1000000 | head -1` ends `seq`.
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(done.status.signal(), Some(13), "{:?}: {err}", done.status);
}

#[test]
fn nothing_listening_at_the_database_address_is_said_plainly() {
    let (_dir, ws) = workspace();
    let config = std::fs::read_to_string(&ws.config).unwrap();
    let url = config
        .lines()
        .find(|l| l.starts_with("url = "))
        .unwrap()
        .to_string();
    std::fs::write(
        &ws.config,
        config.replace(
            &url,
            "url = \"postgres://gazette:hunter2@127.0.0.1:1/gazette\"",
        ),
    )
    .unwrap();
    let out = ws.run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("cannot connect to Postgres at `postgres://gazette:***@127.0.0.1:1/gazette`"),
        "{err}"
    );
    // Said once: the cause is not repeated after a message that says it.
    assert_eq!(err.matches("Connection refused").count(), 1, "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn a_first_start_after_a_slot_sends_nothing_until_the_next_slot() {
    let smtp = crate::helpers::SmtpServer::start();
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    // A daily digest whose slot was an hour ago, well within catch_up: it
    // has never run, so neither `check` nor `run` sends that slot.
    let slot = chrono::Utc::now() - chrono::Duration::hours(1);
    let section = digest_section("daily", "catch_up = \"13h\"")
        .replace(
            "0 7 * * *",
            &format!("{} {} * * *", slot.minute(), slot.hour()),
        )
        .replace("Europe/Berlin", "UTC");
    let ws = Workspace::new(&db, Some(smtp.port), &section);
    ws.import_readers(2);
    ws.add_article("Old news");

    let check = ws.run(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("never run: the slot of")
            && stdout(&check).contains("is passed over"),
        "{}",
        stdout(&check)
    );

    let mut daemon = Daemon::start(&ws);
    daemon.log().wait_for("the first start's outlook", |l| {
        l.contains("never run: the slot of") && l.contains("is passed over")
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(!log.contains("planned a run"), "{log}");
    assert!(smtp.received().is_empty());
    let runs = ws.run(&["status"]);
    let runs = stdout(&runs);
    assert_eq!(runs.lines().count(), 2, "{runs}");
    assert!(runs.lines().nth(1).unwrap().contains("missed"), "{runs}");
}

/// The JSON objects of an NDJSON output.
fn ndjson(out: &std::process::Output) -> Vec<serde_json::Value> {
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn status_retry_and_lists_say_what_happened_in_text_and_json() {
    let smtp = crate::helpers::SmtpServer::start_rejecting(&["reader1@example.org"]);
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    let ws = Workspace::new(&db, Some(smtp.port), &digest_section("daily", ""));
    ws.import_readers(3);
    ws.add_article("Listed news");
    let sent = ws.run(&["send", "daily"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(
        stdout(&sent).contains("2 sent, 1 failed, 0 skipped"),
        "{}",
        stdout(&sent)
    );
    // The failure's log line names the digest, the run and the reader.
    let err = stderr(&sent);
    let failed = err.lines().find(|l| l.contains("delivery failed"));
    let failed = failed.unwrap_or_else(|| panic!("no failure logged: {err}"));
    for part in ["digest=daily", "run_id=1", "reader1@example.org", "550"] {
        assert!(failed.contains(part), "{part} missing: {failed}");
    }

    let runs = ws.run(&["status", "--json"]);
    assert!(runs.status.success(), "{}", stderr(&runs));
    let runs = ndjson(&runs);
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert_eq!(run["digest"], "daily");
    assert_eq!(run["status"], "finished");
    assert_eq!(
        (run["sent"].as_i64(), run["failed"].as_i64()),
        (Some(2), Some(1))
    );
    assert!(run["finished"].is_string(), "{run}");
    let id = run["run"].as_i64().unwrap().to_string();

    let text = stdout(&ws.run(&["status", &id]));
    assert!(text.contains("1 article published after"), "{text}");
    assert!(
        text.contains("reader1@example.org\t1 attempt\t") && text.contains("550"),
        "{text}"
    );
    let one = ndjson(&ws.run(&["status", &id, "--json"]));
    assert_eq!(
        one[0]["failed_deliveries"][0]["email"],
        "reader1@example.org"
    );

    // The relay still refuses that reader: the retry says what it did.
    let retried = ws.run(&["retry", &id]);
    assert!(retried.status.success(), "{}", stderr(&retried));
    let text = stdout(&retried);
    assert!(text.contains("1 failed delivery re-queued"), "{text}");
    assert!(
        text.contains("of the 1 retried, 0 sent, 1 failed again, 0 skipped"),
        "{text}"
    );

    let listed = ws.run(&["subscribers", "list", "--json"]);
    assert!(
        stderr(&listed).contains("3 subscribers"),
        "{}",
        stderr(&listed)
    );
    let listed = ndjson(&listed);
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["email"], "reader0@example.org");
    assert_eq!(listed[0]["name"], "Reader 0");
    assert_eq!(listed[0]["status"], "confirmed");
    assert_eq!(listed[0]["digests"], serde_json::json!(["daily"]));

    // What `export` writes, `import` reads back into another store.
    let exported = ws.run(&["subscribers", "export", "-"]);
    assert!(exported.status.success(), "{}", stderr(&exported));
    let csv = stdout(&exported);
    assert_eq!(
        csv,
        "email,name,digests\nreader0@example.org,Reader 0,daily\n\
         reader1@example.org,Reader 1,daily\nreader2@example.org,Reader 2,daily\n"
    );
    let (_other_dir, other) = workspace();
    let file = other.dir.path().join("exported.csv");
    std::fs::write(&file, &csv).unwrap();
    let imported = other.run(&["subscribers", "import", file.to_str().unwrap()]);
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert_eq!(
        ndjson(&other.run(&["subscribers", "list", "--json"])),
        listed
    );
}

#[test]
fn logs_can_be_json_for_a_log_collector() {
    let (_dir, ws) = workspace();
    let mut config = std::fs::read_to_string(&ws.config).unwrap();
    config.push_str("\n[log]\nformat = \"json\"\n");
    std::fs::write(&ws.config, &config).unwrap();
    ws.import_readers(2);
    ws.add_article("Logged news");

    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let events: Vec<serde_json::Value> = stderr(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let planned = events
        .iter()
        .find(|e| e["fields"]["message"] == "planned a run")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(planned["level"], "INFO");
    assert_eq!(planned["fields"]["deliveries"], 2);
    let finished = events
        .iter()
        .find(|e| e["fields"]["message"] == "run finished")
        .unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!(finished["fields"]["sent"], 2);

    // At `level = "warn"`, the same kind of run logs nothing.
    std::fs::write(&ws.config, config + "level = \"warn\"\n").unwrap();
    let now = chrono::Utc::now();
    let added = ws.run(&[
        "articles",
        "add",
        "--url",
        "https://example.org/quiet",
        "--title",
        "Quiet news",
        "--published-at",
        &now.to_rfc3339(),
    ]);
    assert!(added.status.success(), "{}", stderr(&added));
    let slot = (now + chrono::Duration::seconds(1)).to_rfc3339();
    let out = ws.run(&["send", "daily", "--slot", &slot]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("2 sent"), "{}", stdout(&out));
    assert_eq!(stderr(&out), "");
}

/// A raw HTTP/1.1 GET of `path`: the answer's status line.
fn http_get(addr: &str, path: &str) -> String {
    http_get_all(addr, path)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn every_web_request_is_logged_with_its_route_never_its_token() {
    let (_dir, ws) = workspace();
    let mut daemon = Daemon::start(&ws);
    let addr = listening(
        &daemon
            .log()
            .wait_for("the web server", |l| l.contains("web server listening")),
    );
    let token = "7.0123456789abcdef0123456789abcdef";
    assert_eq!(
        http_get(&addr, &format!("/unsubscribe/{token}")),
        "HTTP/1.1 404 Not Found"
    );
    assert_eq!(http_get(&addr, "/healthz"), "HTTP/1.1 200 OK");
    assert_eq!(http_get(&addr, "/no/such/page"), "HTTP/1.1 404 Not Found");
    daemon.log().wait_for("the third request", |l| {
        l.contains("request") && l.contains("(no route)")
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    let requests: Vec<&str> = log.lines().filter(|l| l.contains(" request ")).collect();
    assert_eq!(requests.len(), 3, "{log}");
    assert!(
        requests[0].contains("method=GET route=\"/unsubscribe/{token}\" status=404"),
        "{}",
        requests[0]
    );
    assert!(
        requests[1].contains("route=\"/healthz\" status=200"),
        "{}",
        requests[1]
    );
    assert!(
        requests[2].contains("route=\"(no route)\" status=404"),
        "{}",
        requests[2]
    );
    assert!(
        !log.contains("0123456789abcdef"),
        "a token was logged: {log}"
    );
}

#[test]
fn an_operator_changes_one_subscriber_and_is_told_what_changed() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    let digests = format!(
        "{}{}",
        digest_section("daily", ""),
        digest_section("weekly", "")
    );
    let ws = Workspace::new(&db, None, &digests);
    let run = |args: &[&str]| {
        let out = ws.run(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(
        run(&["subscribers", "add", "ada@example.org", "--digest", "daily"]),
        "added ada@example.org (confirmed) to daily\n"
    );
    // Adding again keeps her digests, and says nothing changed.
    assert_eq!(
        run(&["subscribers", "add", "ada@example.org"]),
        "ada@example.org: nothing changed (confirmed, daily)\n"
    );
    // A name and a digest are added to what she had.
    assert_eq!(
        run(&[
            "subscribers",
            "add",
            "ada@example.org",
            "--name",
            "Ada",
            "--digest",
            "weekly"
        ]),
        "updated ada@example.org: name no name → \"Ada\"; digests daily → daily, weekly\n"
    );
    // `set` replaces the digests and sets the status.
    assert_eq!(
        run(&[
            "subscribers",
            "set",
            "ada@example.org",
            "--digest",
            "weekly",
            "--status",
            "unsubscribed"
        ]),
        "updated ada@example.org: status confirmed → unsubscribed; digests daily, weekly → weekly\n\
         ada@example.org is unsubscribed: not mailed until it is set to confirmed\n"
    );
    assert_eq!(
        run(&[
            "subscribers",
            "set",
            "ada@example.org",
            "--name",
            "",
            "--status",
            "confirmed"
        ]),
        "updated ada@example.org: name \"Ada\" → no name; status unsubscribed → confirmed\n"
    );
    let listed = run(&["subscribers", "list"]);
    assert_eq!(listed, "ada@example.org\t\tconfirmed\tweekly\n");

    for (args, error) in [
        (
            vec![
                "subscribers",
                "set",
                "bob@example.org",
                "--status",
                "bounced",
            ],
            "no subscriber bob@example.org",
        ),
        (
            vec![
                "subscribers",
                "set",
                "ada@example.org",
                "--status",
                "pending",
            ],
            "cannot be set back to pending",
        ),
        (
            vec![
                "subscribers",
                "set",
                "ada@example.org",
                "--digest",
                "monthly",
            ],
            "unknown digest `monthly`",
        ),
        (
            vec!["articles", "remove", "https://example.org/none"],
            "no article at https://example.org/none",
        ),
    ] {
        let out = ws.run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(error), "{args:?}: {}", stderr(&out));
    }

    ws.add_article("Kept news");
    ws.add_article("Removed news");
    assert_eq!(
        run(&["articles", "remove", "https://example.org/Removed-news"]),
        "removed https://example.org/Removed-news\n"
    );
    let articles: Vec<serde_json::Value> = run(&["articles", "list", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(articles.len(), 1);
    assert_eq!(articles[0]["url"], "https://example.org/Kept-news");
    assert_eq!(articles[0]["title"], "Kept news");
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    // The unit as shipped, with the binary just built in place of
    // /usr/local/bin/gazette (verify checks that it exists).
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/gazette.service"),
    )
    .unwrap();
    let exec = "ExecStart=/usr/local/bin/gazette run";
    assert!(unit.contains(exec));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gazette.service");
    std::fs::write(
        &path,
        unit.replace(
            exec,
            &format!("ExecStart={} run", env!("CARGO_BIN_EXE_gazette")),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package) is needed to check the unit");
    assert!(out.status.success(), "{}", stderr(&out));
    // It warns on standard error about settings it does not understand.
    assert_eq!(stderr(&out), "", "{}", stdout(&out));
}

#[test]
fn a_paused_digest_is_refused_by_send_and_said_so_by_check() {
    let (_dir, ws) = workspace();
    ws.import_readers(1);
    ws.add_article("Paused news");
    let paused = ws.run(&["pause", "daily"]);
    assert!(paused.status.success(), "{}", stderr(&paused));
    assert!(stdout(&paused).starts_with("paused daily: its slots are recorded as missed"));
    assert_eq!(
        stdout(&ws.run(&["pause", "daily"])),
        "daily was paused already\n"
    );

    let sent = ws.run(&["send", "daily"]);
    assert_eq!(sent.status.code(), Some(1));
    assert!(
        stderr(&sent).contains("daily is paused: `gazette resume daily` first"),
        "{}",
        stderr(&sent)
    );
    assert!(!ws.outbox().exists(), "nothing was written to the outbox");
    let check = stdout(&ws.run(&["check"]));
    assert!(
        check.contains("paused (`gazette pause`): nothing is sent until `gazette resume`"),
        "{check}"
    );
    // A dry run still renders everything.
    let dry = ws.run(&["send", "daily", "--dry-run"]);
    assert!(
        stdout(&dry).contains("1 email rendered"),
        "{}",
        stdout(&dry)
    );

    let resumed = ws.run(&["resume", "daily"]);
    assert!(stdout(&resumed).starts_with("resumed daily: it sends again from its next slot"));
    let sent = ws.run(&["send", "daily"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(stdout(&sent).contains("1 sent"), "{}", stdout(&sent));
}

#[test]
fn imports_report_every_bad_record_at_once_and_warn_of_an_address_listed_twice() {
    let (_dir, ws) = workspace();
    let articles = ws.dir.path().join("articles.ndjson");
    std::fs::write(
        &articles,
        "{\"url\": \"https://example.org/a\", \"title\": \"Good\"}\n\
         {\"url\": \"ftp://example.org/b\", \"title\": \"Bad url\"}\n\
         \n\
         {\"url\": \"https://example.org/c\", \"title\": \"\"}\n\
         {\"url\": \"https://example.org/d\", \"title\": \"Bad time\", \"published_at\": \"yesterday\"}\n",
    )
    .unwrap();
    let out = ws.run(&["articles", "import", articles.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("nothing was imported"), "{err}");
    assert!(
        err.contains("line 2: `url`: `ftp://example.org/b`"),
        "{err}"
    );
    assert!(err.contains("line 4: `title` must not be empty"), "{err}");
    assert!(err.contains("line 5: `published_at`: `yesterday`"), "{err}");
    assert!(stdout(&ws.run(&["articles", "list"])).starts_with("no articles yet"));

    let csv = ws.dir.path().join("readers.csv");
    std::fs::write(
        &csv,
        "email,name,digests\nada@example.org,Ada,\nada@example.org,Ada,extra\n",
    )
    .unwrap();
    let out = ws.run(&["subscribers", "import", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("line 3: unknown digest `extra`"),
        "{}",
        stderr(&out)
    );

    std::fs::write(
        &csv,
        "email,name,digests\nada@example.org,Ada,\ngrace@example.org\nADA@example.org,Ada L.,\n",
    )
    .unwrap();
    let out = ws.run(&["subscribers", "import", csv.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("line 3: 1 field, where the header has 3"),
        "{}",
        stderr(&out)
    );

    std::fs::write(
        &csv,
        "email,name,digests\nada@example.org,Ada,\ngrace@example.org,Grace,\nADA@example.org,Ada L.,\n",
    )
    .unwrap();
    let out = ws.run(&["subscribers", "import", csv.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "line 4: ADA@example.org is also on line 2: both lines are applied, in order"
        ),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("imported 3 subscribers"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        stdout(&ws.run(&["subscribers", "list"])),
        "ada@example.org\tAda L.\tconfirmed\tdaily\ngrace@example.org\tGrace\tconfirmed\tdaily\n"
    );
}

#[test]
fn a_schedule_with_seconds_fires_on_its_second_not_at_the_next_minute() {
    let (_dir, ws) = workspace();
    // Every three seconds: between two of the daemon's minute ticks.
    let config = std::fs::read_to_string(&ws.config)
        .unwrap()
        .replace("0 7 * * *", "*/3 * * * * *");
    std::fs::write(&ws.config, config).unwrap();
    ws.import_readers(1);
    ws.add_article("Seconds news");
    let started = chrono::Utc::now();
    let mut daemon = Daemon::start(&ws);
    let planned = daemon.log().wait_for("a run between minute ticks", |l| {
        l.contains("planned a run")
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    // The slot is on a multiple of three seconds, within seconds of the
    // start, whatever the minute.
    let slot = planned
        .split("slot=")
        .nth(1)
        .and_then(|s| s.split(" UTC").next())
        .unwrap_or_else(|| panic!("{planned}"));
    let slot = chrono::NaiveDateTime::parse_from_str(slot, "%Y-%m-%d %H:%M:%S")
        .unwrap_or_else(|e| panic!("{e}: {planned}"))
        .and_utc();
    assert_eq!(slot.second() % 3, 0, "{planned}");
    assert!(slot > started, "{planned}");
    assert!(slot - started <= chrono::Duration::seconds(7), "{planned}");
}

#[test]
fn send_says_what_it_waits_for() {
    // The relay answers 451 to the first transaction: that delivery waits
    // for its retry (retry_base_ms = 50 in the tests).
    let smtp = crate::helpers::SmtpServer::start_with(crate::smtp::Behaviour {
        policy: std::sync::Arc::new(|n| {
            if n == 1 {
                crate::smtp::Fault::TempFail
            } else {
                crate::smtp::Fault::Accept
            }
        }),
        ..crate::smtp::Behaviour::default()
    });
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    let ws = Workspace::new(&db, Some(smtp.port), &digest_section("daily", ""));
    ws.import_readers(2);
    ws.add_article("Patient news");
    let out = ws.run(&["send", "daily"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("2 sent, 0 failed"),
        "{}",
        stdout(&out)
    );
    let log = stderr(&out);
    let waiting: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("waiting for deliveries to be retried"))
        .collect();
    assert_eq!(waiting.len(), 1, "{log}");
    assert!(
        waiting[0].contains("pending=1") && waiting[0].contains("next_retry=20"),
        "{}",
        waiting[0]
    );
}

/// A raw HTTP/1.1 GET of `path`: the whole answer.
fn http_get_all(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

/// The address a daemon's log line says it listens on.
fn listening(line: &str) -> String {
    line.split("addr=")
        .nth(1)
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("{line}"))
        .to_string()
}

#[test]
fn the_admin_port_serves_metrics_that_match_what_the_relay_received() {
    let smtp = crate::helpers::SmtpServer::start_rejecting(&["reader2@example.org"]);
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    let section = digest_section("daily", "").replace("0 7 * * *", "*/3 * * * * *");
    // Two emails a second: the send lasts long enough to be watched.
    let ws = Workspace::with_delivery(
        &db,
        Some(smtp.port),
        "rate_per_second = 2",
        &format!("{section}\n[admin]\nbind = \"127.0.0.1:0\"\n"),
    );
    ws.import_readers(6);
    ws.add_article("Measured news");
    let mut daemon = Daemon::start(&ws);
    let admin = listening(
        &daemon
            .log()
            .wait_for("the admin server", |l| l.contains("admin server listening")),
    );
    let web = listening(
        &daemon
            .log()
            .wait_for("the web server", |l| l.contains("web server listening")),
    );
    let value_in = |answer: &str, series: &str| -> Option<f64> {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    let sent_series = "gazette_messages_total{digest=\"daily\",outcome=\"sent\"}";
    let pending_series = "gazette_open_deliveries{status=\"pending\"}";

    // During the send: some sent, never more than the relay has, and the
    // rest still open.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let during = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no scrape during the send"
        );
        let answer = http_get_all(&admin, "/metrics");
        let received = smtp.received().len() as f64;
        let sent = value_in(&answer, sent_series).unwrap_or(0.0);
        assert!(sent <= received, "{sent} sent > {received} received");
        let open = value_in(&answer, pending_series).unwrap_or(0.0)
            + value_in(&answer, "gazette_open_deliveries{status=\"sending\"}").unwrap_or(0.0);
        if sent >= 1.0 && open >= 1.0 {
            break (sent, open);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(during.0 + during.1 <= 6.0, "{during:?}");

    daemon
        .log()
        .wait_for("the run to finish", |l| l.contains("run finished"));
    assert_eq!(http_get(&web, "/healthz"), "HTTP/1.1 200 OK");

    let answer = http_get_all(&admin, "/metrics");
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let value = |series: &str| -> f64 {
        value_in(&answer, series).unwrap_or_else(|| panic!("no {series} in {answer}"))
    };
    let received = smtp.received().len() as f64;
    assert_eq!(received, 5.0);
    assert_eq!(
        value("gazette_messages_total{digest=\"daily\",outcome=\"sent\"}"),
        received
    );
    assert_eq!(
        value("gazette_messages_total{digest=\"daily\",outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(value("gazette_subscribers{status=\"confirmed\"}"), 6.0);
    assert_eq!(value(pending_series), 0.0);
    assert_eq!(value("gazette_run_duration_seconds_count"), 1.0);
    assert_eq!(value("gazette_send_duration_seconds_count"), 6.0);
    assert_eq!(value("gazette_relay_breaker_open"), 0.0);
    assert_eq!(
        value("gazette_web_requests_total{route=\"/healthz\",status=\"200\"}"),
        1.0
    );
    // The readers' port has no metrics.
    assert_eq!(http_get(&web, "/metrics"), "HTTP/1.1 404 Not Found");
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
}

#[test]
fn a_long_send_logs_its_progress_when_standard_error_is_not_a_terminal() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    // 4 emails a second for 24 readers: about 6 s, past the first progress
    // line at 5 s.
    let ws = Workspace::with_delivery(
        &db,
        None,
        "rate_per_second = 4",
        &digest_section("daily", ""),
    );
    ws.import_readers(24);
    ws.add_article("Slow news");
    let out = ws.run(&["send", "daily"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("daily: sending: "))
        .unwrap_or_else(|| panic!("no progress line: {err}"));
    let counts = line.split("daily: sending: ").nth(1).unwrap();
    let (done, rest) = counts.split_once(" of ").unwrap();
    let done: u64 = done.parse().unwrap();
    assert!((1..24).contains(&done), "{line}");
    assert!(rest.starts_with("24 emails, "), "{line}");
    assert!(
        rest.contains("/s, about ") && rest.ends_with(" left"),
        "{line}"
    );
    assert_eq!(std::fs::read_dir(ws.outbox()).unwrap().count(), 24);
}

#[test]
fn an_import_on_a_terminal_shows_a_progress_bar() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    let ws = Workspace::new(&db, None, &digest_section("daily", ""));
    let mut csv = String::from("email,name,digests\n");
    for i in 0..2000 {
        csv.push_str(&format!("reader{i}@example.org,Reader {i},daily\n"));
    }
    std::fs::write(ws.dir.path().join("readers.csv"), csv).unwrap();
    // `script` runs the command on a pseudo-terminal and copies what it
    // writes.
    let command = format!(
        "{} subscribers import readers.csv",
        env!("CARGO_BIN_EXE_gazette")
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .output()
        .expect("cannot run script (bsdutils)");
    let screen = stdout(&out);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("readers.csv: importing ["), "{screen}");
    assert!(screen.contains("/2,000 subscribers, "), "{screen}");
    assert!(
        screen.contains("imported 2000 subscribers from readers.csv (2000 new"),
        "{screen}"
    );
}

#[test]
fn an_article_image_is_imported_added_and_listed_and_a_bad_one_is_named() {
    let (_dir, ws) = workspace();
    let articles = ws.dir.path().join("articles.json");
    std::fs::write(
        &articles,
        r#"[{"url": "https://example.org/a", "title": "A", "image_url": "https://example.org/a.png"},
            {"url": "https://example.org/b", "title": "B", "image_url": "data:image/png;base64,AAAA"}]"#,
    )
    .unwrap();
    let out = ws.run(&["articles", "import", articles.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("record 2 of the array: `image_url`: `data:image/png;base64,AAAA` is not an http:// or https:// address"),
        "{err}"
    );
    assert!(stdout(&ws.run(&["articles", "list"])).starts_with("no articles yet"));

    std::fs::write(
        &articles,
        r#"[{"url": "https://example.org/a", "title": "A", "image_url": "https://example.org/a.png"}]"#,
    )
    .unwrap();
    let out = ws.run(&["articles", "import", articles.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ws.run(&[
        "articles",
        "add",
        "--url",
        "https://example.org/b",
        "--title",
        "B",
        "--image-url",
        "https://example.org/b.jpg",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed: Vec<serde_json::Value> = stdout(&ws.run(&["articles", "list", "--json"]))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let image = |url: &str| {
        listed.iter().find(|a| a["url"] == url).unwrap()["image_url"]
            .as_str()
            .map(str::to_string)
    };
    assert_eq!(
        image("https://example.org/a").as_deref(),
        Some("https://example.org/a.png")
    );
    assert_eq!(
        image("https://example.org/b").as_deref(),
        Some("https://example.org/b.jpg")
    );
}

#[test]
fn the_api_token_appears_in_no_log_line_even_at_debug() {
    let (_dir, ws) = workspace();
    let token = "api-token-never-logged-0123456789";
    let config = std::fs::read_to_string(&ws.config).unwrap();
    std::fs::write(
        &ws.config,
        format!("{config}\n[api]\ntoken = \"{token}\"\n[log]\nlevel = \"debug\"\n"),
    )
    .unwrap();
    let mut daemon = Daemon::start(&ws);
    let addr = listening(
        &daemon
            .log()
            .wait_for("the web server", |l| l.contains("web server listening")),
    );
    let post = |bearer: &str| {
        use std::io::{Read, Write};
        let body = r#"{"url": "https://example.org/pushed", "title": "Pushed"}"#;
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            stream,
            "POST /api/articles HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {bearer}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(post(token), "HTTP/1.1 200 OK");
    assert_eq!(post(&token[1..]), "HTTP/1.1 401 Unauthorized");
    daemon.log().wait_for("the second request", |l| {
        l.contains("request") && l.contains("status=401")
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert!(log.contains("route=\"/api/articles\" status=200"), "{log}");
    assert!(!log.contains(&token[1..]), "{log}");
    let listed = stdout(&ws.run(&["articles", "list"]));
    assert!(
        listed.contains("Pushed  https://example.org/pushed"),
        "{listed}"
    );
}

#[test]
fn a_test_send_mails_what_preview_shows_and_records_nothing() {
    let smtp = crate::helpers::SmtpServer::start();
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    let ws = Workspace::new(&db, Some(smtp.port), &digest_section("daily", ""));
    ws.import_readers(2);
    ws.add_article("Tested news");

    let out = ws.run(&[
        "send",
        "daily",
        "--test",
        "editor@example.org",
        "reader1@example.org",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("daily: test sent to editor@example.org"),
        "{}",
        stdout(&out)
    );
    let received = smtp.received();
    assert_eq!(received.len(), 2);
    for (mail, to, greeting) in [
        (&received[0], "editor@example.org", None),
        (&received[1], "reader1@example.org", Some("Reader 1")),
    ] {
        assert_eq!(mail.to, [to]);
        let parsed = mail.parsed();
        let subject = parsed.subject().unwrap_or_default();
        assert!(
            subject.starts_with("[TEST] The daily Digest — "),
            "{subject}"
        );
        let text = parsed.body_text(0).unwrap();
        assert!(text.contains("Tested news"), "{text}");
        if let Some(name) = greeting {
            assert!(text.contains(name), "{text}");
        }
    }

    // Nothing recorded: no run, and the real send still mails everyone.
    let runs = ws.run(&["status", "--json"]);
    assert!(stdout(&runs).is_empty(), "{}", stdout(&runs));
    let sent = ws.run(&["send", "daily"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(
        stdout(&sent).contains("2 sent, 0 failed"),
        "{}",
        stdout(&sent)
    );
    // The test carried the subject the readers get, marked.
    let real = smtp.received_by("reader1@example.org");
    assert_eq!(real.len(), 2);
    assert_eq!(
        real[0].parsed().subject().map(|s| s.to_string()),
        real[1].parsed().subject().map(|s| format!("[TEST] {s}"))
    );

    // A bad address is named, and nothing is sent.
    let bad = ws.run(&["send", "daily", "--test", "not-an-address"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).contains("--test not-an-address"),
        "{}",
        stderr(&bad)
    );
    assert_eq!(smtp.received().len(), 4);
}
