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
use crate::records::{fill_items, BatchRecord};
use crate::state::AppState;

/// The consumer group every replica reads through.
pub const GROUP: &str = "webhooks";

/// Idle time after which another replica takes over an unacknowledged event.
const RECLAIM_IDLE_MS: u64 = 30_000;

/// Writes one delivery unless it exists, due now in its project's queue (see
/// `delivery::schedule`). KEYS: delivery, the project's due deliveries, batch deliveries, the
/// projects index. ARGV: now_ms, delivery id, project, then field/value pairs.
const CREATE_DELIVERY: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[4], 'LT', ARGV[1], ARGV[3])
return 1";

/// A batch's endpoints and its project, as the outbox needs them.
type Subscribers = (String, Arc<Vec<Endpoint>>);

/// The endpoints a batch subscribed, from its record, credentials opened. One whose
/// credentials cannot be opened (the key changed) gets nothing: an unsigned delivery would
/// pass for a signed one's failure, and its headers may carry the receiver's auth.
pub async fn endpoints(st: &AppState, batch_id: &str) -> redis::RedisResult<Arc<Vec<Endpoint>>> {
    let mut con = st.background.clone();
    let raw: Option<String> = con.hget(st.keys.batch(batch_id), "webhooks").await?;
    let stored: Vec<Endpoint> = raw
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or_default();
    let mut opened = Vec::with_capacity(stored.len());
    for e in &stored {
        match st.seal.open_endpoint(e) {
            Ok(e) => opened.push(e),
            Err(error) => {
                tracing::error!(%error, batch_id = %batch_id, url = %e.url, "A webhook endpoint's credentials cannot be opened; nothing is sent to it.");
                opened.push(Endpoint {
                    events: Some(Vec::new()),
                    ..e.clone()
                });
            }
        }
    }
    Ok(Arc::new(opened))
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
    let mut cache: HashMap<String, Subscribers> = HashMap::new();
    let mut last_reclaim = tokio::time::Instant::now() - Duration::from_secs(3600);
    let mut reclaim_from = String::from("0-0");
    while !*stop.borrow() {
        let step = async {
            // No MKSTREAM: the first event creates the stream, and a group starting at "0"
            // still sees it. Creating it here would resurrect a key an operator deleted.
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(st.keys.events())
                .arg(GROUP)
                .arg("0")
                .query_async(&mut reader)
                .await;
            if let Err(e) = created {
                if e.code() != Some("BUSYGROUP") {
                    if e.to_string().contains("no such key")
                        || e.to_string().contains("requires the key to exist")
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        return Ok(());
                    }
                    return Err(e);
                }
            }
            let mut entries: Vec<StreamId> = Vec::new();
            // A reclaim pass walks the pending list from `reclaim_from` to its end, a page per
            // step, then trims what the group has read and acknowledged.
            if reclaim_from != "0-0"
                || last_reclaim.elapsed() > Duration::from_millis(RECLAIM_IDLE_MS / 3)
            {
                last_reclaim = tokio::time::Instant::now();
                let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(st.keys.events())
                    .arg(GROUP)
                    .arg(&consumer)
                    .arg(RECLAIM_IDLE_MS)
                    .arg(&reclaim_from)
                    .arg("COUNT")
                    .arg(200)
                    .query_async(&mut reader)
                    .await?;
                entries.extend(claimed.claimed);
                // Pending entries already trimmed (by an operator) can never be handled.
                if !claimed.deleted_ids.is_empty() {
                    let _: i64 = reader
                        .xack(st.keys.events(), GROUP, &claimed.deleted_ids)
                        .await?;
                }
                reclaim_from = claimed.next_stream_id;
                if reclaim_from == "0-0" {
                    let kept = Duration::from_secs(st.settings.webhook.events_kept_secs);
                    trim(&mut reader, &st.keys.events(), kept).await?;
                }
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
            if !entries.is_empty() {
                handle(&st, &mut cache, &entries).await?;
                let ids: Vec<&str> = entries.iter().map(|e| e.id.as_str()).collect();
                let _: i64 = reader.xack(st.keys.events(), GROUP, &ids).await?;
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

/// Deletes the events the group has read and acknowledged more than `kept` ago: those below
/// its oldest pending entry, the last one it was handed and the ids of `kept` ago (a stream
/// id starts with its time in ms). An entry not yet handled is never trimmed.
async fn trim(
    reader: &mut redis::aio::ConnectionManager,
    key: &str,
    kept: Duration,
) -> redis::RedisResult<()> {
    let groups: redis::streams::StreamInfoGroupsReply = reader.xinfo_groups(key).await?;
    let Some(group) = groups.groups.into_iter().find(|g| g.name == GROUP) else {
        return Ok(());
    };
    let pending: redis::streams::StreamPendingReply = reader.xpending(key, GROUP).await?;
    let id = |s: &str| -> (u64, u64) {
        let (ms, seq) = s.split_once('-').unwrap_or((s, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    };
    // The oldest entry still to keep: the oldest pending one, or the one after the last handed.
    let handled = match pending {
        redis::streams::StreamPendingReply::Data(p) => id(&p.start_id),
        _ => {
            let (ms, seq) = id(&group.last_delivered_id);
            (ms, seq + 1)
        }
    };
    let since = (docfleet_shared::now_millis() as u64).saturating_sub(kept.as_millis() as u64);
    let floor = handled.min((since, 0));
    let _: i64 = redis::cmd("XTRIM")
        .arg(key)
        .arg("MINID")
        .arg(format!("{}-{}", floor.0, floor.1))
        .query_async(reader)
        .await?;
    Ok(())
}

/// An event some endpoint wants.
struct Event {
    id: String,
    kind: String,
    batch_id: String,
    item_id: String,
    status: String,
    seq: u64,
    at: String,
    wanted: Vec<usize>,
}

/// Fills in the item records of `events` what the scripts leave out of them (name, job
/// id; a pending item has no record at all): one more round trip per batch among them.
async fn fill_item_records(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    events: &[Event],
    records: &mut [HashMap<String, String>],
) -> redis::RedisResult<()> {
    let mut by_batch: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        if !e.item_id.is_empty() {
            by_batch.entry(&e.batch_id).or_default().push(i);
        }
    }
    for (batch_id, at) in by_batch {
        let (batch, orders): (HashMap<String, String>, Vec<Option<f64>>) = redis::pipe()
            .hgetall(st.keys.batch(batch_id))
            .cmd("ZMSCORE")
            .arg(st.keys.batch_items(batch_id))
            .arg(at.iter().map(|&i| &events[i].item_id).collect::<Vec<_>>())
            .query_async(con)
            .await?;
        let mut rows: Vec<(String, f64, HashMap<String, String>)> = at
            .iter()
            .zip(orders)
            .map(|(&i, order)| {
                let record = std::mem::take(&mut records[i]);
                (events[i].item_id.clone(), order.unwrap_or(0.0), record)
            })
            .collect();
        fill_items(con, &st.keys, batch_id, &BatchRecord(batch), &mut rows).await?;
        for (&i, (_, _, record)) in at.iter().zip(rows) {
            records[i] = record;
        }
    }
    Ok(())
}

/// Writes the deliveries of a read of events: three round trips however many events, and
/// one more per batch whose items they are about.
async fn handle(
    st: &AppState,
    cache: &mut HashMap<String, Subscribers>,
    entries: &[StreamId],
) -> redis::RedisResult<()> {
    let mut events = Vec::new();
    for entry in entries {
        let field = |k: &str| entry.get::<String>(k).unwrap_or_default();
        let batch_id = field("batch_id");
        let eps = match cache.get(&batch_id) {
            Some((_, e)) => e.clone(),
            None => {
                let e = endpoints(st, &batch_id).await?;
                let project: Option<String> = st
                    .background
                    .clone()
                    .hget(st.keys.batch(&batch_id), "project_id")
                    .await?;
                cache.insert(batch_id.clone(), (project.unwrap_or_default(), e.clone()));
                e
            }
        };
        let kind = field("type");
        let wanted: Vec<usize> = eps
            .iter()
            .enumerate()
            .filter(|(_, e)| e.wants(&kind))
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        events.push(Event {
            id: entry.id.clone(),
            kind,
            item_id: field("item_id"),
            status: field("status"),
            seq: field("seq").parse().unwrap_or(0),
            at: field("at"),
            batch_id,
            wanted,
        });
    }
    if events.is_empty() {
        return Ok(());
    }
    let mut con = st.background.clone();
    let mut pipe = redis::pipe();
    for e in &events {
        if e.item_id.is_empty() {
            pipe.hgetall(st.keys.batch(&e.batch_id));
        } else {
            pipe.hgetall(st.keys.item(&e.batch_id, &e.item_id));
        }
    }
    let mut records: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
    fill_item_records(st, &mut con, &events, &mut records).await?;
    let now = docfleet_shared::now_millis();
    let mut pipe = redis::pipe();
    for (e, h) in events.iter().zip(records) {
        let data = if e.item_id.is_empty() {
            // The snapshot is read after the fact; the event's own status is the truth.
            let rec = BatchRecord(h);
            match rec.to_v2().filter(|_| rec.is_v2()) {
                Some(mut v) => {
                    v["status"] = json!(crate::records::v2_status(&e.status));
                    v
                }
                None => {
                    let mut v = rec.to_api();
                    v["status"] = json!(e.status);
                    v
                }
            }
        } else {
            let get = |k: &str| h.get(k).filter(|v| !v.is_empty()).cloned();
            json!({
                "job_id": get("job_id"),
                "item_id": e.item_id,
                "item_name": get("name"),
                "batch_id": e.batch_id,
                "status": e.status,
                "error_message": get("error_message").or_else(|| get("skip_reason")),
            })
        };
        let event_id = format!("evt-{}", e.id);
        let body = json!({
            "event_id": event_id,
            "event_type": e.kind,
            "timestamp": e.at,
            "sequence": e.seq,
            "batch_id": e.batch_id,
            "data": data,
        })
        .to_string();
        let (project, eps) = cache.get(&e.batch_id).cloned().unwrap_or_default();
        for &idx in &e.wanted {
            let id = format!("whd-{}-{idx}", e.id);
            let url = eps.get(idx).map(|x| x.url.clone()).unwrap_or_default();
            let fields: [(&str, String); 12] = [
                ("id", id.clone()),
                ("batch_id", e.batch_id.clone()),
                ("project", project.clone()),
                ("event_id", event_id.clone()),
                ("event_type", e.kind.clone()),
                ("endpoint", idx.to_string()),
                ("url", url),
                ("body", body.clone()),
                ("status", "pending".into()),
                ("attempts", "0".into()),
                ("created_at", now.to_string()),
                ("next_attempt_at", now.to_string()),
            ];
            // EVAL rather than EVALSHA inside a pipeline: a NOSCRIPT there cannot be retried.
            pipe.cmd("EVAL").arg(CREATE_DELIVERY).arg(4);
            pipe.arg(st.keys.delivery(&id))
                .arg(st.keys.project_webhook_due(&project))
                .arg(st.keys.batch_deliveries(&e.batch_id))
                .arg(st.keys.webhook_due())
                .arg(now)
                .arg(&id)
                .arg(&project);
            for (k, v) in &fields {
                pipe.arg(*k).arg(v);
            }
            pipe.ignore();
        }
    }
    pipe.query_async::<()>(&mut con).await
}
