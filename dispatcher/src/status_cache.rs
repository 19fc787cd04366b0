//! `get_status` answered from memory.
//!
//! Clients poll a batch's status while it runs. A poll sent straight to Redis waits behind
//! whatever Redis is doing for the fleet at that moment (every worker's scripts, expansion's
//! pages), and on a busy machine for a CPU as well: its p99 is Redis's worst moment. Instead,
//! each replica keeps a snapshot of every batch polled within `status.watch_secs` and reads
//! them all again every `status.refresh_ms`, in one pipelined round trip. A poll is answered
//! from a snapshot whose read was sent at most `status.max_staleness_ms` ago, and otherwise
//! from Redis, which makes the snapshot for the next polls. The cost is bounded per replica:
//! at most `status.max_batches` small reads per tick, whatever the number of pollers.
//!
//! Staleness is bounded, not zero: another replica's cancel or recount shows within
//! `max_staleness_ms`, and this replica's own (cancel, recount) drop the snapshot. A batch
//! turns `completed` in the same script that counts its last item, so a `completed` snapshot
//! holds the final counts. A `cancelled` or `failed` batch may still count in-flight items that
//! finish after it, so its polls go to Redis: the counts a client reads once it stops polling
//! agree with the items it lists.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use docfleet_shared::keys::Keys;
use docfleet_shared::model::BatchStatus;
use docfleet_shared::settings::StatusSettings;
use tokio::sync::watch;

use crate::records::BatchRecord;

struct Snapshot {
    /// None after this replica changed the batch, until a read sent since answers.
    record: Option<Arc<BatchRecord>>,
    /// When the read that returned `record` was sent, the record is at least this fresh; for
    /// no record, when the batch changed: only reads sent later may fill it.
    asked_at: Instant,
    /// The last poll, which keeps the batch watched.
    polled_at: Instant,
}

/// The snapshots of one replica.
pub struct StatusCache {
    refresh: Duration,
    max_staleness: Duration,
    watch: Duration,
    max_batches: usize,
    snapshots: Mutex<HashMap<String, Snapshot>>,
}

impl StatusCache {
    /// From the dispatcher's `status` settings.
    pub fn new(s: &StatusSettings) -> Self {
        Self {
            refresh: Duration::from_millis(s.refresh_ms),
            max_staleness: Duration::from_millis(s.max_staleness_ms),
            watch: Duration::from_secs(s.watch_secs),
            max_batches: s.max_batches,
            snapshots: Mutex::default(),
        }
    }

    fn enabled(&self) -> bool {
        !self.refresh.is_zero() && self.max_batches > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Snapshot>> {
        // A panic while holding the lock leaves at worst a stale snapshot, which ages out.
        self.snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A snapshot young enough to answer a poll with, of a batch running or completed. Any
    /// poll, answered from here or not, keeps the batch watched.
    pub fn get(&self, batch_id: &str) -> Option<Arc<BatchRecord>> {
        let mut snapshots = self.lock();
        let s = snapshots.get_mut(batch_id)?;
        let now = Instant::now();
        s.polled_at = now;
        if now.duration_since(s.asked_at) > self.max_staleness {
            return None;
        }
        s.record
            .clone()
            .filter(|r| !matches!(r.status(), BatchStatus::Cancelled | BatchStatus::Failed))
    }

    /// A record read from Redis by a poll: the batch is watched from now on, if there is room.
    pub fn put(&self, batch_id: &str, record: BatchRecord, asked_at: Instant) {
        if !self.enabled() {
            return;
        }
        let mut snapshots = self.lock();
        if !snapshots.contains_key(batch_id) && snapshots.len() >= self.max_batches {
            return;
        }
        let s = snapshots
            .entry(batch_id.to_owned())
            .or_insert_with(|| Snapshot {
                record: None,
                asked_at,
                polled_at: asked_at,
            });
        s.polled_at = Instant::now();
        if asked_at >= s.asked_at {
            s.record = Some(Arc::new(record));
            s.asked_at = asked_at;
        }
    }

    /// Drops a batch's snapshot once this replica has changed the batch: the next poll reads
    /// Redis, and no read sent before now (a refresh, or a poll still waiting on Redis) can
    /// bring the old record back.
    pub fn forget(&self, batch_id: &str) {
        if !self.enabled() {
            return;
        }
        let mut snapshots = self.lock();
        let now = Instant::now();
        // Kept even for a batch not polled yet: a poll sent before the change may be on its way.
        if snapshots.contains_key(batch_id) || snapshots.len() < self.max_batches {
            snapshots.insert(
                batch_id.to_owned(),
                Snapshot {
                    record: None,
                    asked_at: now,
                    polled_at: now,
                },
            );
        }
    }

    /// The batches to read again, after dropping those not polled within the watch window.
    fn due(&self) -> Vec<String> {
        let mut snapshots = self.lock();
        snapshots.retain(|_, s| s.polled_at.elapsed() <= self.watch);
        snapshots.keys().cloned().collect()
    }

    /// Refreshed records, each kept only where no newer one arrived meanwhile and the batch is
    /// still watched; a batch gone from Redis is dropped.
    fn refreshed(&self, ids: Vec<String>, records: Vec<BatchRecord>, asked_at: Instant) {
        let mut snapshots = self.lock();
        for (id, record) in ids.into_iter().zip(records) {
            if record.get("id").is_none() {
                snapshots.remove(&id);
                continue;
            }
            if let Some(s) = snapshots.get_mut(&id) {
                if asked_at > s.asked_at {
                    s.record = Some(Arc::new(record));
                    s.asked_at = asked_at;
                }
            }
        }
    }

    /// Reads every watched batch again each `refresh` until `stop`.
    pub async fn run(
        self: Arc<Self>,
        mut con: redis::aio::ConnectionManager,
        keys: Keys,
        mut stop: watch::Receiver<bool>,
    ) {
        if !self.enabled() {
            return;
        }
        let mut tick = tokio::time::interval(self.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !*stop.borrow() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => continue,
            }
            let ids = self.due();
            if ids.is_empty() {
                continue;
            }
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(keys.batch(id));
            }
            let asked_at = Instant::now();
            match pipe
                .query_async::<Vec<HashMap<String, String>>>(&mut con)
                .await
            {
                Ok(records) => self.refreshed(
                    ids,
                    records.into_iter().map(BatchRecord).collect(),
                    asked_at,
                ),
                // The snapshots age past `max_staleness` and polls go to Redis themselves.
                Err(e) => tracing::debug!(error = %e, "Status refresh failed."),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_batches: usize) -> StatusCache {
        StatusCache::new(&StatusSettings {
            refresh_ms: 100,
            max_staleness_ms: 250,
            watch_secs: 60,
            max_batches,
        })
    }

    fn record(status: &str) -> BatchRecord {
        BatchRecord(HashMap::from([
            ("id".to_owned(), "bjb-1".to_owned()),
            ("status".to_owned(), status.to_owned()),
        ]))
    }

    #[test]
    fn a_read_sent_before_a_newer_read_or_a_forget_changes_nothing() {
        let c = cache(10);
        let early = Instant::now();
        c.put("bjb-1", record("running"), Instant::now());
        c.refreshed(vec!["bjb-1".into()], vec![record("pending")], early);
        assert_eq!(c.get("bjb-1").map(|r| r.status().as_str()), Some("running"));
        let before_cancel = Instant::now();
        c.forget("bjb-1");
        c.forget("bjb-2");
        c.put("bjb-2", record("running"), before_cancel);
        assert!(
            c.get("bjb-2").is_none(),
            "a poll sent before the change, never polled before"
        );
        c.refreshed(vec!["bjb-1".into()], vec![record("running")], before_cancel);
        c.put("bjb-1", record("running"), before_cancel);
        assert!(c.get("bjb-1").is_none());
        c.refreshed(
            vec!["bjb-1".into()],
            vec![record("dispatched")],
            Instant::now(),
        );
        assert_eq!(
            c.get("bjb-1").map(|r| r.status().as_str()),
            Some("dispatched")
        );
    }

    #[test]
    fn snapshots_age_out_and_are_bounded_in_number() {
        let c = cache(1);
        let old = Instant::now() - Duration::from_millis(300);
        c.put("bjb-1", record("running"), old);
        assert!(c.get("bjb-1").is_none(), "older than max_staleness");
        c.put("bjb-2", record("running"), Instant::now());
        assert!(c.get("bjb-2").is_none(), "no room beyond max_batches");
        c.refreshed(
            vec!["bjb-1".into()],
            vec![record("running")],
            Instant::now(),
        );
        assert_eq!(c.get("bjb-1").map(|r| r.status().as_str()), Some("running"));
        c.refreshed(
            vec!["bjb-1".into()],
            vec![BatchRecord(HashMap::new())],
            Instant::now(),
        );
        assert!(c.get("bjb-1").is_none(), "a deleted batch is dropped");
    }

    #[test]
    fn completed_is_answered_from_memory_cancelled_and_failed_are_not() {
        let c = cache(10);
        c.put("bjb-1", record("running"), Instant::now());
        assert_eq!(c.due(), vec!["bjb-1".to_owned()]);
        c.refreshed(
            vec!["bjb-1".into()],
            vec![record("completed")],
            Instant::now(),
        );
        assert_eq!(
            c.get("bjb-1").map(|r| r.status().as_str()),
            Some("completed")
        );
        for status in ["cancelled", "failed"] {
            c.refreshed(vec!["bjb-1".into()], vec![record(status)], Instant::now());
            assert!(c.get("bjb-1").is_none(), "{status}");
            assert_eq!(c.due(), vec!["bjb-1".to_owned()], "{status}");
        }
    }

    #[test]
    fn disabled_keeps_nothing() {
        let c = StatusCache::new(&StatusSettings {
            refresh_ms: 0,
            ..StatusSettings::default()
        });
        c.put("bjb-1", record("running"), Instant::now());
        assert!(c.get("bjb-1").is_none());
    }
}
