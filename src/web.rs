//! The readers' side, over HTTP (axum): subscribe with double opt-in,
//! confirm, one-click unsubscribe (RFC 8058), preferences, the web view of
//! a digest, an archive, and health checks.
//!
//! Pages are minijinja templates under `templates/web/`, escaped, working
//! without JavaScript. No answer ever tells whether an address is
//! subscribed; unknown tokens and routes are a plain 404.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use minijinja::{Value, context};
use sha2::{Digest as _, Sha256};
use tokio::sync::{Mutex, watch};
use tracing::{error, info, warn};

use crate::delivery::Engine;
use crate::domain::{DigestName, EmailAddress, new_token};
use crate::mail::{self, MessageMeta, Sender};
use crate::render::{Recipient, Rendered, RunContext};
use crate::store::{SubscribeOutcome, SubscriptionRequest, Timestamp};

/// Larger request bodies are refused (413).
const BODY_LIMIT: usize = 16 * 1024;
/// A second confirmation email to one address waits this long.
const CONFIRMATION_INTERVAL: Duration = Duration::from_secs(10 * 60);

struct WebState {
    engine: Engine,
    /// Subscribe requests per client address in the last hour.
    attempts: Mutex<HashMap<IpAddr, VecDeque<Instant>>>,
}

/// The SHA-256 of a token, hex: what the store keeps of confirmation tokens.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn router(engine: Engine) -> Router {
    let state = Arc::new(WebState {
        engine,
        attempts: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/", get(subscribe_page))
        .route("/subscribe", post(subscribe))
        .route("/confirm/{token}", get(confirm))
        .route(
            "/unsubscribe/{token}",
            get(unsubscribe_page).post(unsubscribe),
        )
        .route(
            "/preferences/{token}",
            get(preferences_page).post(save_preferences),
        )
        .route("/digests/{run}/{token}", get(web_view))
        .route("/archive", get(archive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "web server listening");
    let app = router(engine).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await?;
    Ok(())
}

// -- rendering helpers ---------------------------------------------------------

fn page(state: &WebState, status: StatusCode, template: &str, ctx: Value) -> Response {
    let settings = &state.engine.settings;
    let ctx = context! {
        site => site_name(state),
        base_url => settings.web.base_url.clone(),
        ..ctx
    };
    match state.engine.renderer.render_template(template, &ctx) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            error!("cannot render page {template}: {e:#}");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn message(
    state: &WebState,
    status: StatusCode,
    title: &str,
    text: &str,
    link: Option<(&str, &str)>,
) -> Response {
    page(
        state,
        status,
        "web/message.html.j2",
        context! {
            title => title,
            text => text,
            link => link.map(|(href, label)| context! { href => href, label => label }),
        },
    )
}

fn site_name(state: &WebState) -> String {
    let from = &state.engine.settings.mail.from;
    from.name.clone().unwrap_or_else(|| "Gazette".into())
}

async fn not_found(State(state): State<Arc<WebState>>) -> Response {
    message(
        &state,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address.",
        Some(("/", "Go to the subscribe page")),
    )
}

fn link_not_found(state: &WebState) -> Response {
    message(
        state,
        StatusCode::NOT_FOUND,
        "This link does not work",
        "It may have expired, been used already, or been copied incompletely.",
        Some(("/", "Subscribe again")),
    )
}

/// The reader a link's token belongs to, or the page to answer instead.
async fn reader_or_404(state: &WebState, token: &str) -> Result<crate::store::Reader, Response> {
    match state.engine.store.reader_by_token(token).await {
        Ok(Some(reader)) => Ok(reader),
        Ok(None) => Err(link_not_found(state)),
        Err(e) => Err(server_error(state, e)),
    }
}

fn server_error(state: &WebState, e: anyhow::Error) -> Response {
    error!("request failed: {e:#}");
    message(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        "Please try again in a few minutes.",
        None,
    )
}

/// Refuses a form posted from another site: browsers send `Origin` with
/// every POST, and `Sec-Fetch-Site` with modern ones.
fn cross_site(state: &WebState, headers: &HeaderMap) -> bool {
    if headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|site| site == "cross-site")
    {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some(origin) => {
            let base = &state.engine.settings.web.base_url;
            let base_origin = base
                .find("://")
                .and_then(|i| base[i + 3..].find('/').map(|j| &base[..i + 3 + j]))
                .unwrap_or(base);
            origin != base_origin
        }
    }
}

fn forbidden(state: &WebState) -> Response {
    message(
        state,
        StatusCode::FORBIDDEN,
        "Not allowed",
        "This form can only be sent from its own page.",
        Some(("/", "Go to the subscribe page")),
    )
}

/// Form fields, repeated keys kept (`digest=a&digest=b`).
fn form_fields(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn all_digests(state: &WebState) -> Vec<(DigestName, String)> {
    state
        .engine
        .settings
        .digests
        .iter()
        .map(|d| (d.name.clone(), d.title.clone()))
        .collect()
}

fn digest_choices(state: &WebState, chosen: &[String]) -> Value {
    let list: Vec<Value> = all_digests(state)
        .into_iter()
        .map(|(name, title)| {
            let checked = chosen.iter().any(|c| c == name.as_str());
            context! { name => name.as_str(), title => title, checked => checked }
        })
        .collect();
    Value::from(list)
}

// -- subscribe -------------------------------------------------------------------

async fn subscribe_page(State(state): State<Arc<WebState>>) -> Response {
    let all: Vec<String> = all_digests(&state)
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    page(
        &state,
        StatusCode::OK,
        "web/subscribe.html.j2",
        context! { email => "", name => "", digests => digest_choices(&state, &all), error => () },
    )
}

#[derive(serde::Deserialize)]
struct SubscribeJson {
    email: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    digests: Option<Vec<String>>,
}

async fn subscribe(
    State(state): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if cross_site(&state, &headers) {
        return forbidden(&state);
    }
    if !allow_attempt(&state, peer.ip()).await {
        warn!(client = %peer.ip(), "too many subscribe requests");
        return reply(
            &state,
            json,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "Please wait a while before trying again.",
        );
    }
    let (email, name, chosen) = if json {
        match serde_json::from_slice::<SubscribeJson>(&body) {
            Ok(s) => {
                let all = all_digests(&state)
                    .iter()
                    .map(|(n, _)| n.to_string())
                    .collect();
                (
                    s.email,
                    s.name.unwrap_or_default(),
                    s.digests.unwrap_or(all),
                )
            }
            Err(e) => {
                return reply(
                    &state,
                    true,
                    StatusCode::BAD_REQUEST,
                    "Invalid request",
                    &e.to_string(),
                );
            }
        }
    } else {
        let fields = form_fields(&body);
        let chosen = fields
            .iter()
            .filter(|(k, _)| k == "digest")
            .map(|(_, v)| v.clone())
            .collect();
        (
            field(&fields, "email").unwrap_or("").to_string(),
            field(&fields, "name").unwrap_or("").to_string(),
            chosen,
        )
    };
    let name = name.trim();
    let name = (!name.is_empty()).then(|| name.chars().take(100).collect::<String>());

    let invalid = |error: String| {
        if json {
            reply(
                &state,
                true,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid request",
                &error,
            )
        } else {
            page(
                &state,
                StatusCode::UNPROCESSABLE_ENTITY,
                "web/subscribe.html.j2",
                context! {
                    email => email.clone(),
                    name => name.clone().unwrap_or_default(),
                    digests => digest_choices(&state, &chosen),
                    error => error,
                },
            )
        }
    };
    let address = match EmailAddress::parse(&email) {
        Ok(a) => a,
        Err(_) => {
            return invalid("Please enter a valid email address, such as ada@example.org.".into());
        }
    };
    let digests: Vec<DigestName> = all_digests(&state)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| chosen.iter().any(|c| c == n.as_str()))
        .collect();
    if digests.is_empty() {
        return invalid("Please choose at least one newsletter.".into());
    }

    let token = new_token();
    let now = Utc::now();
    let ttl = chrono::Duration::from_std(state.engine.settings.web.confirm_ttl)
        .unwrap_or(chrono::Duration::days(2));
    let recent = chrono::Duration::from_std(CONFIRMATION_INTERVAL).unwrap_or_default();
    let outcome = state
        .engine
        .store
        .request_subscription(&SubscriptionRequest {
            email: &address,
            name: name.as_deref(),
            digests: &digests,
            token_hash: &token_hash(&token),
            now: Timestamp::from(now),
            expires: Timestamp::from(now + ttl),
            recent: Timestamp::from(now - recent),
        })
        .await;
    match outcome {
        Ok(SubscribeOutcome::Confirm { subscriber_id }) => {
            if let Err(e) = send_confirmation(
                &state,
                &address,
                name.as_deref(),
                &digests,
                &token,
                subscriber_id,
            )
            .await
            {
                return server_error(&state, e);
            }
        }
        Ok(SubscribeOutcome::RateLimited) => {
            info!("a confirmation was sent to this address moments ago: not sending another");
        }
        Err(e) => return server_error(&state, e),
    }
    reply(
        &state,
        json,
        StatusCode::OK,
        "Check your inbox",
        "If this address can receive our newsletters, a message with a confirmation link is on its way. Follow the link to start your subscription.",
    )
}

fn reply(state: &WebState, json: bool, status: StatusCode, title: &str, text: &str) -> Response {
    if json {
        let key = if status.is_success() {
            "message"
        } else {
            "error"
        };
        (status, axum::Json(serde_json::json!({ key: text }))).into_response()
    } else {
        message(state, status, title, text, None)
    }
}

/// Whether this client may subscribe again now (a sliding hour).
async fn allow_attempt(state: &WebState, ip: IpAddr) -> bool {
    let limit = state.engine.settings.web.subscribe_per_hour as usize;
    let hour = Duration::from_secs(3600);
    let now = Instant::now();
    let mut attempts = state.attempts.lock().await;
    if attempts.len() > 10_000 {
        attempts.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < hour));
    }
    let q = attempts.entry(ip).or_default();
    while q.front().is_some_and(|t| now.duration_since(*t) >= hour) {
        q.pop_front();
    }
    if q.len() >= limit {
        return false;
    }
    q.push_back(now);
    true
}

async fn send_confirmation(
    state: &WebState,
    email: &EmailAddress,
    name: Option<&str>,
    digests: &[DigestName],
    token: &str,
    subscriber_id: i64,
) -> Result<()> {
    let engine = &state.engine;
    let base = &engine.settings.web.base_url;
    let titles: Vec<String> = digests
        .iter()
        .filter_map(|d| engine.settings.digest(d.as_str()).map(|d| d.title.clone()))
        .collect();
    let ctx = context! {
        site => site_name(state),
        confirm_url => format!("{base}/confirm/{token}"),
        digests => titles,
        subscriber => context! { name => name, email => email.as_str() },
        ttl_hours => engine.settings.web.confirm_ttl.as_secs() / 3600,
    };
    let rendered = Rendered {
        subject: format!("Confirm your subscription to {}", site_name(state)),
        html: engine.renderer.render_template("confirm.html.j2", &ctx)?,
        text: engine.renderer.render_template("confirm.txt.j2", &ctx)?,
    };
    let from = &engine.settings.mail.from;
    let message = mail::build_message(
        &MessageMeta {
            from,
            to_email: email.as_str(),
            to_name: name,
            message_id: format!("<confirm.{}@{}>", &new_token()[..24], from.email.domain()),
            list: None,
            date: Utc::now(),
        },
        &rendered.subject,
        mail::BodyEncoder::default().bodies(&rendered.text, &rendered.html),
    )?;
    let mut sender = Sender::new(&engine.settings);
    let stem = format!("confirm-{subscriber_id}-{}", Utc::now().timestamp_millis());
    let result = sender.send(&message, &stem).await;
    sender.close().await;
    result.map_err(|e| anyhow::anyhow!("cannot send the confirmation email: {e}"))
}

async fn confirm(State(state): State<Arc<WebState>>, Path(token): Path<String>) -> Response {
    match state
        .engine
        .store
        .confirm(&token_hash(&token), Timestamp::now())
        .await
    {
        Ok(Some(reader)) => {
            let prefs = state
                .engine
                .renderer
                .preferences_url(&reader.unsubscribe_token);
            message(
                &state,
                StatusCode::OK,
                "You are subscribed",
                &format!("Thank you! {} will receive the next digests.", reader.email),
                Some((&prefs, "Choose your newsletters")),
            )
        }
        Ok(None) => link_not_found(&state),
        Err(e) => server_error(&state, e),
    }
}

// -- unsubscribe and preferences -----------------------------------------------------

async fn unsubscribe_page(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
) -> Response {
    // A GET never changes anything: link scanners follow links.
    let reader = match reader_or_404(&state, &token).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    page(
        &state,
        StatusCode::OK,
        "web/unsubscribe.html.j2",
        context! {
            email => reader.email,
            status => reader.status,
            action => format!("/unsubscribe/{token}"),
            preferences => format!("/preferences/{token}"),
        },
    )
}

async fn unsubscribe(State(state): State<Arc<WebState>>, Path(token): Path<String>) -> Response {
    // RFC 8058: mail providers POST `List-Unsubscribe=One-Click` here; the
    // page's own button posts the same. The token is the credential.
    let reader = match reader_or_404(&state, &token).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    if let Err(e) = state
        .engine
        .store
        .unsubscribe(reader.id, Timestamp::now())
        .await
    {
        return server_error(&state, e);
    }
    info!(subscriber = reader.id, "unsubscribed");
    message(
        &state,
        StatusCode::OK,
        "You are unsubscribed",
        &format!("{} will receive no more digests.", reader.email),
        Some((
            &format!("/preferences/{token}"),
            "Changed your mind? Choose newsletters again",
        )),
    )
}

async fn preferences_page(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
) -> Response {
    let reader = match reader_or_404(&state, &token).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let chosen = if reader.status == "confirmed" {
        match state.engine.store.subscriber_digests(reader.id).await {
            Ok(d) => d,
            Err(e) => return server_error(&state, e),
        }
    } else {
        Vec::new()
    };
    page(
        &state,
        StatusCode::OK,
        "web/preferences.html.j2",
        context! {
            email => reader.email,
            name => reader.name.unwrap_or_default(),
            digests => digest_choices(&state, &chosen),
            action => format!("/preferences/{token}"),
            saved => false,
        },
    )
}

async fn save_preferences(
    State(state): State<Arc<WebState>>,
    Path(token): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if cross_site(&state, &headers) {
        return forbidden(&state);
    }
    let reader = match reader_or_404(&state, &token).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let fields = form_fields(&body);
    let unsubscribe_all = field(&fields, "action") == Some("unsubscribe");
    let chosen: Vec<String> = if unsubscribe_all {
        Vec::new()
    } else {
        fields
            .iter()
            .filter(|(k, _)| k == "digest")
            .map(|(_, v)| v.clone())
            .collect()
    };
    let digests: Vec<DigestName> = all_digests(&state)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| chosen.iter().any(|c| c == n.as_str()))
        .collect();
    let name = field(&fields, "name")
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.chars().take(100).collect::<String>());
    if let Err(e) = state
        .engine
        .store
        .set_preferences(reader.id, name.as_deref(), &digests, Timestamp::now())
        .await
    {
        return server_error(&state, e);
    }
    let kept: Vec<String> = digests.iter().map(|d| d.to_string()).collect();
    page(
        &state,
        StatusCode::OK,
        "web/preferences.html.j2",
        context! {
            email => reader.email,
            name => name.unwrap_or_default(),
            digests => digest_choices(&state, &kept),
            action => format!("/preferences/{token}"),
            saved => true,
        },
    )
}

// -- reading ---------------------------------------------------------------------------

async fn web_view(
    State(state): State<Arc<WebState>>,
    Path((run_id, token)): Path<(i64, String)>,
) -> Response {
    let engine = &state.engine;
    let found = async {
        let Some(reader) = engine.store.reader_by_token(&token).await? else {
            return Ok(None);
        };
        let Some(run) = engine.store.run(run_id).await? else {
            return Ok(None);
        };
        if !engine.store.was_addressed(run_id, reader.id).await? {
            return Ok(None);
        }
        let Some(digest) = engine.settings.digest(&run.digest) else {
            return Ok(None);
        };
        let articles = engine.store.run_articles(run_id).await?;
        let ctx = RunContext::new(digest, run.slot.0, &articles, Some(run_id));
        let rendered = engine.renderer.render(
            &ctx,
            &Recipient {
                name: reader.name.as_deref(),
                email: &reader.email,
                unsubscribe_token: &reader.unsubscribe_token,
            },
        )?;
        anyhow::Ok(Some(rendered.html))
    };
    match found.await {
        Ok(Some(html)) => Html(html).into_response(),
        Ok(None) => link_not_found(&state),
        Err(e) => server_error(&state, e),
    }
}

async fn archive(State(state): State<Arc<WebState>>) -> Response {
    let engine = &state.engine;
    let public: Vec<String> = engine
        .settings
        .digests
        .iter()
        .filter(|d| d.public)
        .map(|d| d.name.to_string())
        .collect();
    let runs = match engine.store.sent_runs(&public, 50).await {
        Ok(r) => r,
        Err(e) => return server_error(&state, e),
    };
    let mut entries = Vec::new();
    for run in runs {
        let Some(digest) = engine.settings.digest(&run.digest) else {
            continue;
        };
        let articles = match engine.store.run_articles(run.id).await {
            Ok(a) => a,
            Err(e) => return server_error(&state, e),
        };
        let local = run.slot.0.with_timezone(&digest.timezone);
        entries.push(context! {
            title => digest.title.clone(),
            date => local.format("%A, %-d %B %Y").to_string(),
            articles => articles.iter().map(|a| context! { title => a.title.clone(), url => a.url.clone() }).collect::<Vec<_>>(),
        });
    }
    page(
        &state,
        StatusCode::OK,
        "web/archive.html.j2",
        context! { runs => entries },
    )
}

async fn readyz(State(state): State<Arc<WebState>>) -> Response {
    match state.engine.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            warn!("database unreachable: {e:#}");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}
