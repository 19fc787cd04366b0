//! Webhooks: subscriptions validated at create time, events turned into durable deliveries,
//! deliveries sent with signatures and retried for days.
//!
//! - [`subscription`]: what a batch subscribes to, from every field the API allows.
//! - [`outbox`]: reads the `P:events` stream (a consumer group shared by all replicas, so each
//!   event is handled by one) and writes one delivery record per matching endpoint.
//! - [`delivery`]: sends due deliveries, records the outcome, schedules retries.
//! - [`saved`]: saved webhook configurations, named by id at batch creation.
//! - [`sealed`]: signing secrets and header values sealed at rest.
//! - [`api`]: the delivery log of a batch and redelivery (our extension).
//! - [`guard`]: refuses loopback, private, link-local and metadata targets at connect time.

pub mod api;
pub mod delivery;
pub mod guard;
pub mod outbox;
pub mod saved;
pub mod sealed;
pub mod subscription;
