//! The operators' port (`[admin] bind`), apart from the readers' pages:
//! `/metrics` for Prometheus.

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::delivery::Engine;
use crate::errors::chain;
use crate::metrics::StatusLabels;

/// Serves the admin port until `shutdown` turns true.
pub async fn serve(
    engine: Engine,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    info!(addr = %listener.local_addr()?, "admin server listening");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(engine);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    return;
                }
            }
        })
        .await?;
    Ok(())
}

/// The metrics, with the counts the store holds read now.
async fn metrics(State(engine): State<Engine>) -> Response {
    let metrics = &engine.metrics;
    let store = &engine.store;
    let read = async {
        let open = store.open_delivery_counts().await?;
        let subscribers = store.subscriber_counts().await?;
        anyhow::Ok((open, subscribers))
    };
    match read.await {
        Ok((open, subscribers)) => {
            let gauge = |status: &str| StatusLabels {
                status: status.to_string(),
            };
            metrics
                .open_deliveries
                .get_or_create(&gauge("pending"))
                .set(open.pending);
            metrics
                .open_deliveries
                .get_or_create(&gauge("sending"))
                .set(open.sending);
            for (status, n) in subscribers {
                metrics
                    .subscribers
                    .get_or_create(&gauge(status.as_str()))
                    .set(n);
            }
        }
        Err(e) => {
            warn!("cannot read the store for the metrics: {}", chain(&e));
            return (StatusCode::SERVICE_UNAVAILABLE, "database unreachable").into_response();
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
        .into_response()
}
