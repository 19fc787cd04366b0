//! One item, from delivery to recorded outcome.
//!
//! A failure is typed by what should happen next, and each type maps to exactly one broker
//! action once the outcome (if any) is durable in Redis:
//!
//! | outcome | recorded as | broker action |
//! |---|---|---|
//! | success | `completed` | ack |
//! | [`Failure::Skip`] | `skipped` | ack |
//! | [`Failure::Fail`] (permanent for this file) | `failed` | reject → dead-letter queue |
//! | [`Failure::Retry`] (transient) | nothing yet | nack + requeue; `failed` after `max_attempts` |
//! | poison message | nothing | reject → dead-letter queue |

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use docfleet_shared::keys::Keys;
use docfleet_shared::model::{parse_page_selection, JobSpec};
use docfleet_shared::scripts::{Claim, Outcome, Recorded, Run, Scripts};
use docfleet_shared::settings::WorkerSettings;
use docfleet_shared::store::{FileStore, StoreError};
use docfleet_shared::wire::ItemMessage;
use redis::AsyncCommands;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::classify::{Classifier, Document};
use crate::embedding::Embedder;
use crate::engines::Engines;
use crate::isolation::Isolation;
use crate::ledger::{ItemOutcome, Ledger};
use crate::parse::{self, ParseRequest};
use crate::vision::{VisionClient, VisionError};

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
            StoreError::NotFound(_) | StoreError::InvalidKey(_) => {
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

/// What a worker knows about one batch; loaded once per batch, not per file.
struct BatchContext {
    project_id: String,
    spec: JobSpec,
    classifier: Option<Classifier>,
    /// The vision endpoint, for MULTIMODAL classify batches.
    vision: Option<VisionClient>,
    /// The parse memory bound; in-process when `None`.
    isolation: Option<Isolation>,
}

impl BatchContext {
    fn parse(
        &self,
        bytes: &[u8],
        name: &str,
        req: &ParseRequest,
    ) -> Result<parse::Parsed, Failure> {
        match &self.isolation {
            Some(i) => i.parse(bytes, name, req),
            None => parse::parse(bytes, name, req),
        }
        .map_err(|e| Failure::Fail(e.to_string()))
    }
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
}

/// Batch contexts kept before the cache is cleared.
const BATCH_CACHE: usize = 256;

impl Processor {
    /// A processor over these connections; starts its ledger task, so it must be called
    /// within a Tokio runtime.
    pub fn new(
        settings: Arc<WorkerSettings>,
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
        let isolation = (settings.parse_memory_mb > 0).then(|| Isolation {
            binary: settings
                .engine_binary
                .clone()
                .or_else(|| std::env::current_exe().ok())
                .unwrap_or_else(|| "docfleet-worker".into()),
            memory_mb: settings.parse_memory_mb,
            cpu_secs: settings.item_deadline_secs + 5,
        });
        Self {
            store: FileStore::local(settings.store.root.clone()).with_fsync(settings.store.fsync),
            ledger: Ledger::start(Scripts::new(keys.clone()), redis.clone(), metrics.clone()),
            keys,
            redis,
            settings,
            batches: Mutex::default(),
            metrics,
            engines: Engines::start(cpu_slots),
            model: Arc::default(),
            vision,
            isolation,
        }
    }

    /// The embedding model, loading it on first use; blocking.
    fn model(
        slot: &std::sync::OnceLock<Result<Arc<Embedder>, String>>,
        dir: Option<&std::path::Path>,
    ) -> Result<Arc<Embedder>, String> {
        slot.get_or_init(|| {
            let Some(dir) = dir else {
                return Err("classify_model_dir (DOCFLEET__CLASSIFY_MODEL_DIR) is not set".into());
            };
            let started = std::time::Instant::now();
            match Embedder::load(dir) {
                Ok(m) => {
                    tracing::info!(dir = %dir.display(), ms = started.elapsed().as_millis() as u64, "embedding model loaded");
                    Ok(Arc::new(m))
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "embedding model unavailable; classify uses lexical evidence only");
                    Err(format!("model not loaded from {}: {e}", dir.display()))
                }
            }
        })
        .clone()
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
                ItemOutcome::new(Outcome::Completed).with_result(done.result, done.pages),
                Verdict::Ack,
            ),
            Err(Failure::Skip(reason)) => (
                ItemOutcome::new(Outcome::Skipped).with_skip_reason(reason),
                Verdict::Ack,
            ),
            Err(Failure::Fail(error) | Failure::Retry(error)) => (
                ItemOutcome::new(Outcome::Failed).with_error(error),
                Verdict::DeadLetter,
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

    async fn context(&self, batch_id: &str) -> Result<Arc<BatchContext>, Failure> {
        let cell = {
            // A poisoned lock only means a panic elsewhere mid-insert; the map is still whole.
            let mut cache = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= BATCH_CACHE && !cache.contains_key(batch_id) {
                cache.clear();
            }
            cache.entry(batch_id.to_owned()).or_default().clone()
        };
        // A failed load leaves the cell empty, so the next item tries again.
        cell.get_or_try_init(|| self.load_context(batch_id))
            .await
            .cloned()
    }

    async fn load_context(&self, batch_id: &str) -> Result<Arc<BatchContext>, Failure> {
        let mut con = self.redis.clone();
        let (project, raw): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.keys.batch(batch_id), "project_id")
            .get(self.keys.batch_config(batch_id))
            .query_async(&mut con)
            .await?;
        let (Some(project_id), Some(raw)) = (project, raw) else {
            return Err(Failure::Fail("batch record or job config missing".into()));
        };
        let raw_config: Value = serde_json::from_str(&raw)
            .map_err(|e| Failure::Fail(format!("stored job config unreadable: {e}")))?;
        let spec = JobSpec::from_json(&raw_config)
            .map_err(|e| Failure::Fail(format!("stored job config invalid: {e}")))?;
        let classifier = match &spec {
            JobSpec::Classify(c) => {
                let rules = c.rules.clone();
                let slot = self.model.clone();
                let dir = self.settings.classify_model_dir.clone();
                // Loading the model and embedding the rules are CPU work: off the runtime.
                let classifier = tokio::task::spawn_blocking(move || {
                    Classifier::new(&rules, Self::model(&slot, dir.as_deref()))
                })
                .await
                .map_err(|e| Failure::Retry(format!("classifier set-up: {e}")))?;
                Some(classifier)
            }
            JobSpec::Parse(_) => None,
        };
        let ctx = Arc::new(BatchContext {
            project_id,
            spec,
            classifier,
            vision: self.vision.clone(),
            isolation: self.isolation.clone(),
        });
        Ok(ctx)
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
        let output_key =
            docfleet_shared::store::result_key(&ctx.project_id, &msg.batch_id, &job_id);
        let placed = self
            .run_blocking(&ctx, storage_key, name, output_key.clone())
            .await?;
        Ok(Self::done(placed, &output_key, began))
    }

    /// The item's result, from where its output went. A file's processing results are
    /// read from its items by the dispatcher, so nothing more is written per file.
    fn done(placed: Placed, output_key: &str, began: std::time::Instant) -> Done {
        let (result, pages) = match placed {
            // Classify keeps its answer on the item whichever way the output went.
            Placed::File {
                summary: Some(s),
                pages,
            } => (s.to_string(), pages),
            Placed::File {
                summary: None,
                pages,
            } => (
                json!({ "output_key": output_key, "pages": pages }).to_string(),
                pages,
            ),
            Placed::Inline {
                body,
                summary: true,
                pages,
            } => (body, pages),
            // The body is already JSON: splice it in rather than parse and encode it again.
            Placed::Inline {
                body,
                summary: false,
                pages,
            } => (format!("{{\"pages\":{pages},\"output\":{body}}}"), pages),
        };
        Done {
            result,
            pages,
            seconds: began.elapsed().as_secs_f64(),
        }
    }

    /// Reads the file, runs the engine and places the output, on a blocking thread under the
    /// per-item deadline; a file is synced before this returns.
    async fn run_blocking(
        &self,
        ctx: &Arc<BatchContext>,
        storage_key: String,
        name: String,
        key: String,
    ) -> Result<Placed, Failure> {
        let deadline = Duration::from_secs(self.settings.item_deadline_secs);
        let (ctx, store) = (ctx.clone(), self.store.clone());
        let inline_max = self.settings.store.inline_max_bytes;
        // Read, engine and write in one job: the hops between threads cost more than the work
        // for small files.
        let placed = self
            .engines
            .run(deadline, move || {
                let bytes = store.get_blocking(&storage_key)?;
                let output = guarded(|| run_engine(&ctx, &bytes, &name))?;
                place_output(&store, &key, output, inline_max)
            })
            .await
            .map_err(|e| Failure::Fail(e.to_string()))??;
        if let Placed::File { .. } = placed {
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

/// Images kept per document with `images_to_save: ["embedded"]`, and the largest kept.
const EMBEDDED_LIMIT: usize = 200;
const EMBEDDED_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// `images_to_save: ["embedded"]`: the images inside the document, named `embedded-…`
/// (`embedded-p<page>-<n>.png` for PDFs, the part name for Office files).
fn embedded_images(
    parsed: &parse::Parsed,
    bytes: &[u8],
) -> Result<Vec<(String, Vec<u8>)>, Failure> {
    let found = match parsed.format {
        "pdf" => {
            let first = parsed.pages.iter().map(|p| p.page_number).min();
            let last = parsed.pages.iter().map(|p| p.page_number).max();
            match first.zip(last) {
                Some((f, l)) => crate::ocr::pdf_images(bytes, f, l, EMBEDDED_LIMIT)
                    .map_err(|e| Failure::Fail(e.to_string()))?,
                None => Vec::new(),
            }
        }
        "docx" | "pptx" | "xlsx" => crate::office::media(bytes, EMBEDDED_LIMIT, EMBEDDED_MAX_BYTES),
        _ => Vec::new(),
    };
    // Part names inside a document are arbitrary; store keys take a safe alphabet only.
    let safe = |name: &str| -> String {
        name.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    Ok(found
        .into_iter()
        .map(|(name, data)| (format!("embedded-{}", safe(&name)), data))
        .collect())
}

/// MULTIMODAL: the first pages' images and text to the configured vision model. Runs on the
/// engine's blocking thread, so it waits on the runtime for the HTTP call.
fn classify_with_vision(
    ctx: &BatchContext,
    rules: &[docfleet_shared::model::ClassifyRule],
    parsed: &parse::Parsed,
    text: &str,
    bytes: &[u8],
) -> Result<crate::classify::Classification, Failure> {
    let client = ctx.vision.as_ref().ok_or_else(|| {
        Failure::Fail("MULTIMODAL batch, but this worker has no vision.url configured".into())
    })?;
    let mut images: Vec<(&'static str, Vec<u8>)> = Vec::new();
    match parsed.format {
        "pdf" => {
            for p in parsed.pages.iter().take(client.max_images) {
                if let Ok(png) = crate::ocr::render_pdf_page(bytes, p.page_number, 100, false) {
                    images.push(("image/png", png));
                }
            }
        }
        "png" => images.push(("image/png", bytes.to_vec())),
        "jpeg" => images.push(("image/jpeg", bytes.to_vec())),
        _ => {}
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| Failure::Retry(format!("no runtime for the vision call: {e}")))?;
    runtime
        .block_on(client.classify(rules, text, &images))
        .map_err(|e| match e {
            VisionError::Transient(_) => Failure::Retry(e.to_string()),
            VisionError::Permanent(_) => Failure::Fail(e.to_string()),
        })
}

/// Runs an engine call, turning a panic into the item's failure.
fn guarded<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        Failure::Fail(format!("parser crashed: {what}"))
    })?
}

/// The output placed on the item record if it fits there, else handed back for a file with
/// its JSON when already encoded (outputs with images are encoded after the images are
/// stored).
fn place_inline(
    output: EngineOutput,
    inline_max: usize,
) -> Result<Result<Placed, Unplaced>, Failure> {
    if !output.images.is_empty() {
        return Ok(Err(Unplaced { output, body: None }));
    }
    let body = serde_json::to_string(&output.stored)
        .map_err(|e| Failure::Fail(format!("result not serialisable: {e}")))?;
    if body.len() > inline_max {
        return Ok(Err(Unplaced {
            output,
            body: Some(body),
        }));
    }
    Ok(Ok(Placed::Inline {
        body,
        summary: output.summary.is_some(),
        pages: output.pages,
    }))
}

/// An output bound for a file.
struct Unplaced {
    output: EngineOutput,
    body: Option<String>,
}

/// Where an output went: onto the item record (small, no images) or into the file store.
enum Placed {
    /// The output's JSON, recorded on the item by the outcome's own script.
    Inline {
        body: String,
        /// The body is the classify answer itself rather than a parse output.
        summary: bool,
        pages: usize,
    },
    /// Written under the output key; durable only after the store's `sync_blocking`, which
    /// the caller awaits before recording the outcome.
    File {
        summary: Option<Value>,
        pages: usize,
    },
}

/// Keeps a small output for the item record, or writes it (and any images beside it) under
/// `key`; blocking.
fn place_output(
    store: &FileStore,
    key: &str,
    output: EngineOutput,
    inline_max: usize,
) -> Result<Placed, Failure> {
    match place_inline(output, inline_max)? {
        Ok(placed) => Ok(placed),
        Err(unplaced) => write_output(store, key, unplaced),
    }
}

/// Writes an output (and any images beside it) under `key`, reusing its JSON when already
/// encoded; blocking.
fn write_output(store: &FileStore, key: &str, unplaced: Unplaced) -> Result<Placed, Failure> {
    let Unplaced { mut output, body } = unplaced;
    if !output.images.is_empty() {
        let mut names = Vec::new();
        for (name, png) in &output.images {
            let image_key = format!("{}.{name}", key.trim_end_matches(".json"));
            store.write_blocking(&image_key, png)?;
            names.push(json!({ "name": name, "key": image_key, "uri": store.uri(&image_key) }));
        }
        output.stored["metadata"]["images"] = json!(names);
    }
    let body = match body {
        Some(body) => body,
        None => serde_json::to_string(&output.stored)
            .map_err(|e| Failure::Fail(format!("result not serialisable: {e}")))?,
    };
    store.write_blocking(key, body.as_bytes())?;
    Ok(Placed::File {
        summary: output.summary,
        pages: output.pages,
    })
}

/// A successful item, ready to record.
struct Done {
    result: String,
    pages: usize,
    /// Time spent producing it.
    seconds: f64,
}

/// What the engine produced.
struct EngineOutput {
    /// Files to store beside the result: (name, bytes), e.g. page screenshots.
    images: Vec<(String, Vec<u8>)>,
    /// Written to the file store.
    stored: Value,
    /// Stored on the item itself (classify); parse items point at the file instead.
    summary: Option<Value>,
    pages: usize,
}

/// `replace_failed_page_mode` and `page_error_tolerance`: what a page that could not be read
/// becomes, and how many such pages fail the whole file.
fn apply_failed_pages(
    parsed: &mut parse::Parsed,
    params: &docfleet_shared::model::ParseParameters,
) -> Result<(), Failure> {
    use docfleet_shared::model::FailPageMode;
    let failed = parsed.pages.iter().filter(|p| !p.success).count();
    if failed == 0 {
        return Ok(());
    }
    if let Some(tolerance) = params.page_error_tolerance {
        let share = failed as f64 / parsed.pages.len().max(1) as f64;
        if share > tolerance {
            return Err(Failure::Fail(format!(
                "{failed} of {} pages could not be read, over page_error_tolerance {tolerance}",
                parsed.pages.len()
            )));
        }
    }
    let mode = params
        .replace_failed_page_mode
        .unwrap_or(FailPageMode::RawText);
    for page in parsed.pages.iter_mut().filter(|p| !p.success) {
        let error = page.error.clone().unwrap_or_default();
        match mode {
            FailPageMode::RawText => {}
            FailPageMode::BlankPage => {
                page.text.clear();
                page.md.clear();
                page.items.clear();
            }
            FailPageMode::ErrorMessage => {
                let text = format!(
                    "{}{error}{}",
                    params
                        .replace_failed_page_with_error_message_prefix
                        .as_deref()
                        .unwrap_or(""),
                    params
                        .replace_failed_page_with_error_message_suffix
                        .as_deref()
                        .unwrap_or("")
                );
                page.text = text.clone();
                page.md = text;
                page.items.clear();
            }
        }
    }
    Ok(())
}

/// Runs parse or classify on one file; CPU-bound, called on a blocking thread.
fn run_engine(ctx: &BatchContext, bytes: &[u8], name: &str) -> Result<EngineOutput, Failure> {
    #[cfg(feature = "fault-injection")]
    {
        if bytes.starts_with(b"DOCFLEET-FAULT:PANIC") {
            panic!("injected parser panic");
        }
        if bytes.starts_with(b"DOCFLEET-FAULT:HANG") {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        // A document that takes its time, then parses as the text it is.
        if bytes.starts_with(b"DOCFLEET-FAULT:SLOW") {
            std::thread::sleep(std::time::Duration::from_millis(600));
        }
    }
    match &ctx.spec {
        JobSpec::Parse(cfg) => {
            let params = cfg.parameters.clone().unwrap_or_default();
            let target_pages = match params.target_pages.as_deref() {
                Some(t) => Some(parse_page_selection(t).map_err(Failure::Fail)?),
                None => None,
            };
            let mut languages = params.languages.clone().unwrap_or_default();
            if let Some(l) = &params.lang {
                languages.insert(0, l.clone());
            }
            let req = ParseRequest {
                target_pages,
                max_pages: params.max_pages,
                disable_ocr: params.disable_ocr.unwrap_or(false),
                languages,
            };
            let mut parsed = ctx.parse(bytes, name, &req)?;
            apply_failed_pages(&mut parsed, &params)?;
            parsed.hide(
                params.hide_headers.unwrap_or(false),
                params.hide_footers.unwrap_or(false),
            );
            let separator = params
                .page_separator
                .clone()
                .unwrap_or_else(|| "\n\n".into());
            let wrap = |s: &str, n: u32| {
                let pre = params
                    .page_prefix
                    .as_deref()
                    .unwrap_or("")
                    .replace("{pageNumber}", &n.to_string());
                let suf = params
                    .page_suffix
                    .as_deref()
                    .unwrap_or("")
                    .replace("{pageNumber}", &n.to_string());
                format!("{pre}{s}{suf}")
            };
            let text_full = parsed
                .pages
                .iter()
                .map(|p| wrap(&p.text, p.page_number))
                .collect::<Vec<_>>()
                .join(&separator);
            let markdown_full = parsed
                .pages
                .iter()
                .map(|p| wrap(&p.md, p.page_number))
                .collect::<Vec<_>>()
                .join(&separator);
            let stored = json!({
                "pages": parsed.pages,
                "text_full": text_full,
                "markdown_full": markdown_full,
                "metadata": {
                    "pages": parsed.pages.iter().map(|p| json!({ "page_number": p.page_number })).collect::<Vec<_>>(),
                    "format": parsed.format,
                    "page_count": parsed.page_count,
                    "pages_parsed": parsed.pages.len(),
                    "title": parsed.title,
                    "ocr_pages": parsed.ocr_pages,
                    "language": parsed.language(),
                    "custom_metadata": params.custom_metadata,
                },
            });
            let mut images = Vec::new();
            let wants = |kind| {
                params
                    .images_to_save
                    .as_ref()
                    .is_some_and(|k| k.contains(&kind))
            };
            if wants(docfleet_shared::model::ImageKind::Screenshot) && parsed.format == "pdf" {
                for p in &parsed.pages {
                    if let Ok(png) = crate::ocr::render_pdf_page(bytes, p.page_number, 100, false) {
                        images.push((format!("page-{}.png", p.page_number), png));
                    }
                }
            }
            if wants(docfleet_shared::model::ImageKind::Embedded) {
                images.extend(embedded_images(&parsed, bytes)?);
            }
            Ok(EngineOutput {
                pages: parsed.pages.len(),
                stored,
                summary: None,
                images,
            })
        }
        JobSpec::Classify(cfg) => {
            let pc = cfg.parsing_configuration.clone().unwrap_or_default();
            let req = ParseRequest {
                target_pages: pc.target_pages.clone(),
                max_pages: Some(pc.max_pages.unwrap_or(5)),
                disable_ocr: false,
                languages: pc.lang.clone().into_iter().collect(),
            };
            let parsed = ctx.parse(bytes, name, &req)?;
            let text = parsed.full_text("\n");
            let c = if cfg.mode == Some(docfleet_shared::model::ClassifyMode::Multimodal) {
                classify_with_vision(ctx, &cfg.rules, &parsed, &text, bytes)?
            } else {
                let classifier = ctx
                    .classifier
                    .as_ref()
                    .ok_or_else(|| Failure::Fail("classifier missing".into()))?;
                classifier.classify(&Document {
                    text: &text,
                    format: parsed.format,
                    page_count: parsed.page_count,
                    title: parsed.title.as_deref(),
                })
            };
            let summary = serde_json::to_value(&c)
                .map_err(|e| Failure::Fail(format!("result not serialisable: {e}")))?;
            Ok(EngineOutput {
                pages: parsed.pages.len(),
                stored: summary.clone(),
                summary: Some(summary),
                images: Vec::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-page PDF drawing one 2×2 grey image.
    fn pdf_with_an_image() -> Vec<u8> {
        let content = b"q 50 0 0 50 10 10 cm /Im1 Do Q";
        let objects: Vec<Vec<u8>> = vec![
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] /Resources << /XObject << /Im1 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
            [&b"<< /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray /BitsPerComponent 8 /Length 4 >>\nstream\n"[..], &[0, 255, 255, 0], b"\nendstream"].concat(),
            [format!("<< /Length {} >>\nstream\n", content.len()).as_bytes(), content, b"\nendstream"].concat(),
        ];
        let mut pdf = b"%PDF-1.4\n".to_vec();
        let mut offsets = Vec::new();
        for (i, o) in objects.iter().enumerate() {
            offsets.push(pdf.len());
            pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
            pdf.extend_from_slice(o);
            pdf.extend_from_slice(b"\nendobj\n");
        }
        let xref = pdf.len();
        pdf.extend_from_slice(
            format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
        );
        for o in offsets {
            pdf.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
        }
        pdf.extend_from_slice(
            format!(
                "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
                objects.len() + 1
            )
            .as_bytes(),
        );
        pdf
    }

    #[test]
    fn embedded_images_come_out_of_pdfs() {
        let bytes = pdf_with_an_image();
        let parsed = parse::parse(
            &bytes,
            "image.pdf",
            &ParseRequest {
                disable_ocr: true,
                ..ParseRequest::default()
            },
        )
        .expect("parsed");
        let images = embedded_images(&parsed, &bytes).expect("extracted");
        assert_eq!(
            images.len(),
            1,
            "{:?}",
            images.iter().map(|i| &i.0).collect::<Vec<_>>()
        );
        assert_eq!(images[0].0, "embedded-p001-000.png");
        assert!(images[0].1.starts_with(b"\x89PNG"));
    }
    use docfleet_shared::model::{FailPageMode, ParseParameters};

    fn doc() -> parse::Parsed {
        let page = |n: u32, ok: bool| parse::Page {
            page_number: n,
            text: format!("raw {n}"),
            md: format!("raw {n}"),
            items: Vec::new(),
            width: 0.0,
            height: 0.0,
            success: ok,
            error: (!ok).then(|| "could not render".to_owned()),
        };
        parse::Parsed {
            pages: vec![page(1, true), page(2, false), page(3, true), page(4, true)],
            format: "pdf",
            page_count: 4,
            title: None,
            ocr_pages: Vec::new(),
        }
    }

    #[test]
    fn failed_pages_follow_the_mode_and_the_tolerance() {
        let mut p = doc();
        let params = ParseParameters {
            replace_failed_page_mode: Some(FailPageMode::ErrorMessage),
            replace_failed_page_with_error_message_prefix: Some("[".into()),
            replace_failed_page_with_error_message_suffix: Some("]".into()),
            ..Default::default()
        };
        apply_failed_pages(&mut p, &params).unwrap();
        assert_eq!(p.pages[1].text, "[could not render]");
        assert_eq!(p.pages[0].text, "raw 1");
        let mut p = doc();
        let blank = ParseParameters {
            replace_failed_page_mode: Some(FailPageMode::BlankPage),
            ..Default::default()
        };
        apply_failed_pages(&mut p, &blank).unwrap();
        assert!(p.pages[1].text.is_empty());
        let mut p = doc();
        let strict = ParseParameters {
            page_error_tolerance: Some(0.2),
            ..Default::default()
        };
        assert!(matches!(
            apply_failed_pages(&mut p, &strict),
            Err(Failure::Fail(_))
        ));
        let mut p = doc();
        let lenient = ParseParameters {
            page_error_tolerance: Some(0.25),
            ..Default::default()
        };
        apply_failed_pages(&mut p, &lenient).unwrap();
        assert_eq!(p.pages[1].text, "raw 2");
    }
}
