//! The readers' web server against hostile or careless clients, over real
//! HTTP on loopback: the headers every page carries, slow clients, the
//! subscribe limit behind a proxy, names typed by strangers, and input
//! that does not parse.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::helpers::Backend;
use crate::on_both_backends;
use crate::web::{WebApp, path_of};

const CSP: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                   form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

fn assert_security_headers(what: &str, headers: &HeaderMap) {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(get("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(get("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(get("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(get("x-frame-options"), Some("DENY"), "{what}");
}

on_both_backends!(every_answer_carries_the_security_headers_and_token_pages_are_not_stored,);

async fn every_answer_carries_the_security_headers_and_token_pages_are_not_stored(
    backend: Backend,
) {
    let app = WebApp::start(backend, "").await;
    app.add_reader("ada@example.org", None, &["daily"]).await;
    app.add_article("Headers").await;
    let run = gazette::app::send(&app.engine, "daily", None, false)
        .await
        .unwrap()
        .unwrap();
    let token = app
        .reader("ada@example.org")
        .await
        .unwrap()
        .unsubscribe_token;
    app.post_form("/subscribe", "email=new%40example.org&digest=daily")
        .await;
    let confirm = path_of(&app.confirmation_link("new@example.org")).to_string();

    let token_pages = [
        (confirm.clone(), StatusCode::OK),
        (format!("/unsubscribe/{token}"), StatusCode::OK),
        (format!("/preferences/{token}"), StatusCode::OK),
        (format!("/digests/{run}/{token}"), StatusCode::OK),
        ("/confirm/unknown".to_string(), StatusCode::NOT_FOUND),
        (
            format!("/unsubscribe/{}", "0".repeat(64)),
            StatusCode::NOT_FOUND,
        ),
    ];
    for (path, expected) in &token_pages {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), *expected, "{path}");
        assert_security_headers(path, r.headers());
        assert_eq!(
            r.headers().get("cache-control").unwrap(),
            "no-store",
            "{path}"
        );
    }

    let r = app
        .http
        .post(format!("{}{confirm}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_security_headers("POST confirm", r.headers());
    assert_eq!(r.headers().get("cache-control").unwrap(), "no-store");

    for (method, path, expected) in [
        ("GET", "/", StatusCode::OK),
        ("GET", "/archive", StatusCode::OK),
        ("GET", "/no/such/page", StatusCode::NOT_FOUND),
        ("DELETE", "/", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/healthz", StatusCode::OK),
    ] {
        let r = app
            .http
            .request(method.parse().unwrap(), format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "{method} {path}");
        assert_security_headers(path, r.headers());
    }

    // Refusals and errors carry them too.
    for (body, origin, expected) in [
        (
            "email=nope&digest=daily",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "email=a%40example.org&digest=daily",
            Some("https://evil.example"),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let mut request = app
            .http
            .post(format!("{}/subscribe", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), expected, "{body}");
        assert_security_headers(body, r.headers());
    }
    let r = app
        .http
        .post(format!("{}/subscribe", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "email=a%40example.org&name={}",
            "x".repeat(64 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_security_headers("413", r.headers());
}

/// Under `Referrer-Policy: no-referrer` a browser posts its own forms with
/// `Origin: null`: `Sec-Fetch-Site` tells them from a sandboxed frame's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_null_origin_is_accepted_only_when_the_browser_says_same_origin() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    for (fetch_site, expected) in [
        (None, StatusCode::FORBIDDEN),
        (Some("cross-site"), StatusCode::FORBIDDEN),
        (Some("same-site"), StatusCode::FORBIDDEN),
        (Some("same-origin"), StatusCode::OK),
    ] {
        let mut request = app
            .http
            .post(format!("{}/subscribe", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("origin", "null")
            .body("email=ada%40example.org&digest=daily");
        if let Some(site) = fetch_site {
            request = request.header("sec-fetch-site", site);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), expected, "{fetch_site:?}");
    }
    assert_eq!(app.smtp.received_by("ada@example.org").len(), 1);
}
