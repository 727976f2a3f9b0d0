//! The ingest API over real HTTP: a CMS pushes articles with its token,
//! upserts by url, all or nothing per request.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::WebApp;
use crate::helpers::{Backend, SmtpServer};
use crate::on_both_backends;

on_both_backends!(
    articles_pushed_with_the_token_are_created_then_updated,
    a_bad_record_in_a_batch_is_named_and_nothing_is_stored,
    requests_without_the_right_token_are_refused_and_store_nothing,
    an_oversized_body_is_refused,
    a_body_declared_over_the_limit_is_refused_before_it_is_read,
    an_article_is_deleted_by_its_url,
);

const TOKEN: &str = "cms-token-0123456789abcdef0123456789";

async fn app(backend: Backend) -> WebApp {
    WebApp::start_with_sections(
        backend,
        "",
        &format!("\n[api]\ntoken = \"{TOKEN}\"\n"),
        SmtpServer::start(),
    )
    .await
}

impl WebApp {
    async fn push(
        &self,
        token: Option<&str>,
        body: String,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut request = self
            .http
            .post(format!("{}/api/articles", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, headers)
    }

    async fn titles(&self) -> Vec<(String, String)> {
        let mut listed: Vec<(String, String)> = self
            .engine
            .store
            .list_articles(100)
            .await
            .unwrap()
            .into_iter()
            .map(|a| (a.url, a.title))
            .collect();
        listed.sort();
        listed
    }
}

async fn articles_pushed_with_the_token_are_created_then_updated(backend: Backend) {
    let app = app(backend).await;
    let (status, body, _) = app
        .push(
            Some(TOKEN),
            json!([
                {"url": "https://cms.example.org/a", "title": "First", "tags": ["cms"],
                 "image_url": "https://cms.example.org/a.png", "published_at": "2026-11-30T08:00:00Z"},
                {"url": "https://cms.example.org/b", "title": "Second", "summary": "Fish & chips"}
            ])
            .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"inserted": 2, "updated": 0}));
    // One object alone is one article; the same url updates it.
    let (status, body, _) = app
        .push(
            Some(TOKEN),
            json!({"url": "https://cms.example.org/a", "title": "First, edited", "image_url": "https://cms.example.org/a2.png"})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"inserted": 0, "updated": 1}));
    assert_eq!(
        app.titles().await,
        [
            (
                "https://cms.example.org/a".to_string(),
                "First, edited".to_string()
            ),
            (
                "https://cms.example.org/b".to_string(),
                "Second".to_string()
            )
        ]
    );
    let stored = app.engine.store.list_articles(10).await.unwrap();
    let a = stored.iter().find(|a| a.url.ends_with("/a")).unwrap();
    assert_eq!(
        a.image_url.as_deref(),
        Some("https://cms.example.org/a2.png")
    );
    let b = stored.iter().find(|a| a.url.ends_with("/b")).unwrap();
    assert_eq!(b.summary.as_deref(), Some("Fish & chips"));
}

async fn a_bad_record_in_a_batch_is_named_and_nothing_is_stored(backend: Backend) {
    let app = app(backend).await;
    let cases = [
        (
            json!([
                {"url": "https://cms.example.org/ok", "title": "Fine"},
                {"url": "ftp://cms.example.org/bad", "title": "Bad address"}
            ]),
            1,
            "url",
        ),
        (
            json!([{"url": "https://cms.example.org/ok", "title": "Fine"}, {"url": "https://cms.example.org/c"}]),
            1,
            "title",
        ),
        (
            json!([{"url": "https://cms.example.org/ok", "title": "Fine", "tags": "not-a-list"}]),
            0,
            "tags",
        ),
        (
            json!([{"url": "https://cms.example.org/ok", "title": "Fine"}, {"url": "https://cms.example.org/d", "title": "D", "colour": "red"}]),
            1,
            "colour",
        ),
        (
            json!([{"url": "https://cms.example.org/ok", "title": "Fine"}, {"url": "https://cms.example.org/e", "title": "E", "published_at": "yesterday"}]),
            1,
            "published_at",
        ),
        (
            json!([{"url": "https://cms.example.org/ok", "title": "Fine", "image_url": "javascript:alert(1)"}]),
            0,
            "image_url",
        ),
    ];
    for (records, index, field) in cases {
        let (status, body, _) = app.push(Some(TOKEN), records.to_string()).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{records}: {body}"
        );
        assert_eq!(body["index"], index, "{body}");
        assert_eq!(body["field"], field, "{body}");
        assert!(body["error"].as_str().unwrap().contains(field), "{body}");
    }
    // Not JSON at all.
    let (status, _, _) = app.push(Some(TOKEN), "{not json".into()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(app.titles().await.is_empty(), "something was stored");
}

async fn requests_without_the_right_token_are_refused_and_store_nothing(backend: Backend) {
    let app = app(backend).await;
    let record = json!({"url": "https://cms.example.org/a", "title": "A"}).to_string();
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let (status, body, headers) = app.push(token, record.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"gazette\"");
        assert!(!body.to_string().contains(TOKEN), "{body}");
    }
    let deleted = app
        .http
        .delete(format!(
            "{}/api/articles?url=https://cms.example.org/a",
            app.base
        ))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::UNAUTHORIZED);
    assert!(app.titles().await.is_empty());
}

async fn an_oversized_body_is_refused(backend: Backend) {
    let app = app(backend).await;
    let big = "x".repeat(1024 * 1024);
    let records = json!([{"url": "https://cms.example.org/big", "title": "Big", "body": big}]);
    let (status, body, _) = app.push(Some(TOKEN), records.to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(app.titles().await.is_empty());
}

/// A `Content-Length` over the limit is answered at once: 413, and the
/// connection closed, while the body is still to come.
async fn a_body_declared_over_the_limit_is_refused_before_it_is_read(backend: Backend) {
    let app = app(backend).await;
    let answer = app
        .refused_before_the_body("/api/articles", TOKEN, 1024 * 1024 + 1)
        .await;
    assert!(answer.contains("send fewer articles a request"), "{answer}");
    assert!(app.titles().await.is_empty());
}

async fn an_article_is_deleted_by_its_url(backend: Backend) {
    let app = app(backend).await;
    let (status, _, _) = app
        .push(
            Some(TOKEN),
            json!({"url": "https://cms.example.org/gone?x=1&y=2", "title": "Soon gone"})
                .to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let delete = || {
        app.http
            .delete(format!(
                "{}/api/articles?url=https%3A%2F%2Fcms.example.org%2Fgone%3Fx%3D1%26y%3D2",
                app.base
            ))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
    };
    assert_eq!(delete().await.unwrap().status(), StatusCode::NO_CONTENT);
    assert!(app.titles().await.is_empty());
    let again = delete().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

/// Without `[api] token` there is no API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_routes_are_not_found() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    let (status, _, _) = app
        .push(
            Some("anything"),
            json!({"url": "https://cms.example.org/a", "title": "A"}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(app.titles().await.is_empty());
}
