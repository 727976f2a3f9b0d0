//! Bounce records and the readers' state they lead to, the same on SQLite
//! and Postgres.

use chrono::{Duration, Utc};
use gazette::domain::{BounceKind, BounceSource, EmailAddress, SubscriberStatus};
use gazette::store::{
    BounceLimits, BounceOutcome, BounceReport, RunBounces, Store, SubscriberChange, Timestamp,
};

use crate::helpers::{Backend, TestDb};
use crate::on_both_backends;
use crate::store::{add_readers, plan_daily, store};

on_both_backends!(
    bounces_count_once_per_delivery_and_stop_the_readers_mail,
    soft_bounces_count_digests_in_a_row_and_a_clean_delivery_resets_them,
    a_confirmed_again_reader_starts_afresh_and_the_secret_is_shared,
);

const LIMITS: BounceLimits = BounceLimits { hard: 1, soft: 2 };

/// Plans the daily digest's run `day` days from now and records every
/// delivery as sent; returns the run and how many it addressed.
async fn sent_run(store: &Store, day: i64) -> (i64, u64) {
    let now = Utc::now() + Duration::days(day);
    let (run_id, deliveries) = plan_daily(store, now).await;
    let at = Timestamp::from(now);
    let lease = Timestamp::from(now + Duration::minutes(5));
    let claimed = store.claim(run_id, 0, at, lease, 100).await.unwrap();
    let ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
    let mut ledger = store.ledger_connection().await.unwrap();
    ledger.mark_sent(&ids, at).await.unwrap();
    (run_id, deliveries)
}

fn report(subscriber_id: i64, run_id: i64, kind: BounceKind) -> BounceReport<'static> {
    BounceReport {
        subscriber_id,
        run_id: Some(run_id),
        kind,
        source: BounceSource::Dsn,
        reason: "failed 5.1.1 (smtp; 550 5.1.1 no such user)",
        received_at: Timestamp::now(),
    }
}

async fn status_of(store: &Store, i: usize) -> SubscriberStatus {
    let email = EmailAddress::parse(&format!("reader{i}@example.org")).unwrap();
    store.find_subscriber(&email).await.unwrap().unwrap().status
}

async fn bounces_count_once_per_delivery_and_stop_the_readers_mail(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let ids = add_readers(&store, 4, Timestamp::now()).await;
    let (run, addressed) = sent_run(&store, 0).await;
    assert_eq!(addressed, 4);

    let hard = report(ids[0], run, BounceKind::Hard);
    assert_eq!(
        store.record_bounce(&hard, LIMITS).await.unwrap(),
        BounceOutcome::Recorded {
            status: SubscriberStatus::Bounced,
            changed: true
        }
    );
    // The same report again (the MTA delivered it twice): counted once.
    assert_eq!(
        store.record_bounce(&hard, LIMITS).await.unwrap(),
        BounceOutcome::Duplicate
    );
    let complaint = BounceReport {
        source: BounceSource::Arf,
        reason: "feedback-type abuse",
        ..report(ids[1], run, BounceKind::Complaint)
    };
    assert_eq!(
        store.record_bounce(&complaint, LIMITS).await.unwrap(),
        BounceOutcome::Recorded {
            status: SubscriberStatus::Unsubscribed,
            changed: true
        }
    );
    let soft = report(ids[2], run, BounceKind::Soft);
    assert_eq!(
        store.record_bounce(&soft, LIMITS).await.unwrap(),
        BounceOutcome::Recorded {
            status: SubscriberStatus::Confirmed,
            changed: false
        }
    );
    assert_eq!(status_of(&store, 0).await, SubscriberStatus::Bounced);
    assert_eq!(status_of(&store, 1).await, SubscriberStatus::Unsubscribed);
    assert_eq!(status_of(&store, 2).await, SubscriberStatus::Confirmed);
    assert_eq!(
        store.run_bounces(run).await.unwrap(),
        RunBounces {
            hard: 1,
            soft: 1,
            complaints: 1
        }
    );
    let kept = store.bounces_of(ids[0]).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].run_id, kept[0].kind, kept[0].source),
        (Some(run), BounceKind::Hard, BounceSource::Dsn)
    );
    assert!(kept[0].reason.contains("5.1.1"), "{kept:?}");

    // The next digest is planned for the two readers left only.
    let (next, addressed) = sent_run(&store, 1).await;
    assert_eq!(addressed, 2);
    assert_eq!(
        store.run_bounces(next).await.unwrap(),
        RunBounces::default()
    );
    assert_eq!(store.latest_sent_run(ids[3]).await.unwrap(), Some(next));
    assert_eq!(store.latest_sent_run(ids[0]).await.unwrap(), Some(run));
}

async fn soft_bounces_count_digests_in_a_row_and_a_clean_delivery_resets_them(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let ids = add_readers(&store, 1, Timestamp::now()).await;
    let reader = ids[0];
    let soft = |run| report(reader, run, BounceKind::Soft);
    let recorded = |status| BounceOutcome::Recorded {
        status,
        changed: status == SubscriberStatus::Bounced,
    };

    let (first, _) = sent_run(&store, 0).await;
    assert_eq!(
        store.record_bounce(&soft(first), LIMITS).await.unwrap(),
        recorded(SubscriberStatus::Confirmed)
    );
    // A delay, then the failure, of the same digest: one digest, one count.
    let delayed_again = BounceReport {
        kind: BounceKind::Soft,
        ..soft(first)
    };
    assert_eq!(
        store.record_bounce(&delayed_again, LIMITS).await.unwrap(),
        BounceOutcome::Duplicate
    );
    // The second digest arrives without a bounce; the third soft-bounces:
    // not two in a row.
    let (_second, _) = sent_run(&store, 1).await;
    let (third, _) = sent_run(&store, 2).await;
    assert_eq!(
        store.record_bounce(&soft(third), LIMITS).await.unwrap(),
        recorded(SubscriberStatus::Confirmed)
    );
    // The fourth soft-bounces too: two in a row, the limit.
    let (fourth, _) = sent_run(&store, 3).await;
    assert_eq!(
        store.record_bounce(&soft(fourth), LIMITS).await.unwrap(),
        recorded(SubscriberStatus::Bounced)
    );
    let (_, addressed) = sent_run(&store, 4).await;
    assert_eq!(addressed, 0, "a bounced reader was planned");
    assert_eq!(store.bounces_of(reader).await.unwrap().len(), 3);
}

async fn a_confirmed_again_reader_starts_afresh_and_the_secret_is_shared(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = store(&db).await;
    let ids = add_readers(&store, 1, Timestamp::now()).await;
    let (run, _) = sent_run(&store, 0).await;
    let limits = BounceLimits { hard: 2, soft: 3 };
    let first = store
        .record_bounce(&report(ids[0], run, BounceKind::Hard), limits)
        .await
        .unwrap();
    assert_eq!(
        first,
        BounceOutcome::Recorded {
            status: SubscriberStatus::Confirmed,
            changed: false
        }
    );
    let (second, _) = sent_run(&store, 1).await;
    let bounced = store
        .record_bounce(&report(ids[0], second, BounceKind::Hard), limits)
        .await
        .unwrap();
    assert_eq!(
        bounced,
        BounceOutcome::Recorded {
            status: SubscriberStatus::Bounced,
            changed: true
        }
    );
    // The operator confirms the reader again: their count starts at zero,
    // their history stays.
    let change = SubscriberChange {
        status: Some(SubscriberStatus::Confirmed),
        ..SubscriberChange::default()
    };
    store
        .update_subscriber(ids[0], &change, Timestamp::now())
        .await
        .unwrap();
    let (third, addressed) = sent_run(&store, 2).await;
    assert_eq!(addressed, 1);
    let after = store
        .record_bounce(&report(ids[0], third, BounceKind::Hard), limits)
        .await
        .unwrap();
    assert_eq!(
        after,
        BounceOutcome::Recorded {
            status: SubscriberStatus::Confirmed,
            changed: false
        }
    );
    assert_eq!(store.bounces_of(ids[0]).await.unwrap().len(), 3);

    let secret = store
        .shared_secret("return_path", Timestamp::now())
        .await
        .unwrap();
    assert_eq!(secret.len(), 64);
    let other = Store::connect(&db.url).await.unwrap();
    assert_eq!(
        other
            .shared_secret("return_path", Timestamp::now())
            .await
            .unwrap(),
        secret
    );
    assert_ne!(
        store
            .shared_secret("another", Timestamp::now())
            .await
            .unwrap(),
        secret
    );
}
