//! The reader pages' flows over HTTP: subscribe, confirm, unsubscribe,
//! preferences, the web view, and what bad input gets.

use chrono::Utc;
use gazette::domain::EmailAddress;
use gazette::store::Store;
use reqwest::StatusCode;

use super::{WebApp, path_of};
use crate::helpers::Backend;
use crate::on_both_backends;

on_both_backends!(
    a_reader_subscribes_confirms_receives_and_unsubscribes_with_one_click,
    preferences_change_digests_and_name,
    a_name_typed_with_control_characters_is_kept_on_one_line,
    the_web_view_shows_the_digest_to_its_reader_only,
);

async fn a_reader_subscribes_confirms_receives_and_unsubscribes_with_one_click(backend: Backend) {
    let app = WebApp::start(backend, "").await;
    let (status, page) = app.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("name=\"digest\" value=\"daily\" checked"),
        "{page}"
    );
    assert!(page.contains("The Weekly Roundup"));

    let (status, page) = app
        .post_form(
            "/subscribe",
            "email=ada%40example.org&name=Ada&digest=daily",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Check your inbox"), "{page}");
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("pending")
    );

    // No digest before confirming.
    app.publish_and_send("Before confirming", "daily").await;
    app.mailed().await;
    assert_eq!(
        app.smtp.received_by("ada@example.org").len(),
        1,
        "only the confirmation"
    );

    let link = app.confirmation_link("ada@example.org").await;
    let (status, page) = app.get(path_of(&link)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Confirm your subscription"), "{page}");
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("pending"),
        "opening the link changes nothing"
    );
    let (status, page) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("You are subscribed"), "{page}");
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("confirmed")
    );

    app.publish_and_send("After confirming", "daily").await;
    gazette::app::send(&app.engine, "weekly", None, false)
        .await
        .unwrap();
    app.mailed().await;
    let mails = app.smtp.received_by("ada@example.org");
    assert_eq!(
        mails.len(),
        2,
        "the confirmation and one daily digest, no weekly"
    );
    let digest = mails[1].parsed();
    assert!(digest.body_text(0).unwrap().contains("After confirming"));
    let unsubscribe = digest
        .header_raw("List-Unsubscribe")
        .unwrap()
        .trim()
        .trim_matches(['<', '>'])
        .to_string();
    assert!(unsubscribe.starts_with(&format!("{}/unsubscribe/", app.base)));

    // What Gmail's button does (RFC 8058).
    let r = app
        .http
        .post(&unsubscribe)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("unsubscribed")
    );

    app.publish_and_send("After leaving", "daily").await;
    app.mailed().await;
    assert_eq!(
        app.smtp.received_by("ada@example.org").len(),
        2,
        "no mail after leaving"
    );

    // Subscribing again and confirming resumes the digests.
    let (status, _) = app
        .post_form("/subscribe", "email=ada%40example.org&digest=daily")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("unsubscribed"),
        "not before confirming"
    );
    let link = app.confirmation_link("ada@example.org").await;
    let (status, _) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("confirmed")
    );
    app.publish_and_send("Welcome back", "daily").await;
    app.mailed().await;
    let mails = app.smtp.received_by("ada@example.org");
    assert_eq!(mails.len(), 4, "two confirmations and two digests");
    assert!(
        mails[3]
            .parsed()
            .body_text(0)
            .unwrap()
            .contains("Welcome back")
    );
}

async fn a_name_typed_with_control_characters_is_kept_on_one_line(backend: Backend) {
    let app = WebApp::start(backend, "").await;
    // A NUL (which Postgres cannot store) and a line break with a header.
    let (status, page) = app
        .post_form(
            "/subscribe",
            "email=eve%40example.org&name=Eve%00%0D%0ABcc%3A+x%40example.org&digest=daily",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Check your inbox"), "{page}");
    app.mailed().await;
    let mails = app.smtp.received_by("eve@example.org");
    assert_eq!(mails.len(), 1);
    let m = mails[0].parsed();
    let to = m.to().unwrap().first().unwrap();
    assert_eq!(to.name(), Some("Eve Bcc: x@example.org"));
    assert_eq!(to.address(), Some("eve@example.org"));
    assert!(m.header("Bcc").is_none());
    assert!(app.smtp.received_by("x@example.org").is_empty());
    let link = app.confirmation_link("eve@example.org").await;
    let (status, _) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::OK);
    let eve = app.reader("eve@example.org").await.unwrap();
    assert_eq!(eve.name.as_deref(), Some("Eve Bcc: x@example.org"));

    let path = format!("/preferences/{}", app.engine.tokens.for_reader(eve.id));
    let (status, page) = app
        .post_form(&path, "name=%09Eve%0AE.%00&digest=daily&action=save")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Saved."), "{page}");
    let eve = app.reader("eve@example.org").await.unwrap();
    assert_eq!(eve.name.as_deref(), Some("Eve E."));
}

async fn preferences_change_digests_and_name(backend: Backend) {
    let app = WebApp::start(backend, "").await;
    app.add_reader("grace@example.org", Some("Grace"), &["daily"])
        .await;
    let sub = app.reader("grace@example.org").await.unwrap();
    let path = format!("/preferences/{}", app.engine.tokens.for_reader(sub.id));
    let (status, page) = app.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("value=\"daily\" checked"), "{page}");
    assert!(page.contains("value=\"weekly\">"), "{page}");

    let (status, page) = app
        .post_form(&path, "name=Grace+H.&digest=weekly&action=save")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Saved."), "{page}");
    assert_eq!(
        app.engine.store.subscriber_digests(sub.id).await.unwrap(),
        vec!["weekly"]
    );
    let found = app.reader("grace@example.org").await.unwrap();
    assert_eq!(found.name.as_deref(), Some("Grace H."));

    let (status, page) = app
        .post_form(&path, "name=Grace&digest=weekly&action=unsubscribe")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("You will receive no digests"), "{page}");
    assert_eq!(
        app.status_of("grace@example.org").await.as_deref(),
        Some("unsubscribed")
    );
}

async fn the_web_view_shows_the_digest_to_its_reader_only(backend: Backend) {
    let app = WebApp::start(backend, "").await;
    app.add_reader("ada@example.org", None, &[]).await;
    app.add_reader("bob@example.org", None, &["weekly"]).await;
    app.add_article("Web view <news>").await;
    let run = gazette::app::send(&app.engine, "daily", None, false)
        .await
        .unwrap()
        .unwrap();
    app.mailed().await;
    let received = app.smtp.received_by("ada@example.org");
    let text = received[0].parsed().body_text(0).unwrap().into_owned();
    let start = text.find("View in your browser: ").unwrap() + "View in your browser: ".len();
    let link = text[start..].split_whitespace().next().unwrap().to_string();
    assert!(link.contains(&format!("/digests/{run}/")), "{link}");

    let (status, page) = app.get(path_of(&link)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Web view &lt;news&gt;"), "{page}");

    // Bob was not sent this run: his token does not open it.
    let bob = app.reader("bob@example.org").await.unwrap();
    let (status, _) = app
        .get(&format!(
            "/digests/{run}/{}",
            app.engine.tokens.for_reader(bob.id)
        ))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, page) = app.get("/archive").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("Web view &lt;news&gt;"),
        "daily is not public in this configuration"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_address_gets_a_readable_422_that_keeps_what_was_typed() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    let (status, page) = app
        .post_form(
            "/subscribe",
            "email=not-an-address&name=%3Cb%3EBold%3C%2Fb%3E&digest=weekly",
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("Please enter a valid email address"),
        "{page}"
    );
    assert!(page.contains("value=\"not-an-address\""), "{page}");
    assert!(page.contains("&lt;b&gt;Bold&lt;&#x2f;b&gt;"), "{page}");
    assert!(!page.contains("<b>Bold"));
    assert!(
        page.contains("value=\"weekly\" checked") && page.contains("value=\"daily\">"),
        "{page}"
    );

    let (status, page) = app.post_form("/subscribe", "email=ada%40example.org").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("choose at least one"), "{page}");
    app.mailed().await;
    assert!(app.smtp.received().is_empty());
    assert_eq!(app.status_of("ada@example.org").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_is_the_same_whatever_the_address_state() {
    let app = WebApp::start(Backend::Postgres, "").await;
    app.add_reader("confirmed@example.org", None, &[]).await;
    app.add_reader("left@example.org", None, &[]).await;
    app.engine
        .store
        .set_subscriber_status(
            &EmailAddress::parse("left@example.org").unwrap(),
            gazette::domain::SubscriberStatus::Unsubscribed,
            gazette::store::Timestamp::now(),
        )
        .await
        .unwrap();
    app.post_form("/subscribe", "email=pending%40example.org&digest=daily")
        .await;

    let mut answers = Vec::new();
    for email in [
        "new@example.org",
        "pending@example.org",
        "confirmed@example.org",
        "left@example.org",
    ] {
        answers.push(
            app.post_form(
                "/subscribe",
                &format!("email={}&digest=daily", email.replace('@', "%40")),
            )
            .await,
        );
    }
    for a in &answers[1..] {
        assert_eq!(a, &answers[0]);
    }
    assert_eq!(answers[0].0, StatusCode::OK);
    // The pending address asked twice within minutes: one email only.
    app.mailed().await;
    assert_eq!(app.smtp.received_by("pending@example.org").len(), 1);
    assert_eq!(app.smtp.received_by("confirmed@example.org").len(), 1);
    assert_eq!(
        app.status_of("confirmed@example.org").await.as_deref(),
        Some("confirmed")
    );

    // JSON works too, with the same answer for every state.
    let r = app
        .http
        .post(format!("{}/subscribe", app.base))
        .header("content-type", "application/json")
        .body(r#"{"email": "json@example.org", "digests": ["weekly"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("confirmation link")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_reused_and_unknown_tokens_get_a_friendly_404() {
    let app = WebApp::start(Backend::Postgres, "").await;
    app.post_form("/subscribe", "email=ada%40example.org&digest=daily")
        .await;
    let link = app.confirmation_link("ada@example.org").await;
    let (status, _) = app.get(path_of(&link)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, page) = app.get(path_of(&link)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a token works once");
    assert!(page.contains("Subscribe again"), "{page}");
    let (status, page) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a token works once");
    assert!(page.contains("Subscribe again"), "{page}");

    app.post_form("/subscribe", "email=late%40example.org&digest=daily")
        .await;
    let link = app.confirmation_link("late@example.org").await;
    let Store::Postgres(pool) = &app.engine.store else {
        unreachable!()
    };
    sqlx::query("update confirmations set expires_at = $1")
        .bind(Utc::now() - chrono::Duration::minutes(1))
        .execute(pool)
        .await
        .unwrap();
    let (status, page) = app.get(path_of(&link)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("expired"), "{page}");
    let (status, page) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("expired"), "{page}");
    assert_eq!(
        app.status_of("late@example.org").await.as_deref(),
        Some("pending")
    );

    for path in [
        "/confirm/nope".to_string(),
        format!("/unsubscribe/{}", "ab".repeat(32)),
        format!("/preferences/{}", "0".repeat(64)),
        "/no/such/page".to_string(),
    ] {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!page.contains("example.org"), "{page}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_an_unsubscribe_link_changes_nothing_until_the_button_is_pressed() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    app.add_reader("ada@example.org", None, &[]).await;
    let sub = app.reader("ada@example.org").await.unwrap();
    let path = format!("/unsubscribe/{}", app.engine.tokens.for_reader(sub.id));
    let (status, page) = app.get(&path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<form method=\"post\""), "{page}");
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("confirmed")
    );

    let (status, page) = app.post_form(&path, "List-Unsubscribe=One-Click").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("You are unsubscribed"), "{page}");
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("unsubscribed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_confirmation_link_changes_nothing_until_the_button_is_pressed() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    app.post_form("/subscribe", "email=ada%40example.org&digest=daily")
        .await;
    let link = app.confirmation_link("ada@example.org").await;
    let path = path_of(&link);

    let (status, page) = app.get(path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("ada@example.org"), "{page}");
    assert!(
        page.replace("&#x2f;", "/")
            .contains(&format!("<form method=\"post\" action=\"{path}\">")),
        "{page}"
    );
    assert!(page.contains(">Confirm</button>"), "{page}");
    let r = app
        .http
        .head(format!("{}{path}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("pending"),
        "a GET or HEAD confirms nothing"
    );

    // A page elsewhere cannot press the button for the reader.
    for (name, value) in [
        ("origin", "https://evil.example"),
        ("sec-fetch-site", "cross-site"),
    ] {
        let r = app
            .http
            .post(&link)
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{name}");
    }
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("pending")
    );

    let r = app
        .http
        .post(&link)
        .header("origin", app.base.clone())
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("You are subscribed"));
    assert_eq!(
        app.status_of("ada@example.org").await.as_deref(),
        Some("confirmed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_posts_oversized_bodies_and_floods_are_refused() {
    let app = WebApp::start(Backend::Sqlite, "subscribe_per_hour = 3").await;
    let r = app
        .http
        .post(format!("{}/subscribe", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "https://evil.example")
        .body("email=victim%40example.org&digest=daily")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(app.status_of("victim@example.org").await, None);

    let r = app
        .http
        .post(format!("{}/subscribe", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", app.base.clone())
        .body(format!(
            "email=a%40example.org&digest=daily&name={}",
            "x".repeat(64 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);

    for i in 0..3 {
        let (status, _) = app
            .post_form(
                "/subscribe",
                &format!("email=r{i}%40example.org&digest=daily"),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = app
        .post_form("/subscribe", "email=r9%40example.org&digest=daily")
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.status_of("r9@example.org").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer() {
    let app = WebApp::start(Backend::Postgres, "").await;
    assert_eq!(
        app.get("/healthz").await,
        (StatusCode::OK, "ok".to_string())
    );
    assert_eq!(
        app.get("/readyz").await,
        (StatusCode::OK, "ready".to_string())
    );
}
