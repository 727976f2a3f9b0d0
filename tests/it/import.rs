//! `subscribers import`, streamed in batches into one transaction, on both
//! stores: what a large file leaves, and what a bad row deep in it leaves.

use gazette::domain::{DigestName, EmailAddress, SubscriberStatus};
use gazette::store::{NewSubscriber, Store, Timestamp};

use crate::helpers::{Backend, TestDb, Workspace, digest_section, stderr, stdout};
use crate::on_both_backends;

on_both_backends!(
    an_import_larger_than_a_batch_applies_every_row_in_order,
    a_bad_row_deep_in_a_large_file_is_named_and_nothing_is_imported,
    a_name_with_a_control_character_is_named_and_nothing_is_imported,
);

fn digest(name: &str) -> DigestName {
    DigestName::parse(name).unwrap()
}

fn row(email: &str, name: Option<&str>, digests: &[&str]) -> NewSubscriber {
    NewSubscriber {
        email: EmailAddress::parse(email).unwrap(),
        name: name.map(str::to_string),
        digests: digests.iter().map(|d| digest(d)).collect(),
    }
}

async fn an_import_larger_than_a_batch_applies_every_row_in_order(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    let known = [digest("daily"), digest("weekly")];
    // Already there: one who left, one who never confirmed.
    store
        .upsert_subscribers(
            &[
                row("left@example.org", Some("Left"), &["daily"]),
                row("pending@example.org", Some("Pending"), &["daily"]),
            ],
            Timestamp::now(),
        )
        .await
        .unwrap();
    store
        .set_subscriber_status(
            &EmailAddress::parse("left@example.org").unwrap(),
            SubscriberStatus::Unsubscribed,
            Timestamp::now(),
        )
        .await
        .unwrap();
    store
        .set_subscriber_status(
            &EmailAddress::parse("pending@example.org").unwrap(),
            SubscriberStatus::Pending,
            Timestamp::now(),
        )
        .await
        .unwrap();

    let mut rows = vec![
        row("Ada@Example.org", Some("Ada"), &["daily"]),
        row("left@example.org", None, &["weekly"]),
    ];
    for i in 0..12_000 {
        let digests: &[&str] = if i % 10 == 0 {
            &["daily", "weekly"]
        } else {
            &["daily"]
        };
        rows.push(row(&format!("reader{i}@example.org"), None, digests));
    }
    // The same addresses again, batches later.
    rows.push(row("ADA@example.org", None, &["weekly"]));
    rows.push(row("pending@example.org", Some("Now confirmed"), &[]));
    rows.push(row("ada@example.org", Some("Ada L."), &["daily"]));
    let mut import = store.begin_subscriber_import(&known).await.unwrap();
    for (i, s) in rows.iter().enumerate() {
        // Line 1 is the header.
        import.push(i as u64 + 2, s).await.unwrap();
    }
    let mut warnings = Vec::new();
    let counts = import
        .finish(Timestamp::now(), &mut |w| warnings.push(w))
        .await
        .unwrap();
    assert_eq!(
        warnings,
        [
            "line 12004: ADA@example.org is also on line 2: both lines are applied, in order",
            "line 12006: ada@example.org is also on line 2: both lines are applied, in order",
        ]
    );
    // New: Ada and the 12,000 readers; kept inactive: the row of the one
    // who left; updated: the rest.
    assert_eq!(
        (counts.added, counts.updated, counts.kept_inactive),
        (12_001, 3, 1)
    );

    let ada = store
        .find_subscriber(&EmailAddress::parse("ada@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ada.email, "Ada@Example.org", "the first line's spelling");
    assert_eq!(ada.name.as_deref(), Some("Ada L."), "the last name given");
    assert_eq!(ada.status, SubscriberStatus::Confirmed);
    assert_eq!(
        store.subscriber_digests(ada.id).await.unwrap(),
        ["daily", "weekly"]
    );
    let left = store
        .find_subscriber(&EmailAddress::parse("left@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(left.status, SubscriberStatus::Unsubscribed);
    assert_eq!(left.name.as_deref(), Some("Left"));
    let pending = store
        .find_subscriber(&EmailAddress::parse("pending@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pending.status, SubscriberStatus::Confirmed);
    assert_eq!(pending.name.as_deref(), Some("Now confirmed"));

    // Everyone has the digests of all their rows, added to those they had.
    let digests_of = async |email: &str| {
        let email = EmailAddress::parse(email).unwrap();
        let id = store.find_subscriber(&email).await.unwrap().unwrap().id;
        store.subscriber_digests(id).await.unwrap()
    };
    assert_eq!(digests_of("left@example.org").await, ["daily", "weekly"]);
    assert_eq!(digests_of("pending@example.org").await, ["daily"]);
    assert_eq!(digests_of("reader0@example.org").await, ["daily", "weekly"]);
    assert_eq!(digests_of("reader1@example.org").await, ["daily"]);
    assert_eq!(
        digests_of("reader11990@example.org").await,
        ["daily", "weekly"]
    );
    assert_eq!(digests_of("reader11999@example.org").await, ["daily"]);

    // The new subscribers' ids follow the file.
    use futures_util::TryStreamExt;
    let listed: Vec<String> = store
        .stream_subscribers(None)
        .map_ok(|(s, _)| s.email)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(listed.len(), 12_003);
    assert_eq!(
        listed[..5],
        [
            "left@example.org",
            "pending@example.org",
            "Ada@Example.org",
            "reader0@example.org",
            "reader1@example.org"
        ]
    );
    assert_eq!(listed[12_002], "reader11999@example.org");
}

async fn a_name_with_a_control_character_is_named_and_nothing_is_imported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ws = Workspace::new(&db.url, None, &digest_section("daily", ""));
    // A NUL, which Postgres cannot store in text, after a batch of good
    // rows; and a line break inside a quoted name.
    let mut csv = String::from("email,name,digests\n");
    for i in 0..6_000 {
        csv.push_str(&format!("reader{i}@example.org,Reader {i},daily\n"));
    }
    csv.push_str("eve@example.org,Eve\0,daily\n");
    csv.push_str("mallory@example.org,\"Mallory\nBcc: x@example.org\",daily\n");
    let err = refused_import(&ws, &csv);
    assert!(
        err.contains("line 6002: the name contains a control character ('\\0')"),
        "{err}"
    );
    assert!(
        err.contains("line 6003: the name contains a control character ('\\n')"),
        "{err}"
    );
}

/// Imports `csv` from a file, which must fail with nothing imported: what
/// gazette said.
fn refused_import(ws: &Workspace, csv: &str) -> String {
    let path = ws.dir.path().join("readers.csv");
    std::fs::write(&path, csv).unwrap();
    let out = ws.run(&["subscribers", "import", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("readers.csv: nothing was imported"), "{err}");
    assert_eq!(stdout(&ws.run(&["subscribers", "list"])), "");
    err
}

async fn a_bad_row_deep_in_a_large_file_is_named_and_nothing_is_imported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ws = Workspace::new(
        &db.url,
        None,
        &(digest_section("daily", "") + &digest_section("weekly", "")),
    );
    let mut csv = String::from("email,name,digests\n");
    for i in 0..12_000 {
        // Line 11,001 is the 11,000th row.
        if i == 10_999 {
            csv.push_str("not-an-address,Bad,daily\n");
        } else {
            csv.push_str(&format!(
                "reader{i}@example.org,\"Reader, {i}\",daily;weekly\n"
            ));
        }
    }
    let err = refused_import(&ws, &csv);
    assert!(err.contains("line 11001: "), "{err}");
    assert!(err.contains("not-an-address"), "{err}");

    // The same file without its bad row, from standard input.
    let good = csv.replace("not-an-address,Bad,daily\n", "");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gazette"))
        .args(["subscribers", "import", "-"])
        .current_dir(ws.dir.path())
        .env("GAZETTE_CONFIG", &ws.config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(good.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "imported 11999 subscribers from standard input (11999 new, 0 updated, 0 left unsubscribed)\n"
    );
    let listed = stdout(&ws.run(&["subscribers", "list"]));
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 11_999);
    assert_eq!(
        lines[0],
        "reader0@example.org\tReader, 0\tconfirmed\tdaily;weekly"
    );
    assert_eq!(
        lines[11_998],
        "reader11999@example.org\tReader, 11999\tconfirmed\tdaily;weekly"
    );
}
