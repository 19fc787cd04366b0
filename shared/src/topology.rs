//! Queue topology: one plain durable work queue per priority, the shared priority queue for
//! messages published by others, all dead-lettering into a parking queue.
//!
//! ```text
//! dispatcher ──(default exchange)──▶ P.items.critical | .high | .medium | .low
//!                                     (durable, x-dead-letter-exchange P.dlx)
//! anyone else ─────────────────────▶ P.items  (durable, x-max-priority 4, same DLX)
//! reject(requeue=false) from any ──▶ P.dlx (fanout) ──▶ P.items.dead (durable)
//! ```
//! Why a queue per priority: a RabbitMQ priority queue costs the broker about a fifth more
//! CPU per message than a plain one (the benchmark's ceiling, 44.6-45.8 against 36.1-39.1 µs
//! per message, 15% fewer messages/s). The dispatcher publishes into the plain queue of the
//! batch's priority, and workers take the next delivery from the highest queue that has one
//! (`CONSUME_ORDER`), so a critical batch still overtakes a low one's backlog. `P.items`
//! keeps its old arguments, so a broker that already holds it (from an older docfleet, or
//! a platform team publishing by hand with the `priority` property) needs no migration.
//!
//! The per-priority queues are classic queues of storage version 2 (`x-queue-version`), which
//! RabbitMQ 3.10-3.12 use only when told: the broker spent 73 rather than 76 µs of CPU per
//! item of the fleet (medians of 4 interleaved benchmark pairs; 72 against 79 in a first run
//! with a `queue-version` policy). A queue that exists already with another version (declared
//! by an older docfleet) refuses the new arguments; it is kept as it is, and a policy can
//! convert it (README, Measuring).
//!
//! Whoever connects first declares it; declarations are idempotent as long as the arguments
//! match, which is why they are defined only here.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::model::Priority;

/// Highest message priority; see [`crate::model::Priority::amqp`].
pub const MAX_PRIORITY: u8 = 4;

/// The classic-queue storage version of the per-priority queues.
pub const QUEUE_VERSION: i32 = 2;

/// The priorities, highest first: the order workers take deliveries in.
pub const CONSUME_ORDER: [Priority; 4] = [
    Priority::Critical,
    Priority::High,
    Priority::Medium,
    Priority::Low,
];

/// Names derived from `broker.queue_prefix`.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    /// Topology under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The shared priority queue, for messages published by others (`priority` 1-4 honoured).
    pub fn items_queue(&self) -> String {
        format!("{}.items", self.prefix)
    }

    /// The plain queue the dispatcher publishes a batch of `priority` into.
    pub fn priority_queue(&self, priority: Priority) -> String {
        format!("{}.items.{}", self.prefix, priority.as_str())
    }

    /// Every queue workers consume, in the order they take deliveries from: the next item
    /// comes from the first queue that has one.
    pub fn work_queues(&self) -> Vec<String> {
        let [critical, high, medium, low] = CONSUME_ORDER;
        vec![
            self.priority_queue(critical),
            self.priority_queue(high),
            self.priority_queue(medium),
            // Published by others with priorities of their own; ranked with medium, the
            // default, since its messages may hold any of them.
            self.items_queue(),
            self.priority_queue(low),
        ]
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
        let mut channel = connection.create_channel().await?;
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
        let versioned = self.priority_queue_arguments();
        for priority in CONSUME_ORDER {
            let queue = self.priority_queue(priority);
            match channel
                .queue_declare(queue.as_str().into(), durable, versioned.clone())
                .await
            {
                Ok(_) => {}
                Err(e) if refused_version(&e) => {
                    tracing::warn!(
                        queue = %queue,
                        "the queue exists with another storage version (an older docfleet \
                         declared it); used as it is"
                    );
                    channel = connection.create_channel().await?;
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    };
                    channel
                        .queue_declare(queue.as_str().into(), passive, FieldTable::default())
                        .await?;
                }
                Err(e) => return Err(e),
            }
        }
        let mut shared = self.dead_lettering();
        shared.insert(
            ShortString::from("x-max-priority"),
            AMQPValue::ShortShortUInt(MAX_PRIORITY),
        );
        channel
            .queue_declare(self.items_queue().as_str().into(), durable, shared)
            .await?;
        // Closing is tidiness only: the connection's end closes it too.
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    /// The argument every work queue is declared with.
    fn dead_lettering(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        args
    }

    /// The arguments a per-priority queue is declared with.
    pub fn priority_queue_arguments(&self) -> FieldTable {
        let mut args = self.dead_lettering();
        args.insert(
            ShortString::from("x-queue-version"),
            AMQPValue::LongInt(QUEUE_VERSION),
        );
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

/// Whether the broker refused a declaration because the queue exists with another
/// `x-queue-version` (406 PRECONDITION_FAILED, naming the argument).
fn refused_version(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if p.get_id() == 406 && p.get_message().as_str().contains("x-queue-version")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_take_the_highest_priority_first_and_the_shared_queue_with_medium() {
        let t = Topology::new("df");
        assert_eq!(
            t.work_queues(),
            [
                "df.items.critical",
                "df.items.high",
                "df.items.medium",
                "df.items",
                "df.items.low"
            ]
        );
        // The dead-letter queue is not a work queue, and no two priorities share one.
        assert!(!t.work_queues().contains(&t.dead_queue()));
        let distinct: std::collections::HashSet<String> = t.work_queues().into_iter().collect();
        assert_eq!(distinct.len(), 5);
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
    }
}
