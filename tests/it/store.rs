//! The store's behaviour, the same on SQLite and Postgres.

use chrono::{Duration, Utc};
use gazette::domain::{DigestName, EmailAddress, ReaderTokens, SubscriberStatus};
use gazette::import;
use gazette::store::{Claimed, NewSubscriber, PlanOutcome, RunPlan, Store, Timestamp};

use crate::helpers::{Backend, TestDb};
use crate::on_both_backends;

on_both_backends!(
    importing_articles_upserts_by_url_and_replaces_tags,
    a_bad_article_record_names_its_line_and_nothing_is_imported,
    subscribers_are_unique_whatever_the_case_of_their_address,
    a_subscriber_csv_with_a_bad_row_names_the_line_and_imports_nothing,
    importing_never_resubscribes_someone_who_left,
    article_selection_takes_the_window_tags_and_limit_newest_first,
    claims_take_due_rows_in_order_and_rows_whose_lease_expired,
    a_removed_subscriber_leaves_the_ledger_and_is_never_claimed_as_a_reader,
    signed_links_and_the_hashed_tokens_of_old_emails_find_their_reader,
    a_process_with_another_link_key_is_refused,
);

pub(crate) async fn store(db: &TestDb) -> Store {
    Store::connect(&db.url)
        .await
        .expect("cannot open the store")
}

async fn importing_articles_upserts_by_url_and_replaces_tags(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let now = Utc::now();
    let first = r#"[
        {"url": "https://example.org/a", "title": "First", "tags": ["rust", "db"], "published_at": "2026-11-28T10:00:00Z"},
        {"url": "https://example.org/b", "title": "Second", "summary": "S"}
    ]"#;
    let articles = import::parse_articles(first, now).unwrap();
    assert_eq!(
        store
            .upsert_articles(&articles, Timestamp::now())
            .await
            .unwrap(),
        (2, 0)
    );

    let again = "{\"url\": \"https://example.org/a\", \"title\": \"First, edited\", \"tags\": [\"email\"]}\n\n";
    let articles = import::parse_articles(again, now).unwrap();
    assert_eq!(
        store
            .upsert_articles(&articles, Timestamp::now())
            .await
            .unwrap(),
        (0, 1)
    );

    let listed = store.list_articles(10).await.unwrap();
    assert_eq!(listed.len(), 2);
    let a = listed
        .iter()
        .find(|a| a.url == "https://example.org/a")
        .unwrap();
    assert_eq!(a.title, "First, edited");
    assert_eq!(
        store.article_tags(a.id).await.unwrap(),
        vec!["email".to_string()]
    );
}

async fn a_bad_article_record_names_its_line_and_nothing_is_imported(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let ndjson = concat!(
        "{\"url\": \"https://example.org/1\", \"title\": \"One\"}\n",
        "{\"url\": \"https://example.org/2\", \"title\": \"Two\"}\n",
        "{\"url\": \"https://example.org/3\", \"title\": \"Three\", \"published_at\": \"yesterday\"}\n",
    );
    let err = import::parse_articles(ndjson, Utc::now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("published_at"), "{err}");

    let array =
        r#"[{"url": "https://example.org/1", "title": "One"}, {"url": "ftp://x", "title": "Two"}]"#;
    let err = import::parse_articles(array, Utc::now())
        .unwrap_err()
        .to_string();
    assert!(err.contains("record 2"), "{err}");

    let typo = r#"{"url": "https://example.org/1", "title": "One", "publishedAt": "2026-01-01T00:00:00Z"}"#;
    let err = import::parse_articles(typo, Utc::now())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("publishedAt"),
        "{err}"
    );

    assert!(store.list_articles(10).await.unwrap().is_empty());
}

fn daily() -> DigestName {
    DigestName::parse("daily").unwrap()
}

async fn subscribers_are_unique_whatever_the_case_of_their_address(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let add = |email: &str, name: Option<&str>| NewSubscriber {
        email: EmailAddress::parse(email).unwrap(),
        name: name.map(str::to_string),
        digests: vec![daily()],
    };
    let counts = store
        .upsert_subscribers(&[add("Ada@Example.org", Some("Ada"))], Timestamp::now())
        .await
        .unwrap();
    assert_eq!(counts.added, 1);
    let counts = store
        .upsert_subscribers(&[add("ada@EXAMPLE.ORG", None)], Timestamp::now())
        .await
        .unwrap();
    assert_eq!((counts.added, counts.updated), (0, 1));

    let found = store
        .find_subscriber(&EmailAddress::parse("ADA@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.email, "Ada@Example.org");
    assert_eq!(
        found.name.as_deref(),
        Some("Ada"),
        "a missing name keeps the stored one"
    );
    assert_eq!(found.status, "confirmed");
    // Their links are signed: a signed token finds them, and nothing the
    // store keeps is a token.
    let tokens = ReaderTokens::new(b"a test key of at least thirty-two characters");
    let reader = store
        .reader_by_token(&tokens, &tokens.for_reader(found.id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reader.email, "Ada@Example.org");
    let kept: String = raw_one(
        &store,
        &format!(
            "select coalesce(legacy_token_hash, 'null') from subscribers where id = {}",
            found.id
        ),
    )
    .await;
    match backend {
        // No token of before: null, out of the column's unique index.
        Backend::Postgres => assert_eq!(kept, "null"),
        // The column is not null: a unique value that no token hashes to.
        Backend::Sqlite => assert!(kept.starts_with("none:"), "{kept}"),
    }
}

/// One text value selected with raw SQL.
async fn raw_one(store: &Store, sql: &str) -> String {
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// Runs raw SQL.
async fn raw_execute(store: &Store, sql: &str) {
    match store {
        Store::Postgres(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        Store::Sqlite(pool) => sqlx::query(sql).execute(pool).await.map(|_| ()),
    }
    .unwrap();
}

async fn signed_links_and_the_hashed_tokens_of_old_emails_find_their_reader(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let tokens = ReaderTokens::new(b"a test key of at least thirty-two characters");
    let email = EmailAddress::parse("old@example.org").unwrap();
    store
        .upsert_subscribers(
            &[NewSubscriber {
                email: email.clone(),
                name: None,
                digests: vec![daily()],
            }],
            Timestamp::now(),
        )
        .await
        .unwrap();
    let id = store.find_subscriber(&email).await.unwrap().unwrap().id;
    // A row as it was before links were signed: its token in clear.
    let old = "0123456789abcdef".repeat(4);
    raw_execute(
        &store,
        &format!("update subscribers set legacy_token_hash = '{old}' where id = {id}"),
    )
    .await;

    assert_eq!(store.hash_legacy_tokens().await.unwrap(), 1);
    assert_eq!(store.hash_legacy_tokens().await.unwrap(), 0, "done once");
    let kept = raw_one(
        &store,
        &format!("select legacy_token_hash from subscribers where id = {id}"),
    )
    .await;
    assert!(
        kept.starts_with("sha256:") && !kept.contains(&old),
        "{kept}"
    );

    // The old email's link and a signed one open the same reader; a
    // forged or unknown token opens nothing.
    let by_old = store.reader_by_token(&tokens, &old).await.unwrap().unwrap();
    assert_eq!(by_old.id, id);
    let signed = tokens.for_reader(id);
    assert_eq!(
        store
            .reader_by_token(&tokens, &signed)
            .await
            .unwrap()
            .unwrap()
            .id,
        id
    );
    let other = ReaderTokens::new(b"another key of at least thirty-two characters");
    for nothing in [other.for_reader(id), "f".repeat(64), kept.clone()] {
        assert!(
            store
                .reader_by_token(&tokens, &nothing)
                .await
                .unwrap()
                .is_none(),
            "{nothing}"
        );
    }
}

async fn a_process_with_another_link_key_is_refused(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let first = ReaderTokens::new(b"a test key of at least thirty-two characters");
    store
        .check_token_key(&first, Timestamp::now())
        .await
        .unwrap();
    store
        .check_token_key(&first, Timestamp::now())
        .await
        .unwrap();
    let other = ReaderTokens::new(b"another key of at least thirty-two characters");
    let err = store
        .check_token_key(&other, Timestamp::now())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("web.token_key"), "{err}");
    assert!(!err.contains("thirty-two"), "the key was printed: {err}");
}

async fn a_subscriber_csv_with_a_bad_row_names_the_line_and_imports_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let known = vec![daily(), DigestName::parse("weekly").unwrap()];
    let csv = "email,name,digests\nada@example.org,Ada,daily\n\"grace@example.org\",\"Hopper, Grace\",daily;weekly\nnot-an-address,Bad,daily\n";
    let err = import::parse_subscribers_csv(csv.as_bytes(), &known)
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("not-an-address"), "{err}");

    let csv = "email,name,digests\nada@example.org,Ada,monthly\n";
    let err = import::parse_subscribers_csv(csv.as_bytes(), &known)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 2") && err.contains("unknown digest `monthly`"),
        "{err}"
    );

    let mut rows = store.stream_subscribers(None);
    use futures_util::TryStreamExt;
    assert!(
        rows.try_next().await.unwrap().is_none(),
        "nothing was stored"
    );

    let csv = "email,name,digests\nada@example.org,Ada,\n\"grace@example.org\",\"Hopper, Grace\",weekly\n";
    let rows = import::parse_subscribers_csv(csv.as_bytes(), &known).unwrap();
    assert!(rows.warnings.is_empty(), "{:?}", rows.warnings);
    let subs = rows.subscribers;
    let counts = store
        .upsert_subscribers(&subs, Timestamp::now())
        .await
        .unwrap();
    assert_eq!(counts.added, 2);
    let ada = store
        .find_subscriber(&EmailAddress::parse("ada@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        store.subscriber_digests(ada.id).await.unwrap(),
        vec!["daily", "weekly"],
        "empty digests: all"
    );
    let grace = store
        .find_subscriber(&EmailAddress::parse("grace@example.org").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grace.name.as_deref(), Some("Hopper, Grace"));
    assert_eq!(
        store.subscriber_digests(grace.id).await.unwrap(),
        vec!["weekly"]
    );
}

async fn importing_never_resubscribes_someone_who_left(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let email = EmailAddress::parse("gone@example.org").unwrap();
    let sub = NewSubscriber {
        email: email.clone(),
        name: None,
        digests: vec![daily()],
    };
    store
        .upsert_subscribers(std::slice::from_ref(&sub), Timestamp::now())
        .await
        .unwrap();
    store
        .set_subscriber_status(
            &email,
            gazette::domain::SubscriberStatus::Unsubscribed,
            Timestamp::now(),
        )
        .await
        .unwrap();
    let counts = store
        .upsert_subscribers(&[sub], Timestamp::now())
        .await
        .unwrap();
    assert_eq!(counts.kept_inactive, 1);
    let found = store.find_subscriber(&email).await.unwrap().unwrap();
    assert_eq!(found.status, "unsubscribed");
}

async fn article_selection_takes_the_window_tags_and_limit_newest_first(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let now = Utc::now();
    let hours_ago = |h: i64| (now - Duration::hours(h)).to_rfc3339();
    let lines = [
        ("old", 50, "rust"),
        ("a", 5, "rust"),
        ("b", 4, "email"),
        ("c", 3, "rust"),
        ("d", 2, "cooking"),
        ("e", 1, "rust"),
    ]
    .map(|(slug, h, tag)| {
        format!(
            "{{\"url\": \"https://example.org/{slug}\", \"title\": \"{slug}\", \"tags\": [\"{tag}\"], \"published_at\": \"{}\"}}",
            hours_ago(h)
        )
    })
    .join("\n");
    let articles = import::parse_articles(&lines, now).unwrap();
    store
        .upsert_articles(&articles, Timestamp::now())
        .await
        .unwrap();

    let after = Timestamp::from(now - Duration::hours(24));
    let picked = store
        .select_articles(
            after,
            Timestamp::from(now),
            &["rust".into(), "email".into()],
            3,
        )
        .await
        .unwrap();
    let titles: Vec<&str> = picked.iter().map(|a| a.title.as_str()).collect();
    assert_eq!(titles, ["e", "c", "b"]);
    assert_eq!(picked[0].tags, vec!["rust".to_string()]);

    let all = store
        .select_articles(
            after,
            Timestamp::from(now - Duration::minutes(150)),
            &[],
            10,
        )
        .await
        .unwrap();
    let titles: Vec<&str> = all.iter().map(|a| a.title.as_str()).collect();
    assert_eq!(titles, ["c", "b", "a"], "only articles up to the cutoff");
}

async fn claims_take_due_rows_in_order_and_rows_whose_lease_expired(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let now = Utc::now();
    let run_id = planned_run(&store, 6, now).await;
    let at = |secs: i64| Timestamp::from(now + Duration::seconds(secs));
    let emails =
        |claimed: &[Claimed]| -> Vec<String> { claimed.iter().map(|c| c.email.clone()).collect() };

    // Two claims walk the run forward in id order.
    let first = store.claim(run_id, 0, at(1), at(60), 4).await.unwrap();
    assert_eq!(
        emails(&first),
        ["reader0", "reader1", "reader2", "reader3"].map(|r| format!("{r}@example.org"))
    );
    assert!(
        first
            .iter()
            .all(|c| c.subscriber_status == Some(SubscriberStatus::Confirmed))
    );
    let rest = store
        .claim(run_id, first[3].id, at(1), at(60), 4)
        .await
        .unwrap();
    assert_eq!(
        emails(&rest),
        ["reader4@example.org", "reader5@example.org"]
    );
    let counts = store.delivery_counts(run_id).await.unwrap();
    assert_eq!((counts.pending, counts.sending), (0, 6));

    // Leased rows are nobody else's while their lease lasts.
    assert!(
        store
            .claim(run_id, 0, at(2), at(60), 10)
            .await
            .unwrap()
            .is_empty()
    );

    // One sent, one to retry later, one failed; the lease of the other three
    // runs out, and a claim takes them over as they are.
    let mut ledger = store.ledger_connection().await.unwrap();
    ledger.mark_sent(&[first[0].id], at(3)).await.unwrap();
    ledger
        .mark_retry(first[1].id, at(120), "451 try again later")
        .await
        .unwrap();
    ledger
        .mark_failed(first[2].id, "550 no such user")
        .await
        .unwrap();
    drop(ledger);
    let expired = store.claim(run_id, 0, at(61), at(200), 10).await.unwrap();
    assert_eq!(
        emails(&expired),
        ["reader3", "reader4", "reader5"].map(|r| format!("{r}@example.org"))
    );
    assert!(expired.iter().all(|c| c.attempts == 0));

    // The retry is due at its time, with its attempt counted.
    let retry = store.claim(run_id, 0, at(121), at(200), 10).await.unwrap();
    assert_eq!(emails(&retry), ["reader1@example.org"]);
    assert_eq!(retry[0].attempts, 1);

    let counts = store.delivery_counts(run_id).await.unwrap();
    assert_eq!(
        (counts.pending, counts.sending, counts.sent, counts.failed),
        (0, 4, 1, 1)
    );
}

async fn a_removed_subscriber_leaves_the_ledger_and_is_never_claimed_as_a_reader(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let now = Utc::now();
    let run_id = planned_run(&store, 3, now).await;

    // `subscribers remove` takes the reader's subscriptions and ledger rows
    // with them.
    let reader0 = EmailAddress::parse("reader0@example.org").unwrap();
    let id0 = store.find_subscriber(&reader0).await.unwrap().unwrap().id;
    assert!(!store.subscriber_digests(id0).await.unwrap().is_empty());
    assert!(store.remove_subscriber(&reader0).await.unwrap());
    assert!(!store.remove_subscriber(&reader0).await.unwrap());
    assert_eq!(store.delivery_counts(run_id).await.unwrap().pending, 2);
    assert!(store.subscriber_digests(id0).await.unwrap().is_empty());

    // A removal racing the planner: the subscriber row goes, the ledger row
    // planned for them stays (on Postgres, whose ledger has no foreign key;
    // SQLite's cascades).
    let gone = "delete from subscribers where email_key = 'reader1@example.org'";
    match backend {
        Backend::Postgres => {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query(gone).execute(&mut c).await.unwrap();
        }
        Backend::Sqlite => {
            use sqlx::Connection;
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query("pragma foreign_keys = on")
                .execute(&mut c)
                .await
                .unwrap();
            sqlx::query(gone).execute(&mut c).await.unwrap();
        }
    }
    let at = |secs: i64| Timestamp::from(now + Duration::seconds(secs));
    let claimed = store.claim(run_id, 0, at(1), at(60), 10).await.unwrap();
    let readers: Vec<&str> = claimed
        .iter()
        .filter(|c| c.subscriber_status == Some(SubscriberStatus::Confirmed))
        .map(|c| c.email.as_str())
        .collect();
    assert_eq!(readers, ["reader2@example.org"]);
    // The orphaned row is claimed (so that the run can finish) as a reader
    // who is not to be mailed.
    let orphans: Vec<&Claimed> = claimed
        .iter()
        .filter(|c| c.subscriber_status != Some(SubscriberStatus::Confirmed))
        .collect();
    assert!(
        orphans
            .iter()
            .all(|c| c.subscriber_status.is_none() && c.email.is_empty()),
        "{orphans:?}"
    );
    let expected_orphans = if backend == Backend::Postgres { 1 } else { 0 };
    assert_eq!(orphans.len(), expected_orphans, "{claimed:?}");
    let counts = store.delivery_counts(run_id).await.unwrap();
    assert_eq!((counts.pending, counts.sending), (0, claimed.len() as i64));
}

/// A run of the daily digest at `now`, planned for `readers` confirmed
/// subscribers `reader0@example.org`, `reader1@…`, and so on.
async fn planned_run(store: &Store, readers: usize, now: chrono::DateTime<Utc>) -> i64 {
    add_readers(store, readers, Timestamp::from(now)).await;
    let (run_id, deliveries) = plan_daily(store, now).await;
    assert_eq!(deliveries, readers as u64);
    run_id
}

/// `n` confirmed subscribers of the daily digest, `reader0@example.org`,
/// `reader1@…`, and so on, added at `at`: their ids, in that order.
pub(crate) async fn add_readers(store: &Store, n: usize, at: Timestamp) -> Vec<i64> {
    let subscribers: Vec<NewSubscriber> = (0..n)
        .map(|i| NewSubscriber {
            email: EmailAddress::parse(&format!("reader{i}@example.org")).unwrap(),
            name: None,
            digests: vec![daily()],
        })
        .collect();
    store.upsert_subscribers(&subscribers, at).await.unwrap();
    let mut ids = Vec::new();
    for s in &subscribers {
        ids.push(store.find_subscriber(&s.email).await.unwrap().unwrap().id);
    }
    ids
}

/// Plans the run of the daily digest at `now`, over the day before it,
/// without articles: the run and how many deliveries it planned.
pub(crate) async fn plan_daily(store: &Store, now: chrono::DateTime<Utc>) -> (i64, u64) {
    let digest = daily();
    let plan = RunPlan {
        digest: &digest,
        slot: Timestamp::from(now),
        window_start: Timestamp::from(now - Duration::days(1)),
        cutoff: Timestamp::from(now),
        articles: &[],
        skip_if_empty: false,
        now: Timestamp::from(now),
    };
    match store.plan_run(&plan).await.unwrap() {
        PlanOutcome::Planned { run_id, deliveries } => (run_id, deliveries),
        other => panic!("the run was not planned: {other:?}"),
    }
}
