//! Slots are computed in each digest's IANA time zone (daylight saving does
//! not move a 7:00 digest), and every tick is idempotent.

use chrono::{DateTime, Duration, TimeZone, Utc};
use gazette::config::{Digest, Schedule};
use gazette::domain::DigestName;
use gazette::schedule::{AtStart, Decision, decide, first_start, latest_slot, outlook, reconcile};
use gazette::store::{PlanOutcome, Store, Timestamp};

use crate::helpers::{Backend, TestDb};
use crate::on_both_backends;

fn digest(schedule: &str, tz: &str) -> Digest {
    Digest {
        name: DigestName::parse("daily").unwrap(),
        title: "Daily".into(),
        subject: "{{ digest.title }}".into(),
        schedule: Schedule::parse(schedule).unwrap(),
        timezone: tz.parse().unwrap(),
        template: "digest".into(),
        max_articles: 10,
        window: std::time::Duration::from_secs(86_400),
        tags: vec![],
        skip_if_empty: false,
        catch_up: std::time::Duration::from_secs(7_200),
        public: false,
        paused: false,
    }
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn a_seven_oclock_digest_stays_at_seven_across_both_berlin_transitions() {
    let d = digest("0 7 * * *", "Europe/Berlin");
    // Spring forward on 2026-03-29: 07:00 CET the day before, 07:00 CEST after.
    assert_eq!(
        latest_slot(&d, utc("2026-03-28T12:00:00Z")),
        Some(utc("2026-03-28T06:00:00Z"))
    );
    assert_eq!(
        latest_slot(&d, utc("2026-03-29T12:00:00Z")),
        Some(utc("2026-03-29T05:00:00Z"))
    );
    // Fall back on 2026-10-25.
    assert_eq!(
        latest_slot(&d, utc("2026-10-24T12:00:00Z")),
        Some(utc("2026-10-24T05:00:00Z"))
    );
    assert_eq!(
        latest_slot(&d, utc("2026-10-25T12:00:00Z")),
        Some(utc("2026-10-25T06:00:00Z"))
    );
}

#[test]
fn a_seven_oclock_digest_stays_at_seven_across_both_new_york_transitions() {
    let d = digest("0 7 * * *", "America/New_York");
    assert_eq!(
        latest_slot(&d, utc("2026-03-07T15:00:00Z")),
        Some(utc("2026-03-07T12:00:00Z"))
    );
    assert_eq!(
        latest_slot(&d, utc("2026-03-08T15:00:00Z")),
        Some(utc("2026-03-08T11:00:00Z"))
    );
    assert_eq!(
        latest_slot(&d, utc("2026-10-31T15:00:00Z")),
        Some(utc("2026-10-31T11:00:00Z"))
    );
    assert_eq!(
        latest_slot(&d, utc("2026-11-01T15:00:00Z")),
        Some(utc("2026-11-01T12:00:00Z"))
    );
}

#[test]
fn every_moment_of_a_slot_finds_the_same_whole_second() {
    // Two processes (or a restart) ticking at different instants of the
    // same minute must find the same slot, or the run key differs.
    let d = digest("* * * * *", "Asia/Kathmandu");
    for now in [
        "2026-11-29T19:42:00.000Z",
        "2026-11-29T19:42:00.076196921Z",
        "2026-11-29T19:42:53.968843761Z",
        "2026-11-29T19:42:59.999999999Z",
    ] {
        assert_eq!(
            latest_slot(&d, utc(now)),
            Some(utc("2026-11-29T19:42:00Z")),
            "at {now}"
        );
    }
    let d = digest("0 7 * * *", "Europe/Berlin");
    assert_eq!(
        latest_slot(&d, utc("2026-11-29T12:34:56.789Z")),
        Some(utc("2026-11-29T06:00:00Z"))
    );
}

#[test]
fn a_weekly_schedule_finds_the_last_monday() {
    let d = digest("0 7 * * 1", "UTC");
    // 2026-11-29 is a Sunday: the latest slot is Monday 2026-11-23 07:00.
    assert_eq!(
        latest_slot(&d, utc("2026-11-29T10:00:00Z")),
        Some(utc("2026-11-23T07:00:00Z"))
    );
    assert_eq!(
        latest_slot(&d, utc("2026-11-23T07:00:00Z")),
        Some(utc("2026-11-23T07:00:00Z")),
        "a slot is due at its own minute"
    );
}

#[test]
fn a_slot_found_within_catch_up_is_sent_and_an_older_one_is_missed() {
    let d = digest("0 7 * * *", "UTC");
    assert_eq!(
        decide(&d, utc("2026-11-29T08:59:00Z")),
        Decision::Plan(utc("2026-11-29T07:00:00Z"))
    );
    assert_eq!(
        decide(&d, utc("2026-11-29T09:01:00Z")),
        Decision::Missed(utc("2026-11-29T07:00:00Z"))
    );
}

on_both_backends!(
    ticking_twice_in_the_same_slot_plans_one_run,
    a_missed_slot_is_recorded_and_not_sent,
    a_digest_that_never_ran_starts_with_its_next_slot,
    a_digest_that_ran_before_catches_up_a_slot_missed_while_stopped,
    a_paused_digest_sends_nothing_until_resumed_then_its_next_slot,
);

async fn ticking_twice_in_the_same_slot_plans_one_run(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    let d = digest("0 7 * * *", "Europe/Berlin");
    let now = Utc.with_ymd_and_hms(2026, 11, 29, 6, 0, 30).unwrap();

    let first = reconcile(&store, std::slice::from_ref(&d), now).await;
    let Ok(Some(PlanOutcome::Planned { run_id, .. })) = first[0].1 else {
        panic!("{first:?}");
    };
    let second = reconcile(
        &store,
        std::slice::from_ref(&d),
        now + Duration::seconds(30),
    )
    .await;
    assert!(
        matches!(second[0].1, Ok(Some(PlanOutcome::Exists { run_id: r, .. })) if r == run_id),
        "{second:?}"
    );
    let runs = store.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].slot.0, utc("2026-11-29T06:00:00Z"));
}

async fn a_missed_slot_is_recorded_and_not_sent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    let d = digest("0 7 * * *", "UTC");

    let results = reconcile(
        &store,
        std::slice::from_ref(&d),
        utc("2026-11-29T12:00:00Z"),
    )
    .await;
    assert!(matches!(results[0].1, Ok(None)), "{results:?}");
    let runs = store.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, "missed");
    assert!(store.unfinished_runs(None).await.unwrap().is_empty());
}

async fn a_digest_that_never_ran_starts_with_its_next_slot(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    // Weekly on Monday at 08:00 in Berlin; the daemon first starts at 09:06
    // that Monday, within catch_up (2 h) of the slot.
    let d = digest("0 8 * * 1", "Europe/Berlin");
    let start = utc("2026-11-30T08:06:00Z");
    let slot = utc("2026-11-30T07:00:00Z");
    let next = utc("2026-12-07T07:00:00Z");

    let seen = outlook(&store, &d, start).await.unwrap();
    assert_eq!(seen.at_start, AtStart::FirstStart(slot));
    assert_eq!(seen.next, Some(next));
    assert!(
        seen.describe(&d)
            .starts_with("next 2026-12-07T08:00:00+01:00; never run"),
        "{}",
        seen.describe(&d)
    );
    let started = first_start(&store, std::slice::from_ref(&d), start).await;
    assert_eq!(started[0].1.as_ref().unwrap(), &seen);

    // The ticks of that slot send nothing: it is recorded as missed.
    for minutes in [0, 1, 53] {
        let now = start + Duration::minutes(minutes);
        let tick = reconcile(&store, std::slice::from_ref(&d), now).await;
        assert!(
            matches!(tick[0].1, Ok(Some(PlanOutcome::Exists { status, .. })) if status == "missed"),
            "{tick:?}"
        );
    }
    assert!(store.unfinished_runs(None).await.unwrap().is_empty());
    // A restart now has nothing to send either.
    let again = outlook(&store, &d, start + Duration::minutes(5))
        .await
        .unwrap();
    assert_eq!(again.at_start, AtStart::Nothing);

    // The next slot is the digest's first run.
    let tick = reconcile(
        &store,
        std::slice::from_ref(&d),
        next + Duration::seconds(1),
    )
    .await;
    assert!(
        matches!(tick[0].1, Ok(Some(PlanOutcome::Planned { .. }))),
        "{tick:?}"
    );
    let runs = store.recent_runs(10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].slot.0, runs[0].status.as_str()),
        (next, "finished")
    );
}

async fn a_digest_that_ran_before_catches_up_a_slot_missed_while_stopped(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    let d = digest("0 7 * * *", "UTC");
    // It ran yesterday; the daemon was down at today's 07:00 and starts
    // at 08:30, within catch_up.
    let yesterday = utc("2026-11-29T07:00:00Z");
    let ran = reconcile(&store, std::slice::from_ref(&d), yesterday).await;
    assert!(
        matches!(ran[0].1, Ok(Some(PlanOutcome::Planned { .. }))),
        "{ran:?}"
    );
    let start = utc("2026-11-30T08:30:00Z");
    let slot = utc("2026-11-30T07:00:00Z");

    let started = first_start(&store, std::slice::from_ref(&d), start).await;
    let seen = started[0].1.as_ref().unwrap();
    assert_eq!(seen.at_start, AtStart::CatchUp(slot));
    assert!(
        seen.describe(&d).contains(
            "the slot of 2026-11-30T07:00:00+00:00 was missed while stopped and is sent at start"
        ),
        "{}",
        seen.describe(&d)
    );
    let tick = reconcile(&store, std::slice::from_ref(&d), start).await;
    assert!(
        matches!(tick[0].1, Ok(Some(PlanOutcome::Planned { .. }))),
        "{tick:?}"
    );
}

async fn a_paused_digest_sends_nothing_until_resumed_then_its_next_slot(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = Store::connect(&db.url).await.unwrap();
    let d = digest("0 7 * * *", "UTC");
    let day = |n: i64| utc("2026-11-28T07:00:00Z") + Duration::days(n);
    // It ran on the 28th, then was paused in the store.
    let ran = reconcile(&store, std::slice::from_ref(&d), day(0)).await;
    assert!(
        matches!(ran[0].1, Ok(Some(PlanOutcome::Planned { .. }))),
        "{ran:?}"
    );
    assert!(store.pause_digest(&d.name, Timestamp::now()).await.unwrap());
    assert!(!store.pause_digest(&d.name, Timestamp::now()).await.unwrap());
    assert_eq!(
        outlook(&store, &d, day(1)).await.unwrap().at_start,
        AtStart::Paused
    );
    // The slot of the 29th comes while paused: recorded, not sent.
    let paused = reconcile(&store, std::slice::from_ref(&d), day(1)).await;
    assert!(matches!(paused[0].1, Ok(None)), "{paused:?}");
    assert!(store.unfinished_runs(None).await.unwrap().is_empty());
    // Resumed an hour later (within catch_up): that slot stays missed; the
    // next one is sent.
    assert!(store.resume_digest(&d.name).await.unwrap());
    let later = day(1) + Duration::hours(1);
    assert_eq!(
        outlook(&store, &d, later).await.unwrap().at_start,
        AtStart::Nothing
    );
    let tick = reconcile(&store, std::slice::from_ref(&d), later).await;
    assert!(
        matches!(tick[0].1, Ok(Some(PlanOutcome::Exists { status, .. })) if status == "missed"),
        "{tick:?}"
    );
    let next = reconcile(&store, std::slice::from_ref(&d), day(2)).await;
    assert!(
        matches!(next[0].1, Ok(Some(PlanOutcome::Planned { .. }))),
        "{next:?}"
    );

    // Paused by the configuration: the same, with no command.
    let configured = Digest {
        paused: true,
        ..d.clone()
    };
    let tick = reconcile(&store, std::slice::from_ref(&configured), day(3)).await;
    assert!(matches!(tick[0].1, Ok(None)), "{tick:?}");
    let runs = store.recent_runs(10).await.unwrap();
    let statuses: Vec<&str> = runs.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["missed", "finished", "missed", "finished"]);
}
