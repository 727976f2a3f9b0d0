//! What every page shares: the state the handlers see, rendering a page or
//! a short message (or its JSON form), the error pages, the cross-site
//! check, and reading input: a body within its limits, path parts, form
//! fields, the configured digests. Input that does not parse gets a
//! generic answer that names nothing of it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use futures_util::StreamExt as _;
use minijinja::{Value, context};
use serde::de::DeserializeOwned;
use tracing::{error, info};

use super::limiter::Limiter;
use crate::delivery::Engine;
use crate::domain::DigestName;
use crate::errors::chain;
use crate::store::Reader;

/// Larger request bodies are refused (413).
const BODY_LIMIT: usize = 16 * 1024;

pub struct WebState {
    pub engine: Engine,
    /// Subscribe requests per client.
    pub limiter: Limiter,
    /// A request body arriving slower than this is refused (408).
    pub body_read_timeout: Duration,
    /// Amazon SNS's signatures and certificates, for the bounce webhook.
    pub sns: crate::bounces::sns::Verifier,
}

pub fn page(state: &WebState, status: StatusCode, template: &str, ctx: Value) -> Response {
    let settings = &state.engine.settings;
    let ctx = context! {
        site => site_name(state),
        base_url => settings.web.base_url.clone(),
        ..ctx
    };
    match state.engine.renderer.render_template(template, &ctx) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            error!("cannot render page {template}: {}", chain(&e));
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

pub fn message(
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

pub fn site_name(state: &WebState) -> String {
    state.engine.settings.mail.site_name()
}

pub async fn not_found(State(state): State<Arc<WebState>>) -> Response {
    nothing_here(&state)
}

/// The plain 404: unknown routes, and paths whose parts do not parse.
pub fn nothing_here(state: &WebState) -> Response {
    message(
        state,
        StatusCode::NOT_FOUND,
        "Not found",
        "There is nothing at this address.",
        Some(("/", "Go to the subscribe page")),
    )
}

/// The parts of a route's path (`{token}`, `{run}`), or the plain 404:
/// axum's own rejection would name the part that did not parse.
pub struct Segments<T>(pub T);

impl<T> FromRequestParts<Arc<WebState>> for Segments<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<WebState>,
    ) -> Result<Self, Response> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(Segments(value)),
            Err(_) => Err(nothing_here(state)),
        }
    }
}

pub fn link_not_found(state: &WebState) -> Response {
    message(
        state,
        StatusCode::NOT_FOUND,
        "This link does not work",
        "It may have expired, been used already, or been copied incompletely.",
        Some(("/", "Subscribe again")),
    )
}

/// The reader a link's token belongs to, or the page to answer instead.
pub async fn reader_or_404(state: &WebState, token: &str) -> Result<Reader, Response> {
    match state
        .engine
        .store
        .reader_by_token(&state.engine.tokens, token)
        .await
    {
        Ok(Some(reader)) => Ok(reader),
        Ok(None) => Err(link_not_found(state)),
        Err(e) => Err(server_error(state, e)),
    }
}

pub fn server_error(state: &WebState, e: anyhow::Error) -> Response {
    error!("request failed: {}", chain(&e));
    message(
        state,
        StatusCode::SERVICE_UNAVAILABLE,
        "Something went wrong",
        "Please try again in a few minutes.",
        None,
    )
}

/// Refuses a form posted from another site: browsers send `Origin` with
/// every POST, and `Sec-Fetch-Site` with modern ones. Under the pages'
/// `Referrer-Policy: no-referrer` a browser's own form posts carry
/// `Origin: null`, which only `Sec-Fetch-Site: same-origin` vouches for (a
/// sandboxed frame elsewhere sends `null` too).
pub fn cross_site(state: &WebState, headers: &HeaderMap) -> bool {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if fetch_site == Some("cross-site") {
        return true;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => false,
        Some("null") => fetch_site != Some("same-origin"),
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

/// The `Origin` of a request, when it is one of `web.allowed_origins`:
/// another site whose pages may post the subscribe form.
pub fn allowed_origin(state: &WebState, headers: &HeaderMap) -> Option<String> {
    let origin = headers
        .get(header::ORIGIN)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    state
        .engine
        .settings
        .web
        .allowed_origins
        .contains(&origin)
        .then_some(origin)
}

pub fn forbidden(state: &WebState) -> Response {
    message(
        state,
        StatusCode::FORBIDDEN,
        "Not allowed",
        "This form can only be sent from its own page.",
        Some(("/", "Go to the subscribe page")),
    )
}

/// Whether the client sent JSON, and so gets its answers in JSON.
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

/// A message page, or for a JSON request `{"message": …}` (success) or
/// `{"error": …}`.
pub fn reply(
    state: &WebState,
    json: bool,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
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

/// A request's whole body, read within the size and time limits; the
/// answer otherwise is a generic page (or JSON error).
pub struct Body(pub Bytes);

impl FromRequest<Arc<WebState>> for Body {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<WebState>) -> Result<Self, Response> {
        read_whole(request, state)
            .await
            .map(Body)
            .map_err(|mut refusal| {
                // The body may be left unread: the connection cannot carry
                // another request, and a client reusing it would fail.
                refusal
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                refusal
            })
    }
}

async fn read_whole(request: Request, state: &WebState) -> Result<Bytes, Response> {
    let json = wants_json(request.headers());
    let too_large = || {
        reply(
            state,
            json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "Too large",
            "This request is larger than any form here sends.",
        )
    };
    match read_limited(request, BODY_LIMIT, state.body_read_timeout).await {
        BodyRead::Whole(body) => Ok(Bytes::from(body)),
        BodyRead::TooLarge => Err(too_large()),
        BodyRead::Broken => Err(bad_request(state, json)),
        BodyRead::TooSlow => {
            info!("a request body took too long to arrive");
            Err(reply(
                state,
                json,
                StatusCode::REQUEST_TIMEOUT,
                "Too slow",
                "This request took too long to arrive. Please try again.",
            ))
        }
    }
}

/// Reads a request's body, up to `limit` bytes, within `timeout`; when
/// its `Content-Length` says more than `limit`, nothing is read.
pub async fn read_limited(request: Request, limit: usize, timeout: Duration) -> BodyRead {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return BodyRead::TooLarge;
    }
    let mut chunks = request.into_body().into_data_stream();
    let read = async {
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let Ok(chunk) = chunk else {
                return BodyRead::Broken;
            };
            if body.len() + chunk.len() > limit {
                return BodyRead::TooLarge;
            }
            body.extend_from_slice(&chunk);
        }
        BodyRead::Whole(body)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(BodyRead::TooSlow)
}

/// How reading a body ended.
pub enum BodyRead {
    Whole(Vec<u8>),
    TooLarge,
    Broken,
    TooSlow,
}

/// The answer to input that does not parse: it names nothing of the input.
pub fn bad_request(state: &WebState, json: bool) -> Response {
    reply(
        state,
        json,
        StatusCode::BAD_REQUEST,
        "Bad request",
        "This request could not be understood.",
    )
}

/// Form fields, repeated keys kept (`digest=a&digest=b`); `None` when a
/// name or value is not UTF-8 (the pages are, and so are their forms).
pub fn form_fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    let decode = |part: &[u8]| {
        let spaced: Vec<u8> = part
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&spaced)
            .decode_utf8()
            .ok()
            .map(|text| text.into_owned())
    };
    body.split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &[][..]),
            };
            Some((decode(name)?, decode(value)?))
        })
        .collect()
}

pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Every configured digest: its name and title.
pub fn all_digests(state: &WebState) -> Vec<(DigestName, String)> {
    state
        .engine
        .settings
        .digests
        .iter()
        .map(|d| (d.name.clone(), d.title.clone()))
        .collect()
}

/// The configured digests among `chosen`, in configuration order.
pub fn chosen_digests(state: &WebState, chosen: &[String]) -> Vec<DigestName> {
    all_digests(state)
        .into_iter()
        .map(|(n, _)| n)
        .filter(|n| chosen.iter().any(|c| c == n.as_str()))
        .collect()
}

/// The checkboxes of the subscribe and preferences forms.
pub fn digest_choices(state: &WebState, chosen: &[String]) -> Value {
    let list: Vec<Value> = all_digests(state)
        .into_iter()
        .map(|(name, title)| {
            let checked = chosen.iter().any(|c| c == name.as_str());
            context! { name => name.as_str(), title => title, checked => checked }
        })
        .collect();
    Value::from(list)
}
