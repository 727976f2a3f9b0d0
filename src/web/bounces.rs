//! `POST /webhooks/bounces`: bounces and complaints reported by a relay,
//! as Gazette's own JSON (`{"email", "kind", "reason"?}`) or Postmark's
//! webhooks. Served only when `[bounces] webhook_token` is set; each
//! request carries it as `Authorization: Bearer …` (401 otherwise).
//! A report names an address, not a delivery: it counts against the
//! reader's latest delivered digest.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tracing::{error, info};

use super::api::bearer_matches;
use super::pages::{BodyRead, WebState, read_limited};
use crate::bounces::{self, Named, webhook};
use crate::domain::BounceSource;
use crate::errors::chain;

/// Larger bodies are refused (413): a report is a few kilobytes.
const BODY_LIMIT: usize = 256 * 1024;

pub fn routes() -> Router<Arc<WebState>> {
    Router::new().route("/webhooks/bounces", post(post_bounces))
}

fn answer(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    answer(status, json!({ "error": message }))
}

async fn post_bounces(State(state): State<Arc<WebState>>, request: Request) -> Response {
    let settings = &state.engine.settings;
    if !bearer_matches(request.headers(), settings.bounces.webhook_token.as_ref()) {
        let mut refusal = error(
            StatusCode::UNAUTHORIZED,
            "this webhook needs `Authorization: Bearer TOKEN` with the token of `[bounces] webhook_token`",
        );
        refusal.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gazette\""),
        );
        return refusal;
    }
    let body = match read_limited(request, BODY_LIMIT, state.body_read_timeout).await {
        BodyRead::Whole(body) => body,
        BodyRead::TooLarge => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is larger than {BODY_LIMIT} bytes"),
            );
        }
        BodyRead::Broken => return error(StatusCode::BAD_REQUEST, "the body did not arrive whole"),
        BodyRead::TooSlow => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                "the body took too long to arrive",
            );
        }
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not JSON: {e}"),
            );
        }
    };
    let reports = match webhook::parse(&value) {
        Ok(webhook::Payload::Reports(reports)) => reports,
        Ok(webhook::Payload::Ignored(why)) => {
            info!("webhook: {why}");
            return answer(StatusCode::OK, json!({ "results": [why] }));
        }
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    };
    let store = &state.engine.store;
    let ledger = bounces::Ledger {
        store,
        metrics: &state.engine.metrics,
        limits: bounces::limits(settings),
    };
    let mut results = Vec::new();
    for report in reports {
        let recorded = async {
            let Some(reader) = store.find_subscriber(&report.email).await? else {
                return Ok("ignored: no reader has that address".to_string());
            };
            let named = Named {
                run_id: store.latest_sent_run(reader.id).await?,
                subscriber_id: reader.id,
            };
            bounces::record(
                ledger,
                named,
                report.kind,
                BounceSource::Webhook,
                &report.reason,
            )
            .await
        };
        match recorded.await {
            Ok(said) => results.push(said),
            Err(e) => {
                error!("webhook: cannot record a bounce: {}", chain(&e));
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the report could not be recorded; send it again",
                );
            }
        }
    }
    answer(StatusCode::OK, json!({ "results": results }))
}
