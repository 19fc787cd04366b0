//! Queue topology: one durable priority work queue, dead-lettering into a parking queue.
//!
//! ```text
//! publish ──(default exchange, routing key P.items)──▶ P.items  (durable, x-max-priority 4,
//!                                                              x-dead-letter-exchange P.dlx)
//! reject(requeue=false) from P.items ──▶ P.dlx (fanout) ──▶ P.items.dead (durable)
//! ```
//! Whoever connects first declares it; declarations are idempotent as long as the arguments
//! match, which is why they are defined only here.

use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, ExchangeKind};

/// Highest message priority; see [`crate::model::Priority::amqp`].
pub const MAX_PRIORITY: u8 = 4;

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

    /// The work queue.
    pub fn items_queue(&self) -> String {
        format!("{}.items", self.prefix)
    }

    /// The dead-letter exchange.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dlx", self.prefix)
    }

    /// Where dead-lettered messages park.
    pub fn dead_queue(&self) -> String {
        format!("{}.items.dead", self.prefix)
    }

    /// Declares everything; safe to call from every process at start-up.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
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
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-max-priority"),
            AMQPValue::ShortShortUInt(MAX_PRIORITY),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
        channel
            .queue_declare(self.items_queue().as_str().into(), durable, args)
            .await?;
        Ok(())
    }

    /// Deletes everything (tests clean up with it).
    pub async fn delete(&self, channel: &Channel) -> lapin::Result<()> {
        for q in [self.items_queue(), self.dead_queue()] {
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
