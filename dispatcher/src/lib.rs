//! The docfleet dispatcher: the HTTP API, batch expansion onto RabbitMQ, status from Redis.
//!
//! # Layout
//! - [`routes`]: every route, listed once for the router and the OpenAPI document.
//! - [`http`], [`error`], [`auth`]: request plumbing: JSON `detail` errors, bearer keys.
//! - [`directories`]: directories and uploads into the file store.
//! - [`files`]: files on their own (`client.files`), signed downloads.
//! - [`catalog`]: what a project saves by id (files, configurations, webhook configurations).
//! - [`batch`]: create, list, status, cancel, items; [`processing_results`]: a file's
//!   processing results.
//! - [`batch_v2`]: the v2 batches API, a second view of the same batches, whose jobs are
//!   named by [`configurations`].
//! - [`status_cache`]: snapshots of polled batches, refreshed together, for `get_status`.
//! - [`job_results`]: per-file parse and classify results; [`jobs`]: single-file jobs, each
//!   a batch of one.
//! - [`exports`]: a whole batch's results as one streamed JSON Lines download; [`links`]:
//!   signed links that fetch a file or an output without a key.
//! - [`expansion`]: the background loop that publishes one message per file.
//! - [`publisher`]: confirmed publishing with reconnection.
//! - [`reconciler`]: stalled batches resumed; [`retention`]: finished batches forgotten.
//! - [`lease`]: which replica runs an expansion or the reconciler.
//! - [`dead_letters`]: the operator's view of the dead-letter queue, and replay.

pub mod auth;
pub mod batch;
pub mod batch_v2;
pub mod catalog;
pub mod configurations;
pub mod dead_letters;
pub mod directories;
pub mod error;
pub mod expansion;
pub mod exports;
pub mod files;
pub mod http;
pub mod job_results;
pub mod jobs;
pub mod lease;
pub mod links;
pub mod processing_results;
pub mod publisher;
pub mod reconciler;
pub mod records;
pub mod retention;
pub mod routes;
pub mod server;
pub mod state;
pub mod status_cache;
pub mod webhook;

use std::future::Future;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use docfleet_shared::keys::Keys;
use docfleet_shared::scripts::Scripts;
use docfleet_shared::settings::DispatcherSettings;
use docfleet_shared::store::FileStore;
use docfleet_shared::topology::Topology;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::error::ApiError;
use crate::state::AppState;

/// Why the dispatcher could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DispatcherError {
    /// Redis is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis keeps nothing on disk, and that was not allowed.
    #[error(transparent)]
    NoPersistence(#[from] docfleet_shared::services::NoPersistence),
    /// RabbitMQ is unreachable.
    #[error("rabbitmq: {0}")]
    Broker(#[from] publisher::PublishError),
    /// The webhook HTTP client could not be built.
    #[error("webhook client: {0}")]
    Webhook(reqwest::Error),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
    /// The file store cannot be opened or does not answer.
    #[error(transparent)]
    Store(#[from] docfleet_shared::store::StoreError),
}

/// Connects to Redis and RabbitMQ and builds the shared state.
pub async fn connect(settings: DispatcherSettings) -> Result<AppState, DispatcherError> {
    let redis = docfleet_shared::services::connect_redis(&settings.redis.url).await?;
    let mut background = docfleet_shared::services::connect_redis(&settings.redis.url).await?;
    docfleet_shared::services::check_durability(
        &mut background,
        settings.redis.allow_no_persistence,
    )
    .await?;
    let keys = Keys::new(settings.redis.key_prefix.clone());
    let topology = Topology::for_broker(&settings.broker);
    let publisher = publisher::Publisher::connect(&settings.broker, topology).await?;
    let store = FileStore::open(&settings.store)?;
    store.check().await?;
    Ok(AppState {
        store,
        buckets: docfleet_shared::buckets::UserBuckets::new(&settings.buckets).map(Arc::new),
        scripts: Scripts::new(keys.clone()),
        keys,
        redis,
        background,
        publisher: Arc::new(publisher),
        expansion_wake: Arc::new(Notify::new()),
        webhook_wake: Arc::new(Notify::new()),
        metrics: Arc::default(),
        key_cache: Arc::default(),
        seal: Arc::new(webhook::sealed::Seal::new(
            settings.webhook.secrets_key.as_deref(),
        )),
        request_rate: Arc::new(auth::RequestRate::new(
            settings.max_requests_per_second_per_project,
        )),
        status_cache: Arc::new(status_cache::StatusCache::new(&settings.status)),
        replica_id: format!("dispatcher-{}", uuid::Uuid::new_v4()).into(),
        settings: Arc::new(settings),
    })
}

/// The HTTP routes.
pub fn router(state: AppState) -> Router {
    let upload_limit = usize::try_from(state.settings.max_upload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1 << 20);
    let api = routes::api();
    let uploads = routes::uploads().layer(DefaultBodyLimit::max(upload_limit));
    // Probes answer however busy the API is.
    let probes = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/openapi.json", get(|| async { Json(routes::openapi()) }))
        .route(
            "/metrics",
            get(|State(st): State<AppState>| async move { st.metrics.encode() }),
        );
    let http = &state.settings.http;
    let permits = Arc::new(tokio::sync::Semaphore::new(http.max_concurrent_requests));
    let secs = std::time::Duration::from_secs;
    Router::<AppState>::new()
        .merge(server::limited(
            api,
            secs(http.request_timeout_secs),
            &permits,
        ))
        .merge(server::limited(
            uploads,
            secs(http.upload_timeout_secs),
            &permits,
        ))
        .merge(probes)
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(DefaultBodyLimit::max(state.settings.max_json_bytes))
        .layer(axum::middleware::from_fn(server_timing))
        .with_state(state)
}

/// `Server-Timing` on every response: `app;dur=<ms>`, the time docfleet spent on the
/// request, and for a body read in full before the handler ran, `body;dur=<ms>` before it, the
/// time taken to receive that body (the client's upload, paced by its network).
async fn server_timing(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let received = http::BodyReceived::default();
    request.extensions_mut().insert(received.clone());
    let mut response = next.run(request).await;
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let value = match received.0.get() {
        Some(at) => format!(
            "body;dur={:.2}, app;dur={:.2}",
            ms(at.duration_since(started)),
            ms(at.elapsed())
        ),
        None => format!("app;dur={:.2}", ms(started.elapsed())),
    };
    if let Ok(v) = axum::http::HeaderValue::from_str(&value) {
        response.headers_mut().insert("server-timing", v);
    }
    response
}

/// Readiness: connected to Redis and to the broker.
async fn ready(State(st): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let mut con = st.redis.clone();
    let redis_ok = redis::cmd("PING")
        .query_async::<String>(&mut con)
        .await
        .is_ok();
    let broker_ok = st.publisher.is_connected().await;
    let code = if redis_ok && broker_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({ "redis": redis_ok, "broker": broker_ok })),
    )
}

/// Samples the work queue's depth for `/metrics` every few seconds.
async fn watch_queue_depth(st: AppState, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if let Some(n) = st.publisher.queue_depth().await {
            st.metrics.queue_depth.set(i64::from(n));
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Serves the API on `listener` and runs expansion until `shutdown` resolves, then drains:
/// in-flight requests finish and expansions hand their leases back.
pub async fn run(
    settings: DispatcherSettings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DispatcherError> {
    let state = connect(settings).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let expansion = tokio::spawn(expansion::run(state.clone(), stop_rx.clone()));
    let outbox = tokio::spawn(webhook::outbox::run(state.clone(), stop_rx.clone()));
    let sender =
        Arc::new(webhook::delivery::Sender::new(state.clone()).map_err(DispatcherError::Webhook)?);
    let sending = tokio::spawn(sender.run(stop_rx.clone()));
    let snapshots = tokio::spawn(state.status_cache.clone().run(
        state.redis.clone(),
        state.keys.clone(),
        stop_rx.clone(),
    ));
    let depth = tokio::spawn(watch_queue_depth(state.clone(), stop_rx.clone()));
    let reconciling = tokio::spawn(reconciler::run(state.clone(), stop_rx.clone()));
    let publisher = state.publisher.clone();
    let broker = tokio::spawn(async move { publisher.keep_open(stop_rx).await });
    tracing::info!(addr = %listener.local_addr()?, "Dispatcher listening.");
    let limits = state.settings.http.clone();
    let served = server::serve(listener, router(state), &limits, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = expansion.await;
    let _ = outbox.await;
    // In-flight deliveries finish (bounded by the request timeout); the rest stay due in Redis.
    let _ = sending.await;
    let _ = depth.await;
    let _ = broker.await;
    let _ = reconciling.await;
    let _ = snapshots.await;
    tracing::info!("Dispatcher drained.");
    served.map_err(DispatcherError::from)
}
