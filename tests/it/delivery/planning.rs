//! Planning a run's ledger in chunks of readers while it is sent: the same
//! ledger as planning it whole, resumed exactly where it stopped after an
//! interruption, on both stores; and a sender killed with SIGKILL in the
//! middle of planning, then restarted, mails every reader once.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use gazette::domain::{DigestName, EmailAddress, RunStatus, SubscriberStatus};
use gazette::store::{Claimed, NewSubscriber, PlanChunk, PlanOutcome, RunPlan, Store, Timestamp};

use crate::helpers::{Backend, TestDb, Workspace, digest_section, kill_9, stderr, stdout};
use crate::on_both_backends;
use crate::smtp::SmtpServer;

on_both_backends!(
    planning_in_chunks_gives_the_ledger_of_one_chunk,
    planning_interrupted_between_chunks_resumes_and_plans_each_reader_once,
    a_run_is_not_finished_before_its_planning_is,
    a_sender_killed_while_planning_mails_every_reader_once_after_a_restart,
);

fn name(digest: &str) -> DigestName {
    DigestName::parse(digest).unwrap()
}

fn reader(i: usize) -> EmailAddress {
    EmailAddress::parse(&format!("reader{i}@example.org")).unwrap()
}

/// `readers` subscribers `reader0@…`, `reader1@…`, … of `daily` (every
/// fifth also of `weekly`), and `others` subscribers of `weekly` only
/// between them; readers 3, 11 and 17 unsubscribed, reader 8 not
/// confirmed. Returns the store and the addresses a daily run is for.
async fn list(db: &TestDb, readers: usize, others: usize) -> (Store, BTreeSet<String>) {
    let store = Store::connect(&db.url).await.unwrap();
    let now = Timestamp::now();
    for i in 0..readers {
        let mut digests = vec![name("daily")];
        if i % 5 == 0 {
            digests.push(name("weekly"));
        }
        let new = NewSubscriber {
            email: reader(i),
            name: None,
            digests,
        };
        store.upsert_subscribers(&[new], now).await.unwrap();
        if i < others {
            let other = NewSubscriber {
                email: EmailAddress::parse(&format!("other{i}@example.org")).unwrap(),
                name: None,
                digests: vec![name("weekly")],
            };
            store.upsert_subscribers(&[other], now).await.unwrap();
        }
    }
    let mut expected = BTreeSet::new();
    for i in 0..readers {
        let status = match i {
            3 | 11 | 17 => SubscriberStatus::Unsubscribed,
            8 => SubscriberStatus::Pending,
            _ => {
                expected.insert(reader(i).to_string());
                continue;
            }
        };
        assert!(
            store
                .set_subscriber_status(&reader(i), status, now)
                .await
                .unwrap()
        );
    }
    (store, expected)
}

/// The plan of `digest`'s run of the slot `at`, over the day before it,
/// without articles.
fn plan_of(digest: &DigestName, at: DateTime<Utc>) -> RunPlan<'_> {
    RunPlan {
        digest,
        slot: Timestamp::from(at),
        window_start: Timestamp::from(at - Duration::days(1)),
        cutoff: Timestamp::from(at),
        articles: &[],
        skip_if_empty: false,
        now: Timestamp::now(),
    }
}

/// Creates the daily run of `slot` (minutes from now), its ledger not yet
/// planned.
async fn start(store: &Store, slot: i64) -> i64 {
    let digest = name("daily");
    let plan = plan_of(&digest, Utc::now() + Duration::minutes(slot));
    let PlanOutcome::Planned { run_id, deliveries } = store.start_run(&plan).await.unwrap() else {
        panic!("the run was not created");
    };
    assert_eq!(deliveries, 0);
    run_id
}

/// Plans the run of `digest` at `at` in one call (in chunks of its own):
/// the run and how many deliveries it planned.
async fn plan_whole(store: &Store, digest: &str, at: DateTime<Utc>) -> (i64, u64) {
    let digest = name(digest);
    let PlanOutcome::Planned { run_id, deliveries } =
        store.plan_run(&plan_of(&digest, at)).await.unwrap()
    else {
        panic!("not planned");
    };
    (run_id, deliveries)
}

/// Plans chunks of `limit` until planning is done: what each returned.
async fn plan_all(store: &Store, run_id: i64, limit: u32) -> Vec<PlanChunk> {
    let mut chunks = Vec::new();
    loop {
        let chunk = store
            .plan_chunk(run_id, limit, Timestamp::now())
            .await
            .unwrap();
        chunks.push(chunk);
        if chunk != PlanChunk::More(limit as u64) {
            return chunks;
        }
        assert!(chunks.len() < 1000, "planning does not end");
    }
}

/// Claims up to `limit` of a run's due deliveries, a second from now,
/// leased for five minutes.
async fn claim(store: &Store, run_id: i64, limit: u32) -> Vec<Claimed> {
    let now = Utc::now();
    store
        .claim(
            run_id,
            0,
            Timestamp::from(now + Duration::seconds(1)),
            Timestamp::from(now + Duration::minutes(5)),
            limit,
        )
        .await
        .unwrap()
}

/// The addresses of a run's ledger rows, claimed all at once; panics on a
/// reader with two rows.
async fn ledger(store: &Store, run_id: i64) -> BTreeSet<String> {
    let claimed = claim(store, run_id, 10_000).await;
    let mut emails = BTreeSet::new();
    for c in &claimed {
        assert!(emails.insert(c.email.clone()), "{} twice", c.email);
    }
    emails
}

async fn planning_in_chunks_gives_the_ledger_of_one_chunk(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (store, expected) = list(&db, 40, 10).await;
    assert_eq!(expected.len(), 36);

    let whole = start(&store, 0).await;
    assert_eq!(plan_all(&store, whole, 10_000).await, [PlanChunk::Last(36)]);
    let chunked = start(&store, 1).await;
    assert_eq!(
        plan_all(&store, chunked, 8).await,
        [
            PlanChunk::More(8),
            PlanChunk::More(8),
            PlanChunk::More(8),
            PlanChunk::More(8),
            PlanChunk::Last(4)
        ]
    );
    // Planned: nothing more to do, whoever asks.
    assert_eq!(
        store
            .plan_chunk(chunked, 8, Timestamp::now())
            .await
            .unwrap(),
        PlanChunk::Over
    );
    for run_id in [whole, chunked] {
        let run = store.run(run_id).await.unwrap().unwrap();
        assert!(!run.planning);
        assert_eq!(run.status, RunStatus::Sending);
        assert_eq!(store.readers_to_plan(run_id).await.unwrap(), 0);
    }
    assert_eq!(ledger(&store, whole).await, expected);
    assert_eq!(ledger(&store, chunked).await, expected);

    // The one-call planning, in chunks of its own, plans the same.
    let (run_id, deliveries) = plan_whole(&store, "daily", Utc::now() + Duration::minutes(2)).await;
    assert_eq!(deliveries, 36);
    assert_eq!(ledger(&store, run_id).await, expected);
}

async fn planning_interrupted_between_chunks_resumes_and_plans_each_reader_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (store, mut expected) = list(&db, 30, 5).await;
    let run_id = start(&store, 0).await;
    // A process plans two chunks, then dies.
    for _ in 0..2 {
        assert_eq!(
            store.plan_chunk(run_id, 5, Timestamp::now()).await.unwrap(),
            PlanChunk::More(5)
        );
    }
    store.close().await;
    let run = |store: Store| async move { store.run(run_id).await.unwrap().unwrap() };

    let store = Store::connect(&db.url).await.unwrap();
    assert!(run(store.clone()).await.planning);
    let planned = store.delivery_counts(run_id).await.unwrap().pending;
    assert_eq!(planned, 10);
    assert_eq!(store.readers_to_plan(run_id).await.unwrap(), 16);
    // Meanwhile a reader not yet planned leaves, and one already planned
    // leaves too (the claim finds them unsubscribed: skipped, not mailed).
    let now = Timestamp::now();
    for i in [25, 1] {
        store
            .set_subscriber_status(&reader(i), SubscriberStatus::Unsubscribed, now)
            .await
            .unwrap();
    }
    expected.remove(&reader(25).to_string());

    // The next process goes on from the cursor.
    assert_eq!(
        plan_all(&store, run_id, 5).await,
        [
            PlanChunk::More(5),
            PlanChunk::More(5),
            PlanChunk::More(5),
            PlanChunk::Last(0)
        ]
    );
    assert!(!run(store.clone()).await.planning);
    assert_eq!(ledger(&store, run_id).await, expected);
    assert_eq!(expected.len(), 25);
}

async fn a_run_is_not_finished_before_its_planning_is(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (store, expected) = list(&db, 12, 0).await;
    let run_id = start(&store, 0).await;
    assert_eq!(
        store.plan_chunk(run_id, 4, Timestamp::now()).await.unwrap(),
        PlanChunk::More(4)
    );
    // Every delivery planned so far is sent: the run is still open.
    let claimed = claim(&store, run_id, 100).await;
    assert_eq!(claimed.len(), 4);
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    let mut conn = store.ledger_connection().await.unwrap();
    conn.mark_sent(&ids, Timestamp::now()).await.unwrap();
    assert!(
        !store
            .finish_run_if_done(run_id, Timestamp::now())
            .await
            .unwrap()
    );
    assert_eq!(
        store.run(run_id).await.unwrap().unwrap().status,
        RunStatus::Sending
    );
    assert_eq!(
        plan_all(&store, run_id, 4).await,
        [PlanChunk::More(4), PlanChunk::Last(1)]
    );
    let rest = ledger(&store, run_id).await;
    assert_eq!(rest.len(), expected.len() - 4);
    let ids: Vec<i64> = store
        .claim(run_id, 0, Timestamp::now(), Timestamp::now(), 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    assert!(ids.is_empty(), "claimed twice: {ids:?}");

    // A run of a digest nobody reads is finished as soon as it is planned.
    let (run_id, deliveries) = plan_whole(&store, "nobody", Utc::now()).await;
    assert_eq!(deliveries, 0);
    let run = store.run(run_id).await.unwrap().unwrap();
    assert_eq!((run.status, run.planning), (RunStatus::Finished, false));
}

/// Starts `gazette send daily` planning 4 readers a chunk with a pause of
/// `pause_ms` after each (the knobs of debug builds).
fn send_in_small_chunks(ws: &Workspace, pause_ms: u64) -> std::process::Child {
    ws.spawn_with_env(
        &["send", "daily"],
        &[
            ("GAZETTE_PLAN_CHUNK", "4"),
            ("GAZETTE_PLAN_PAUSE_MS", &pause_ms.to_string()),
        ],
    )
}

async fn a_sender_killed_while_planning_mails_every_reader_once_after_a_restart(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpServer::start();
    let ws = Workspace::new(&db.url, Some(smtp.port), &digest_section("daily", ""));
    let readers = 60;
    ws.import_readers(readers);
    ws.add_article("Planning news");
    let store = Store::connect(&db.url).await.unwrap();

    let mut child = send_in_small_chunks(&ws, 600);
    // Killed between two chunks, once what was planned is sent (so that no
    // message is in flight: the kill tests planning, not the relay).
    let run_id = 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let planned = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "planning never paused"
        );
        if let Some(run) = store.run(run_id).await.unwrap() {
            let c = store.delivery_counts(run_id).await.unwrap();
            let planned = c.open() + c.sent;
            if run.planning
                && planned >= 8
                && c.open() == 0
                && smtp.received().len() == c.sent as usize
            {
                break planned;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    };
    kill_9(&mut child);

    // Planning stopped part of the way: the store says so, and `status`.
    let run = store.run(run_id).await.unwrap().unwrap();
    let to_plan = store.readers_to_plan(run_id).await.unwrap();
    assert!(run.planning);
    let c = store.delivery_counts(run_id).await.unwrap();
    let planned_at_kill = c.open() + c.sent;
    assert!(planned_at_kill >= planned);
    assert!(
        to_plan > 0 && planned_at_kill + to_plan == readers as i64,
        "{planned_at_kill} planned, {to_plan} to plan"
    );
    let out = ws.run(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(" planning "), "{}", stdout(&out));
    let out = ws.run(&["status", "1"]);
    assert!(
        stdout(&out).contains(&format!(
            "planning: {planned_at_kill} planned so far, {to_plan} readers to come"
        )),
        "{}",
        stdout(&out)
    );
    let before = smtp.received().len();
    assert!(before > 0 && before < readers);

    // Restarted, it plans the rest and sends it.
    let out = send_in_small_chunks(&ws, 0).wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("run 1: {readers} sent, 0 failed, 0 skipped")),
        "{}",
        stdout(&out)
    );
    for i in 0..readers {
        let got = smtp.received_by(&format!("reader{i}@example.org"));
        assert_eq!(got.len(), 1, "reader{i} received {} emails", got.len());
    }
    assert_eq!(smtp.received().len(), readers);
    let run = store.run(run_id).await.unwrap().unwrap();
    assert_eq!((run.status, run.planning), (RunStatus::Finished, false));
    let c = store.delivery_counts(run_id).await.unwrap();
    assert_eq!((c.sent, c.open()), (readers as i64, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_planning_one_run_together_mail_each_reader_once() {
    let db = TestDb::new(Backend::Postgres).await;
    let smtp = SmtpServer::start();
    let ws = Workspace::new(&db.url, Some(smtp.port), &digest_section("daily", ""));
    let readers = 600;
    ws.import_readers(readers);
    ws.add_article("Replica news");
    let slot = Utc::now().to_rfc3339();

    // Three processes plan the same run in chunks of 25, taking turns.
    let children: Vec<_> = (0..3)
        .map(|_| {
            ws.spawn_with_env(
                &["send", "daily", "--slot", &slot],
                &[("GAZETTE_PLAN_CHUNK", "25")],
            )
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(smtp.received().len(), readers);
    for i in 0..readers {
        assert_eq!(
            smtp.received_by(&format!("reader{i}@example.org")).len(),
            1,
            "reader{i}"
        );
    }
    let store = Store::connect(&db.url).await.unwrap();
    let c = store.delivery_counts(1).await.unwrap();
    assert_eq!((c.sent, c.open()), (readers as i64, 0));
}
