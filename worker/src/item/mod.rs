//! One item, from delivery to recorded outcome: the pipeline's steps are `claim` (the
//! ledger), `context` (what the worker knows of the item's batch), `engine` (parse or
//! classify the bytes), `output` (where the result goes) and `record` (the ledger again, then
//! the broker action).
//!
//! A failure is typed by what should happen next, and each type maps to exactly one broker
//! action once the outcome (if any) is durable in Redis:
//!
//! | outcome | recorded as | broker action |
//! |---|---|---|
//! | success | `completed` | ack |
//! | [`Failure::Skip`] | `skipped` | ack |
//! | [`Failure::Fail`] (permanent for this file) | `failed` | ack |
//! | [`Failure::Retry`] (transient) | nothing yet | nack + requeue; `failed` after `max_attempts` |
//! | poison message, unknown batch or item | nothing | reject → dead-letter queue |
//!
//! A failed item is acked: its record holds the error and `retry-failed` runs it again, so a
//! copy in the dead-letter queue would only grow it. The queue holds what no record explains.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use docfleet_shared::buckets::{Access, UserBuckets};
use docfleet_shared::keys::Keys;
use docfleet_shared::scripts::{Claim, Outcome, Recorded, Run, Scripts};
use docfleet_shared::settings::WorkerSettings;
use docfleet_shared::store::{FileStore, StoreError};
use docfleet_shared::wire::ItemMessage;
use redis::AsyncCommands;
use serde_json::Value;
use tracing::Instrument;

use crate::embedding::Embedder;
use crate::engines::Engines;
use crate::input::Input;
use crate::isolation::Isolation;
use crate::ledger::{ItemOutcome, Ledger};
use crate::vision::VisionClient;

mod context;
mod engine;
mod export;
mod output;

use context::BatchContext;
use engine::{guarded, run_engine};
use output::{place_output, Output};

/// What went wrong with an item, typed by what happens next.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// Transient (Redis, file store): try again later.
    #[error("{0}")]
    Retry(String),
    /// Permanent for this file (corrupt, unsupported, too slow).
    #[error("{0}")]
    Fail(String),
    /// Not processed on purpose (over the size limit).
    #[error("{0}")]
    Skip(String),
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Self {
        Self::Retry(format!("state store: {e}"))
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) | StoreError::InvalidKey(_) | StoreError::TooMany { .. } => {
                Self::Fail(format!("stored file unavailable: {e}"))
            }
            StoreError::Io { .. } => Self::Retry(e.to_string()),
        }
    }
}

/// The broker action for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done with it.
    Ack,
    /// Put it back for another try.
    Requeue,
    /// Park it in the dead-letter queue.
    DeadLetter,
}

/// Processes items; shared by every consumer task of a worker process.
pub struct Processor {
    settings: Arc<WorkerSettings>,
    redis: redis::aio::ConnectionManager,
    keys: Keys,
    /// Claims and outcomes, sent to Redis in groups.
    ledger: Ledger,
    store: FileStore,
    /// Per batch, set once by the first item that needs it: the items that arrive together at
    /// the start of a batch wait for one load (one classifier, one embedding of the rules).
    batches: Mutex<HashMap<String, Arc<tokio::sync::OnceCell<Arc<BatchContext>>>>>,
    metrics: Arc<docfleet_shared::metrics::Metrics>,
    /// The engine threads (`cpu_slots` of them): reads, parses and writes.
    engines: Engines,
    /// The embedding model, loaded on the first classify batch (a parse-only worker never
    /// pays its ~90 MB), then shared; `Err` says why it is not available.
    model: Arc<std::sync::OnceLock<Result<Arc<Embedder>, String>>>,
    vision: Option<VisionClient>,
    isolation: Option<Isolation>,
    /// Users' buckets (outputs written there, imported inputs read there), where `buckets.s3`
    /// is configured.
    buckets: Option<Arc<UserBuckets>>,
}

/// Batch contexts kept before the cache is cleared.
const BATCH_CACHE: usize = 256;

impl Processor {
    /// A processor over these connections; starts its ledger task, so it must be called
    /// within a Tokio runtime.
    pub fn new(
        settings: Arc<WorkerSettings>,
        store: FileStore,
        redis: redis::aio::ConnectionManager,
        metrics: Arc<docfleet_shared::metrics::Metrics>,
    ) -> Self {
        let keys = Keys::new(settings.redis.key_prefix.clone());
        let cpu_slots = settings.cpu_slots;
        let vision = match VisionClient::new(&settings.vision) {
            Ok(v) => v,
            Err(error) => {
                tracing::error!(%error, "vision endpoint client could not be built; MULTIMODAL items will fail");
                None
            }
        };
        if settings.parse_memory_mb > 0 {
            // Probed at start, so a worker that cannot isolate its parser says so at once.
            crate::isolation::network_namespaces();
            crate::sandbox::filesystem_confined();
        }
        // What a worker killed with its children left in the scratch folder.
        crate::ocr::sweep_scratch();
        let isolation = (settings.parse_memory_mb > 0).then(|| {
            Isolation::new(
                settings
                    .engine_binary
                    .clone()
                    .or_else(|| std::env::current_exe().ok())
                    .unwrap_or_else(|| "docfleet-worker".into()),
                settings.parse_memory_mb,
                settings.item_deadline_secs + 5,
                // One waiting child per engine thread.
                cpu_slots,
            )
        });
        let buckets = UserBuckets::new(&settings.buckets).map(Arc::new);
        Self {
            store,
            ledger: Ledger::start(
                Scripts::new(keys.clone()),
                redis.clone(),
                metrics.clone(),
                settings.redis.wait_aof,
            ),
            keys,
            redis,
            settings,
            batches: Mutex::default(),
            metrics,
            engines: Engines::start(cpu_slots),
            model: Arc::default(),
            vision,
            isolation,
            buckets,
        }
    }

    /// Whether Redis answers (readiness).
    pub async fn redis_ok(&self) -> bool {
        let mut con = self.redis.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut con)
            .await
            .is_ok()
    }

    /// Handles one delivery body (delivered for the first time) and says what to do with the
    /// delivery.
    pub async fn handle(&self, body: &[u8]) -> Verdict {
        self.handle_traced(body, &docfleet_shared::wire::Trace::default())
            .await
    }

    /// [`Processor::handle`], with the request identifiers the message carried.
    pub async fn handle_traced(
        &self,
        body: &[u8],
        trace: &docfleet_shared::wire::Trace,
    ) -> Verdict {
        let msg = match ItemMessage::decode(body) {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(%error, "Poison message; dead-lettering it.");
                return Verdict::DeadLetter;
            }
        };
        let span = tracing::info_span!(
            "item",
            batch_id = %msg.batch_id,
            item_id = %msg.item_id,
            correlation_id = trace.correlation_id.as_deref(),
            session_id = trace.session_id.as_deref(),
        );
        self.handle_item(&msg).instrument(span).await
    }

    async fn handle_item(&self, msg: &ItemMessage) -> Verdict {
        let mut con = self.redis.clone();
        let run = match self.ledger.claim(&msg.batch_id, &msg.item_id).await {
            Ok(Claim::Run(run)) => run,
            Ok(Claim::Done) => {
                self.metrics.item_settled("unknown", "duplicate", None);
                return Verdict::Ack;
            }
            Ok(Claim::Cancelled) => {
                self.metrics.item_settled("unknown", "cancelled", None);
                return Verdict::Ack;
            }
            Ok(Claim::Missing) => {
                tracing::warn!("No such batch or item; dead-lettering the message.");
                self.metrics.item_settled("unknown", "dead_letter", None);
                return Verdict::DeadLetter;
            }
            Err(error) => {
                tracing::warn!(%error, "Could not claim the item; requeueing.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                return Verdict::Requeue;
            }
        };
        let attempt = run.attempt;
        let max = self.settings.max_attempts;
        if attempt > max {
            let last: Option<String> = con
                .hget(self.keys.item(&msg.batch_id, &msg.item_id), "last_error")
                .await
                .ok()
                .flatten();
            let error = format!(
                "gave up after {max} attempts; last error: {}",
                last.as_deref().unwrap_or("the worker stopped mid-item")
            );
            return self.record(msg, Err(Failure::Fail(error))).await;
        }
        let result = self.execute(msg, run).await;
        if let Err(Failure::Retry(error)) = &result {
            let _: redis::RedisResult<()> = con
                .hset(
                    self.keys.item(&msg.batch_id, &msg.item_id),
                    "last_error",
                    error,
                )
                .await;
            if attempt < max {
                tracing::warn!(%error, attempt, "Transient failure; requeueing.");
                // A short pause so a dependency that just failed is not hammered.
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                return Verdict::Requeue;
            }
            let error = format!("gave up after {attempt} attempts; last error: {error}");
            return self.record(msg, Err(Failure::Fail(error))).await;
        }
        self.record(msg, result).await
    }

    /// Makes the outcome durable, then says how to settle the delivery.
    async fn record(&self, msg: &ItemMessage, result: Result<Done, Failure>) -> Verdict {
        let started = std::time::Instant::now();
        let seconds = result.as_ref().ok().map(|d| d.seconds);
        let (outcome, verdict) = match result {
            Ok(done) => (
                ItemOutcome::new(Outcome::Completed).with_result(
                    done.result,
                    done.pages.read,
                    done.pages.ocr,
                ),
                Verdict::Ack,
            ),
            Err(Failure::Skip(reason)) => (
                ItemOutcome::new(Outcome::Skipped).with_skip_reason(reason),
                Verdict::Ack,
            ),
            Err(Failure::Fail(error) | Failure::Retry(error)) => (
                ItemOutcome::new(Outcome::Failed).with_error(error),
                Verdict::Ack,
            ),
        };
        let kind = outcome.outcome;
        match self
            .ledger
            .finish(&msg.batch_id, &msg.item_id, outcome)
            .await
        {
            Ok(recorded) => {
                let job_type = self
                    .batches
                    .lock()
                    .ok()
                    .and_then(|c| {
                        c.get(&msg.batch_id)
                            .and_then(|cell| cell.get())
                            .map(|b| b.spec.job_type().as_str())
                    })
                    .unwrap_or("unknown");
                let label = match (&recorded, kind) {
                    (Recorded::Duplicate, _) => "duplicate",
                    (Recorded::Missing, _) => "missing",
                    (_, Outcome::Completed) => "completed",
                    (_, Outcome::Failed) => "failed",
                    (_, Outcome::Skipped) => "skipped",
                };
                let secs = seconds.map(|s| s + started.elapsed().as_secs_f64());
                self.metrics.item_settled(job_type, label, secs);
                verdict
            }
            Err(error) => {
                tracing::warn!(%error, "Could not record the outcome; requeueing.");
                tokio::time::sleep(Duration::from_millis(500)).await;
                Verdict::Requeue
            }
        }
    }

    async fn execute(&self, msg: &ItemMessage, run: Run) -> Result<Done, Failure> {
        let began = std::time::Instant::now();
        let ctx = self.context(&msg.batch_id).await?;
        let file: Value = run
            .file
            .and_then(|f| serde_json::from_str(&f).ok())
            .ok_or_else(|| Failure::Fail("directory file record missing".into()))?;
        let job_id = ctx.spec.job_type().job_id(&msg.batch_id, run.order);
        let size = file["size_bytes"].as_u64().unwrap_or(0);
        if size > self.settings.max_file_bytes {
            return Err(Failure::Skip(format!(
                "size limit exceeded: {size} bytes, limit {}",
                self.settings.max_file_bytes
            )));
        }
        let storage_key = file["storage_key"].as_str().unwrap_or_default().to_owned();
        let name = file["display_name"].as_str().unwrap_or_default().to_owned();
        let file_id = file["id"].as_str().unwrap_or(&msg.item_id).to_owned();
        let output_key =
            docfleet_shared::store::result_key(&ctx.project_id, &msg.batch_id, &job_id);
        let (placed, exported) = self
            .run_blocking(&ctx, storage_key, file_id, name, output_key.clone())
            .await?;
        Ok(output::done(placed, exported, &output_key, began))
    }

    /// Reads the file, runs the engine and places the output (and writes it to the user's
    /// bucket, when the job names one), on a blocking thread under the per-item deadline; a
    /// file is synced before this returns. Answers where the exported result went.
    async fn run_blocking(
        &self,
        ctx: &Arc<BatchContext>,
        storage_key: String,
        file_id: String,
        name: String,
        key: String,
    ) -> Result<(Output, Option<String>), Failure> {
        let deadline = ctx
            .spec
            .deadline(Duration::from_secs(self.settings.item_deadline_secs));
        let (ctx, store) = (ctx.clone(), self.store.clone());
        let inline_max = self.settings.store.inline_max_bytes;
        let max_ocr_pages = Some(self.settings.max_ocr_pages).filter(|n| *n > 0);
        let buckets = self.buckets.clone();
        let source = self.source(&ctx.project_id, &storage_key)?;
        // Read, engine and write in one job: the hops between threads cost more than the work
        // for small files.
        let placed = self
            .engines
            .run(deadline, move || {
                let input = open_stored(&store, buckets.as_deref(), source.as_ref(), &storage_key)?;
                let output = guarded(|| run_engine(&ctx, &input, &name, deadline, max_ocr_pages))?;
                let exported = match (&ctx.outputs, &buckets) {
                    (Some(dest), Some(buckets)) => {
                        Some(export::write(buckets, dest, &file_id, &name, &output)?)
                    }
                    (Some(_), None) => unreachable_buckets()?,
                    (None, _) => None,
                };
                Ok::<_, Failure>((place_output(&store, &key, output, inline_max)?, exported))
            })
            .await
            .map_err(|e| Failure::Fail(e.to_string()))??;
        if let (Output::File { .. }, _) = placed {
            // Waiting for the shared sync uses no CPU: off the engine threads, so the next
            // item's engine starts, and more items join this sync round.
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.sync_blocking())
                .await
                .map_err(|e| Failure::Retry(format!("store sync task failed: {e}")))??;
        }
        Ok(placed)
    }
}

impl Processor {
    /// Where an imported file lives in a user's bucket (none for the store's own files),
    /// checked against `buckets.read` again: the allow-list may have narrowed since the import.
    fn source(
        &self,
        project: &str,
        storage_key: &str,
    ) -> Result<Option<(docfleet_shared::buckets::Place, String)>, Failure> {
        let Some((place, key)) = docfleet_shared::buckets::foreign(storage_key) else {
            return Ok(None);
        };
        place
            .allowed(project, Access::Read, &self.settings.buckets, "source")
            .map_err(|r| Failure::Fail(format!("stored file unavailable: {}", r.message)))?;
        Ok(Some((place, key)))
    }
}

/// A stored file for reading, blocking: from the store, or from the user's bucket it was
/// imported from (`source`, see [`Processor::source`]).
fn open_stored(
    store: &FileStore,
    buckets: Option<&UserBuckets>,
    source: Option<&(docfleet_shared::buckets::Place, String)>,
    storage_key: &str,
) -> Result<Input, Failure> {
    let file = match (source, buckets) {
        (None, _) => store.open_blocking(storage_key)?,
        (Some((place, key)), Some(buckets)) => buckets.open_blocking(place, key)?,
        (Some(_), None) => unreachable_buckets()?,
    };
    Input::new(file).map_err(unreadable)
}

/// A job or a file of a user's bucket on a worker that cannot reach users' buckets: the
/// deployment's configuration differs between dispatcher and worker.
fn unreachable_buckets<T>() -> Result<T, Failure> {
    Err(Failure::Fail(
        "the item needs a user's bucket, and this worker has no buckets.s3".into(),
    ))
}

/// The whole stored file, for what reads it in the worker itself.
fn whole(input: &Input) -> Result<Vec<u8>, Failure> {
    input.bytes().map_err(unreadable)
}

/// A stored file that could not be read: the store's trouble, so worth another try.
fn unreadable(e: std::io::Error) -> Failure {
    Failure::Retry(format!("reading the stored file: {e}"))
}

/// A successful item, ready to record.
struct Done {
    result: String,
    pages: engine::PageCounts,
    /// Time spent producing it.
    seconds: f64,
}
