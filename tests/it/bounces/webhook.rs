//! `POST /webhooks/bounces` over real HTTP: Gazette's own JSON and
//! Postmark's sample payloads, with the bearer token; refused without it.

use reqwest::StatusCode;
use serde_json::{Value, json};

use gazette::domain::{BounceKind, BounceSource, SubscriberStatus};

use super::{add, fixture, post_webhook, reader};
use crate::helpers::{Backend, SmtpServer};
use crate::on_both_backends;
use crate::web::WebApp;

on_both_backends!(
    webhook_reports_with_the_token_bounce_and_unsubscribe_readers,
    the_webhook_refuses_a_wrong_token_and_is_absent_without_one,
    a_body_declared_over_the_limit_is_refused_before_it_is_read,
);

const TOKEN: &str = "bounce-hook-0123456789abcdef012345";

async fn app(backend: Backend, token: bool) -> WebApp {
    let sections = if token {
        format!("\n[bounces]\nwebhook_token = \"{TOKEN}\"\nsoft_limit = 2\n")
    } else {
        String::new()
    };
    WebApp::start_with_sections(backend, "", &sections, SmtpServer::start()).await
}

async fn post(app: &WebApp, token: Option<&str>, body: &str) -> (StatusCode, Value) {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer));
    }
    post_webhook(app, "", &headers, body.to_string()).await
}

async fn webhook_reports_with_the_token_bounce_and_unsubscribe_readers(backend: Backend) {
    let app = app(backend, true).await;
    add(
        &app,
        &["john@example.com", "ada@example.org", "bob@example.org"],
    )
    .await;

    // Postmark's bounce webhook, as its documentation shows it.
    let (status, body) = post(&app, Some(TOKEN), &fixture("postmark-bounce.json")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!([
            "hard bounce for j…@example.com recorded: j…@example.com is bounced and will not be mailed again"
        ])
    );
    let (john, state) = reader(&app, "john@example.com").await;
    assert_eq!(state, SubscriberStatus::Bounced);
    let kept = app.engine.store.bounces_of(john).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(
        (kept[0].kind, kept[0].source),
        (BounceKind::Hard, BounceSource::Webhook)
    );
    assert!(kept[0].reason.contains("HardBounce"), "{kept:?}");

    // Its spam complaint webhook, for another reader.
    let complaint =
        fixture("postmark-spam-complaint.json").replace("john@example.com", "ada@example.org");
    let (status, body) = post(&app, Some(TOKEN), &complaint).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!(["complaint from a…@example.org recorded: a…@example.org is unsubscribed"])
    );
    assert_eq!(
        reader(&app, "ada@example.org").await.1,
        SubscriberStatus::Unsubscribed
    );

    // An auto-responder is no bounce.
    let auto = fixture("postmark-bounce.json")
        .replace("\"HardBounce\"", "\"AutoResponder\"")
        .replace("john@example.com", "bob@example.org");
    let (status, body) = post(&app, Some(TOKEN), &auto).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!(["ignored: a Postmark bounce of type `AutoResponder`, not a failed delivery"])
    );

    // Gazette's own form: a soft bounce, below soft_limit = 2.
    let soft = json!({"email": "bob@example.org", "kind": "soft", "reason": "mailbox full"});
    let (status, body) = post(&app, Some(TOKEN), &soft.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!(["soft bounce for b…@example.org recorded"])
    );
    assert_eq!(
        reader(&app, "bob@example.org").await.1,
        SubscriberStatus::Confirmed
    );
    // An address nobody has, a kind that is not one, no email.
    let (status, body) = post(
        &app,
        Some(TOKEN),
        &json!({"email": "nobody@example.org", "kind": "hard"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["results"],
        json!(["ignored: no reader has that address"])
    );
    let (status, body) = post(
        &app,
        Some(TOKEN),
        &json!({"email": "bob@example.org", "kind": "bounced"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`kind`"), "{body}");
    let (status, body) = post(&app, Some(TOKEN), &json!({"kind": "hard"}).to_string()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = post(&app, Some(TOKEN), "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        reader(&app, "bob@example.org").await.1,
        SubscriberStatus::Confirmed
    );
}

async fn the_webhook_refuses_a_wrong_token_and_is_absent_without_one(backend: Backend) {
    let app = app(backend, true).await;
    add(&app, &["john@example.com"]).await;
    let body = fixture("postmark-bounce.json");
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let (status, _) = post(&app, token, &body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
    }
    let (john, state) = reader(&app, "john@example.com").await;
    assert_eq!(state, SubscriberStatus::Confirmed);
    assert!(app.engine.store.bounces_of(john).await.unwrap().is_empty());

    let without = self::app(backend, false).await;
    let (status, _) = post(&without, Some(TOKEN), &body).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A `Content-Length` over the limit (256 KiB) is answered at once, as
/// the ingest API answers it: 413, and the connection closed, while the
/// body is still to come.
async fn a_body_declared_over_the_limit_is_refused_before_it_is_read(backend: Backend) {
    let app = app(backend, true).await;
    add(&app, &["john@example.com"]).await;
    let answer = app
        .refused_before_the_body("/webhooks/bounces", TOKEN, 256 * 1024 + 1)
        .await;
    assert!(
        answer.contains("the body is larger than 262144 bytes"),
        "{answer}"
    );
    let (john, state) = reader(&app, "john@example.com").await;
    assert_eq!(state, SubscriberStatus::Confirmed);
    assert!(app.engine.store.bounces_of(john).await.unwrap().is_empty());
}
