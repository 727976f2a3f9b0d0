//! The digest pipeline end to end: stored articles → run → rendered email
//! → a real SMTP server (or the outbox), checked as a reader's mail client
//! would see it.

use chrono::{DateTime, Duration, Utc};
use gazette::app;
use gazette::domain::{EmailAddress, SubscriberStatus};
use gazette::store::Timestamp;
use mail_parser::MimeHeaders;

use crate::helpers::{Backend, SmtpServer, TestDb, Workspace, digest_section};
use crate::on_both_backends;
use crate::smtp::Behaviour;

on_both_backends!(
    each_subscriber_receives_exactly_one_correct_digest_over_smtp,
    a_relay_without_pipelining_gets_the_same_digests_one_command_at_a_time,
    a_digest_with_nothing_new_is_skipped_and_sends_nothing,
    sending_the_same_slot_twice_sends_nothing_the_second_time,
    a_second_send_without_new_articles_sends_nothing,
    unsubscribed_readers_receive_nothing,
    a_rejected_recipient_fails_alone_with_the_relay_reply,
    the_outbox_gets_one_eml_file_per_subscriber,
    preview_writes_the_email_that_send_delivers,
    a_reader_who_leaves_after_planning_is_skipped_not_mailed,
    the_rate_limit_spaces_messages_out,
    a_worker_that_panics_leaves_its_delivery_to_be_retried_and_the_run_finishes,
);

const HOSTILE_TITLE: &str =
    "Breaking: <script>alert(\"x\")</script> & \"quotes\"\r\nBcc: victim@example.org";

/// A fresh database, `smtp` as the relay, the daily digest (with `extra`
/// keys), and the articles and readers of [`seed`].
async fn fixture(
    backend: Backend,
    smtp: SmtpServer,
    extra: &str,
) -> (TestDb, SmtpServer, Workspace, gazette::delivery::Engine) {
    let db = TestDb::new(backend).await;
    let ws = Workspace::new(&db.url, Some(smtp.port), &digest_section("daily", extra));
    let engine = seed(&ws).await;
    (db, smtp, ws, engine)
}

/// Articles (one of them hostile) and three subscribers, one with a
/// non-ASCII name and one with no name.
async fn seed(ws: &Workspace) -> gazette::delivery::Engine {
    let engine = ws.engine().await;
    let now = Utc::now();
    let json = serde_json::json!([
        {"url": "https://example.org/one", "title": "Ünïcode headlines — déjà vu", "summary": "First summary\n. A line that starts with a dot", "author": "Zoë", "published_at": (now - Duration::hours(3)).to_rfc3339()},
        {"url": "https://example.org/two", "title": HOSTILE_TITLE, "summary": "<img src=x onerror=alert(1)> 'single'", "published_at": (now - Duration::hours(2)).to_rfc3339()},
        {"url": "https://example.org/old", "title": "Too old", "published_at": (now - Duration::days(30)).to_rfc3339()},
    ]);
    let path = ws.dir.path().join("articles.json");
    std::fs::write(&path, json.to_string()).unwrap();
    app::articles_import(&engine, path.to_str().unwrap())
        .await
        .unwrap();
    app::subscribers_add(&engine, "ada@example.org", Some("Ada Lovelace".into()), &[])
        .await
        .unwrap();
    app::subscribers_add(&engine, "zoe@example.org", Some("Zoë Ünal".into()), &[])
        .await
        .unwrap();
    app::subscribers_add(&engine, "anon@example.org", None, &[])
        .await
        .unwrap();
    engine
}

/// A header's value as written (unfolded, trimmed).
fn header_text(m: &mail_parser::Message<'_>, name: &str) -> String {
    m.header_raw(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .replace("\r\n", "")
        .trim()
        .to_string()
}

/// MIME carries text with CRLF line ends; the preview files use LF.
fn lf(text: &str) -> String {
    text.replace("\r\n", "\n")
}

async fn each_subscriber_receives_exactly_one_correct_digest_over_smtp(backend: Backend) {
    let smtp = digests_are_correct_through(backend, SmtpServer::start()).await;
    assert_eq!(smtp.pipelined(), 3, "the relay offers PIPELINING");
}

async fn a_relay_without_pipelining_gets_the_same_digests_one_command_at_a_time(backend: Backend) {
    let smtp = SmtpServer::start_with(Behaviour {
        pipelining: false,
        ..Behaviour::default()
    });
    let smtp = digests_are_correct_through(backend, smtp).await;
    assert_eq!(smtp.pipelined(), 0, "commands sent before their reply");
}

/// Sends the daily digest to the three readers of [`seed`] through `smtp`
/// and checks every message as their mail clients would see it.
async fn digests_are_correct_through(backend: Backend, smtp: SmtpServer) -> SmtpServer {
    // The subject template uses an article title: it must stay one header.
    let subject = r#"subject = "{{ digest.title }} — {{ articles[0].title }}""#;
    let (_db, smtp, _ws, engine) = fixture(backend, smtp, subject).await;

    let run_id = app::send(&engine, "daily", None, false)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(smtp.received().len(), 3, "one message per subscriber");
    for (email, name) in [
        ("ada@example.org", Some("Ada Lovelace")),
        ("zoe@example.org", Some("Zoë Ünal")),
        ("anon@example.org", None),
    ] {
        let got = smtp.received_by(email);
        assert_eq!(got.len(), 1, "{email} got {} messages", got.len());
        assert_eq!(got[0].from, "digest@news.example.org");
        let m = got[0].parsed();
        let sub = engine
            .store
            .find_subscriber(&EmailAddress::parse(email).unwrap())
            .await
            .unwrap()
            .unwrap();

        // Structure: multipart/alternative, text/plain first, then text/html.
        let ct = m.content_type().unwrap();
        assert_eq!(
            (ct.ctype(), ct.subtype()),
            ("multipart", Some("alternative"))
        );
        let parts: Vec<String> = m
            .parts
            .iter()
            .skip(1)
            .map(|p| {
                let ct = p.content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(parts, ["text/plain", "text/html"]);

        // Headers.
        let from = m.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some("Gazette Test"));
        assert_eq!(from.address(), Some("digest@news.example.org"));
        let to = m.to().unwrap().first().unwrap();
        assert_eq!(to.address(), Some(email));
        assert_eq!(to.name(), name);
        assert_eq!(
            m.subject().unwrap(),
            "The daily Digest — Breaking: <script>alert(\"x\")</script> & \"quotes\" Bcc: victim@example.org"
        );
        assert!(m.date().is_some());
        assert_eq!(
            m.message_id().unwrap(),
            format!("daily.{run_id}.{}@news.example.org", sub.id)
        );
        assert_eq!(
            header_text(&m, "List-Id"),
            "The daily Digest <daily.news.example.org>"
        );
        let unsubscribe = format!(
            "https://news.example.org/unsubscribe/{}",
            engine.tokens.for_reader(sub.id)
        );
        assert_eq!(
            header_text(&m, "List-Unsubscribe"),
            format!("<{unsubscribe}>")
        );
        assert_eq!(
            header_text(&m, "List-Unsubscribe-Post"),
            "List-Unsubscribe=One-Click"
        );
        assert!(m.header("Bcc").is_none(), "an article title added a header");

        // Bodies: the new articles only, newest first; article text is data.
        let text = m.body_text(0).unwrap();
        let html = m.body_html(0).unwrap();
        assert!(text.contains("Ünïcode headlines — déjà vu"), "{text}");
        // SMTP doubles a dot at the start of a line, and the relay undoes it.
        assert!(
            lf(&text).contains("\n. A line that starts with a dot\n"),
            "{text}"
        );
        assert!(text.contains(&unsubscribe));
        assert!(!text.contains("Too old"));
        let greeting = match name {
            Some(n) => format!("Hello {n}, here are 2 new articles."),
            None => "Hello, here are 2 new articles.".to_string(),
        };
        assert!(text.contains(&greeting), "{text}");
        assert!(
            text.find("Breaking:").unwrap() < text.find("Ünïcode").unwrap(),
            "newest first"
        );
        assert!(html.contains("Ünïcode headlines — déjà vu"));
        // (The template's CSS is inlined, and the document written out
        // again escapes `<` and `&` in text, `&` and `"` in attributes.)
        assert!(
            html.contains("&lt;script&gt;alert(\"x\")&lt;/script&gt;"),
            "{html}"
        );
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img src=x"));
        let href = format!("<a href=\"{unsubscribe}\" style=\"");
        assert!(html.contains(&href), "{href} in {html}");
        assert!(html.contains("<table"), "a table-based layout");
    }

    let counts = engine.store.delivery_counts(run_id).await.unwrap();
    assert_eq!((counts.sent, counts.failed, counts.open()), (3, 0, 0));
    let run = engine.store.run(run_id).await.unwrap().unwrap();
    assert_eq!(run.status, "finished");
    assert_eq!(engine.store.run_articles(run_id).await.unwrap().len(), 2);
    smtp
}

async fn a_digest_with_nothing_new_is_skipped_and_sends_nothing(backend: Backend) {
    let (_db, smtp, _ws, engine) =
        fixture(backend, SmtpServer::start(), "tags = [\"gardening\"]").await;

    let run_id = app::send(&engine, "daily", None, false)
        .await
        .unwrap()
        .unwrap();

    assert!(smtp.received().is_empty());
    let run = engine.store.run(run_id).await.unwrap().unwrap();
    assert_eq!(run.status, "skipped");
    assert_eq!(engine.store.delivery_counts(run_id).await.unwrap().sent, 0);
}

async fn sending_the_same_slot_twice_sends_nothing_the_second_time(backend: Backend) {
    let (_db, smtp, _ws, engine) =
        fixture(backend, SmtpServer::start(), "skip_if_empty = false").await;
    let slot: DateTime<Utc> = Utc::now() - Duration::minutes(1);

    let first = app::send(&engine, "daily", Some(slot), false)
        .await
        .unwrap();
    assert_eq!(smtp.received().len(), 3);
    let second = app::send(&engine, "daily", Some(slot), false)
        .await
        .unwrap();
    assert_eq!(first, second, "the same run");
    assert_eq!(smtp.received().len(), 3, "nothing sent again");
}

async fn a_second_send_without_new_articles_sends_nothing(backend: Backend) {
    let (_db, smtp, _ws, engine) = fixture(backend, SmtpServer::start(), "").await;
    // Slots and the new article's time a second apart, in the past.
    let now = Utc::now();
    let at = |seconds_ago: i64| now - Duration::seconds(seconds_ago);

    app::send(&engine, "daily", Some(at(5)), false)
        .await
        .unwrap();
    assert_eq!(smtp.received().len(), 3);
    let second = app::send(&engine, "daily", Some(at(4)), false)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(smtp.received().len(), 3);
    assert_eq!(
        engine.store.run(second).await.unwrap().unwrap().status,
        "skipped"
    );

    // A new article after the first run goes out in the next one, alone.
    let engine2 = &engine;
    app::articles_add(
        engine2,
        gazette::import::ArticleInput {
            url: "https://example.org/fresh".into(),
            title: "Fresh news".into(),
            summary: None,
            body: None,
            author: None,
            tags: vec![],
            published_at: Some(at(3).to_rfc3339()),
            image_url: None,
        },
    )
    .await
    .unwrap();
    app::send(&engine, "daily", Some(at(2)), false)
        .await
        .unwrap();
    let ada = smtp.received_by("ada@example.org");
    assert_eq!(ada.len(), 2);
    let text = ada[1].parsed().body_text(0).unwrap().into_owned();
    assert!(
        text.contains("Fresh news") && !text.contains("Ünïcode"),
        "{text}"
    );
}

async fn unsubscribed_readers_receive_nothing(backend: Backend) {
    let (_db, smtp, _ws, engine) = fixture(backend, SmtpServer::start(), "").await;
    engine
        .store
        .set_subscriber_status(
            &EmailAddress::parse("zoe@example.org").unwrap(),
            SubscriberStatus::Unsubscribed,
            Timestamp::now(),
        )
        .await
        .unwrap();

    app::send(&engine, "daily", None, false).await.unwrap();

    assert_eq!(smtp.received().len(), 2);
    assert!(smtp.received_by("zoe@example.org").is_empty());
}

async fn a_rejected_recipient_fails_alone_with_the_relay_reply(backend: Backend) {
    let (_db, smtp, _ws, engine) = fixture(
        backend,
        SmtpServer::start_rejecting(&["anon@example.org"]),
        "",
    )
    .await;

    let run_id = app::send(&engine, "daily", None, false)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(smtp.received().len(), 2);
    let counts = engine.store.delivery_counts(run_id).await.unwrap();
    assert_eq!((counts.sent, counts.failed), (2, 1));
    let failed = engine.store.failed_deliveries(run_id).await.unwrap();
    assert_eq!(failed[0].email, "anon@example.org");
    let reply = failed[0].last_error.as_deref().unwrap();
    assert!(reply.contains("550"), "{reply}");
    assert_eq!(
        engine.store.run(run_id).await.unwrap().unwrap().status,
        "finished"
    );
}

async fn the_outbox_gets_one_eml_file_per_subscriber(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ws = Workspace::new(&db.url, None, &digest_section("daily", ""));
    let engine = seed(&ws).await;

    let run_id = app::send(&engine, "daily", None, false)
        .await
        .unwrap()
        .unwrap();

    let mut files: Vec<String> = std::fs::read_dir(ws.outbox())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert!(
            f.starts_with(&format!("daily-{run_id}-")) && f.ends_with(".eml"),
            "{f}"
        );
        let bytes = std::fs::read(ws.outbox().join(f)).unwrap();
        let m = mail_parser::MessageParser::default().parse(&bytes).unwrap();
        assert!(m.body_text(0).unwrap().contains("Ünïcode headlines"));
    }
}

async fn preview_writes_the_email_that_send_delivers(backend: Backend) {
    let (_db, smtp, ws, engine) = fixture(backend, SmtpServer::start(), "").await;
    let out = ws.dir.path().join("preview");

    let files = app::preview(&engine, "daily", Some("zoe@example.org"), &out, None)
        .await
        .unwrap();
    assert_eq!(files.articles, 2);
    let preview_html = std::fs::read_to_string(&files.html).unwrap();
    let preview_text = std::fs::read_to_string(&files.text).unwrap();
    let eml = std::fs::read(&files.eml).unwrap();
    let preview = mail_parser::MessageParser::default().parse(&eml).unwrap();
    assert_eq!(lf(&preview.body_html(0).unwrap()), lf(&preview_html));

    app::send(&engine, "daily", None, false).await.unwrap();
    let sent = smtp.received_by("zoe@example.org");
    let sent = sent[0].parsed();
    let sent_html = lf(&sent.body_html(0).unwrap());
    let sent_text = lf(&sent.body_text(0).unwrap());
    // The one difference: once the run exists, the email links to its web view.
    assert_eq!(
        without_web_view(&sent_html),
        lf(&preview_html),
        "the preview is the email"
    );
    assert_eq!(without_web_view(&sent_text), lf(&preview_text));
    assert_eq!(sent.subject(), preview.subject());

    // A preview of that run renders the sent email exactly.
    let run = engine.store.recent_runs(1).await.unwrap()[0].id;
    let again = app::preview(&engine, "daily", Some("zoe@example.org"), &out, Some(run))
        .await
        .unwrap();
    assert_eq!(
        lf(&std::fs::read_to_string(&again.html).unwrap()),
        sent_html
    );
    assert_eq!(
        lf(&std::fs::read_to_string(&again.text).unwrap()),
        sent_text
    );
    let eml = std::fs::read(&again.eml).unwrap();
    let again = mail_parser::MessageParser::default().parse(&eml).unwrap();
    assert_eq!(again.message_id(), sent.message_id());
    assert_eq!(again.subject(), sent.subject());
}

/// Removes the "View in your browser" link (HTML row or text line).
fn without_web_view(body: &str) -> String {
    let Some(at) = body.find("View in your browser") else {
        panic!("no web view link in {body}");
    };
    if body.contains("<html") {
        let start = body[..at].rfind("<tr>").unwrap();
        let end = at + body[at..].find("</tr>\n").unwrap() + "</tr>\n".len();
        format!("{}{}", &body[..start], &body[end..])
    } else {
        let start = body[..at].rfind('\n').map_or(0, |i| i + 1);
        let end = at + body[at..].find('\n').map_or(body.len() - at, |i| i + 1);
        format!("{}{}", &body[..start], &body[end..])
    }
}

async fn a_reader_who_leaves_after_planning_is_skipped_not_mailed(backend: Backend) {
    let (_db, smtp, _ws, engine) = fixture(backend, SmtpServer::start(), "").await;
    let digest = engine.settings.digest("daily").unwrap().clone();
    let gazette::store::PlanOutcome::Planned { run_id, deliveries } =
        gazette::delivery::plan(&engine.store, &digest, Utc::now(), Utc::now())
            .await
            .unwrap()
    else {
        panic!("not planned");
    };
    assert_eq!(deliveries, 3);
    engine
        .store
        .set_subscriber_status(
            &EmailAddress::parse("ada@example.org").unwrap(),
            SubscriberStatus::Unsubscribed,
            Timestamp::now(),
        )
        .await
        .unwrap();

    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    gazette::delivery::deliver_unfinished(
        &engine,
        None,
        gazette::delivery::Drain::UntilFinished,
        &shutdown,
    )
    .await
    .unwrap();

    assert!(smtp.received_by("ada@example.org").is_empty());
    assert_eq!(smtp.received().len(), 2);
    let counts = engine.store.delivery_counts(run_id).await.unwrap();
    assert_eq!((counts.sent, counts.skipped), (2, 1));
}

async fn the_rate_limit_spaces_messages_out(backend: Backend) {
    let db = TestDb::new(backend).await;
    let smtp = SmtpServer::start();
    let ws = Workspace::with_delivery(
        &db.url,
        Some(smtp.port),
        "rate_per_second = 10",
        &digest_section("daily", ""),
    );
    let engine = seed(&ws).await;
    for i in 0..7 {
        app::subscribers_add(&engine, &format!("extra{i}@example.org"), None, &[])
            .await
            .unwrap();
    }
    let started = std::time::Instant::now();
    app::send(&engine, "daily", None, false).await.unwrap();
    // 10 messages at 10 per second: the first goes at once, the last after
    // at least 0.9 s (a lower bound only: a slow machine only adds time).
    assert_eq!(smtp.received().len(), 10);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(850),
        "{:?}",
        started.elapsed()
    );
}

async fn a_worker_that_panics_leaves_its_delivery_to_be_retried_and_the_run_finishes(
    backend: Backend,
) {
    let (_db, smtp, _ws, mut engine) = fixture(backend, SmtpServer::start(), "").await;
    engine.panic_for_tests = Some("zoe@example.org".into());

    let sent = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        app::send(&engine, "daily", None, false),
    )
    .await
    .expect("send hung after a worker panicked");
    let run_id = sent.unwrap().unwrap();

    // The other readers got their digest, once; the one whose delivery
    // panicked got nothing, and the run is finished with that delivery
    // failed after its attempts (max_attempts = 3), its reason recorded.
    assert_eq!(smtp.received_by("ada@example.org").len(), 1);
    assert_eq!(smtp.received_by("anon@example.org").len(), 1);
    assert!(smtp.received_by("zoe@example.org").is_empty());
    let counts = engine.store.delivery_counts(run_id).await.unwrap();
    assert_eq!((counts.sent, counts.failed, counts.open()), (2, 1, 0));
    let failed = engine.store.failed_deliveries(run_id).await.unwrap();
    assert_eq!(failed[0].email, "zoe@example.org");
    assert_eq!(failed[0].attempts, 3);
    let reason = failed[0].last_error.as_deref().unwrap();
    assert!(reason.contains("internal error while sending"), "{reason}");
    assert_eq!(
        engine.store.run(run_id).await.unwrap().unwrap().status,
        "finished"
    );

    // Once the fault is gone, `retry` delivers it.
    engine.panic_for_tests = None;
    app::retry(&engine, run_id).await.unwrap();
    assert_eq!(smtp.received_by("zoe@example.org").len(), 1);
}
