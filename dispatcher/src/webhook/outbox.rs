//! From the event outbox to delivery records.
//!
//! The scripts that change state append events to `P:events` in the same atomic step, so no
//! event is lost between "state changed" and "webhook sent". Every dispatcher replica reads the
//! stream through one consumer group: an event is handed to one replica, acknowledged only after
//! its delivery records are written, and re-claimed from a replica that died holding it.
//! Delivery ids derive from the stream id, so handling an event twice writes nothing new.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use serde_json::json;
use tokio::sync::watch;

use super::subscription::Endpoint;
use crate::records::BatchRecord;
use crate::state::AppState;

/// The consumer group every replica reads through.
pub const GROUP: &str = "webhooks";

/// Idle time after which another replica takes over an unacknowledged event.
const RECLAIM_IDLE_MS: u64 = 30_000;

/// Writes one delivery unless it exists. KEYS: delivery, due, batch deliveries.
/// ARGV: now_ms, delivery id, then field/value pairs.
const CREATE_DELIVERY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
return 1";

/// The endpoints a batch subscribed, from its record.
pub async fn endpoints(st: &AppState, batch_id: &str) -> redis::RedisResult<Arc<Vec<Endpoint>>> {
    let mut con = st.redis.clone();
    let raw: Option<String> = con.hget(st.keys.batch(batch_id), "webhooks").await?;
    Ok(Arc::new(
        raw.and_then(|r| serde_json::from_str(&r).ok())
            .unwrap_or_default(),
    ))
}

/// Turns outbox events into deliveries until `stop`.
pub async fn run(st: AppState, mut stop: watch::Receiver<bool>) {
    // XREADGROUP blocks its connection, so it gets one of its own.
    let mut reader = match docfleet_shared::services::connect_redis(&st.settings.redis.url).await {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "Outbox reader cannot connect to Redis; webhooks are off.");
            return;
        }
    };
    let consumer = st.replica_id.to_string();
    let mut cache: HashMap<String, Arc<Vec<Endpoint>>> = HashMap::new();
    let mut last_reclaim = tokio::time::Instant::now() - Duration::from_secs(3600);
    while !*stop.borrow() {
        let step = async {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(st.keys.events())
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut reader)
                .await;
            if let Err(e) = created {
                if e.code() != Some("BUSYGROUP") {
                    return Err(e);
                }
            }
            let mut entries: Vec<StreamId> = Vec::new();
            if last_reclaim.elapsed() > Duration::from_millis(RECLAIM_IDLE_MS / 3) {
                last_reclaim = tokio::time::Instant::now();
                let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(st.keys.events())
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg(RECLAIM_IDLE_MS)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(200)
                    .query_async(&mut reader)
                    .await?;
                entries.extend(claimed.claimed);
            }
            if entries.is_empty() {
                let opts = StreamReadOptions::default()
                    .group(GROUP, &consumer)
                    .count(200)
                    .block(500);
                let reply: Option<StreamReadReply> = reader
                    .xread_options(&[st.keys.events()], &[">"], &opts)
                    .await?;
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    entries.extend(key.ids);
                }
            }
            if cache.len() > 10_000 {
                cache.clear();
            }
            for entry in &entries {
                handle(&st, &mut cache, entry).await?;
                let _: i64 = reader.xack(st.keys.events(), GROUP, &[&entry.id]).await?;
            }
            if !entries.is_empty() {
                st.webhook_wake.notify_one();
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            r = step => if let Err(error) = r {
                tracing::warn!(%error, "Outbox read failed; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            },
            _ = stop.changed() => {}
        }
    }
}

async fn handle(
    st: &AppState,
    cache: &mut HashMap<String, Arc<Vec<Endpoint>>>,
    entry: &StreamId,
) -> redis::RedisResult<()> {
    let field = |k: &str| entry.get::<String>(k).unwrap_or_default();
    let (event, batch_id, item_id) = (field("type"), field("batch_id"), field("item_id"));
    let eps = match cache.get(&batch_id) {
        Some(e) => e.clone(),
        None => {
            let e = endpoints(st, &batch_id).await?;
            cache.insert(batch_id.clone(), e.clone());
            e
        }
    };
    let wanted: Vec<usize> = eps
        .iter()
        .enumerate()
        .filter(|(_, e)| e.wants(&event))
        .map(|(i, _)| i)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let mut con = st.redis.clone();
    let status = field("status");
    let data = if item_id.is_empty() {
        let h: HashMap<String, String> = con.hgetall(st.keys.batch(&batch_id)).await?;
        let mut v = BatchRecord(h).to_api();
        // The snapshot is read after the fact; the event's own status is the truth.
        v["status"] = json!(status);
        v
    } else {
        let h: HashMap<String, String> = con.hgetall(st.keys.item(&batch_id, &item_id)).await?;
        let get = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
        json!({
            "job_id": get("job_id"),
            "item_id": item_id,
            "item_name": get("name"),
            "batch_id": batch_id,
            "status": status,
            "error_message": get("error_message").or_else(|| get("skip_reason")),
        })
    };
    let event_id = format!("evt-{}", entry.id);
    let payload = json!({
        "event_id": event_id,
        "event_type": event,
        "timestamp": field("at"),
        "sequence": field("seq").parse::<u64>().unwrap_or(0),
        "batch_id": batch_id,
        "data": data,
    });
    let body = payload.to_string();
    let now = docfleet_shared::now_millis();
    let script = redis::Script::new(CREATE_DELIVERY);
    for idx in wanted {
        let id = format!("whd-{}-{idx}", entry.id);
        let url = eps[idx].url.clone();
        let fields: Vec<(&str, String)> = vec![
            ("id", id.clone()),
            ("batch_id", batch_id.clone()),
            ("event_id", event_id.clone()),
            ("event_type", event.clone()),
            ("endpoint", idx.to_string()),
            ("url", url),
            ("body", body.clone()),
            ("status", "pending".into()),
            ("attempts", "0".into()),
            ("created_at", now.to_string()),
            ("next_attempt_at", now.to_string()),
        ];
        let mut inv = script.prepare_invoke();
        inv.key(st.keys.delivery(&id))
            .key(st.keys.webhook_due())
            .key(st.keys.batch_deliveries(&batch_id))
            .arg(now)
            .arg(&id);
        for (k, v) in &fields {
            inv.arg(*k).arg(v);
        }
        let _: i64 = inv.invoke_async(&mut con).await?;
    }
    Ok(())
}
