//! The readers' side, over HTTP (axum): subscribe with double opt-in,
//! confirm, one-click unsubscribe (RFC 8058), preferences, the web view of
//! a digest, an archive, and health checks.
//!
//! Pages are minijinja templates under `templates/web/`, escaped, working
//! without JavaScript. No answer ever tells whether an address is
//! subscribed; unknown tokens and routes are a plain 404.
//!
//! This file holds the router and the server; each group of pages has its
//! file (`subscribe`, `links`, `reading`), sharing `pages`; `limiter` counts
//! subscribe requests per client.

mod limiter;
mod links;
mod pages;
mod reading;
mod subscribe;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::map_response;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::watch;
use tracing::{info, warn};

use self::pages::WebState;
pub use self::subscribe::token_hash;
use crate::delivery::Engine;

/// Larger request bodies are refused (413).
const BODY_LIMIT: usize = 16 * 1024;

pub fn router(engine: Engine) -> Router {
    let state = Arc::new(WebState {
        engine,
        limiter: Default::default(),
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
    Router::new()
        .route("/", get(subscribe::subscribe_page))
        .route("/subscribe", post(subscribe::subscribe))
        .merge(token_pages)
        .route("/archive", get(reading::archive))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(map_response(security_headers))
        .with_state(state)
}

/// The pages use inline styles, no scripts and no images from elsewhere,
/// and post their forms to this site only.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// On every answer, errors included. `no-referrer` keeps the tokens in
/// page addresses from reaching the sites that articles link to.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
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

async fn readyz(State(state): State<Arc<WebState>>) -> Response {
    match state.engine.store.ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            warn!("database unreachable: {e:#}");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response()
        }
    }
}
