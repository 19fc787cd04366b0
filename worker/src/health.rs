//! The worker's small HTTP surface: liveness, readiness, metrics.
//!
//! Liveness means the event loop answers. Readiness means connected to RabbitMQ (the consumer
//! is attached) and Redis answers, so Kubernetes stops counting a disconnected worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use docfleet_shared::metrics::Metrics;
use tokio::sync::watch;

use crate::item::Processor;

#[derive(Clone)]
struct Health {
    processor: Arc<Processor>,
    connected: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

async fn ready(State(h): State<Health>) -> (StatusCode, String) {
    let broker = h.connected.load(Ordering::Relaxed);
    let redis = h.processor.redis_ok().await;
    let code = if broker && redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{{\"broker\":{broker},\"redis\":{redis}}}"))
}

async fn metrics(State(h): State<Health>) -> String {
    h.metrics.encode()
}

/// Serves until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    processor: Arc<Processor>,
    connected: Arc<AtomicBool>,
    metrics_: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "{\"status\":\"ok\"}" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(Health {
            processor,
            connected,
            metrics: metrics_,
        });
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { crate::consumer::stopped(&mut stop).await })
        .await;
}
