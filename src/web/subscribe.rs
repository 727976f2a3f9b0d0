//! Double opt-in: the subscribe form, the subscribe request (form or JSON)
//! with its confirmation email, and the confirmation link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use minijinja::context;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use super::limiter;
use super::pages::{
    Body, Segments, WebState, all_digests, allowed_origin, bad_request, chosen_digests, cross_site,
    digest_choices, field, forbidden, form_fields, link_not_found, message, page, reply,
    server_error, wants_json,
};
use crate::domain::{DomainError, EmailAddress, form_name, new_token};
use crate::store::{SubscribeOutcome, SubscriptionRequest, Timestamp};

/// A second confirmation email to one address waits this long.
const CONFIRMATION_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// The SHA-256 of a token, hex: what the store keeps of confirmation tokens.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn subscribe_page(State(state): State<Arc<WebState>>) -> Response {
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

pub async fn subscribe(
    State(state): State<Arc<WebState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    let json = wants_json(&headers);
    // A form or a script on a site of `web.allowed_origins` may subscribe
    // (CORS lets that script read the answer); any other site may not.
    let allowed = allowed_origin(&state, &headers);
    if allowed.is_none() && cross_site(&state, &headers) {
        return forbidden(&state);
    }
    let mut response = subscribe_answer(state, peer, headers, body, json).await;
    if let Some(origin) = allowed {
        cors(&mut response, &origin);
    }
    response
}

/// The answer to a CORS preflight for `POST /subscribe` from another site:
/// allowed for `web.allowed_origins`, refused for any other.
pub async fn subscribe_preflight(
    State(state): State<Arc<WebState>>,
    headers: HeaderMap,
) -> Response {
    let Some(origin) = allowed_origin(&state, &headers) else {
        return forbidden(&state);
    };
    let mut response = StatusCode::NO_CONTENT.into_response();
    cors(&mut response, &origin);
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

fn cors(response: &mut Response, origin: &str) {
    let headers = response.headers_mut();
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

async fn subscribe_answer(
    state: Arc<WebState>,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
    json: bool,
) -> Response {
    let web = &state.engine.settings.web;
    let client = limiter::client_address(
        peer.ip(),
        &headers,
        &web.trusted_proxies,
        web.forwarded_header,
    );
    if !state.limiter.allow(client, web.subscribe_per_hour).await {
        warn!(%client, "too many subscribe requests");
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
            // serde's message quotes the input.
            Err(_) => return bad_request(&state, true),
        }
    } else {
        let Some(fields) = form_fields(&body) else {
            return bad_request(&state, false);
        };
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
    let name = form_name(&name);

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
        Err(DomainError::NonAsciiEmail(_)) => {
            return invalid(
                "Addresses with letters outside ASCII (internationalized addresses) are not supported yet. Please enter an address made of ASCII letters only, such as ada@example.org."
                    .into(),
            );
        }
        Err(_) => {
            return invalid("Please enter a valid email address, such as ada@example.org.".into());
        }
    };
    let digests = chosen_digests(&state, &chosen);
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
            token: &token,
            token_hash: &token_hash(&token),
            now: Timestamp::from(now),
            expires: Timestamp::from(now + ttl),
            recent: Timestamp::from(now - recent),
        })
        .await;
    match outcome {
        // The email goes out in the background (`delivery::confirmations`):
        // what the relay does with it never shows here.
        Ok(SubscribeOutcome::Confirm { .. }) => state.engine.confirmations_due.notify_one(),
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

/// What a confirmation link opens: a page with a button. Only its POST
/// confirms, since mail link scanners follow links.
pub async fn confirm_page(
    State(state): State<Arc<WebState>>,
    Segments(token): Segments<String>,
) -> Response {
    match state
        .engine
        .store
        .pending_confirmation(&token_hash(&token), Timestamp::now())
        .await
    {
        Ok(Some(email)) => page(
            &state,
            StatusCode::OK,
            "web/confirm.html.j2",
            context! { email => email, action => format!("/confirm/{token}") },
        ),
        Ok(None) => link_not_found(&state),
        Err(e) => server_error(&state, e),
    }
}

pub async fn confirm(
    State(state): State<Arc<WebState>>,
    Segments(token): Segments<String>,
    headers: HeaderMap,
) -> Response {
    if cross_site(&state, &headers) {
        return forbidden(&state);
    }
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
                .preferences_url(&state.engine.tokens.for_reader(reader.id));
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
