//! The pages behind the links in every digest: unsubscribe (a page with a
//! button, and the one-click POST of RFC 8058) and preferences. The
//! reader's unsubscribe token is the credential.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use minijinja::context;
use tracing::info;

use super::pages::{
    Body, Segments, WebState, bad_request, chosen_digests, cross_site, digest_choices, field,
    forbidden, form_fields, message, page, reader_or_404, server_error,
};
use crate::domain::{SubscriberStatus, form_name};
use crate::store::Timestamp;

pub async fn unsubscribe_page(
    State(state): State<Arc<WebState>>,
    Segments(token): Segments<String>,
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
            status => reader.status.as_str(),
            action => format!("/unsubscribe/{token}"),
            preferences => format!("/preferences/{token}"),
        },
    )
}

pub async fn unsubscribe(
    State(state): State<Arc<WebState>>,
    Segments(token): Segments<String>,
) -> Response {
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

pub async fn preferences_page(
    State(state): State<Arc<WebState>>,
    Segments(token): Segments<String>,
) -> Response {
    let reader = match reader_or_404(&state, &token).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let chosen = if reader.status == SubscriberStatus::Confirmed {
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

pub async fn save_preferences(
    State(state): State<Arc<WebState>>,
    Segments(token): Segments<String>,
    headers: HeaderMap,
    Body(body): Body,
) -> Response {
    if cross_site(&state, &headers) {
        return forbidden(&state);
    }
    let reader = match reader_or_404(&state, &token).await {
        Ok(r) => r,
        Err(answer) => return answer,
    };
    let Some(fields) = form_fields(&body) else {
        return bad_request(&state, false);
    };
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
    let digests = chosen_digests(&state, &chosen);
    let name = field(&fields, "name").and_then(form_name);
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
