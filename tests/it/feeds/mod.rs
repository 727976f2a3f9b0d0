//! Feeds end to end: a real HTTP server on loopback serves fixture feeds
//! (and the ways sites fail), `gazette feeds fetch` / `feeds list` and the
//! daemon poll them into the store, and a digest sent over the recording
//! SMTP server carries their entries, sanitized.

pub mod server;

use std::time::Duration;

use chrono::{DateTime, Utc};
use gazette::feeds::{self, Fetcher, Outcome};
use gazette::store::{RunArticle, Store, Timestamp};

use self::server::{FeedServer, Route};
use crate::helpers::{
    Backend, Log, SmtpServer, TestDb, Workspace, digest_section, stderr, stdout, wait_for,
};
use crate::on_both_backends;

on_both_backends!(
    rss_atom_and_rss1_entries_become_articles_with_their_fields,
    undated_linkless_and_relative_entries_are_stored_and_keep_their_first_time,
    a_changed_entry_updates_its_article_and_the_same_url_in_two_feeds_is_one_article,
    hostile_html_reaches_neither_the_store_nor_a_digest,
    a_304_changes_nothing_and_the_list_says_not_modified,
    failing_feeds_keep_their_error_and_the_others_are_still_fetched,
    two_pollers_fetch_a_feed_once,
);

/// A `[[feeds]]` section.
fn feed_section(name: &str, url: &str, extra: &str) -> String {
    format!("\n[[feeds]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

/// Every article in the store, newest first, as a run would take them.
async fn articles(store: &Store) -> Vec<RunArticle> {
    let long_ago = Timestamp::from(DateTime::<Utc>::from_timestamp(0, 0).unwrap());
    let later = Timestamp::from(Utc::now() + chrono::Duration::days(3650));
    store
        .select_articles(long_ago, later, &[], 1000)
        .await
        .unwrap()
}

fn find<'a>(articles: &'a [RunArticle], url: &str) -> &'a RunArticle {
    articles
        .iter()
        .find(|a| a.url == url)
        .unwrap_or_else(|| panic!("no article at {url}: {articles:#?}"))
}

fn at(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap()
        .with_timezone(&Utc)
}

async fn rss_atom_and_rss1_entries_become_articles_with_their_fields(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = FeedServer::start();
    server.fixture("/rss2.xml", "rss2.xml", None);
    server.fixture("/atom.xml", "atom.xml", None);
    server.fixture("/rss1.xml", "rss1.xml", None);
    let sections = [
        feed_section("harbour", &server.url("/rss2.xml"), "tags = [\"news\"]"),
        feed_section("orbit", &server.url("/atom.xml"), ""),
        // No name: the URL's host, 127.0.0.1.
        format!("\n[[feeds]]\nurl = \"{}\"\n", server.url("/rss1.xml")),
    ]
    .concat();
    let ws = Workspace::new(&db.url, None, &sections);

    let out = ws.run(&["feeds", "fetch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("harbour: 2 added, 0 updated, 0 unchanged, 0 skipped"),
        "{printed}"
    );
    assert!(
        printed.contains("orbit: 2 added, 0 updated, 0 unchanged, 0 skipped"),
        "{printed}"
    );
    assert!(
        printed.contains("127.0.0.1: 1 added, 0 updated, 0 unchanged, 0 skipped"),
        "{printed}"
    );
    assert!(
        printed.contains("  added    Tides & the new pier  https://harbour.example.org/2026/tides"),
        "{printed}"
    );
    // The User-Agent names the program and its version.
    let agent = &server.requests("/rss2.xml")[0].headers["user-agent"];
    assert_eq!(
        agent,
        &format!(
            "Gazette/{} (+https://news.example.org)",
            env!("CARGO_PKG_VERSION")
        )
    );

    let engine = ws.engine().await;
    let stored = articles(&engine.store).await;
    assert_eq!(stored.len(), 5, "{stored:#?}");

    let tides = find(&stored, "https://harbour.example.org/2026/tides");
    assert_eq!(tides.title, "Tides & the new pier");
    assert_eq!(tides.author.as_deref(), Some("Mara Quay"));
    assert_eq!(tides.tags, ["Harbour", "Local", "news"]);
    assert_eq!(tides.published_at, at("2026-11-30T08:15:00Z"));
    assert_eq!(
        tides.summary.as_deref(),
        Some("<p>The pier opens on <b>Monday</b>.</p>")
    );
    assert_eq!(
        tides.summary_text.as_deref(),
        Some("The pier opens on Monday.")
    );
    assert_eq!(
        tides.body.as_deref(),
        Some("<p>The pier opens on <b>Monday</b>, at high tide.</p>")
    );
    assert!(tides.html);
    // The enclosure of an image type.
    assert_eq!(
        tides.image_url.as_deref(),
        Some("https://harbour.example.org/img/pier.jpg")
    );
    let fog = find(&stored, "https://harbour.example.org/2026/fog");
    assert_eq!(
        fog.image_url.as_deref(),
        Some("https://harbour.example.org/img/fog-thumb.jpg")
    );
    assert_eq!(fog.tags, ["news"]);

    let launch = find(&stored, "https://orbit.example.net/launch-window");
    assert_eq!(launch.title, "Launch window opens");
    assert_eq!(launch.author.as_deref(), Some("Ilse Orbit"));
    assert_eq!(launch.tags, ["Space"]);
    // Published, not updated, when it has both.
    assert_eq!(launch.published_at, at("2026-11-30T06:30:00Z"));
    assert_eq!(
        launch.image_url.as_deref(),
        Some("https://orbit.example.net/img/rocket.png")
    );
    assert_eq!(
        launch.summary_text.as_deref(),
        Some("The window opens at dawn.")
    );
    let updated = find(&stored, "https://orbit.example.net/only-updated");
    assert_eq!(updated.published_at, at("2026-11-29T12:00:00Z"));
    // A plain-text summary is text: its angle brackets are not a tag.
    assert_eq!(
        updated.summary.as_deref(),
        Some("Plain text &lt;not a tag&gt; summary.")
    );
    assert_eq!(
        updated.summary_text.as_deref(),
        Some("Plain text <not a tag> summary.")
    );

    let bees = find(&stored, "https://meadow.example.com/notes/bees");
    assert_eq!(bees.title, "Bees in November");
    assert_eq!(bees.author.as_deref(), Some("Tom Hedger"));
    assert_eq!(bees.published_at, at("2026-11-28T15:45:00Z"));
    assert_eq!(
        bees.summary_text.as_deref(),
        Some("A late swarm by the hedge.")
    );

    // `feeds list` shows each feed's state and count; --json the same.
    let out = ws.run(&["feeds", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    let harbour = listed
        .lines()
        .find(|l| l.starts_with("harbour  "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(harbour.contains("  ok  "), "{harbour}");
    assert!(harbour.contains("2 articles"), "{harbour}");
    let out = ws.run(&["feeds", "list", "--json"]);
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let orbit = lines.iter().find(|l| l["name"] == "orbit").unwrap();
    assert_eq!(orbit["status"], "ok");
    assert_eq!(orbit["articles"], 2);
    assert_eq!(orbit["error"], serde_json::Value::Null);
    let last = at(orbit["last_fetch_at"].as_str().unwrap());
    let next = at(orbit["next_fetch_at"].as_str().unwrap());
    assert_eq!((next - last).num_minutes(), 15, "the default interval");
}

async fn undated_linkless_and_relative_entries_are_stored_and_keep_their_first_time(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = FeedServer::start();
    server.fixture("/pages/feed.xml", "undated.xml", None);
    let ws = Workspace::new(
        &db.url,
        None,
        &feed_section("loose", &server.url("/pages/feed.xml"), ""),
    );
    let engine = ws.engine().await;
    let before = Timestamp::now();
    let out = ws.run(&["feeds", "fetch", "loose"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    assert!(
        printed.contains("loose: 3 added, 0 updated, 0 unchanged, 1 skipped"),
        "{printed}"
    );
    assert!(
        printed.contains(
            "  skipped  entry 4 (`Nowhere to link`): no link, and its id is not an http(s) address"
        ),
        "{printed}"
    );
    let first = articles(&engine.store).await;
    assert_eq!(first.len(), 3, "{first:#?}");
    let undated = find(&first, "https://loose.example.org/no-date");
    // No date: the time it was fetched.
    assert!(undated.published_at >= before.0 && undated.published_at <= Utc::now());
    find(&first, "https://loose.example.org/by-guid");
    // Relative addresses are resolved against the feed's.
    let relative = find(&first, &server.url("/posts/relative"));
    let summary = relative.summary.as_deref().unwrap();
    assert!(
        summary.contains(&format!("href=\"{}\"", server.url("/about"))),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("src=\"{}\"", server.url("/pages/img/pic.png"))),
        "{summary}"
    );
    assert_eq!(
        relative.image_url.as_deref(),
        Some(server.url("/pages/img/pic.png").as_str())
    );

    // Fetched again later: nothing changes, and the undated entries keep
    // the time they were first seen.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let out = ws.run(&["feeds", "fetch", "loose"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("loose: 0 added, 0 updated, 3 unchanged, 1 skipped"),
        "{}",
        stdout(&out)
    );
    let again = articles(&engine.store).await;
    for a in &first {
        assert_eq!(
            find(&again, &a.url).published_at,
            a.published_at,
            "{}",
            a.url
        );
    }
}

async fn a_changed_entry_updates_its_article_and_the_same_url_in_two_feeds_is_one_article(
    backend: Backend,
) {
    let db = TestDb::new(backend).await;
    let server = FeedServer::start();
    server.fixture("/a.xml", "rss2.xml", None);
    server.fixture("/b.xml", "rss2.xml", None);
    let sections = [
        feed_section("first", &server.url("/a.xml"), "tags = [\"one\"]"),
        feed_section("second", &server.url("/b.xml"), "tags = [\"two\"]"),
    ]
    .concat();
    let ws = Workspace::new(&db.url, None, &sections);
    let engine = ws.engine().await;
    gazette::app::feeds_fetch(&engine, Some("first"))
        .await
        .unwrap();
    // The same entries from a second feed: the same articles, with the
    // tags of both feeds.
    let out = ws.run(&["feeds", "fetch", "second"]);
    assert!(
        stdout(&out).contains("second: 0 added, 2 updated, 0 unchanged, 0 skipped"),
        "{}",
        stdout(&out)
    );
    let stored = articles(&engine.store).await;
    assert_eq!(stored.len(), 2);
    let fog = find(&stored, "https://harbour.example.org/2026/fog");
    assert_eq!(fog.tags, ["one", "two"]);
    let listed = stdout(&ws.run(&["feeds", "list", "--json"]));
    for line in listed.lines() {
        let feed: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(feed["articles"], 2, "{line}");
    }

    // The feed edits an entry: its article is updated.
    let edited = server::fixture("rss2.xml").replace("Fog warning", "Fog warning lifted");
    server.route(
        "/a.xml",
        Route::Feed {
            body: edited,
            etag: None,
            delay: Duration::ZERO,
        },
    );
    let out = ws.run(&["feeds", "fetch", "first"]);
    let printed = stdout(&out);
    assert!(
        printed.contains("first: 0 added, 1 updated, 1 unchanged, 0 skipped"),
        "{printed}"
    );
    assert!(
        printed.contains("  updated  Fog warning lifted  https://harbour.example.org/2026/fog"),
        "{printed}"
    );
    let stored = articles(&engine.store).await;
    assert_eq!(
        find(&stored, "https://harbour.example.org/2026/fog").title,
        "Fog warning lifted"
    );
}

const HOSTILE: [&str; 9] = [
    "<script",
    "alert(",
    "onclick",
    "onerror",
    "onmouseover",
    "javascript:",
    "tracker.example.com",
    "<iframe",
    "<style",
];

fn assert_harmless(what: &str, text: &str) {
    let lower = text.to_ascii_lowercase();
    for bad in HOSTILE {
        assert!(!lower.contains(bad), "{what} holds `{bad}`:\n{text}");
    }
}

async fn hostile_html_reaches_neither_the_store_nor_a_digest(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpServer::start();
    let server = FeedServer::start();
    server.fixture("/hostile.xml", "hostile.xml", None);
    let sections = format!(
        "{}{}",
        digest_section("daily", ""),
        feed_section("hostile", &server.url("/hostile.xml"), "")
    );
    let ws = Workspace::new(&db.url, Some(smtp.port), &sections);
    let engine = ws.engine().await;
    gazette::app::feeds_fetch(&engine, None).await.unwrap();
    let stored = articles(&engine.store).await;
    let news = find(&stored, "https://hostile.example.org/news");
    let summary = news.summary.as_deref().unwrap();
    let body = news.body.as_deref().unwrap();
    assert_harmless("the stored summary", summary);
    assert_harmless("the stored body", body);
    assert_harmless(
        "the stored summary text",
        news.summary_text.as_deref().unwrap(),
    );
    // What is harmless stays.
    assert!(summary.contains("Normal <b>words</b>"), "{summary}");
    assert!(summary.contains("click me"), "{summary}");
    assert!(body.contains("The body."), "{body}");
    assert_eq!(
        news.image_url.as_deref(),
        Some("https://hostile.example.org/chart.png")
    );

    // A digest takes the new entry; what the reader gets is harmless too.
    gazette::app::subscribers_add(&engine, "reader@example.org", None, &[])
        .await
        .unwrap();
    // (The slot the day after the entry's date: in the digest's window.)
    gazette::app::send(&engine, "daily", Some(at("2026-12-01T06:00:00Z")), false)
        .await
        .unwrap();
    let mails = smtp.received_by("reader@example.org");
    assert_eq!(mails.len(), 1);
    let mail = mails[0].parsed();
    let html = mail.body_html(0).unwrap().into_owned();
    let text = mail.body_text(0).unwrap().into_owned();
    assert!(html.contains("Perfectly normal news"), "{html}");
    assert!(html.contains("Normal <b>words</b>"), "{html}");
    assert!(
        // (The shipped template's CSS is inlined: the document written out
        // again leaves `/` as it is.)
        html.contains(
            r#"<img src="https://hostile.example.org/chart.png" alt="Perfectly normal news" width="552" style="display:block;"#
        ),
        "{html}"
    );
    // The layout's `@media` rules are the one `<style>` block left after
    // inlining; nothing else may bring one.
    let start = html.find("<style>").expect("the layout's @media rules");
    let end = start + html[start..].find("</style>").unwrap() + "</style>".len();
    assert!(
        html[start..end].starts_with("<style>@media (max-width: 480px) {")
            && html[start..end].contains(".page-cell { padding:0 !important; }"),
        "{html}"
    );
    let mut rest = html.clone();
    rest.replace_range(start..end, "");
    assert_harmless("the digest's HTML", &rest);
    assert!(text.contains("Normal words"), "{text}");
    assert!(!text.contains("<b>"), "{text}");
    assert_harmless("the digest's text", &text);
}

async fn a_304_changes_nothing_and_the_list_says_not_modified(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = FeedServer::start();
    server.fixture("/feed.xml", "rss2.xml", Some("\"v1\""));
    let ws = Workspace::new(
        &db.url,
        None,
        &feed_section("harbour", &server.url("/feed.xml"), ""),
    );
    let out = ws.run(&["feeds", "fetch"]);
    assert!(
        stdout(&out).contains("harbour: 2 added"),
        "{}",
        stdout(&out)
    );
    let out = ws.run(&["feeds", "fetch"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "harbour: not modified");
    let requests = server.requests("/feed.xml");
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].headers.get("if-none-match"), None);
    assert_eq!(requests[1].headers["if-none-match"], "\"v1\"");
    let listed = stdout(&ws.run(&["feeds", "list"]));
    assert!(listed.contains("harbour  not modified  "), "{listed}");
    assert!(listed.contains("2 articles"), "{listed}");
    let engine = ws.engine().await;
    assert_eq!(articles(&engine.store).await.len(), 2);
}

async fn failing_feeds_keep_their_error_and_the_others_are_still_fetched(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = FeedServer::start();
    server.fixture("/good.xml", "atom.xml", None);
    server.route("/broken.xml", Route::Status(500));
    server.route("/garbage.xml", Route::Garbage);
    server.route("/slow.xml", Route::Slow(Duration::from_secs(20)));
    server.route("/huge.xml", Route::Endless(50_000_000));
    server.route("/moved.xml", Route::Redirect("/moved-again.xml".into()));
    server.route("/moved-again.xml", Route::Redirect(server.url("/rss1.xml")));
    server.fixture("/rss1.xml", "rss1.xml", None);
    server.route("/loop.xml", Route::Redirect("/loop.xml".into()));
    let sections = [
        feed_section("broken", &server.url("/broken.xml"), "interval = \"10m\""),
        feed_section("garbage", &server.url("/garbage.xml"), ""),
        feed_section("good", &server.url("/good.xml"), ""),
        feed_section("huge", &server.url("/huge.xml"), "max_bytes = 100000"),
        feed_section("loop", &server.url("/loop.xml"), ""),
        feed_section("moved", &server.url("/moved.xml"), ""),
        feed_section("slow", &server.url("/slow.xml"), "timeout = \"1s\""),
    ]
    .concat();
    let ws = Workspace::new(&db.url, None, &sections);
    let started = std::time::Instant::now();
    let out = ws.run(&["feeds", "fetch"]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the slow feed was waited for"
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("5 feeds failed"), "{}", stderr(&out));
    let printed = stdout(&out);
    for expected in [
        "broken: error: HTTP 500",
        "garbage: error: not an RSS or Atom feed",
        "good: 2 added",
        "huge: error: the feed is larger than max_bytes (100000 bytes)",
        "loop: error: more than 5 redirects",
        "moved: 1 added",
        "slow: error: no complete answer within 1s (timeout)",
    ] {
        assert!(printed.contains(expected), "no `{expected}` in:\n{printed}");
    }
    // Two redirects were followed to the feed.
    assert_eq!(server.requests("/rss1.xml").len(), 1);

    let out = ws.run(&["feeds", "list", "--json"]);
    let listed: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let feed = |name: &str| listed.iter().find(|l| l["name"] == name).unwrap().clone();
    let broken = feed("broken");
    assert_eq!(broken["status"], "error");
    assert!(
        broken["error"].as_str().unwrap().starts_with("HTTP 500"),
        "{broken}"
    );
    assert_eq!(broken["failures"], 1);
    // Backoff: twice the interval after a failure.
    let last = at(broken["last_fetch_at"].as_str().unwrap());
    let next = at(broken["next_fetch_at"].as_str().unwrap());
    assert_eq!((next - last).num_minutes(), 20);
    assert_eq!(feed("good")["status"], "ok");
    assert_eq!(feed("good")["articles"], 2);
    assert_eq!(feed("moved")["articles"], 1);
    let text = stdout(&ws.run(&["feeds", "list"]));
    assert!(
        text.lines()
            .any(|l| l.starts_with("broken  error: HTTP 500")),
        "{text}"
    );

    // It fails again: the pause doubles again.
    let out = ws.run(&["feeds", "fetch", "broken"]);
    assert!(!out.status.success());
    let listed = stdout(&ws.run(&["feeds", "list", "--json"]));
    let broken: serde_json::Value = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["name"] == "broken")
        .unwrap();
    assert_eq!(broken["failures"], 2);
    let last = at(broken["last_fetch_at"].as_str().unwrap());
    let next = at(broken["next_fetch_at"].as_str().unwrap());
    assert_eq!((next - last).num_minutes(), 40);
}

async fn two_pollers_fetch_a_feed_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let server = FeedServer::start();
    server.route(
        "/feed.xml",
        Route::Feed {
            body: server::fixture("rss2.xml"),
            etag: None,
            delay: Duration::from_millis(500),
        },
    );
    let ws = Workspace::new(
        &db.url,
        None,
        &feed_section("harbour", &server.url("/feed.xml"), ""),
    );
    // Two processes: each its own pool on the one database.
    let (a, b) = (ws.engine().await, ws.engine().await);
    let feed = &a.settings.feeds[0];
    feeds::sync(&a.store, &a.settings.feeds).await.unwrap();
    let fetcher = Fetcher::new(None).unwrap();
    let (first, second) = tokio::join!(
        feeds::poll(&a.store, &fetcher, feed, true),
        feeds::poll(&b.store, &fetcher, feed, true),
    );
    let outcomes = [first.unwrap(), second.unwrap()];
    assert_eq!(server.requests("/feed.xml").len(), 1, "{outcomes:?}");
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Stored { .. }))
            .count(),
        1,
        "{outcomes:?}"
    );
    assert!(outcomes.contains(&Outcome::NotTaken), "{outcomes:?}");
    // Fetched: not due again before its interval, for either.
    assert_eq!(
        feeds::poll(&b.store, &fetcher, feed, true).await.unwrap(),
        Outcome::NotTaken
    );
    assert_eq!(server.requests("/feed.xml").len(), 1);
}

/// `gazette run` polls its feeds on their interval; a feed that fails is
/// recorded and tried again, and neither stops the daemon nor the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_polls_its_feeds_and_a_failing_one_stops_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = FeedServer::start();
    server.fixture("/good.xml", "rss2.xml", Some("\"v1\""));
    server.route("/broken.xml", Route::Status(503));
    let sections = [
        feed_section("broken", &server.url("/broken.xml"), "interval = \"1s\""),
        feed_section("good", &server.url("/good.xml"), "interval = \"1s\""),
    ]
    .concat();
    let ws = Workspace::new(&db.url, None, &sections);
    let mut daemon = ws.spawn(&["run"]);
    let mut log = Log::of(&mut daemon);
    log.wait_for("the good feed's articles", |l| {
        l.contains("feed fetched") && l.contains("good") && l.contains("added=2")
    });
    log.wait_for("the failing feed's error", |l| {
        l.contains("feed fetch failed") && l.contains("broken") && l.contains("HTTP 503")
    });
    // Polled again on its interval: a conditional GET, answered 304.
    wait_for("a second fetch of the good feed", || {
        server.requests("/good.xml").len() >= 2
    });
    let second = &server.requests("/good.xml")[1];
    assert_eq!(second.headers["if-none-match"], "\"v1\"");
    // The broken feed waits twice its interval, then is tried again.
    wait_for("a second try of the broken feed", || {
        server.requests("/broken.xml").len() >= 2
    });
    assert!(daemon.try_wait().unwrap().is_none(), "the daemon stopped");
    let engine = ws.engine().await;
    assert_eq!(articles(&engine.store).await.len(), 2);
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// A feed sent gzipped is read; one that unpacks to more than `max_bytes`
/// (a gzip bomb) is stopped there, though what arrives is small.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gzipped_feed_is_read_and_one_that_unpacks_beyond_max_bytes_fails() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = FeedServer::start();
    server.route("/small.xml", Route::Gzip(server::fixture("atom.xml")));
    let padding = format!("<!-- {} -->", " ".repeat(2_000_000));
    let bomb = server::fixture("atom.xml").replace("<entry>", &format!("{padding}<entry>"));
    server.route("/bomb.xml", Route::Gzip(bomb));
    let sections = [
        feed_section("small", &server.url("/small.xml"), ""),
        feed_section("bomb", &server.url("/bomb.xml"), "max_bytes = 1000000"),
    ]
    .concat();
    let ws = Workspace::new(&db.url, None, &sections);
    let out = ws.run(&["feeds", "fetch"]);
    let printed = stdout(&out);
    assert!(printed.contains("small: 2 added"), "{printed}");
    assert!(
        printed.contains("bomb: error: the feed is larger than max_bytes (1000000 bytes)"),
        "{printed}"
    );
    let asked = &server.requests("/small.xml")[0].headers["accept-encoding"];
    assert!(asked.contains("gzip"), "{asked}");
}

/// Without an ETag, the Last-Modified date of the previous answer is
/// sent back, and a 304 changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_modified_date_is_sent_back_and_a_304_changes_nothing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = FeedServer::start();
    let date = "Mon, 30 Nov 2026 08:00:00 GMT";
    server.route(
        "/feed.xml",
        Route::Dated {
            body: server::fixture("rss1.xml"),
            last_modified: date.into(),
        },
    );
    let ws = Workspace::new(
        &db.url,
        None,
        &feed_section("meadow", &server.url("/feed.xml"), ""),
    );
    assert!(stdout(&ws.run(&["feeds", "fetch"])).contains("meadow: 1 added"));
    let out = ws.run(&["feeds", "fetch"]);
    assert_eq!(stdout(&out).trim(), "meadow: not modified");
    let requests = server.requests("/feed.xml");
    assert_eq!(requests[0].headers.get("if-modified-since"), None);
    assert_eq!(requests[1].headers["if-modified-since"], date);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thumbnail_on_the_item_alone_is_its_image_unless_it_is_a_pixel() {
    let db = TestDb::new(Backend::Sqlite).await;
    let server = FeedServer::start();
    server.fixture("/thumbnails.xml", "thumbnails.xml", None);
    let section = feed_section("gallery", &server.url("/thumbnails.xml"), "");
    let ws = Workspace::new(&db.url, None, &section);
    let out = ws.run(&["feeds", "fetch"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let stored = articles(&ws.engine().await.store).await;
    let image = |url: &str| find(&stored, url).image_url.clone();
    // Resolved against the feed's address.
    assert_eq!(
        image("https://gallery.example.org/bare"),
        Some(server.url("/thumbs/bare.jpg"))
    );
    // A one-pixel thumbnail is a tracker: the image in the text instead.
    assert_eq!(
        image("https://gallery.example.org/tracker").as_deref(),
        Some("https://gallery.example.org/body.jpg")
    );
    assert_eq!(
        image("https://gallery.example.org/grouped").as_deref(),
        Some("https://gallery.example.org/thumbs/grouped.jpg")
    );
}
