//! The `gazette` binary as an operator uses it.

use crate::helpers::{Workspace, digest_section, stderr, stdout, wait_for};

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
        stdout(&out).contains("dry run: 1 emails rendered (1 articles), none sent"),
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

/// A `gazette run` child process, stopped with SIGTERM when dropped.
struct Daemon(std::process::Child);

impl Daemon {
    fn start(ws: &Workspace) -> Self {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
            .arg("run")
            .current_dir(ws.dir.path())
            .env("GAZETTE_CONFIG", &ws.config)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Self(child)
    }

    fn terminate(mut self) -> std::process::Output {
        let pid = self.0.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        let child = std::mem::replace(
            &mut self.0,
            std::process::Command::new("true").spawn().unwrap(),
        );
        child.wait_with_output().unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemon_sends_the_due_slot_once_and_stops_cleanly_on_sigterm() {
    let smtp = crate::helpers::SmtpServer::start();
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    // Every minute, in a zone with an odd offset: the current minute is due.
    let section = digest_section("daily", "")
        .replace("0 7 * * *", "* * * * *")
        .replace("Europe/Berlin", "Asia/Kathmandu");
    let ws = Workspace::new(&db, Some(smtp.port), &section);
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
        &(chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let daemon = Daemon::start(&ws);
    wait_for("two messages", || smtp.received().len() >= 2);

    // A second process on the same SQLite store is refused.
    let second = ws.run(&["run"]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("another gazette process is delivering"),
        "{}",
        stderr(&second)
    );

    let out = daemon.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("stopped"), "{}", stderr(&out));

    // Restarted, it finds the slot planned (or nothing new in the next one).
    let daemon = Daemon::start(&ws);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = daemon.terminate();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(smtp.received_by("ada@example.org").len(), 1);
    assert_eq!(smtp.received_by("grace@example.org").len(), 1);
    let m = smtp.received_by("ada@example.org")[0]
        .parsed()
        .body_text(0)
        .unwrap()
        .into_owned();
    assert!(m.contains("Daemon news"), "{m}");
}
