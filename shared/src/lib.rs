//! What the docfleet dispatcher and workers must agree on.
//!
//! # Layout
//! - [`settings`]: typed configuration for both binaries, loaded defaults → file → `DOCFLEET__…` env.
//! - [`telemetry`]: tracing set-up (human or JSON logs).
//! - [`model`]: status enums and the job configurations a batch carries.
//! - [`wire`]: the per-item AMQP message, with its schema version.
//! - [`keys`]: the Redis key layout, in one place.
//! - [`scripts`]: the Lua scripts that move items and batches between states atomically.
//! - [`topology`]: queue and exchange names and arguments, declared by whoever connects first.
//! - [`store`]: the file store that holds uploaded bytes and parse outputs.
//! - [`buckets`]: users' own buckets, where outputs may go and inputs may come from.
//! - [`services`]: connecting to RabbitMQ and Redis.
//! - [`metrics`]: Prometheus metrics and the typed events that emit log + metric together.

pub mod buckets;
pub mod keys;
pub mod metrics;
pub mod model;
pub mod probe;
pub mod scripts;
pub mod services;
pub mod settings;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod topology;
pub mod wire;

/// Now as an RFC 3339 UTC timestamp with millisecond precision, the format every record uses.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Now in milliseconds since the epoch, used as sorted-set scores.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
