//! Ledger retention (`delivery.keep_ledger`): finished runs' rows folded
//! into their counts, on both stores, by the store, the command and the
//! daemon.

use chrono::{DateTime, Duration, Utc};
use gazette::domain::{DigestName, EmailAddress};
use gazette::store::{DeliveryCounts, NewSubscriber, PlanOutcome, RunPlan, Store, Timestamp};

use crate::helpers::{Backend, SmtpServer, TestDb, Workspace, digest_section, stderr, stdout};
use crate::on_both_backends;
use crate::store::{add_readers, plan_daily};

on_both_backends!(
    folding_keeps_a_runs_counts_deletes_its_rows_and_spares_young_and_open_runs,
    two_folds_at_once_count_every_row_once,
    a_folded_run_is_never_planned_or_claimed_again,
    removing_a_subscriber_takes_their_rows_from_every_run,
    status_reads_the_same_before_and_after_a_fold_and_the_slot_is_not_sent_again,
);

fn daily() -> DigestName {
    DigestName::parse("daily").unwrap()
}

async fn store(db: &TestDb) -> Store {
    Store::connect(&db.url).await.unwrap()
}

/// One number selected with raw SQL.
async fn raw_count(store: &Store, sql: &str) -> i64 {
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// `readers` confirmed subscribers of the daily digest, `reader0@…` on,
/// who subscribed 60 days ago.
async fn readers(store: &Store, readers: usize) {
    let subscribed = Timestamp::from(Utc::now() - Duration::days(60));
    add_readers(store, readers, subscribed).await;
}

/// Plans the run of `slot`, for every confirmed reader.
async fn plan(store: &Store, slot: DateTime<Utc>) -> i64 {
    plan_daily(store, slot).await.0
}

/// Claims every row of the run and records the outcomes: the first
/// `failed` fail, the next `skipped` are skipped, the rest are sent; the
/// run finishes at `at`.
async fn deliver(store: &Store, run_id: i64, failed: usize, skipped: usize, at: DateTime<Utc>) {
    let claimed = store
        .claim(
            run_id,
            0,
            Timestamp::from(at),
            Timestamp::from(at + Duration::minutes(5)),
            10_000,
        )
        .await
        .unwrap();
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    let mut ledger = store.ledger_connection().await.unwrap();
    for id in &ids[..failed] {
        ledger.mark_failed(*id, "550 no such user").await.unwrap();
    }
    ledger
        .mark_skipped(&ids[failed..failed + skipped])
        .await
        .unwrap();
    ledger
        .mark_sent(&ids[failed + skipped..], Timestamp::from(at))
        .await
        .unwrap();
    drop(ledger);
    assert!(
        store
            .finish_run_if_done(run_id, Timestamp::from(at))
            .await
            .unwrap()
    );
}

async fn rows_of(store: &Store, run_id: i64) -> i64 {
    raw_count(
        store,
        &format!("select count(*) from deliveries where run_id = {run_id}"),
    )
    .await
}

async fn folding_keeps_a_runs_counts_deletes_its_rows_and_spares_young_and_open_runs(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    readers(&store, 25).await;
    let now = Utc::now();
    let old = plan(&store, now - Duration::days(40)).await;
    deliver(&store, old, 2, 3, now - Duration::days(40)).await;
    let young = plan(&store, now - Duration::days(2)).await;
    deliver(&store, young, 1, 0, now - Duration::days(2)).await;
    let open = plan(&store, now - Duration::days(35)).await;
    let old_counts = store.delivery_counts(old).await.unwrap();
    assert_eq!(
        old_counts,
        DeliveryCounts {
            pending: 0,
            sending: 0,
            sent: 20,
            failed: 2,
            skipped: 3
        }
    );
    let young_counts = store.delivery_counts(young).await.unwrap();
    let open_counts = store.delivery_counts(open).await.unwrap();

    // Runs finished more than 30 days ago, 4 rows a transaction.
    let before = Timestamp::from(now - Duration::days(30));
    let dry = store.foldable_runs(before).await.unwrap();
    assert_eq!(
        dry.iter().map(|r| (r.id, r.rows)).collect::<Vec<_>>(),
        [(old, 25)]
    );
    let report = store
        .fold_ledger(before, 4, Timestamp::from(now), &|| false)
        .await
        .unwrap();
    assert_eq!((report.runs, report.rows), (1, 25));
    assert_eq!(
        rows_of(&store, old).await,
        0,
        "the old run's rows are deleted"
    );
    assert_eq!(
        store.delivery_counts(old).await.unwrap(),
        old_counts,
        "its counts remain"
    );
    assert!(store.folded_at(old).await.unwrap().is_some());

    // The young run and the open one are as they were.
    assert_eq!(rows_of(&store, young).await, 25);
    assert_eq!(store.delivery_counts(young).await.unwrap(), young_counts);
    assert_eq!(rows_of(&store, open).await, 25);
    assert_eq!(store.delivery_counts(open).await.unwrap(), open_counts);
    assert!(store.folded_at(young).await.unwrap().is_none());

    // Folding again finds nothing, and changes no count.
    let again = store
        .fold_ledger(before, 4, Timestamp::from(now), &|| false)
        .await
        .unwrap();
    assert_eq!((again.runs, again.rows), (0, 0));
    assert_eq!(store.delivery_counts(old).await.unwrap(), old_counts);

    // A fold told to stop between batches leaves counts that add up.
    let before = Timestamp::from(now - Duration::days(1));
    let batches = std::sync::atomic::AtomicU32::new(0);
    let stopped = store
        .fold_ledger(before, 10, Timestamp::from(now), &|| {
            batches.fetch_add(1, std::sync::atomic::Ordering::SeqCst) >= 1
        })
        .await
        .unwrap();
    assert_eq!(stopped.rows, 10);
    assert_eq!(rows_of(&store, young).await, 15);
    assert_eq!(store.delivery_counts(young).await.unwrap(), young_counts);
}

async fn two_folds_at_once_count_every_row_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    readers(&store, 300).await;
    let now = Utc::now();
    let mut runs = Vec::new();
    for day in [50, 49, 48] {
        let run = plan(&store, now - Duration::days(day)).await;
        deliver(&store, run, 7, 5, now - Duration::days(day)).await;
        runs.push(run);
    }
    let before = Timestamp::from(now - Duration::days(30));
    // Two processes, each with its own connections.
    let other = Store::connect(&db.url).await.unwrap();
    let (a, b) = tokio::join!(
        store.fold_ledger(before, 16, Timestamp::from(now), &|| false),
        other.fold_ledger(before, 16, Timestamp::from(now), &|| false),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.rows + b.rows, 900, "{a:?} {b:?}");
    for run in runs {
        assert_eq!(rows_of(&store, run).await, 0);
        assert_eq!(
            store.delivery_counts(run).await.unwrap(),
            DeliveryCounts {
                pending: 0,
                sending: 0,
                sent: 288,
                failed: 7,
                skipped: 5
            }
        );
    }
}

async fn a_folded_run_is_never_planned_or_claimed_again(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    readers(&store, 5).await;
    let now = Utc::now();
    let slot = now - Duration::days(40);
    let run = plan(&store, slot).await;
    deliver(&store, run, 0, 0, slot).await;
    let before = Timestamp::from(now - Duration::days(30));
    store
        .fold_ledger(before, 100, Timestamp::from(now), &|| false)
        .await
        .unwrap();
    assert_eq!(rows_of(&store, run).await, 0);

    // The slot's run stays: planning it again (a tick, a replica) finds it.
    let digest = daily();
    let again = RunPlan {
        digest: &digest,
        slot: Timestamp::from(slot),
        window_start: Timestamp::from(slot - Duration::days(1)),
        cutoff: Timestamp::from(slot),
        articles: &[],
        skip_if_empty: false,
        now: Timestamp::from(now),
    };
    assert!(matches!(
        store.plan_run(&again).await.unwrap(),
        PlanOutcome::Exists { run_id, .. } if run_id == run
    ));
    assert!(store.unfinished_runs(None).await.unwrap().is_empty());
    let later = Timestamp::from(now + Duration::hours(1));
    assert!(
        store
            .claim(run, 0, later, later, 100)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(rows_of(&store, run).await, 0);
    // Nothing failed is left to re-queue.
    assert_eq!(store.requeue_failed(run, later).await.unwrap(), 0);
    assert_eq!(store.delivery_counts(run).await.unwrap().sent, 5);

    // Its web view still opens for its readers, and not for a reader
    // who came after it.
    let reader0 = EmailAddress::parse("reader0@example.org").unwrap();
    let reader0 = store.find_subscriber(&reader0).await.unwrap().unwrap();
    assert!(store.was_addressed(run, reader0.id).await.unwrap());
    let newcomer = EmailAddress::parse("new@example.org").unwrap();
    store
        .upsert_subscribers(
            &[NewSubscriber {
                email: newcomer.clone(),
                name: None,
                digests: vec![daily()],
            }],
            Timestamp::from(now),
        )
        .await
        .unwrap();
    let newcomer = store.find_subscriber(&newcomer).await.unwrap().unwrap();
    assert!(!store.was_addressed(run, newcomer.id).await.unwrap());
}

async fn removing_a_subscriber_takes_their_rows_from_every_run(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    readers(&store, 4).await;
    let now = Utc::now();
    let first = plan(&store, now - Duration::days(2)).await;
    deliver(&store, first, 0, 0, now - Duration::days(2)).await;
    let second = plan(&store, now - Duration::days(1)).await;

    let reader1 = EmailAddress::parse("READER1@example.org").unwrap();
    assert!(store.remove_subscriber(&reader1).await.unwrap());
    assert_eq!(rows_of(&store, first).await, 3);
    assert_eq!(rows_of(&store, second).await, 3);
    let left = raw_count(
        &store,
        "select count(*) from deliveries d join subscribers s on s.id = d.subscriber_id \
         where s.email_key = 'reader1@example.org'",
    )
    .await;
    assert_eq!(left, 0);
    let orphans = raw_count(
        &store,
        "select count(*) from deliveries d where not exists \
         (select 1 from subscribers s where s.id = d.subscriber_id)",
    )
    .await;
    assert_eq!(orphans, 0, "no row of the removed reader is left");
    assert!(store.find_subscriber(&reader1).await.unwrap().is_none());
    // The others keep theirs.
    assert_eq!(store.delivery_counts(first).await.unwrap().sent, 3);
}

/// What `gazette status` and `status --json` say, as text.
fn statuses(ws: &Workspace) -> (String, String) {
    let text = ws.run(&["status"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let json = ws.run(&["status", "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    (stdout(&text), stdout(&json))
}

async fn status_reads_the_same_before_and_after_a_fold_and_the_slot_is_not_sent_again(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpServer::start_rejecting(&["reader1@example.org"]);
    let ws = Workspace::with_delivery(
        &db.url,
        Some(smtp.port),
        "retry_base_ms = 50\nretry_max_ms = 200\nmax_attempts = 3\nkeep_ledger = \"0s\"",
        &digest_section("daily", ""),
    );
    ws.import_readers(3);
    ws.add_article("Folded news");
    let slot = Utc::now().to_rfc3339();
    let sent = ws.run(&["send", "daily", "--slot", &slot]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(
        stdout(&sent).contains("2 sent, 1 failed, 0 skipped"),
        "{}",
        stdout(&sent)
    );
    let received = smtp.received().len();
    let before = statuses(&ws);
    let one_before = stdout(&ws.run(&["status", "1"]));
    assert!(
        one_before.contains("reader1@example.org\t1 attempt\t"),
        "{one_before}"
    );

    let dry = ws.run(&["fold-ledger", "--dry-run"]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    let dry = stdout(&dry);
    assert!(dry.contains("run 1 (daily, finished "), "{dry}");
    assert!(dry.contains("would fold 3 ledger rows of 1 run"), "{dry}");
    assert_eq!(statuses(&ws), before, "a dry run changes nothing");

    let folded = ws.run(&["fold-ledger"]);
    assert!(folded.status.success(), "{}", stderr(&folded));
    assert!(
        stdout(&folded).contains("folded 3 ledger rows of 1 run"),
        "{}",
        stdout(&folded)
    );
    assert_eq!(
        statuses(&ws),
        before,
        "status reads the same after the fold"
    );
    let store = store(&db).await;
    assert_eq!(rows_of(&store, 1).await, 0);
    let one = stdout(&ws.run(&["status", "1"]));
    assert!(
        one.contains("deliveries: 0 pending, 0 sending, 2 sent, 1 failed, 0 skipped"),
        "{one}"
    );
    assert!(one.contains("ledger folded "), "{one}");

    // The slot was sent: sending it again sends nothing.
    let again = ws.run(&["send", "daily", "--slot", &slot]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(
        stdout(&again).contains("was planned before (run 1, finished)"),
        "{}",
        stdout(&again)
    );
    assert_eq!(smtp.received().len(), received);
    let retry = ws.run(&["retry", "1"]);
    assert!(retry.status.success(), "{}", stderr(&retry));
    assert!(
        stdout(&retry).contains("its ledger was folded"),
        "{}",
        stdout(&retry)
    );
    assert_eq!(smtp.received().len(), received);
    assert_eq!(statuses(&ws), before);
}

#[test]
fn the_daemon_folds_finished_runs_when_it_starts_and_sends_nothing_again() {
    let db_dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/g.db", db_dir.path().display());
    let ws = Workspace::with_delivery(
        &db,
        None,
        "keep_ledger = \"0s\"",
        &digest_section("daily", ""),
    );
    ws.import_readers(2);
    ws.add_article("Daemon folded news");
    let sent = ws.run(&["send", "daily"]);
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(stdout(&sent).contains("2 sent"), "{}", stdout(&sent));
    let before = statuses(&ws);
    let emails = std::fs::read_dir(ws.outbox()).unwrap().count();

    let mut daemon = crate::app::Daemon::start(&ws);
    daemon.log().wait_for("the fold", |l| {
        l.contains("folded 2 ledger rows of 1 run finished before")
    });
    let (status, log) = daemon.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(std::fs::read_dir(ws.outbox()).unwrap().count(), emails);
    // (The daemon may have recorded today's slot as missed: a line more.)
    let run_line = before.0.lines().nth(1).unwrap().to_string();
    assert!(run_line.contains(" 2 "), "{run_line}");
    let after = statuses(&ws).0;
    assert!(after.lines().any(|l| l == run_line), "{after}\n{run_line}");
    let again = ws.run(&["fold-ledger"]);
    assert!(
        stdout(&again).contains("folded 0 ledger rows of 0 runs"),
        "{}",
        stdout(&again)
    );
}
