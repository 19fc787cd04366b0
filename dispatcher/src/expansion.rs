//! Expansion: turning a batch into one persistent message per file.
//!
//! Every dispatcher replica runs [`run`]. A batch waiting in `P:expansion` is expanded by the
//! replica holding its lease (`SET NX PX`, renewed every page); if that replica dies the lease
//! lapses and another replica, or the restarted one, resumes from the stored cursor.
//!
//! Page by page: read ids from the cursor → register them as pending items (once each, by
//! script) → publish their messages → await the previous page's confirms and advance the
//! cursor past it. Pages overlap: while the broker takes one page, Redis registers the next,
//! and the page before is confirmed meanwhile. A crash re-publishes at most the two pages past
//! the cursor (a third may be registered, not yet published); workers recognise the
//! duplicates, so no file is missed and none is counted twice. Memory is two pages of
//! messages, whatever the batch size.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use docfleet_shared::model::{BatchStatus, Priority};
use docfleet_shared::scripts::NewItem;
use docfleet_shared::settings::DispatcherSettings;
use docfleet_shared::wire::ItemMessage;
use redis::AsyncCommands;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::error::ApiError;
use crate::lease::Lease;
use crate::state::AppState;

/// Items registered and published per page of an `item_ids` batch.
const ITEM_PAGE: i64 = 1000;

/// File records read per MGET while preparing a page.
const RECORD_CHUNK: usize = 100;

/// Bytes of an `item_ids` batch's input read per page: a full page of ids of average length
/// (dfl- UUIDs are 40 bytes); a page of longer ids is simply shorter.
const INPUT_WINDOW: i64 = 64 * 1024;

/// Longest id `item_ids` may hold, in bytes, so any id fits a window many times over.
pub const MAX_ITEM_ID_BYTES: usize = 512;

/// The deduplicated ids of an `item_ids` batch, as stored in `P:batch:{id}:input`: each id
/// followed by a newline. One string rather than a list, because create writes it in one
/// copy (a 100,000-id list took Redis 30 ms); expansion reads it a window at a time.
pub struct InputList {
    pub bytes: Vec<u8>,
    /// Distinct ids.
    pub count: usize,
}

/// Checks the ids' form (not whether their files exist: expansion does that) and keeps the
/// first of each.
pub fn input_list<S: AsRef<str>>(ids: &[S]) -> Result<InputList, ApiError> {
    for (i, id) in ids.iter().enumerate() {
        let id = id.as_ref().as_bytes();
        // A newline would split the id in storage. The test has no early exit, so it runs
        // vectorised, in a third of the time a per-byte `any` took on 100,000 ids.
        let control = id
            .iter()
            .fold(false, |seen, &b| seen | (b < 0x20) | (b == 0x7f));
        if id.is_empty() || id.len() > MAX_ITEM_ID_BYTES || control {
            return Err(ApiError::field(
                &format!("item_ids[{i}]"),
                format!(
                    "must be a file id of 1 to {MAX_ITEM_ID_BYTES} bytes without control \
                     characters"
                ),
            ));
        }
    }
    // The set holds positions (4 bytes each), not string slices (16): for 100,000 ids its
    // table is 0.6 MB instead of 2.1, fewer cache misses and page faults. Positions fit: the
    // body limit (64 MiB) allows far fewer than 2^32 ids.
    let state = foldhash::fast::RandomState::default();
    let hash = |id: &str| state.hash_one(id);
    let mut seen: hashbrown::HashTable<u32> = hashbrown::HashTable::with_capacity(ids.len());
    let mut bytes = Vec::with_capacity(ids.iter().map(|i| i.as_ref().len() + 1).sum());
    for (i, id) in ids.iter().enumerate() {
        let id = id.as_ref();
        let entry = seen.entry(
            hash(id),
            |&j| ids[j as usize].as_ref() == id,
            |&j| hash(ids[j as usize].as_ref()),
        );
        if let hashbrown::hash_table::Entry::Vacant(slot) = entry {
            slot.insert(i as u32);
            bytes.extend_from_slice(id.as_bytes());
            bytes.push(b'\n');
        }
    }
    Ok(InputList {
        bytes,
        count: seen.len(),
    })
}

/// Up to `max` whole ids from a window of the input that starts at byte `start`, each with its
/// byte offset (its order: offsets rise with position), and the bytes they span.
fn input_page(window: &[u8], start: i64, max: usize) -> (Vec<(String, i64)>, usize) {
    let mut page = Vec::new();
    let mut at = 0;
    while page.len() < max {
        let Some(len) = window[at..].iter().position(|b| *b == b'\n') else {
            break; // the rest is cut by the window's end: the next page starts there
        };
        let id = String::from_utf8_lossy(&window[at..at + len]).into_owned();
        page.push((id, start + at as i64));
        at += len + 1;
    }
    (page, at)
}

/// Batches one replica expands at once; more wait in `P:expansion` for a free place.
const MAX_EXPANSIONS: usize = 256;

/// Pages being registered and published at once by one replica, across all its batches.
/// Every page of a batch takes a turn at this turnstile, which serves them first come first
/// served, so batches expanding together publish a page each in turn (round robin), however
/// many pages each has. A critical or high batch does not queue at it: its pages go as soon as
/// they are read, so a higher priority still wins.
const TURNS: usize = 2;

/// Why one expansion step stopped early.
#[derive(Debug, thiserror::Error)]
enum ExpansionError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Publish(#[from] crate::publisher::PublishError),
    #[error("stored directory file is unreadable: {0}")]
    Record(#[from] serde_json::Error),
}

/// Expands waiting batches until `shutdown` turns true. A new batch of this replica's, or the
/// end of an expansion, starts the next ones at once; the timer only finds batches that
/// another replica created or left behind (its lease lapsed).
pub async fn run(st: AppState, mut shutdown: watch::Receiver<bool>) {
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let turnstile = Arc::new(tokio::sync::Semaphore::new(TURNS));
    let mut tasks = JoinSet::new();
    let rescan = Duration::from_millis(st.settings.expansion_lease_secs * 1000 / 3);
    loop {
        if *shutdown.borrow() {
            break;
        }
        if let Err(error) = pick(&st, &active, &turnstile, &mut tasks, &shutdown).await {
            tracing::warn!(%error, "Expansion scan failed; retrying.");
        }
        tokio::select! {
            _ = st.expansion_wake.notified() => {}
            Some(_) = tasks.join_next() => {}
            _ = tokio::time::sleep(rescan) => {}
            _ = shutdown.changed() => {}
        }
    }
    // In-flight expansions notice the flag between pages and hand their lease back.
    while tasks.join_next().await.is_some() {}
}

async fn pick(
    st: &AppState,
    active: &Arc<Mutex<HashSet<String>>>,
    turnstile: &Arc<tokio::sync::Semaphore>,
    tasks: &mut JoinSet<()>,
    shutdown: &watch::Receiver<bool>,
) -> redis::RedisResult<()> {
    let mut con = st.background.clone();
    let waiting: Vec<String> = con
        .zrange(st.keys.expansion(), 0, MAX_EXPANSIONS as isize - 1)
        .await?;
    let lease_ms = st.settings.expansion_lease_secs * 1000;
    for batch_id in waiting {
        {
            let active = active.lock().await;
            if active.len() >= MAX_EXPANSIONS {
                break;
            }
            if active.contains(&batch_id) {
                continue;
            }
        }
        let lease = Lease::new(
            st.keys.batch_lease(&batch_id),
            st.replica_id.clone(),
            lease_ms,
        );
        if !lease.take(&mut con).await? {
            continue;
        }
        active.lock().await.insert(batch_id.clone());
        let (st, active, shutdown) = (st.clone(), active.clone(), shutdown.clone());
        let turnstile = turnstile.clone();
        let span = tracing::info_span!("expansion", batch_id = %batch_id);
        tasks.spawn(
            async move {
                if let Err(error) =
                    expand(&st, &batch_id, &lease, &turnstile, &active, &shutdown).await
                {
                    tracing::warn!(%error, "Expansion interrupted; it will resume.");
                }
                let mut con = st.background.clone();
                let _ = lease.release(&mut con).await;
                active.lock().await.remove(&batch_id);
            }
            .instrument(span),
        );
    }
    Ok(())
}

/// Expands one batch from its cursor to the end, unless stopped.
async fn expand(
    st: &AppState,
    batch_id: &str,
    lease: &Lease,
    turnstile: &tokio::sync::Semaphore,
    active: &Mutex<HashSet<String>>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(), ExpansionError> {
    let mut con = st.background.clone();
    // The page published last, whose confirms are awaited after the next page is sent.
    let mut in_flight: Option<Page> = None;
    // Messages that may still go out before the queue is looked at again (`hold_back`).
    let mut headroom: i64 = 0;
    let mut step = prepare(st, &mut con, batch_id, None).await?;
    loop {
        if *shutdown.borrow() {
            if let Some(page) = in_flight.take() {
                page.advance(st, &mut con, batch_id, lease).await?;
            }
            return Ok(());
        }
        let ready = match step {
            Step::Stopped => return Ok(()),
            Step::Ready(ready) => ready,
            Step::Exhausted => {
                if let Some(page) = in_flight.take() {
                    if !page.advance(st, &mut con, batch_id, lease).await? {
                        return Ok(());
                    }
                }
                let status = st.scripts.expanded(&mut con, batch_id).await?;
                forget(st, &mut con, batch_id).await?;
                tracing::info!(status = %status, "Batch expanded.");
                return Ok(());
            }
        };
        if headroom <= 0 {
            match hold_back(st, &mut con, ready.priority, lease, shutdown).await? {
                // The room is shared with the other batches expanding here, so together they
                // keep the queue as short as one would.
                Some(room) => headroom = room / active.lock().await.len().max(1) as i64,
                None => return Ok(()),
            }
        }
        headroom -= ready.bodies.len() as i64;
        let _turn = match ready.priority {
            Priority::Critical | Priority::High => None,
            Priority::Medium | Priority::Low => turnstile.acquire().await.ok(),
        };
        // The broker takes this page while Redis registers the next: the two are the bulk
        // of a page's time, and neither waits for the other.
        let mut next_con = con.clone();
        let (sent, next) = tokio::join!(
            st.publisher
                .send(&ready.bodies, ready.priority, &ready.trace),
            prepare(st, &mut next_con, batch_id, Some(ready.cursor)),
        );
        let sent = Page {
            confirms: sent?,
            messages: ready.bodies.len(),
            cursor: ready.cursor,
        };
        if let Some(page) = in_flight.replace(sent) {
            if !page.advance(st, &mut con, batch_id, lease).await? {
                return Ok(());
            }
        }
        step = next?;
    }
}

/// How often a held-back expansion looks at the queue again.
const HOLD_POLL: Duration = Duration::from_millis(20);

/// How many messages may wait for `consumers` before expansion holds back: the per-consumer
/// allowance, within the overall limit.
fn hold_limit(settings: &DispatcherSettings, consumers: u32) -> u32 {
    let limit = settings.expansion_queue_limit;
    match settings.expansion_queue_per_consumer {
        0 => limit,
        per => limit.min(per.saturating_mul(consumers)),
    }
}

/// Waits while workers are attached and [`hold_limit`] messages already wait for them.
/// Publishing far ahead of the workers only deepens the queue, and a deep queue costs the
/// broker more per message than one its consumers keep short: at 4,000 instead of no limit,
/// the benchmark's fleet ran 3-14% faster (5 of 5 interleaved pairs), and at 100 per consumer
/// instead of 4,000 the broker spent 15-20% less CPU per item. The lease is renewed
/// meanwhile. Answers how many messages may go out before the queue is looked at again, so a
/// short queue costs a broker round trip per limit's worth of messages rather than per page
/// (100 messages for a directory), or `None` if another replica took the lease.
async fn hold_back(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    priority: Priority,
    lease: &Lease,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<i64>, ExpansionError> {
    if st.settings.expansion_queue_limit == 0 {
        return Ok(Some(i64::MAX));
    }
    // The batch's own queue: a critical batch is not held back by a low one's backlog.
    let queue = st.publisher.queue_for(priority);
    let renew_every = Duration::from_millis(lease.ms / 3);
    let mut renewed = tokio::time::Instant::now();
    // A broker that does not answer is left to the publish that follows, which reports it.
    while let Some((ready, consumers)) = st.publisher.queue_load(&queue).await {
        if consumers == 0 {
            // Workers may attach meanwhile: look again after a limit's worth.
            return Ok(Some(i64::from(st.settings.expansion_queue_limit)));
        }
        let limit = hold_limit(&st.settings, consumers);
        if ready < limit {
            return Ok(Some(i64::from(limit - ready)));
        }
        if *shutdown.borrow() {
            break;
        }
        if renewed.elapsed() >= renew_every {
            if !renew(lease, con).await? {
                return Ok(None);
            }
            renewed = tokio::time::Instant::now();
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
    Ok(Some(0))
}

/// What reading the next page found.
enum Step {
    /// A page registered, its messages ready to publish.
    Ready(Ready),
    /// No ids past the cursor: expansion is complete once the pages in flight are confirmed.
    Exhausted,
    /// The batch is gone, terminal or already expanded: nothing more to do (cleaned up).
    Stopped,
}

struct Ready {
    bodies: Vec<Vec<u8>>,
    priority: Priority,
    trace: docfleet_shared::wire::Trace,
    /// The cursor just past this page.
    cursor: i64,
}

/// The work queue's priority of a batch, from its record.
pub(crate) fn priority_of(batch: &HashMap<String, String>) -> Priority {
    batch
        .get("priority")
        .and_then(|p| p.parse().ok())
        .map(Priority::from_amqp)
        .unwrap_or_default()
}

/// The request identifiers every message of a batch carries, from its record.
pub(crate) fn trace_of(batch: &HashMap<String, String>) -> docfleet_shared::wire::Trace {
    docfleet_shared::wire::Trace {
        correlation_id: batch.get("correlation_id").cloned(),
        session_id: batch.get("session_id").cloned(),
    }
}

/// Drops a batch from the expansion set, with its input list.
async fn forget(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    batch_id: &str,
) -> redis::RedisResult<()> {
    redis::pipe()
        .zrem(st.keys.expansion(), batch_id)
        .del(st.keys.batch_input(batch_id))
        .query_async(con)
        .await
}

/// The ids of the page at `cursor` with their orders, and the cursor past them: `page_size`
/// files of a directory batch (up to its snapshot), or the ids of a 64 KiB window of an
/// `item_ids` batch's input.
async fn read_page(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    batch_id: &str,
    h: &HashMap<String, String>,
    cursor: i64,
) -> redis::RedisResult<(Vec<String>, Vec<i64>, i64)> {
    let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
    Ok(if get("source") == "directory" {
        // Directory mode reads the directory `page_size` files at a time, as asked.
        let page_size: i64 = get("page_size").parse().unwrap_or(100);
        let snapshot: i64 = get("snapshot").parse().unwrap_or(0);
        let page: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(st.keys.dir_files(get("directory_id")))
            .arg(format!("({cursor}"))
            .arg(snapshot)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(page_size)
            .query_async(con)
            .await?;
        let next = page.last().map(|(_, s)| *s).unwrap_or(cursor);
        let (ids, orders) = page.into_iter().unzip();
        (ids, orders, next)
    } else {
        // An `item_ids` batch has its ids in Redis already, so it moves in larger pages.
        let window: Vec<u8> = redis::cmd("GETRANGE")
            .arg(st.keys.batch_input(batch_id))
            .arg(cursor)
            .arg(cursor + INPUT_WINDOW - 1)
            .query_async(con)
            .await?;
        let (page, consumed) = input_page(&window, cursor, ITEM_PAGE as usize);
        let (ids, orders) = page.into_iter().unzip();
        (ids, orders, cursor + consumed as i64)
    })
}

/// Reads the page at `cursor` (the stored one if `None`) and registers its items.
async fn prepare(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    batch_id: &str,
    cursor: Option<i64>,
) -> Result<Step, ExpansionError> {
    let h: HashMap<String, String> = con.hgetall(st.keys.batch(batch_id)).await?;
    let get = |k: &str| h.get(k).map(String::as_str).unwrap_or("");
    let status = BatchStatus::parse(get("status"));
    if h.is_empty() || status.is_none_or(BatchStatus::is_terminal) || get("expanded") == "1" {
        forget(st, con, batch_id).await?;
        return Ok(Step::Stopped);
    }
    let cursor: i64 = cursor.unwrap_or_else(|| get("cursor").parse().unwrap_or(0));
    let (ids, orders, next_cursor) = read_page(st, con, batch_id, &h, cursor).await?;
    if ids.is_empty() {
        return Ok(Step::Exhausted);
    }
    // Redis serves no one else while one command runs: an MGET of a whole page (1,000 records)
    // took it about 2 ms (INFO commandstats), so the page's records are read a chunk per
    // round trip, as register does.
    let mut records: Vec<Option<String>> = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(RECORD_CHUNK) {
        let part: Vec<Option<String>> = redis::cmd("MGET")
            .arg(chunk.iter().map(|i| st.keys.dfile(i)).collect::<Vec<_>>())
            .query_async(con)
            .await?;
        records.extend(part);
    }
    let project = get("project_id");
    let mut items = Vec::with_capacity(ids.len());
    let mut directories: HashSet<String> = HashSet::new();
    for ((id, order), raw) in ids.iter().zip(orders).zip(records) {
        let file = match raw {
            Some(r) => Some(serde_json::from_str::<FileFacts>(&r)?),
            None => None,
        };
        // An id is checked here rather than at create, so that create answers at once
        // however long the list: a file that is gone, or another project's, fails as an
        // item, named by its id alone.
        let refusal = match file {
            Some(f) if f.project_id == project => {
                // The file of a single-file job is in no directory.
                if !f.directory_id.is_empty() {
                    directories.insert(f.directory_id);
                }
                None
            }
            _ => Some(format!("no file {id:?} in this project")),
        };
        items.push(NewItem {
            item_id: id.clone(),
            order,
            refusal,
        });
    }
    // A file's processing results are its items in the batches its directory lists, so the
    // batch is listed before any of its items can finish (a page registered again lists it
    // again, harmlessly). This replaces a run record appended per item to a list per file: a
    // key and a few hundred bytes per item in Redis, and a command in every item's script.
    if !directories.is_empty() {
        let mut pipe = redis::pipe();
        let ms = docfleet_shared::now_millis();
        for d in &directories {
            pipe.cmd("ZADD")
                .arg(st.keys.dir_batches(d))
                .arg("NX")
                .arg(ms)
                .arg(batch_id)
                .ignore();
            // Retention takes the batch off these lists again.
            pipe.sadd(st.keys.batch_dirs(batch_id), d).ignore();
        }
        pipe.query_async::<()>(con).await?;
    }
    if st.scripts.register(con, batch_id, &items).await?.is_none() {
        // Terminal (cancelled) meanwhile.
        forget(st, con, batch_id).await?;
        return Ok(Step::Stopped);
    }
    Ok(Step::Ready(Ready {
        bodies: items
            .iter()
            .filter(|i| i.refusal.is_none())
            .map(|i| ItemMessage::new(batch_id, &i.item_id).encode())
            .collect(),
        priority: priority_of(&h),
        trace: trace_of(&h),
        cursor: next_cursor,
    }))
}

/// What expansion reads of a directory-file record (`records::DirectoryFile`): decoding the
/// whole record allocated a dozen strings and a metadata tree per item, for two fields.
#[derive(serde::Deserialize)]
struct FileFacts {
    project_id: String,
    directory_id: String,
}

/// A published page whose confirms may still be coming.
struct Page {
    confirms: crate::publisher::Confirms,
    messages: usize,
    /// The cursor just past this page.
    cursor: i64,
}

impl Page {
    /// Waits for the page's confirms, moves the stored cursor past it and renews the lease.
    /// False if another replica holds the lease now: this one stops.
    async fn advance(
        self,
        st: &AppState,
        con: &mut redis::aio::ConnectionManager,
        batch_id: &str,
        lease: &Lease,
    ) -> Result<bool, ExpansionError> {
        self.confirms.wait().await?;
        st.metrics.published.inc_by(self.messages as u64);
        let _: () = con
            .hset(st.keys.batch(batch_id), "cursor", self.cursor)
            .await?;
        Ok(renew(lease, con).await?)
    }
}

/// Extends the batch's lease; false, with a warning, if another replica holds it now.
async fn renew(lease: &Lease, con: &mut redis::aio::ConnectionManager) -> redis::RedisResult<bool> {
    let held = lease.renew(con).await?;
    if !held {
        tracing::warn!("Expansion lease lost to another replica; stopping here.");
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn each_consumer_is_allowed_its_share_within_the_limit() {
        let settings = |limit, per| DispatcherSettings {
            expansion_queue_limit: limit,
            expansion_queue_per_consumer: per,
            ..DispatcherSettings::default()
        };
        assert_eq!(hold_limit(&settings(4_000, 100), 1), 100);
        assert_eq!(hold_limit(&settings(4_000, 100), 2), 200);
        assert_eq!(hold_limit(&settings(4_000, 100), 40), 4_000);
        assert_eq!(hold_limit(&settings(4_000, 100), 1_000), 4_000);
        assert_eq!(hold_limit(&settings(4_000, 0), 2), 4_000);
        assert_eq!(hold_limit(&settings(u32::MAX, u32::MAX), 3), u32::MAX);
    }

    #[test]
    fn the_input_keeps_the_first_of_each_id_in_order() {
        let list = input_list(&ids(&["b", "a", "b", "c", "a"])).unwrap();
        assert_eq!(list.bytes, b"b\na\nc\n");
        assert_eq!(list.count, 3);
    }

    #[test]
    fn a_malformed_id_is_named_by_its_index() {
        for bad in [
            "",
            "x\ny",
            "\u{1f}",
            "a\u{7f}",
            &"z".repeat(MAX_ITEM_ID_BYTES + 1),
        ] {
            let Err(ApiError::Unprocessable(m)) = input_list(&ids(&["ok", bad])) else {
                panic!("{bad:?} accepted");
            };
            assert!(m.starts_with("item_ids[1]"), "{m}");
        }
        // The edges of the control range, and bytes of multi-byte characters, are ids.
        let list = input_list(&ids(&[" ", "~", "é", &"z".repeat(MAX_ITEM_ID_BYTES)])).unwrap();
        assert_eq!(list.count, 4);
    }

    #[test]
    fn many_ids_keep_exactly_the_distinct_ones() {
        let all: Vec<String> = (0..50_000).map(|i| format!("dfl-{}", i % 20_011)).collect();
        let list = input_list(&all).unwrap();
        let mut seen = HashSet::new();
        let expected: Vec<u8> = all
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .flat_map(|id| id.bytes().chain([b'\n']))
            .collect();
        assert_eq!(list.count, 20_011);
        assert_eq!(list.bytes, expected);
    }

    #[test]
    fn pages_take_whole_ids_and_resume_where_they_stopped() {
        let list = input_list(&ids(&["alpha", "be", "gamma", "d"])).unwrap();
        // A window that cuts "gamma" short: the page ends before it.
        let (page, used) = input_page(&list.bytes[..12], 0, 10);
        assert_eq!(page, vec![("alpha".into(), 0), ("be".into(), 6)]);
        assert_eq!(used, 9);
        // The next window starts at the cut; orders keep rising.
        let (page, used) = input_page(&list.bytes[used..], used as i64, 1);
        assert_eq!(page, vec![("gamma".into(), 9)]);
        let (page, _) = input_page(&list.bytes[9 + used..], (9 + used) as i64, 10);
        assert_eq!(page, vec![("d".into(), 15)]);
        assert_eq!(input_page(b"", 17, 10), (vec![], 0));
    }
}
