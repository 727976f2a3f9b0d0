//! The `gazette` binary as an operator uses it.

use crate::helpers::{Workspace, digest_section, stderr, stdout};

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
