//! The dead-letter queue, for operators: what is parked there, and putting it back.
//!
//! Workers dead-letter only what no record explains: a message that is not an item message,
//! or one whose batch or item Redis does not know (a Redis that lost a batch, a message
//! published by hand with a wrong id). `docfleet-dispatcher dead-letters` lists them and
//! `--replay` publishes each back to the queue it died in, once the cause is mended.

use std::time::Duration;

use docfleet_shared::settings::BrokerSettings;
use docfleet_shared::topology::Topology;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};
use serde_json::{json, Value};

/// A read that leaves the message unacked: it goes back if not acked.
const GET: BasicGetOptions = BasicGetOptions { no_ack: false };

/// Why listing or replaying stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker did not take a replayed message back")]
    NotTaken,
}

/// A parked message, as an operator reads it: its ids when it has them, the queue it died
/// in and why (`rejected`, `expired`, …).
fn describe(data: &[u8], props: &BasicProperties) -> Value {
    let header = |name: &str| {
        props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .and_then(|v| match v {
                AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            })
    };
    let body: Option<Value> = serde_json::from_slice(data).ok();
    let field = |k: &str| body.as_ref().and_then(|b| b.get(k)).cloned();
    json!({
        "batch_id": field("batch_id"),
        "item_id": field("item_id"),
        "queue": header("x-first-death-queue"),
        "reason": header("x-first-death-reason"),
        "body": body.is_none().then(|| String::from_utf8_lossy(data).into_owned()),
    })
}

async fn open(
    broker: &BrokerSettings,
    topology: &Topology,
) -> Result<(lapin::Connection, Channel, u32), lapin::Error> {
    let conn = docfleet_shared::services::connect_amqp(broker, Duration::from_secs(10)).await?;
    topology.declare(&conn).await?;
    let ch = conn.create_channel().await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let parked = ch
        .queue_declare(
            topology.dead_queue().as_str().into(),
            passive,
            Default::default(),
        )
        .await?
        .message_count();
    Ok((conn, ch, parked))
}

/// Up to `limit` parked messages, oldest first; they stay parked.
pub async fn list(
    broker: &BrokerSettings,
    topology: &Topology,
    limit: u32,
) -> Result<Vec<Value>, lapin::Error> {
    let (conn, ch, parked) = open(broker, topology).await?;
    let dead = topology.dead_queue();
    let mut out = Vec::new();
    for _ in 0..parked.min(limit) {
        let Some(m) = ch.basic_get(dead.as_str().into(), GET).await? else {
            break;
        };
        out.push(describe(&m.delivery.data, &m.delivery.properties));
    }
    // Unacked, every message read goes back to the queue, in order, when the channel closes.
    let _ = ch.close(200, "listed".into()).await;
    let _ = conn.close(200, "listed".into()).await;
    Ok(out)
}

/// Publishes up to `limit` parked messages back to the queue each died in (with its
/// headers), each taken off the dead-letter queue only once the broker confirmed it; how
/// many. Only the messages parked when it starts are replayed, so one that dies again is
/// not replayed twice.
pub async fn replay(
    broker: &BrokerSettings,
    topology: &Topology,
    limit: u32,
) -> Result<u32, DeadLetterError> {
    let (conn, ch, parked) = open(broker, topology).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let dead = topology.dead_queue();
    let mut replayed = 0;
    for _ in 0..parked.min(limit) {
        let Some(m) = ch.basic_get(dead.as_str().into(), GET).await? else {
            break;
        };
        let d = &m.delivery;
        let queue = describe(&d.data, &d.properties)["queue"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| topology.priority_queue(Default::default()));
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &d.data,
                d.properties.clone(),
            )
            .await?
            .await?;
        if !matches!(confirm, lapin::Confirmation::Ack(None)) {
            return Err(DeadLetterError::NotTaken);
        }
        ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
            .await?;
        replayed += 1;
    }
    let _ = ch.close(200, "replayed".into()).await;
    let _ = conn.close(200, "replayed".into()).await;
    Ok(replayed)
}
