//! Reading digests on the web: a digest as its reader received it ("View
//! in your browser"), and the public archive.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;

use super::pages::{Segments, WebState, link_not_found, page, server_error};
use crate::render::{Recipient, RunContext};

pub async fn web_view(
    State(state): State<Arc<WebState>>,
    Segments((run_id, token)): Segments<(i64, String)>,
) -> Response {
    let engine = &state.engine;
    let found = async {
        let Some(reader) = engine.store.reader_by_token(&engine.tokens, &token).await? else {
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
                unsubscribe_token: &engine.tokens.for_reader(reader.id),
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

pub async fn archive(State(state): State<Arc<WebState>>) -> Response {
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
