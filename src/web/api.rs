//! The ingest API, for a CMS that pushes its articles: `POST
//! /api/articles` (a JSON object, or an array of them, with the fields of
//! `gazette articles import`; upsert by url, all or nothing) and `DELETE
//! /api/articles?url=…`. Served only when `[api] token` is set; each
//! request carries it as `Authorization: Bearer …`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::Utc;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use super::pages::{BodyRead, WebState, read_limited};
use crate::errors::chain;
use crate::import::ArticleInput;
use crate::store::Timestamp;

/// Larger request bodies are refused (413).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// The API's routes.
pub fn routes() -> Router<Arc<WebState>> {
    Router::new().route("/api/articles", post(post_articles).delete(delete_article))
}

pub(super) fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// `{"error": message}` with `status`.
pub(super) fn error(status: StatusCode, message: &str) -> Response {
    answer(status, json!({ "error": message }))
}

/// A request's body read as JSON, up to `limit` bytes; else the answer
/// to send: 413 (with `advice`, if any) when `Content-Length` says more
/// than `limit` (nothing is read then) or the body grows past it, 400
/// when it breaks off, 408 when it takes longer than the body timeout,
/// 400 when it is not JSON. When the body was not read whole the answer
/// closes the connection: what is left of the body cannot be told from
/// the next request.
pub(super) async fn read_json(
    request: Request,
    state: &WebState,
    limit: usize,
    advice: Option<&str>,
) -> Result<Value, Response> {
    let closing = |mut refusal: Response| {
        refusal
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        refusal
    };
    let body = match read_limited(request, limit, state.body_read_timeout).await {
        BodyRead::Whole(body) => body,
        BodyRead::TooLarge => {
            let message = match advice {
                Some(advice) => format!("the body is larger than {limit} bytes: {advice}"),
                None => format!("the body is larger than {limit} bytes"),
            };
            return Err(closing(error(StatusCode::PAYLOAD_TOO_LARGE, &message)));
        }
        BodyRead::Broken => {
            return Err(closing(error(
                StatusCode::BAD_REQUEST,
                "the body did not arrive whole",
            )));
        }
        BodyRead::TooSlow => {
            return Err(closing(error(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            )));
        }
    };
    serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not JSON: {e}"),
        )
    })
}

/// Whether the request carries the token. Both sides are hashed first, so
/// the comparison takes the same time whatever the given token's length,
/// and the hashes are compared without stopping at the first difference.
fn authorized(state: &WebState, headers: &HeaderMap) -> bool {
    bearer_matches(headers, state.engine.settings.api.token.as_ref())
}

/// Whether `headers` carry `Authorization: Bearer` with `expected`,
/// compared in constant time (see [`authorized`]).
pub(super) fn bearer_matches(
    headers: &HeaderMap,
    expected: Option<&crate::domain::Secret>,
) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    if let (Some(expected), Some(given)) = (expected, given) {
        return secret_matches(given, expected);
    }
    false
}

/// Whether `given` is `expected`, compared in constant time (of their
/// digests, so that not even the length shows).
pub(super) fn secret_matches(given: &str, expected: &crate::domain::Secret) -> bool {
    let (a, b) = (
        Sha256::digest(given.as_bytes()),
        Sha256::digest(expected.expose().as_bytes()),
    );
    let difference = a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(difference) == 0
}

/// 401, saying how to authenticate (and nothing of what was sent).
fn unauthorized() -> Response {
    let mut refusal = error(
        StatusCode::UNAUTHORIZED,
        "this API needs `Authorization: Bearer TOKEN` with the token of `[api] token`",
    );
    refusal.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"gazette\""),
    );
    refusal
}

/// `POST /api/articles`: every record is checked before anything is
/// stored; the first bad one is named by its index (from 0) and field,
/// with the others after it, in a 422. Then all are stored in one
/// transaction: 200 with how many were inserted and updated.
async fn post_articles(State(state): State<Arc<WebState>>, request: Request) -> Response {
    if !authorized(&state, request.headers()) {
        return unauthorized();
    }
    let value = match read_json(
        request,
        &state,
        BODY_LIMIT,
        Some("send fewer articles a request"),
    )
    .await
    {
        Ok(value) => value,
        Err(refusal) => return refusal,
    };
    let records = match value {
        Value::Array(records) => records,
        record @ Value::Object(_) => vec![record],
        _ => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "expected a JSON object with `url` and `title`, or an array of them",
            );
        }
    };
    if records.is_empty() {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the array holds no article",
        );
    }
    let now = Utc::now();
    let mut articles = Vec::with_capacity(records.len());
    let mut problems = Vec::new();
    for (index, record) in records.into_iter().enumerate() {
        match ArticleInput::from_json(record).and_then(|input| input.validate(now)) {
            Ok(article) => articles.push(article),
            Err(e) => problems.push(json!({
                "index": index,
                "field": e.field,
                "error": e.message,
            })),
        }
    }
    if let Some(first) = problems.first() {
        let mut body = first.clone();
        body["errors"] = Value::from(problems.clone());
        info!(
            bad = problems.len(),
            "api: articles refused, nothing stored"
        );
        return answer(StatusCode::UNPROCESSABLE_ENTITY, body);
    }
    match state
        .engine
        .store
        .upsert_articles(&articles, Timestamp::now())
        .await
    {
        Ok((inserted, updated)) => {
            info!(inserted, updated, "api: articles stored");
            answer(
                StatusCode::OK,
                json!({ "inserted": inserted, "updated": updated }),
            )
        }
        Err(e) => {
            error!("api: cannot store articles: {}", chain(&e));
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the articles could not be stored; nothing was stored",
            )
        }
    }
}

/// `DELETE /api/articles?url=URL`: 204, or 404 when there is no article
/// at that address. Runs that took it keep their copy.
async fn delete_article(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if !authorized(&state, &headers) {
        return unauthorized();
    }
    let url = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "url")
        .map(|(_, value)| value.trim().to_string())
        .filter(|url| !url.is_empty());
    let Some(url) = url else {
        return error(
            StatusCode::BAD_REQUEST,
            "name the article with `?url=` and its address",
        );
    };
    match state.engine.store.remove_article(&url).await {
        Ok(true) => {
            info!("api: article removed");
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => error(StatusCode::NOT_FOUND, &format!("no article at {url}")),
        Err(e) => {
            warn!("api: cannot remove an article: {}", chain(&e));
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the article could not be removed",
            )
        }
    }
}
