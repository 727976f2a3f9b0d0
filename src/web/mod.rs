//! The readers' side, over HTTP (axum): subscribe with double opt-in,
//! confirm, one-click unsubscribe (RFC 8058), preferences, the web view of
//! a digest, an archive, and health checks.
//!
//! Pages are minijinja templates under `templates/web/`, escaped, working
//! without JavaScript. No answer ever tells whether an address is
//! subscribed; unknown tokens and routes are a plain 404.
//!
//! This file holds the router, the headers every answer carries, and the
//! server with its limits on slow clients; each group of pages has its
//! file (`subscribe`, `links`, `reading`), sharing `pages`; `limiter`
//! counts subscribe requests per client; `api` is the ingest API for a
//! CMS, on only with `[api] token`; `bounces` the relays' bounce webhook,
//! on only with `[bounces] webhook_token`.

pub mod admin;
mod api;
mod bounces;
mod limiter;
mod links;
mod pages;
mod reading;
mod subscribe;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn_with_state, map_response};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::{Service as _, service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Semaphore, watch};
use tracing::{debug, info, warn};

use self::pages::WebState;
pub use self::subscribe::token_hash;
use crate::delivery::Engine;
use crate::errors::chain;

/// What a slow or greedy client may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's line and headers must arrive within this, counted from
    /// the connection's start or from the previous answer (so an idle
    /// keep-alive connection is closed after it too).
    pub header_read_timeout: Duration,
    /// A request's body must arrive whole within this (408 otherwise).
    pub body_read_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 512,
        }
    }
}

/// The pages, with the default [`Limits`] on request bodies.
pub fn router(engine: Engine) -> Router {
    app(engine, Limits::default())
}

fn app(engine: Engine, limits: Limits) -> Router {
    let sns =
        crate::bounces::sns::Verifier::new(engine.settings.bounces.sns_test_endpoint.as_deref());
    let state = Arc::new(WebState {
        engine,
        limiter: Default::default(),
        body_read_timeout: limits.body_read_timeout,
        sns,
    });
    // A token in the address is a credential: no cache keeps its page.
    let token_pages = Router::new()
        .route(
            "/confirm/{token}",
            get(subscribe::confirm_page).post(subscribe::confirm),
        )
        .route(
            "/unsubscribe/{token}",
            get(links::unsubscribe_page).post(links::unsubscribe),
        )
        .route(
            "/preferences/{token}",
            get(links::preferences_page).post(links::save_preferences),
        )
        .route("/digests/{run}/{token}", get(reading::web_view))
        .layer(map_response(no_store));
    // Without a token there is no API: its routes are the plain 404.
    let api = match state.engine.settings.api.token {
        Some(_) => api::routes().layer(map_response(no_store)),
        None => Router::new(),
    };
    let webhooks = match state.engine.settings.bounces.webhook_token {
        Some(_) => bounces::routes().layer(map_response(no_store)),
        None => Router::new(),
    };
    Router::new()
        .route("/", get(subscribe::subscribe_page))
        .route(
            "/subscribe",
            post(subscribe::subscribe).options(subscribe::subscribe_preflight),
        )
        .merge(token_pages)
        .route("/archive", get(reading::archive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .merge(webhooks)
        .fallback(pages::not_found)
        .layer(map_response(security_headers))
        .layer(from_fn_with_state(state.clone(), log_request))
        .with_state(state)
}

/// One log line a request: method, route (its pattern, as
/// `/unsubscribe/{token}`: never the token), status and time taken.
async fn log_request(State(state): State<Arc<WebState>>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(no route)".to_string(), |p| p.as_str().to_string());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    info!(
        %method,
        route,
        status,
        millis = started.elapsed().as_millis() as u64,
        "request"
    );
    state
        .engine
        .metrics
        .web_requests
        .get_or_create(&crate::metrics::RequestLabels { route, status })
        .inc();
    response
}

/// The pages use inline styles, no scripts and no images from elsewhere,
/// and post their forms to this site only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// On every answer, errors included. `no-referrer` keeps the tokens in
/// page addresses from reaching the sites that articles link to.
async fn security_headers(response: Response) -> Response {
    with_security_headers(response, CONTENT_SECURITY_POLICY)
}

/// `response` with the content security policy `policy`, no referrer, no
/// sniffing and no framing.
pub fn with_security_headers(mut response: Response, policy: &'static str) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Serves until `shutdown` turns true, with the default [`Limits`].
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    serve_with_limits(engine, listener, shutdown, Limits::default()).await
}

/// Serves until `shutdown` turns true, then lets the requests under way
/// finish. HTTP/1.1 through hyper itself, as `axum::serve` cannot limit
/// how long a client takes to send its headers.
pub async fn serve_with_limits(
    engine: Engine,
    mut listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> Result<()> {
    let addr = listener.local_addr()?;
    info!(%addr, "web server listening");
    // The confirmation emails the subscribe requests leave go out from the
    // process that serves the pages.
    let mailer = tokio::spawn(crate::delivery::confirmations::mail_confirmations(
        engine.clone(),
        shutdown.clone(),
    ));
    let router = app(engine, limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot?,
            () = stopped(&mut shutdown) => break,
        };
        // Logs and retries failed accepts itself.
        let (stream, peer) = tokio::select! {
            accepted = axum::serve::Listener::accept(&mut listener) => accepted,
            () = stopped(&mut shutdown) => break,
        };
        let router = TowerToHyperService::new(router.clone());
        let service = service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.call(request)
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(%peer, "connection closed: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    mailer.await?;
    Ok(())
}

/// Resolves once `shutdown` is true; never if its sender is gone.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

async fn readyz(State(state): State<Arc<WebState>>) -> Response {
    match state.engine.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            warn!("database unreachable: {}", chain(&e));
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}
