//! The docfleet worker: consumes item messages, parses or classifies each file, records the
//! outcome atomically in Redis and acks only after that.
//!
//! # Layout
//! - [`consumer`]: the AMQP loop: prefetch, concurrency, reconnection, drain; [`acks`]: acks
//!   coalesced into runs.
//! - [`health`]: `/healthz`, `/readyz`, `/metrics` for probes and Prometheus.
//! - [`item`]: one item from claim to recorded outcome; the retry / fail / skip types;
//!   [`ledger`]: claims and outcomes sent to Redis in groups.
//! - [`isolation`]: the memory bound: parsers in a child process under `RLIMIT_DATA`;
//!   [`children`]: child processes in their own process groups, killed at a deadline;
//!   [`sandbox`]: what the parser child may touch (Landlock, process limit).
//! - [`parse`]: the parse engine; [`office`]: DOCX, PPTX and spreadsheets; [`ocr`]: Tesseract;
//!   [`images`]: screenshots and embedded images kept beside a result.
//! - [`classify`]: the classify engine; [`embedding`]: the sentence-embedding model it uses;
//!   [`vision`]: MULTIMODAL through an OpenAI-compatible vision model.

pub mod acks;
pub mod children;
pub mod classify;
pub mod consumer;
pub mod embedding;
pub mod engines;
pub mod health;
pub mod images;
pub mod input;
pub mod isolation;
pub mod item;
pub mod ledger;
pub mod ocr;
pub mod office;
pub mod parse;
pub mod sandbox;
pub mod vision;

use std::future::Future;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use docfleet_shared::settings::WorkerSettings;
use tokio::sync::watch;

/// Why the worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// Redis is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis keeps nothing on disk, and that was not allowed.
    #[error(transparent)]
    NoPersistence(#[from] docfleet_shared::services::NoPersistence),
    /// `redis.wait_aof` is set, and this Redis cannot wait for its AOF.
    #[error(transparent)]
    WaitAof(#[from] docfleet_shared::services::WaitAofUnsupported),
    /// The health endpoint could not bind.
    #[error("health endpoint: {0}")]
    Health(#[from] std::io::Error),
    /// The file store cannot be opened or does not answer.
    #[error(transparent)]
    Store(#[from] docfleet_shared::store::StoreError),
}

/// Runs the worker until `shutdown` resolves, then drains: stops consuming, lets in-flight
/// items finish within `drain_secs`, hands unstarted deliveries back, and returns.
pub async fn run(
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let settings = Arc::new(settings);
    let mut redis = docfleet_shared::services::connect_redis(&settings.redis.url).await?;
    docfleet_shared::services::check_durability(&mut redis, settings.redis.allow_no_persistence)
        .await?;
    if settings.redis.wait_aof {
        docfleet_shared::services::check_wait_aof(&mut redis).await?;
        tracing::info!("Redis: acks wait until outcomes are in the AOF on disk (WAITAOF).");
    }
    let store = docfleet_shared::store::FileStore::open(&settings.store)?;
    store.check().await?;
    let metrics = Arc::new(docfleet_shared::metrics::Metrics::default());
    let processor = Arc::new(item::Processor::new(
        settings.clone(),
        store,
        redis,
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let connected = Arc::new(AtomicBool::new(false));
    if let Some(addr) = &settings.health_listen {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tokio::spawn(health::serve(
            listener,
            processor.clone(),
            connected.clone(),
            metrics.clone(),
            stop_rx.clone(),
        ));
    }
    consumer::run(settings, processor, connected, metrics, stop_rx).await;
    tracing::info!("Worker drained.");
    Ok(())
}
