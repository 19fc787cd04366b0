//! Publishing item messages with publisher confirms, reconnecting when the channel dies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use docfleet_shared::model::Priority;
use docfleet_shared::settings::BrokerSettings;
use docfleet_shared::topology::Topology;
use docfleet_shared::wire::Trace;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};
use tokio::sync::Mutex;

/// A publish that the broker did not confirm.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The connection or channel failed.
    #[error("broker unavailable: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused messages (nack), or returned them because no queue took them (the
    /// work queue was deleted): the link is reopened, which declares the queues again.
    #[error("broker did not take {0} message(s) (nacked or unroutable)")]
    Nacked(usize),
}

struct Link {
    _connection: Connection,
    channel: Channel,
    /// Set when a message came back unroutable: the topology must be declared again.
    returned: Arc<AtomicBool>,
}

/// How often the link is checked while it is up.
const HEAL_EVERY: Duration = Duration::from_secs(1);
/// The longest wait between two attempts to reach a broker that is down.
const HEAL_MAX: Duration = Duration::from_secs(5);

/// One confirmed channel per dispatcher, re-opened on failure.
pub struct Publisher {
    broker: BrokerSettings,
    topology: Topology,
    link: Mutex<Option<Link>>,
}

impl Publisher {
    /// Connects and declares the topology.
    pub async fn connect(
        broker: &BrokerSettings,
        topology: Topology,
    ) -> Result<Self, PublishError> {
        let p = Self {
            broker: broker.clone(),
            topology,
            link: Mutex::new(None),
        };
        {
            let mut guard = p.link.lock().await;
            *guard = Some(p.open().await?);
        }
        Ok(p)
    }

    async fn open(&self) -> Result<Link, PublishError> {
        let connection =
            docfleet_shared::services::connect_amqp(&self.broker, Duration::from_secs(10)).await?;
        self.topology.declare(&connection).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Link {
            _connection: connection,
            channel,
            returned: Arc::default(),
        })
    }

    /// The link, opened anew when the current one is gone or failed (here or while its
    /// confirms were awaited): a failed channel is never reused.
    async fn usable<'a>(&self, link: &'a mut Option<Link>) -> Result<&'a Link, PublishError> {
        if !healthy(link) {
            *link = None;
            *link = Some(self.open().await?);
            tracing::info!("Broker link opened.");
        }
        link.as_ref().ok_or(PublishError::Nacked(0))
    }

    /// Opens a new link when the current one is gone; true when the link is usable after.
    pub async fn heal(&self) -> bool {
        let mut guard = self.link.lock().await;
        match self.usable(&mut guard).await {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(%error, "Broker unavailable; retrying.");
                false
            }
        }
    }

    /// Keeps the link open until `shutdown`, whether or not anything is published: an idle
    /// dispatcher must become ready again on its own after the broker comes back, since an
    /// unready replica gets no traffic that would make it publish. Looks every second, and
    /// backs off to [`HEAL_MAX`] while the broker stays away.
    pub async fn keep_open(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let mut wait = HEAL_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
            if *shutdown.borrow() {
                return;
            }
            wait = if self.heal().await {
                HEAL_EVERY
            } else {
                (wait * 2).min(HEAL_MAX)
            };
        }
    }

    /// Whether the channel is usable now (readiness).
    pub async fn is_connected(&self) -> bool {
        healthy(&*self.link.lock().await)
    }

    /// Messages ready in all work queues together, if the broker answers.
    pub async fn queue_depth(&self) -> Option<u32> {
        let mut ready = 0u32;
        for queue in self.topology.work_queues() {
            ready = ready.saturating_add(self.queue_load(&queue).await?.0);
        }
        Some(ready)
    }

    /// Messages ready in `queue` and consumers attached to it, if the broker answers.
    pub async fn queue_load(&self, queue: &str) -> Option<(u32, u32)> {
        let guard = self.link.lock().await;
        let link = guard.as_ref()?;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        link.channel
            .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
            .await
            .ok()
            .map(|q| (q.message_count(), q.consumer_count()))
    }

    /// The queue a batch of `priority` is published into.
    pub fn queue_for(&self, priority: Priority) -> String {
        self.topology.priority_queue(priority)
    }

    /// Publishes persistent messages to the work queue of `priority` and waits until the
    /// broker confirms every one.
    pub async fn publish_all(
        &self,
        bodies: &[Vec<u8>],
        priority: Priority,
    ) -> Result<(), PublishError> {
        self.send(bodies, priority, &Trace::default())
            .await?
            .wait()
            .await
    }

    /// Publishes persistent messages to the work queue of `priority`, with the batch's
    /// request identifiers as message headers, and returns once they are sent;
    /// [`Confirms::wait`] then waits until the broker confirms every one. The channel is free
    /// for other pages in between, so a caller can prepare its next page while the broker
    /// works. On failure some may have been delivered: callers re-publish the whole page,
    /// which is safe because workers ignore items that are already settled.
    pub async fn send(
        &self,
        bodies: &[Vec<u8>],
        priority: Priority,
        trace: &Trace,
    ) -> Result<Confirms, PublishError> {
        let mut guard = self.link.lock().await;
        let link = self.usable(&mut guard).await?;
        let queue = self.topology.priority_queue(priority);
        let mut headers = lapin::types::FieldTable::default();
        for (name, value) in [
            (Trace::CORRELATION_HEADER, &trace.correlation_id),
            (Trace::SESSION_HEADER, &trace.session_id),
        ] {
            if let Some(v) = value {
                headers.insert(
                    name.into(),
                    lapin::types::AMQPValue::LongString(v.as_str().into()),
                );
            }
        }
        // Mandatory: a message no queue takes comes back instead of being confirmed into
        // nothing. The queue is the priority; a header table is sent only when it holds
        // something.
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if !headers.inner().is_empty() {
            props = props.with_headers(headers);
        }
        // A publish resolves once lapin's I/O thread has written it, so awaiting them one by
        // one costs two thread hand-offs per message (perf: half the dispatcher's CPU went to
        // context switches). Polled together, the first poll queues every frame of the page in
        // order and the I/O thread writes them in a few runs.
        let sent = futures_util::future::join_all(bodies.iter().map(|body| {
            link.channel.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props.clone(),
            )
        }))
        .await;
        let mut confirms = Vec::with_capacity(bodies.len());
        for s in sent {
            match s {
                Ok(confirm) => confirms.push(confirm),
                Err(e) => {
                    *guard = None;
                    return Err(e.into());
                }
            }
        }
        Ok(Confirms {
            confirms,
            returned: link.returned.clone(),
        })
    }
}

/// Whether a link is there, its channel open and its queues still there.
fn healthy(link: &Option<Link>) -> bool {
    link.as_ref()
        .is_some_and(|l| l.channel.status().connected() && !l.returned.load(Ordering::Relaxed))
}

/// The broker's answers to one [`Publisher::send`], still to come.
#[must_use = "a page counts as published only once its confirms are awaited"]
pub struct Confirms {
    confirms: Vec<PublisherConfirm>,
    returned: Arc<AtomicBool>,
}

impl Confirms {
    /// Waits for every confirm; an error if the channel failed or any message was nacked or
    /// returned.
    pub async fn wait(self) -> Result<(), PublishError> {
        let mut nacked = 0;
        for c in self.confirms {
            match c.await? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => {
                    self.returned.store(true, Ordering::Relaxed);
                    nacked += 1;
                }
                _ => nacked += 1,
            }
        }
        if nacked > 0 {
            return Err(PublishError::Nacked(nacked));
        }
        Ok(())
    }
}
