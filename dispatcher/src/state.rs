//! What every request handler and the expansion loop share.

use std::sync::Arc;

use docfleet_shared::keys::Keys;
use docfleet_shared::scripts::Scripts;
use docfleet_shared::settings::DispatcherSettings;
use docfleet_shared::store::FileStore;
use tokio::sync::Notify;

use crate::publisher::Publisher;

/// Shared, cheaply cloned state.
#[derive(Clone)]
pub struct AppState {
    /// The loaded configuration.
    pub settings: Arc<DispatcherSettings>,
    /// Redis for request handlers, reconnecting by itself.
    pub redis: redis::aio::ConnectionManager,
    /// Redis for the background loops (expansion, webhooks): a connection of their own, so a
    /// status read is never queued behind a page of expansion's commands.
    pub background: redis::aio::ConnectionManager,
    /// Key layout.
    pub keys: Keys,
    /// State-transition scripts.
    pub scripts: Scripts,
    /// Uploaded files.
    pub store: FileStore,
    /// Users' own buckets (directories filled from them), where `buckets.s3` is configured.
    pub buckets: Option<Arc<docfleet_shared::buckets::UserBuckets>>,
    /// Publishes item messages with confirms.
    pub publisher: Arc<Publisher>,
    /// Wakes the expansion loop when a batch is created.
    pub expansion_wake: Arc<Notify>,
    /// Wakes the webhook sender when new deliveries exist.
    pub webhook_wake: Arc<Notify>,
    /// API keys seen recently.
    pub key_cache: Arc<crate::auth::KeyCache>,
    /// Seals webhook credentials at rest.
    pub seal: Arc<crate::webhook::sealed::Seal>,
    /// Requests per second per project.
    pub request_rate: Arc<crate::auth::RequestRate>,
    /// Prometheus metrics.
    pub metrics: Arc<docfleet_shared::metrics::Metrics>,
    /// Snapshots of polled batches, for `get_status`.
    pub status_cache: Arc<crate::status_cache::StatusCache>,
    /// This replica's id, used as the expansion lease owner.
    pub replica_id: Arc<str>,
}
