//! The reconciler: stalled batches are found and their unfinished items published again.
//!
//! Redis can forget writes it acknowledged (an OS crash under `appendfsync everysec`, a
//! failover to a replica that lagged, a restore from a snapshot). Workers acked those items'
//! messages after their outcomes were recorded, so when the outcomes are lost, no message is
//! left for the items and their batch would stay running for good. One dispatcher replica at a
//! time (the holder of `P:reconciler`) looks at every batch of `P:active` each
//! `reconcile.every_secs`. A batch that is expanded and has changed nothing (`updated_at`,
//! `reconciled_at`) for `reconcile.stale_secs` is stalled:
//!
//! - its items `processing` since before then, and its `pending` items while the queue of
//!   its priority holds no ready message, are published again. A message that was in fact
//!   still somewhere is harmless: `claim` runs an item once and counts it once.
//! - a stalled batch with no unfinished item is recounted (`Scripts::recount`), which
//!   finishes it if every item is terminal.
//!
//! Either way the batch is stamped `reconciled_at`, so it is looked at again only after
//! another `stale_secs` without progress. A cancelled batch that still has pending items (its
//! cancel's sweep was cut short) is swept; terminal batches then leave `P:active` for
//! `P:finished`, where retention (`retention.rs`) forgets them in time.

use std::collections::HashMap;
use std::time::Duration;

use docfleet_shared::model::{BatchStatus, ItemStatus, Priority};
use docfleet_shared::wire::{ItemMessage, Trace};
use redis::AsyncCommands;
use tokio::sync::watch;

use crate::lease::Lease;
use crate::state::AppState;

/// Batches looked at per round trip.
const BATCH_CHUNK: isize = 100;
/// Items published again per page.
const ITEM_PAGE: isize = 1000;

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Publish(#[from] crate::publisher::PublishError),
    #[error(transparent)]
    Retention(#[from] crate::retention::RetentionError),
}

/// Runs rounds until `shutdown`, whenever this replica holds the lease.
pub async fn run(st: AppState, mut shutdown: watch::Receiver<bool>) {
    let every = st.settings.reconcile.every_secs;
    if every == 0 {
        return;
    }
    let lease = Lease::new(
        st.keys.reconciler_lease(),
        st.replica_id.clone(),
        every * 3 * 1000,
    );
    let mut con = st.background.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(every)) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            break;
        }
        let held = match lease.renew(&mut con).await {
            Ok(true) => Ok(true),
            Ok(false) => lease.take(&mut con).await,
            Err(e) => Err(e),
        };
        match held {
            Ok(true) => {
                if let Err(error) = round(&st, &shutdown).await {
                    tracing::warn!(%error, "Reconciler round interrupted; the next one resumes.");
                }
            }
            Ok(false) => {}
            Err(error) => tracing::warn!(%error, "Reconciler lease unavailable."),
        }
    }
    let _ = lease.release(&mut con).await;
}

/// One look at every active batch.
async fn round(st: &AppState, shutdown: &watch::Receiver<bool>) -> Result<(), ReconcileError> {
    let mut con = st.background.clone();
    let stale_ms = (st.settings.reconcile.stale_secs * 1000) as i64;
    let now = docfleet_shared::now_millis();
    let mut stalled = 0;
    let mut offset = 0;
    loop {
        let ids: Vec<String> = con
            .zrange(st.keys.active(), offset, offset + BATCH_CHUNK - 1)
            .await?;
        if ids.is_empty() {
            break;
        }
        offset += ids.len() as isize;
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(st.keys.batch(id));
        }
        let records: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
        for (id, h) in ids.iter().zip(records) {
            if *shutdown.borrow() {
                return Ok(());
            }
            let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
            match BatchStatus::parse(get("status")) {
                Some(s) if !s.is_terminal() => {}
                // A cancel whose sweep was cut short (its dispatcher died): finish it.
                Some(BatchStatus::Cancelled) if swept(st, &mut con, id).await? > 0 => continue,
                // Finished: retention's to forget in time. Gone: nothing more to watch.
                status => {
                    let mut pipe = redis::pipe();
                    pipe.atomic().zrem(st.keys.active(), id).ignore();
                    if status.is_some() {
                        pipe.zadd(st.keys.finished(), id, now).ignore();
                    }
                    pipe.query_async::<()>(&mut con).await?;
                    offset -= 1;
                    continue;
                }
            }
            // An expansion still under way is the expansion's to resume.
            if get("expanded") != "1" {
                continue;
            }
            let last = [get("updated_at"), get("reconciled_at")]
                .into_iter()
                .filter_map(millis)
                .max()
                .unwrap_or(0);
            if now - last < stale_ms {
                continue;
            }
            stalled += 1;
            resume(st, &mut con, id, &h, now - stale_ms).await?;
        }
    }
    st.metrics.batches_stalled.set(stalled);
    crate::retention::expire(st, now).await?;
    Ok(())
}

/// A record's RFC 3339 time in ms since the epoch.
fn millis(t: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(t)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Cancels what is still pending in a cancelled batch; how many.
async fn swept(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    batch_id: &str,
) -> redis::RedisResult<u64> {
    let n = st.scripts.sweep_all(con, batch_id).await?;
    if n > 0 {
        st.status_cache.forget(batch_id);
        tracing::warn!(
            batch_id,
            items = n,
            "A cancelled batch still had pending items; they are cancelled now."
        );
    }
    Ok(n)
}

/// Publishes a stalled batch's unfinished items again, or recounts it if it has none.
async fn resume(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    batch_id: &str,
    h: &HashMap<String, String>,
    stale_before_ms: i64,
) -> Result<(), ReconcileError> {
    let (priority, trace) = (
        crate::expansion::priority_of(h),
        crate::expansion::trace_of(h),
    );
    let mut stale = Vec::new();
    let processing: Vec<String> = con
        .zrange(
            st.keys.batch_status_set(batch_id, ItemStatus::Processing),
            0,
            -1,
        )
        .await?;
    if !processing.is_empty() {
        let mut pipe = redis::pipe();
        for item in &processing {
            pipe.hget(st.keys.item(batch_id, item), "updated_at");
        }
        let touched: Vec<Option<String>> = pipe.query_async(con).await?;
        for (item, at) in processing.into_iter().zip(touched) {
            let at = at.as_deref().and_then(millis).unwrap_or(0);
            if at < stale_before_ms {
                stale.push(item);
            }
        }
    }
    // Pending items may still have their messages waiting in the queue: only when it holds
    // none are they taken for lost.
    let queue = st.publisher.queue_for(priority);
    let queue_empty = st
        .publisher
        .queue_load(&queue)
        .await
        .is_some_and(|(r, _)| r == 0);
    let mut republished = stale.len();
    publish(st, batch_id, &stale, priority, &trace).await?;
    if queue_empty {
        let pending_set = st.keys.batch_status_set(batch_id, ItemStatus::Pending);
        let mut offset = 0;
        loop {
            let page: Vec<String> = con
                .zrange(&pending_set, offset, offset + ITEM_PAGE - 1)
                .await?;
            if page.is_empty() {
                break;
            }
            offset += page.len() as isize;
            publish(st, batch_id, &page, priority, &trace).await?;
            republished += page.len();
        }
    }
    let unfinished: u64 = redis::pipe()
        .zcard(st.keys.batch_status_set(batch_id, ItemStatus::Pending))
        .zcard(st.keys.batch_status_set(batch_id, ItemStatus::Processing))
        .query_async::<(u64, u64)>(con)
        .await
        .map(|(p, q)| p + q)?;
    let recounted = unfinished == 0;
    if recounted {
        st.scripts.recount(con, batch_id).await?;
        st.status_cache.forget(batch_id);
    }
    let _: () = con
        .hset(
            st.keys.batch(batch_id),
            "reconciled_at",
            docfleet_shared::now_rfc3339(),
        )
        .await?;
    st.metrics.batch_stalled(batch_id, republished, recounted);
    Ok(())
}

async fn publish(
    st: &AppState,
    batch_id: &str,
    items: &[String],
    priority: Priority,
    trace: &Trace,
) -> Result<(), ReconcileError> {
    if items.is_empty() {
        return Ok(());
    }
    let bodies: Vec<Vec<u8>> = items
        .iter()
        .map(|i| ItemMessage::new(batch_id, i).encode())
        .collect();
    st.publisher
        .send(&bodies, priority, trace)
        .await?
        .wait()
        .await?;
    Ok(())
}
