//! The consume loop: bounded prefetch, bounded concurrency, manual acks, reconnection, drain.

use std::sync::Arc;
use std::time::Duration;

use docfleet_shared::topology::Topology;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::acks::Acker;
use crate::item::Processor;
use docfleet_shared::settings::WorkerSettings;

/// Why one consume session ended.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The broker connection or channel failed.
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker cancelled the consumer (queue deleted, node restart).
    #[error("consumer stream ended")]
    Ended,
}

/// Resolves once `stop` is true.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Consumes until `stop`, reconnecting with backoff whenever the broker goes away.
pub async fn run(
    settings: Arc<WorkerSettings>,
    processor: Arc<Processor>,
    connected: Arc<std::sync::atomic::AtomicBool>,
    metrics: Arc<docfleet_shared::metrics::Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = consume(&settings, &processor, &connected, stop.clone()).await;
        connected.store(false, std::sync::atomic::Ordering::Relaxed);
        match session {
            Ok(()) => return,
            Err(error) => metrics.reconnecting("rabbitmq", &error),
        }
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn consume(
    settings: &WorkerSettings,
    processor: &Arc<Processor>,
    connected: &std::sync::atomic::AtomicBool,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConsumeError> {
    let topology = Topology::for_broker(&settings.broker);
    let conn =
        docfleet_shared::services::connect_amqp(&settings.broker, Duration::from_secs(5)).await?;
    topology.declare(&conn).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    // One consumer per work queue, highest priority first (`Topology::work_queues`). The
    // prefetch bounds each: a worker holds at most `prefetch` deliveries of any one queue,
    // and only queues with messages fill theirs.
    let worker = uuid::Uuid::new_v4().simple();
    let mut consumers = Vec::new();
    let mut tags = Vec::new();
    for queue in topology.work_queues() {
        let tag = format!("docfleet-worker-{worker}-{queue}");
        consumers.push(
            channel
                .basic_consume(
                    queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?,
        );
        tags.push(tag);
    }
    connected.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(queues = ?topology.work_queues(), "Consuming.");
    let slots = Arc::new(Semaphore::new(settings.concurrency));
    let (acker, acks_sent) = Acker::start(channel.clone());
    let mut tasks = JoinSet::new();
    let outcome = loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => break Ok(()),
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break Ok(()),
            },
        };
        let next = tokio::select! {
            _ = stopped(&mut stop) => break Ok(()),
            d = next_by_priority(&mut consumers) => d,
        };
        let delivery = match next {
            None => break Err(ConsumeError::Ended),
            Some(Err(e)) => break Err(ConsumeError::Broker(e)),
            Some(Ok(d)) => d,
        };
        let (processor, acker) = (processor.clone(), acker.clone());
        tasks.spawn(async move {
            let verdict = processor
                .handle_traced(&delivery.data, &trace_of(&delivery))
                .await;
            acker.settle(delivery.delivery_tag, verdict);
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    };
    // Stop the flow first, then let in-flight items finish within the drain deadline.
    for tag in &tags {
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    let drain = Duration::from_secs(settings.drain_secs);
    if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!("Drain deadline passed; unfinished items will be redelivered.");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    // The acker sends what is pending once the last sender is gone.
    drop(acker);
    let _ = acks_sent.await;
    // Closing hands every prefetched but unstarted delivery back to the queue.
    let _ = channel.close(200, "worker draining".into()).await;
    let _ = conn.close(200, "worker draining".into()).await;
    outcome
}

/// The next delivery of the first consumer that has one, so a delivery of a higher priority
/// queue is always taken before a lower one's; `None` once any consumer's stream has ended.
async fn next_by_priority(consumers: &mut [lapin::Consumer]) -> Option<lapin::Result<Delivery>> {
    std::future::poll_fn(|cx| {
        for consumer in consumers.iter_mut() {
            if let std::task::Poll::Ready(next) = consumer.poll_next_unpin(cx) {
                return std::task::Poll::Ready(next);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The request identifiers a message carries in its headers.
fn trace_of(delivery: &Delivery) -> docfleet_shared::wire::Trace {
    use docfleet_shared::wire::Trace;
    let header = |name: &str| {
        delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .and_then(|v| match v {
                lapin::types::AMQPValue::LongString(s) => Some(s.to_string()),
                _ => None,
            })
    };
    Trace {
        correlation_id: header(Trace::CORRELATION_HEADER),
        session_id: header(Trace::SESSION_HEADER),
    }
}
