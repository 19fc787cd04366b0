//! Prometheus metrics, and the typed events that emit a log line and a metric together so the
//! two never disagree (one label vocabulary: `job_type`, `outcome`, `service`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `job_type` + `outcome`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `parse` / `classify`.
    pub job_type: String,
    /// `completed`, `failed`, `skipped`, `cancelled`, `duplicate`, `retry`, `dead_letter`.
    pub outcome: String,
}

/// `job_type`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// `parse` / `classify`.
    pub job_type: String,
}

/// `service`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// `rabbitmq` / `redis`.
    pub service: String,
}

/// `outcome` of a webhook attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `delivered`, `retry`, `failed`.
    pub outcome: String,
}

/// `source` of a status read.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusReadLabels {
    /// `memory` (a refreshed snapshot) or `redis`.
    pub source: String,
}

fn histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric of one process.
pub struct Metrics {
    registry: Registry,
    /// Items settled by a worker.
    pub items: Family<OutcomeLabels, Counter>,
    /// Time from claim to recorded outcome.
    pub item_seconds: Family<JobLabels, Histogram, fn() -> Histogram>,
    /// Reconnections to a dependency.
    pub reconnects: Family<ServiceLabels, Counter>,
    /// Item messages published (expansion rate).
    pub published: Counter,
    /// Messages ready in the work queue, as last seen.
    pub queue_depth: Gauge,
    /// Webhook attempts by outcome.
    pub webhooks: Family<WebhookLabels, Counter>,
    /// Webhook request duration.
    pub webhook_seconds: Histogram,
    /// Items per claim or finish script run of a worker (its ledger's groups).
    pub ledger_group_items: Histogram,
    /// `get_status` reads by where they were answered from.
    pub status_reads: Family<StatusReadLabels, Counter>,
    /// Batches the reconciler found stalled in its last round.
    pub batches_stalled: Gauge,
    /// Item messages the reconciler published again.
    pub items_republished: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("docfleet");
        let m = Self {
            items: Family::default(),
            item_seconds: Family::new_with_constructor(histogram as fn() -> Histogram),
            reconnects: Family::default(),
            published: Counter::default(),
            queue_depth: Gauge::default(),
            webhooks: Family::default(),
            webhook_seconds: histogram(),
            ledger_group_items: Histogram::new(exponential_buckets(1.0, 2.0, 6)),
            status_reads: Family::default(),
            batches_stalled: Gauge::default(),
            items_republished: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "items",
            "Items settled, by job type and outcome",
            m.items.clone(),
        );
        registry.register(
            "item_duration_seconds",
            "Claim to recorded outcome",
            m.item_seconds.clone(),
        );
        registry.register(
            "reconnects",
            "Reconnections to RabbitMQ or Redis",
            m.reconnects.clone(),
        );
        registry.register(
            "messages_published",
            "Item messages published and confirmed",
            m.published.clone(),
        );
        registry.register(
            "queue_depth",
            "Messages ready in the work queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "webhook_attempts",
            "Webhook attempts by outcome",
            m.webhooks.clone(),
        );
        registry.register(
            "webhook_duration_seconds",
            "Webhook request duration",
            m.webhook_seconds.clone(),
        );
        registry.register(
            "ledger_group_items",
            "Items per claim or finish script run (a worker's ledger groups)",
            m.ledger_group_items.clone(),
        );
        registry.register(
            "status_reads",
            "get_status reads, by whether a refreshed snapshot or Redis answered",
            m.status_reads.clone(),
        );
        registry.register(
            "batches_stalled",
            "Running batches without progress for reconcile.stale_secs, in the reconciler's last round",
            m.batches_stalled.clone(),
        );
        registry.register(
            "items_republished",
            "Item messages the reconciler published again for stalled batches",
            m.items_republished.clone(),
        );
        Self { registry, ..m }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// An item was settled: one log line and the matching counter and histogram.
    pub fn item_settled(&self, job_type: &str, outcome: &str, seconds: Option<f64>) {
        // Per item, so debug: at info a busy worker would spend more on logging than on work.
        tracing::debug!(job_type, outcome, seconds, "Item settled.");
        self.items
            .get_or_create(&OutcomeLabels {
                job_type: job_type.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        if let Some(s) = seconds {
            self.item_seconds
                .get_or_create(&JobLabels {
                    job_type: job_type.to_owned(),
                })
                .observe(s);
        }
    }

    /// A dependency connection was lost and is being re-established.
    pub fn reconnecting(&self, service: &str, error: &dyn std::fmt::Display) {
        tracing::warn!(service, %error, "Connection lost; reconnecting.");
        self.reconnects
            .get_or_create(&ServiceLabels {
                service: service.to_owned(),
            })
            .inc();
    }

    /// The reconciler found a batch stalled and published `items` of its messages again.
    pub fn batch_stalled(&self, batch_id: &str, items: usize, recounted: bool) {
        tracing::warn!(
            batch_id,
            items,
            recounted,
            "Batch stalled: no progress for reconcile.stale_secs; its unfinished items are published again."
        );
        self.items_republished.inc_by(items as u64);
    }

    /// A webhook attempt ended.
    pub fn webhook_attempt(&self, outcome: &str, seconds: f64) {
        self.webhooks
            .get_or_create(&WebhookLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
        self.webhook_seconds.observe(seconds);
    }
}
