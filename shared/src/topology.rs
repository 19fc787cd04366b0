//! Queue topology: one durable work queue per priority, all dead-lettering into a parking
//! queue.
//!
//! ```text
//! publishers ──(default exchange)──▶ P.items.critical | .high | .medium | .low
//!                                     (durable, x-dead-letter-exchange P.dlx)
//! reject(requeue=false) from any ──▶ P.dlx (fanout) ──▶ P.items.dead (durable)
//! ```
//! Why a queue per priority: a RabbitMQ priority queue costs the broker about a fifth more
//! CPU per message than a plain one (the benchmark's ceiling, 44.6-45.8 against 36.1-39.1 µs
//! per message, 15% fewer messages/s). A batch is published into the queue of its priority,
//! and workers take the next delivery from the highest queue that has one
//! (`CONSUME_ORDER`), so a critical batch overtakes a low one's backlog. A platform team
//! publishing by hand picks the queue of the priority it wants.
//!
//! Classic queues are of storage version 2 (`x-queue-version`), which RabbitMQ
//! 3.10-3.12 use only when told: the broker spent 73 rather than 76 µs of CPU per item of
//! the fleet (medians of 4 interleaved benchmark pairs).
//!
//! By default (`broker.queue_type = "quorum"`) the work queues are quorum queues instead:
//! replicated over the cluster's nodes, with a delivery limit ([`DELIVERY_LIMIT`]) and the
//! same dead-letter target. On one 2-vCPU node the fleet ran 1-2% slower on them
//! (BENCHMARKS.md, stop 39).
//!
//! Whoever connects first declares it; declarations are idempotent as long as the arguments
//! match, which is why they are defined only here.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::model::Priority;
use crate::settings::{BrokerSettings, QueueType};

/// The classic-queue storage version of the per-priority queues.
pub const QUEUE_VERSION: i32 = 2;

/// The priorities, highest first: the order workers take deliveries in.
pub const CONSUME_ORDER: [Priority; 4] = [
    Priority::Critical,
    Priority::High,
    Priority::Medium,
    Priority::Low,
];

/// Deliveries of one message a quorum queue allows before it dead-letters it: a net under
/// a message that kills every worker that takes it. Well above `max_attempts`, which the
/// workers count in Redis and which fails such an item first.
pub const DELIVERY_LIMIT: i32 = 20;

/// Names derived from `broker.queue_prefix`, and the kind of work queue.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
}

impl Topology {
    /// Topology under `prefix`, with classic work queues.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            queue_type: QueueType::Classic,
        }
    }

    /// The topology a process declares: `broker.queue_prefix` and `broker.queue_type`.
    pub fn for_broker(broker: &BrokerSettings) -> Self {
        Self {
            prefix: broker.queue_prefix.clone(),
            queue_type: broker.queue_type,
        }
    }

    /// The queue a batch of `priority` is published into.
    pub fn priority_queue(&self, priority: Priority) -> String {
        format!("{}.items.{}", self.prefix, priority.as_str())
    }

    /// Every queue workers consume, in the order they take deliveries from: the next item
    /// comes from the first queue that has one.
    pub fn work_queues(&self) -> Vec<String> {
        CONSUME_ORDER
            .iter()
            .map(|p| self.priority_queue(*p))
            .collect()
    }

    /// The dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// Where dead-lettered messages park.
    pub fn dead_queue(&self) -> String {
        format!("{}.items.dead", self.prefix)
    }

    /// Declares everything; safe to call from every process at start-up. Declares on a
    /// channel of its own: a refused declaration closes the channel it was made on.
    pub async fn declare(&self, connection: &Connection) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let channel = connection.create_channel().await?;
        channel
            .exchange_declare(
                self.dead_letter_exchange().as_str().into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_declare(
                self.dead_queue().as_str().into(),
                durable,
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_queue().as_str().into(),
                self.dead_letter_exchange().as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        for queue in self.work_queues() {
            channel
                .queue_declare(
                    queue.as_str().into(),
                    durable,
                    self.priority_queue_arguments(),
                )
                .await?;
        }
        // Closing is tidiness only: the connection's end closes it too.
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// The arguments every work queue is declared with.
    pub fn priority_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        match self.queue_type {
            QueueType::Classic => {
                args.insert(
                    ShortString::from("x-queue-version"),
                    AMQPValue::LongInt(QUEUE_VERSION),
                );
            }
            QueueType::Quorum => {
                args.insert(
                    ShortString::from("x-queue-type"),
                    AMQPValue::LongString("quorum".into()),
                );
                args.insert(
                    ShortString::from("x-delivery-limit"),
                    AMQPValue::LongInt(DELIVERY_LIMIT),
                );
            }
        }
        args
    }

    /// Deletes everything (tests clean up with it).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for q in self.work_queues().into_iter().chain([self.dead_queue()]) {
            channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                self.dead_letter_exchange().as_str().into(),
                lapin::options::ExchangeDeleteOptions::default(),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_the_highest_priority_first() {
        let t = Topology::new("df");
        assert_eq!(
            t.work_queues(),
            [
                "df.items.critical",
                "df.items.high",
                "df.items.medium",
                "df.items.low"
            ]
        );
        // The dead-letter queue is not a work queue, and no two priorities share one.
        assert!(!t.work_queues().contains(&t.dead_queue()));
        let distinct: std::collections::HashSet<String> = t.work_queues().into_iter().collect();
        assert_eq!(distinct.len(), 4);
    }

    #[test]
    fn priority_queues_dead_letter_and_use_storage_version_2() {
        let t = Topology::new("df");
        let args = t.priority_queue_arguments();
        assert_eq!(
            args.inner().get("x-queue-version"),
            Some(&AMQPValue::LongInt(2))
        );
        assert_eq!(
            args.inner().get("x-dead-letter-exchange"),
            Some(&AMQPValue::LongString("df.dlx".into()))
        );
        let quorum = Topology::for_broker(&BrokerSettings {
            queue_prefix: "df".into(),
            queue_type: QueueType::Quorum,
            ..BrokerSettings::default()
        });
        let args = quorum.priority_queue_arguments();
        assert_eq!(
            args.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(args.inner().get("x-queue-version"), None);
        assert!(args.inner().contains_key("x-dead-letter-exchange"));
    }
}
