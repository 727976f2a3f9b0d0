//! `POST /webhooks/bounces`: bounces and complaints reported by a relay,
//! as Gazette's own JSON (`{"email", "kind", "reason"?}`), Postmark's
//! webhooks, or Amazon SES's notifications delivered by Amazon SNS.
//! Served only when `[bounces] webhook_token` is set; each request
//! carries it as `Authorization: Bearer …` (401 otherwise). SNS cannot
//! send that header, so its messages (those with `x-amz-sns-message-type`)
//! may carry the token in the address instead (`?token=…`, as the SNS
//! subscription is made), and must also be signed by SNS (403 otherwise),
//! from a topic of `[bounces] sns_topic_arns` when that is set.
//! A report names an address, not a delivery: it counts against the
//! reader's latest delivered digest.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Value, json};
use tracing::{error, info, warn};

use super::api::{answer, bearer_matches, error, read_json, secret_matches};
use super::pages::WebState;
use crate::bounces::sns::{self, Refused};
use crate::bounces::{self, Named, webhook};
use crate::domain::BounceSource;
use crate::errors::chain;

/// Larger bodies are refused (413): a report is a few kilobytes.
const BODY_LIMIT: usize = 256 * 1024;

pub fn routes() -> Router<Arc<WebState>> {
    Router::new().route("/webhooks/bounces", post(post_bounces))
}

/// Whether the address's query has `token=` with `expected`.
fn query_token_matches(query: Option<&str>, expected: Option<&crate::domain::Secret>) -> bool {
    let (Some(query), Some(expected)) = (query, expected) else {
        return false;
    };
    url::form_urlencoded::parse(query.as_bytes())
        .filter(|(key, _)| key == "token")
        .fold(false, |found, (_, given)| {
            secret_matches(&given, expected) | found
        })
}

async fn post_bounces(State(state): State<Arc<WebState>>, request: Request) -> Response {
    let settings = &state.engine.settings;
    let expected = settings.bounces.webhook_token.as_ref();
    let sns_type = request
        .headers()
        .get(sns::TYPE_HEADER)
        .map(|v| v.to_str().unwrap_or_default().to_string());
    let authorized = bearer_matches(request.headers(), expected)
        || (sns_type.is_some() && query_token_matches(request.uri().query(), expected));
    if !authorized {
        let mut refusal = error(
            StatusCode::UNAUTHORIZED,
            "this webhook needs `Authorization: Bearer TOKEN` with the token of `[bounces] webhook_token` (Amazon SNS: `?token=TOKEN` in the subscription's address)",
        );
        refusal.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gazette\""),
        );
        return refusal;
    }
    let value = match read_json(request, &state, BODY_LIMIT, None).await {
        Ok(value) => value,
        Err(refusal) => return refusal,
    };
    let payload = match sns_type {
        Some(sns_type) => match from_sns(&state, &sns_type, &value).await {
            Ok(payload) => payload,
            Err(refusal) => return refusal,
        },
        None => webhook::parse(&value),
    };
    let reports = match payload {
        Ok(webhook::Payload::Reports(reports)) => reports,
        Ok(webhook::Payload::Ignored(why)) => {
            info!("webhook: {why}");
            return answer(StatusCode::OK, json!({ "results": [why] }));
        }
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
    };
    record_all(&state, reports).await
}

/// An Amazon SNS message: its topic allowed, its signature verified; a
/// subscription confirmed; a notification's SES payload read.
async fn from_sns(
    state: &WebState,
    sns_type: &str,
    value: &Value,
) -> Result<Result<webhook::Payload, webhook::BadPayload>, Response> {
    let refuse = |refused: Refused| {
        let status = match &refused {
            Refused::Malformed(_) => StatusCode::BAD_REQUEST,
            Refused::Forged(_) => StatusCode::FORBIDDEN,
            Refused::Unreachable(_) => StatusCode::BAD_GATEWAY,
        };
        match &refused {
            Refused::Unreachable(why) => error!("webhook: an Amazon SNS message: {why}"),
            other => warn!("webhook: an Amazon SNS message refused: {other}"),
        }
        error(status, &refused.to_string())
    };
    let message = sns::parse(value).map_err(refuse)?;
    if sns::Kind::parse(sns_type) != Some(message.kind) {
        return Err(refuse(Refused::Malformed(format!(
            "the header {} is `{sns_type}` but the message's `Type` is another",
            sns::TYPE_HEADER
        ))));
    }
    let allowed = &state.engine.settings.bounces.sns_topic_arns;
    if !allowed.is_empty() && !allowed.contains(&message.topic_arn) {
        return Err(refuse(Refused::Forged(format!(
            "the topic {} is not one of `[bounces] sns_topic_arns`",
            message.topic_arn
        ))));
    }
    state.sns.verify(&message).await.map_err(refuse)?;
    match message.kind {
        sns::Kind::SubscriptionConfirmation => {
            state.sns.confirm(&message).await.map_err(refuse)?;
            // (Logged as "webhook: subscription to … confirmed".)
            Ok(Ok(webhook::Payload::Ignored(format!(
                "subscription to {} confirmed",
                message.topic_arn
            ))))
        }
        sns::Kind::UnsubscribeConfirmation => Ok(Ok(webhook::Payload::Ignored(format!(
            "ignored: the Amazon SNS subscription to {} was deleted",
            message.topic_arn
        )))),
        sns::Kind::Notification => Ok(webhook::ses(&message.message)),
    }
}

/// Records each report against its reader's latest delivered digest.
async fn record_all(state: &WebState, reports: Vec<webhook::Reported>) -> Response {
    let settings = &state.engine.settings;
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
