//! The readers' web server against hostile or careless clients, over real
//! HTTP on loopback: the headers every page carries, slow clients, the
//! subscribe limit behind a proxy, names typed by strangers, and input
//! that does not parse.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use gazette::store::{Store, Timestamp};

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

on_both_backends!(
    every_answer_carries_the_security_headers_and_token_pages_are_not_stored,
    behind_a_trusted_proxy_the_limit_counts_the_forwarded_client,
    without_a_trusted_proxy_forwarded_for_is_ignored,
    a_name_typed_with_an_address_is_kept_only_when_its_link_is_confirmed,
);

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
        .engine
        .tokens
        .for_reader(app.reader("ada@example.org").await.unwrap().id);
    app.post_form("/subscribe", "email=new%40example.org&digest=daily")
        .await;
    let confirm = path_of(&app.confirmation_link("new@example.org").await).to_string();

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
    app.mailed().await;
    assert_eq!(app.smtp.received_by("ada@example.org").len(), 1);
}

/// Reads until the server closes the connection (or `limit` passes).
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut chunk = [0; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok()?;
    Some(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_others_are_still_served() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let limits = gazette::web::Limits {
        header_read_timeout: Duration::from_millis(500),
        body_read_timeout: Duration::from_millis(500),
        max_connections: 2,
    };
    let server = tokio::spawn(gazette::web::serve_with_limits(
        app.engine.clone(),
        listener,
        shutdown,
        limits,
    ));

    // Half a request line, then silence; and a connection that says nothing:
    // together they hold both connection slots.
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /heal").await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();

    // Another client is answered once the header timeout frees a slot.
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{addr}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.unwrap(), "ok");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "answered before a slot was free: the connection limit did not hold"
    );

    let got = read_until_closed(&mut slow, Duration::from_secs(5))
        .await
        .expect("the half-sent request was not cut off");
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
    read_until_closed(&mut silent, Duration::from_secs(5))
        .await
        .expect("the silent connection was not cut off");
    assert!(started.elapsed() < Duration::from_secs(5));

    // A body that stops half way gets a 408, and the connection is closed.
    let mut slow_body = TcpStream::connect(addr).await.unwrap();
    slow_body
        .write_all(
            b"POST /subscribe HTTP/1.1\r\nHost: localhost\r\n\
              Content-Type: application/x-www-form-urlencoded\r\n\
              Content-Length: 100\r\n\r\nemail=ada",
        )
        .await
        .unwrap();
    let sent = Instant::now();
    let got = read_until_closed(&mut slow_body, Duration::from_secs(5))
        .await
        .expect("the slow body was not cut off");
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("took too long"), "{answer}");
    assert!(sent.elapsed() >= Duration::from_millis(400));
    assert_eq!(app.status_of("ada@example.org").await, None);

    // Shutting down closes an idle keep-alive connection and ends the server.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0; 64];
    let n = idle.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server did not stop")
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
}

/// A subscribe request for `email` with these `X-Forwarded-For` values.
async fn subscribe_forwarded(app: &WebApp, email: &str, forwarded_for: &[&str]) -> StatusCode {
    let mut request = app
        .http
        .post(format!("{}/subscribe", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("email={}&digest=daily", email.replace('@', "%40")));
    for value in forwarded_for {
        request = request.header("x-forwarded-for", *value);
    }
    request.send().await.unwrap().status()
}

async fn behind_a_trusted_proxy_the_limit_counts_the_forwarded_client(backend: Backend) {
    let app = WebApp::start(
        backend,
        "trusted_proxies = [\"127.0.0.1\"]\nsubscribe_per_hour = 2",
    )
    .await;
    let ok = StatusCode::OK;
    let limited = StatusCode::TOO_MANY_REQUESTS;
    for (email, forwarded, expected) in [
        ("a1@example.org", &["203.0.113.5"][..], ok),
        ("a2@example.org", &["203.0.113.5"], ok),
        ("a3@example.org", &["203.0.113.5"], limited),
        // What the client wrote itself is left of what the proxy appended.
        ("a4@example.org", &["198.51.100.99, 203.0.113.5"], limited),
        ("a5@example.org", &["198.51.100.99", "203.0.113.5"], limited),
        // A proxy's own address is skipped.
        ("a6@example.org", &["203.0.113.5, 127.0.0.1"], limited),
        // Another client has its own count.
        ("b1@example.org", &["203.0.113.5, 198.51.100.7"], ok),
        // IPv6 clients are counted by their /64.
        ("c1@example.org", &["2001:db8:1:2::1"], ok),
        ("c2@example.org", &["2001:db8:1:2:aaaa::2"], ok),
        ("c3@example.org", &["2001:db8:1:2:ffff::3"], limited),
        ("d1@example.org", &["2001:db8:1:3::1"], ok),
    ] {
        let status = subscribe_forwarded(&app, email, forwarded).await;
        assert_eq!(status, expected, "{email} via {forwarded:?}");
        let stored = app.status_of(email).await;
        if expected == ok {
            assert_eq!(stored.as_deref(), Some("pending"), "{email}");
        } else {
            assert_eq!(stored, None, "{email}");
        }
    }
}

async fn without_a_trusted_proxy_forwarded_for_is_ignored(backend: Backend) {
    let app = WebApp::start(backend, "subscribe_per_hour = 2").await;
    for (email, forwarded, expected) in [
        ("a1@example.org", "203.0.113.1", StatusCode::OK),
        ("a2@example.org", "203.0.113.2", StatusCode::OK),
        (
            "a3@example.org",
            "203.0.113.3",
            StatusCode::TOO_MANY_REQUESTS,
        ),
        (
            "a4@example.org",
            "2001:db8::4",
            StatusCode::TOO_MANY_REQUESTS,
        ),
    ] {
        let status = subscribe_forwarded(&app, email, &[forwarded]).await;
        assert_eq!(status, expected, "{email} via {forwarded}");
    }
    assert_eq!(app.status_of("a3@example.org").await, None);
}

/// Makes every confirmation look sent 11 minutes ago, so that the next
/// request for the same address gets an email of its own.
async fn age_confirmations(app: &WebApp) {
    let then = Timestamp::from(chrono::Utc::now() - chrono::Duration::minutes(11));
    let sql = "update confirmations set created_at = $1";
    match &app.engine.store {
        Store::Postgres(pool) => {
            sqlx::query(sql).bind(then).execute(pool).await.unwrap();
        }
        Store::Sqlite(pool) => {
            sqlx::query(sql).bind(then).execute(pool).await.unwrap();
        }
    }
}

async fn a_name_typed_with_an_address_is_kept_only_when_its_link_is_confirmed(backend: Backend) {
    let app = WebApp::start(backend, "").await;
    let ada = "ada@example.org";

    // Someone else types Ada's address with a name of their choosing.
    let (status, _) = app
        .post_form(
            "/subscribe",
            "email=ada%40example.org&name=Mallory&digest=daily",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let stored = app.reader(ada).await.unwrap();
    assert_eq!(stored.status, "pending");
    assert_eq!(stored.name, None, "a request names no one");
    // (Its email is sent before Ada's own request, so the last email Ada
    // receives is the one her request asked for.)
    app.mailed().await;
    assert_eq!(app.smtp.received_by(ada).len(), 1);

    // Ada asks herself, later, and follows the link of her own request.
    age_confirmations(&app).await;
    let (status, _) = app
        .post_form(
            "/subscribe",
            "email=ada%40example.org&name=Ada&digest=daily",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.mailed().await;
    assert_eq!(app.smtp.received_by(ada).len(), 2, "one email per request");
    assert_eq!(app.reader(ada).await.unwrap().name, None);
    let link = app.confirmation_link(ada).await;
    let (status, page) = app.post_form(path_of(&link), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("You are subscribed"), "{page}");
    let stored = app.reader(ada).await.unwrap();
    assert_eq!(stored.status, "confirmed");
    assert_eq!(stored.name.as_deref(), Some("Ada"));

    // A later request for a confirmed reader renames no one either.
    age_confirmations(&app).await;
    let (status, _) = app
        .post_form(
            "/subscribe",
            "email=ada%40example.org&name=Eve&digest=weekly",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    app.mailed().await;
    assert_eq!(app.smtp.received_by(ada).len(), 3);
    let stored = app.reader(ada).await.unwrap();
    assert_eq!(stored.name.as_deref(), Some("Ada"));
    assert_eq!(
        app.engine
            .store
            .subscriber_digests(stored.id)
            .await
            .unwrap(),
        vec!["daily"]
    );
}

/// Words of serde's and axum's own messages, which quote the input.
fn assert_names_nothing_of_the_input(what: &str, body: &str, input: &str) {
    for leak in [input, "Invalid URL", "Cannot parse", "expected", "UTF-8"] {
        assert!(!body.contains(leak), "{what} names {leak:?}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_do_not_parse_get_the_plain_404() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    app.add_reader("ada@example.org", None, &["daily"]).await;
    let token = app
        .engine
        .tokens
        .for_reader(app.reader("ada@example.org").await.unwrap().id);
    let (status, plain) = app.get("/no/such/page").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for (path, input) in [
        (format!("/digests/notanumber/{token}"), "notanumber"),
        (format!("/digests/99999999999999999999/{token}"), "99999"),
        (format!("/digests/1%FF/{token}"), "\u{FFFD}"),
        ("/confirm/%FF%FEsecret".to_string(), "secret"),
        ("/unsubscribe/%C3%28secret".to_string(), "secret"),
        ("/preferences/%FFsecret".to_string(), "secret"),
    ] {
        let (status, page) = app.get(&path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(page, plain, "{path}");
        assert_names_nothing_of_the_input(&path, &page, input);
    }
    let (status, page) = app.post_form("/confirm/%FFsecret", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(page, plain);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_that_does_not_parse_gets_a_generic_json_error() {
    let app = WebApp::start(Backend::Postgres, "").await;
    for body in [
        r#"{"email": "#,
        r#"{"email": 42}"#,
        r#"{"name": "<b>secret</b>"}"#,
        r#"{"email": "ada@example.org", "digests": "secret"}"#,
        "[1, 2, 3]",
        "secret",
    ] {
        let r = app
            .http
            .post(format!("{}/subscribe", app.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let text = r.text().await.unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            answer,
            serde_json::json!({"error": "This request could not be understood."}),
            "{body}"
        );
    }
    let r = app
        .http
        .post(format!("{}/subscribe", app.base))
        .header("content-type", "application/json")
        .body(r#"{"email": "jörg@example.org"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let answer: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let error = answer["error"].as_str().unwrap();
    assert!(error.contains("internationalized"), "{error}");
    app.mailed().await;
    assert!(app.smtp.received().is_empty());
    assert_eq!(app.status_of("ada@example.org").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_that_are_not_utf8_get_a_400_and_change_nothing() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    let bodies: [&[u8]; 4] = [
        b"email=ada%40example.org&name=%FF&digest=daily",
        b"email=ada%40example.org&name=\xff\xfe&digest=daily",
        b"email=ada%40example.org&digest=daily&%C3%28=x",
        b"email=ad%E9%40example.org&digest=daily",
    ];
    for body in bodies {
        let r = app
            .http
            .post(format!("{}/subscribe", app.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let what = String::from_utf8_lossy(body).into_owned();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        let page = r.text().await.unwrap();
        assert!(
            page.contains("This request could not be understood."),
            "{page}"
        );
        assert!(!page.contains("ada"), "{page}");
    }
    app.mailed().await;
    assert!(app.smtp.received().is_empty());
    assert_eq!(app.status_of("ada@example.org").await, None);

    app.add_reader("grace@example.org", Some("Grace"), &["daily"])
        .await;
    let sub = app.reader("grace@example.org").await.unwrap();
    let path = format!("/preferences/{}", app.engine.tokens.for_reader(sub.id));
    let (status, page) = app
        .post_form(&path, "name=%FF&digest=weekly&action=save")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        page.contains("This request could not be understood."),
        "{page}"
    );
    let after = app.reader("grace@example.org").await.unwrap();
    assert_eq!(after.name.as_deref(), Some("Grace"));
    assert_eq!(
        app.engine.store.subscriber_digests(sub.id).await.unwrap(),
        vec!["daily"]
    );

    // UTF-8 that is well formed still works, names included.
    let (status, _) = app
        .post_form(&path, "name=Gr%C3%A2ce+H.&digest=weekly&action=save")
        .await;
    assert_eq!(status, StatusCode::OK);
    let after = app.reader("grace@example.org").await.unwrap();
    assert_eq!(after.name.as_deref(), Some("Grâce H."));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_outside_ascii_gets_a_422_that_says_why() {
    let app = WebApp::start(Backend::Sqlite, "").await;
    let (status, page) = app
        .post_form("/subscribe", "email=j%C3%B6rg%40example.org&digest=daily")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("internationalized addresses) are not supported"),
        "{page}"
    );
    assert!(page.contains("value=\"jörg@example.org\""), "{page}");
    let (status, page) = app
        .post_form("/subscribe", "email=ada%40example&digest=daily")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        page.contains("Please enter a valid email address"),
        "{page}"
    );
    app.mailed().await;
    assert!(app.smtp.received().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_of_allowed_origins_may_post_the_subscribe_form_and_call_it_with_json() {
    let app = WebApp::start(
        Backend::Sqlite,
        "allowed_origins = [\"https://blog.example.org\"]",
    )
    .await;
    let post = |origin: &'static str, content_type: &'static str, body: &'static str| {
        app.http
            .post(format!("{}/subscribe", app.base))
            .header("origin", origin)
            .header("sec-fetch-site", "cross-site")
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    let form = "application/x-www-form-urlencoded";

    // The blog's form: accepted, and its reader sees our answer page.
    let answer = post(
        "https://blog.example.org",
        form,
        "email=ada%40example.org&digest=daily",
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://blog.example.org"
    );
    assert!(answer.text().await.unwrap().contains("Check your inbox"));
    assert!(
        app.confirmation_link("ada@example.org")
            .await
            .contains("/confirm/")
    );

    // Another site: refused, as before.
    let answer = post(
        "https://evil.example.org",
        form,
        "email=bob%40example.org&digest=daily",
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert!(
        answer
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // A script on the blog: the preflight, then the JSON call.
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, format!("{}/subscribe", app.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let answer = preflight("https://blog.example.org").await.unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let headers = answer.headers();
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://blog.example.org"
    );
    assert_eq!(headers["access-control-allow-methods"], "POST");
    assert_eq!(headers["access-control-allow-headers"], "content-type");
    assert_eq!(
        preflight("https://evil.example.org")
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    let answer = post(
        "https://blog.example.org",
        "application/json",
        r#"{"email": "grace@example.org", "digests": ["weekly"]}"#,
    )
    .await
    .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "https://blog.example.org"
    );
    assert!(
        app.confirmation_link("grace@example.org")
            .await
            .contains("/confirm/")
    );

    // The pages behind a token stay closed to other sites, allowed or not.
    let link = app.confirmation_link("ada@example.org").await;
    let answer = app
        .http
        .post(format!("{}{}", app.base, path_of(&link)))
        .header("origin", "https://blog.example.org")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
}
