//! Test harness: a whole docfleet fleet in one process, against the real RabbitMQ and Redis.
//!
//! Each [`Fleet`] gets its own queue prefix, Redis key prefix and file-store folder (or folder
//! of the test bucket), so tests run in parallel, and its [`Drop`] removes all three, so a test
//! leaves nothing behind even when it fails.
//!
//! The store is the local folder unless `DOCFLEET_TEST_STORE=s3`: then every fleet keeps its
//! files in the bucket `DOCFLEET_TEST_S3_BUCKET` of the S3-compatible server at
//! `DOCFLEET_TEST_S3_ENDPOINT` (credentials `DOCFLEET_TEST_S3_ACCESS_KEY` and
//! `DOCFLEET_TEST_S3_SECRET_KEY`), which `deploy/local/test` starts.

pub mod receiver;

use std::path::PathBuf;
use std::time::Duration;

use docfleet_shared::keys::Keys;
use docfleet_shared::settings::{
    BrokerSettings, DispatcherSettings, RedisSettings, S3Settings, StoreBackend, StoreSettings,
    WebhookSettings, WorkerSettings,
};
use docfleet_shared::store::FileStore;
use docfleet_shared::topology::Topology;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The AMQP URL tests use (`DOCFLEET_TEST_AMQP_URL`, default the local broker).
pub fn amqp_url() -> String {
    std::env::var("DOCFLEET_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// The Redis URL tests use (`DOCFLEET_TEST_REDIS_URL`, default the local server).
pub fn redis_url() -> String {
    std::env::var("DOCFLEET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// The sample documents shipped in `deploy/samples`.
pub fn sample(name: &str) -> Vec<u8> {
    let p = repo_root().join("deploy/samples").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("sample {}: {e}", p.display()))
}

struct Service {
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<()>,
}

impl Service {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.handle).await;
    }
}

/// A dispatcher and workers, in-process, on isolated names.
pub struct Fleet {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// An API key of project `proj-a`.
    pub api_key: String,
    /// Key layout of this fleet.
    pub keys: Keys,
    /// Redis.
    pub redis: redis::aio::ConnectionManager,
    /// HTTP client.
    pub http: reqwest::Client,
    /// The dispatcher's settings.
    pub dispatcher_settings: DispatcherSettings,
    /// Settings new workers start from.
    pub worker_settings: WorkerSettings,
    dispatcher: Option<Service>,
    workers: Vec<Service>,
    cleaned: bool,
    /// The endpoint [`Fleet::watched`] subscribes.
    pub sink: receiver::Receiver,
}

impl Fleet {
    /// Starts a dispatcher and `workers` workers.
    pub async fn start(workers: usize) -> Fleet {
        Self::start_on_redis(workers, &redis_url()).await
    }

    /// Starts a fleet whose Redis is `redis_url`.
    pub async fn start_on_redis(workers: usize, redis_url: &str) -> Fleet {
        let broker = BrokerSettings {
            url: amqp_url(),
            ..BrokerSettings::default()
        };
        Self::start_on(workers, redis_url, broker).await
    }

    /// Starts a fleet on this Redis and this broker (its queue prefix is the fleet's own).
    pub async fn start_on(workers: usize, redis_url: &str, broker: BrokerSettings) -> Fleet {
        if std::env::var_os("RUST_LOG").is_some() {
            docfleet_shared::telemetry::init(&docfleet_shared::settings::LogSettings::default());
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("dft-{}", &id[..12]);
        let ds = DispatcherSettings {
            listen: "127.0.0.1:0".into(),
            broker: BrokerSettings {
                queue_prefix: prefix.clone(),
                ..broker
            },
            // The machine's Redis keeps nothing on disk (`--save "" --appendonly no`).
            redis: RedisSettings {
                url: redis_url.to_owned(),
                key_prefix: prefix.clone(),
                allow_no_persistence: true,
                ..RedisSettings::default()
            },
            store: test_store(&prefix),
            expansion_lease_secs: 3,
            webhook: WebhookSettings {
                allow_cidrs: vec!["127.0.0.0/8".parse().expect("cidr")],
                first_retry_ms: 200,
                request_timeout_ms: 2_000,
                // Credentials sealed at rest, as in production.
                secrets_key: Some(TEST_SECRETS_KEY.into()),
                ..WebhookSettings::default()
            },
            ..DispatcherSettings::default()
        };
        let ws = WorkerSettings {
            broker: ds.broker.clone(),
            redis: ds.redis.clone(),
            store: ds.store.clone(),
            item_deadline_secs: 30,
            drain_secs: 10,
            // deploy/local/test fetches the classify model and says where.
            classify_model_dir: std::env::var_os("DOCFLEET_TEST_MODEL_DIR").map(Into::into),
            // Parsing under the memory bound needs the worker binary (deploy/local/test builds
            // it first); this test process cannot serve the parser child itself.
            parse_memory_mb: if bin_dir().join("docfleet-worker").exists() {
                1024
            } else {
                0
            },
            engine_binary: Some(bin_dir().join("docfleet-worker")),
            ..WorkerSettings::default()
        };
        let redis = docfleet_shared::services::connect_redis(&ds.redis.url)
            .await
            .expect("redis");
        let mut fleet = Fleet {
            base_url: String::new(),
            api_key: String::new(),
            keys: Keys::new(prefix),
            redis,
            http: reqwest::Client::new(),
            dispatcher_settings: ds,
            worker_settings: ws,
            dispatcher: None,
            workers: Vec::new(),
            cleaned: false,
            sink: receiver::Receiver::start().await,
        };
        fleet.start_dispatcher().await;
        fleet.api_key = fleet.new_key("proj-a").await;
        for _ in 0..workers {
            fleet.start_worker().await;
        }
        fleet
    }

    /// Starts (or restarts) the dispatcher on a new port.
    pub async fn start_dispatcher(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        self.base_url = format!("http://{}", listener.local_addr().expect("addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let settings = self.dispatcher_settings.clone();
        let handle = tokio::spawn(async move {
            docfleet_dispatcher::run(settings, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("dispatcher");
        });
        self.dispatcher = Some(Service {
            stop: Some(tx),
            handle,
        });
        let base = self.base_url.clone();
        assert!(
            self.wait_ready(&base).await,
            "dispatcher did not become ready"
        );
    }

    /// Polls `<base>/readyz` for up to 5 s; whether it answered 2xx.
    pub async fn wait_ready(&self, base: &str) -> bool {
        for _ in 0..200 {
            let r = self.http.get(format!("{base}/readyz")).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    /// Polls `get_status` until the batch has `status` (e.g. `dispatched`), for up to 5 s.
    pub async fn wait_status(&self, batch_id: &str, status: &str) {
        for _ in 0..200 {
            let (_, s) = self
                .get(&format!("/api/v1/beta/batch-processing/{batch_id}"))
                .await;
            if s["job"]["status"] == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("batch {batch_id} never reached {status}");
    }

    /// Stops the dispatcher gracefully.
    pub async fn stop_dispatcher(&mut self) {
        if let Some(d) = self.dispatcher.take() {
            d.stop().await;
        }
    }

    /// Starts one worker with the fleet's worker settings.
    pub async fn start_worker(&mut self) {
        let settings = self.worker_settings.clone();
        self.start_worker_with(settings).await;
    }

    /// Starts one worker with these settings.
    pub async fn start_worker_with(&mut self, settings: WorkerSettings) {
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            docfleet_worker::run(settings, async {
                let _ = rx.await;
            })
            .await
            .expect("worker");
        });
        self.workers.push(Service {
            stop: Some(tx),
            handle,
        });
    }

    /// Stops every worker gracefully.
    pub async fn stop_workers(&mut self) {
        let all: Vec<Service> = self.workers.drain(..).collect();
        futures_util::future::join_all(all.into_iter().map(Service::stop)).await;
    }

    /// A new API key for `project`.
    pub async fn new_key(&self, project: &str) -> String {
        let mut con = self.redis.clone();
        docfleet_dispatcher::auth::create_key(&mut con, &self.keys, project, None)
            .await
            .expect("create key")
    }

    /// A new operator key.
    pub async fn operator_key(&self) -> String {
        let mut con = self.redis.clone();
        docfleet_dispatcher::auth::create_operator_key(&mut con, &self.keys, None)
            .await
            .expect("create operator key")
    }

    /// A request with the fleet's key.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&self.api_key)
    }

    /// GET with a key, returning status and JSON body. A 503 (a dependency reconnecting
    /// after a fault) is retried for a few seconds.
    pub async fn get_as(&self, key: &str, path: &str) -> (u16, Value) {
        let mut tries = 0;
        loop {
            let r = self
                .http
                .get(format!("{}{path}", self.base_url))
                .bearer_auth(key)
                .send()
                .await
                .expect("send");
            let (s, b) = split(r).await;
            tries += 1;
            if s != 503 || tries >= 50 {
                return (s, b);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn xrange_all(&self) -> redis::streams::StreamRangeReply {
        let mut con = self.redis.clone();
        let mut tries = 0;
        loop {
            let r: redis::RedisResult<redis::streams::StreamRangeReply> = redis::cmd("XRANGE")
                .arg(self.keys.events())
                .arg("-")
                .arg("+")
                .query_async(&mut con)
                .await;
            match r {
                Ok(reply) => return reply,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("xrange: {e}"),
            }
        }
    }

    /// GET with the fleet's key.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(&self.api_key, path).await
    }

    /// POST JSON with a key.
    pub async fn post_as(&self, key: &str, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("send");
        split(r).await
    }

    /// POST JSON with the fleet's key.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_as(&self.api_key, path, body).await
    }

    /// Creates a batch with the fleet's key, asserting it was accepted; its id.
    pub async fn create_batch(&self, body: &Value) -> String {
        let (s, b) = self.post("/api/v1/beta/batch-processing", body).await;
        assert_eq!(s, 200, "{b}");
        b["id"].as_str().expect("batch id").to_owned()
    }

    /// The work queue of the default priority (`medium`).
    pub fn default_queue(&self) -> String {
        Topology::new(self.dispatcher_settings.broker.queue_prefix.clone())
            .priority_queue(docfleet_shared::model::Priority::Medium)
    }

    /// GET of a download with the fleet's key: status, content type and the whole body.
    pub async fn download(&self, path: &str) -> (u16, String, Vec<u8>) {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .expect("send");
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (status, kind, resp.bytes().await.expect("body").to_vec())
    }

    /// Creates a directory and returns its id.
    pub async fn create_dir(&self, key: &str, name: &str) -> String {
        let (s, b) = self
            .post_as(
                key,
                "/api/v1/beta/directories",
                &serde_json::json!({ "name": name }),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b["id"].as_str().expect("id").to_owned()
    }

    /// Uploads a file and returns its directory-file id; a 429 is waited out, as a client
    /// does (bulk uploads can pass the project's request rate).
    pub async fn upload(&self, key: &str, dir: &str, name: &str, bytes: Vec<u8>) -> String {
        loop {
            let form = reqwest::multipart::Form::new().part(
                "upload_file",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name(name.to_owned()),
            );
            let r = self
                .http
                .post(format!(
                    "{}/api/v1/beta/directories/{dir}/files/upload",
                    self.base_url
                ))
                .bearer_auth(key)
                .multipart(form)
                .send()
                .await
                .expect("upload");
            let (s, b) = split(r).await;
            if s == 429 {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
            assert_eq!(s, 200, "{b}");
            return b["id"].as_str().expect("id").to_owned();
        }
    }

    /// Uploads `n` small text files named `<prefix><i>.txt` and returns their ids.
    pub async fn upload_texts(&self, dir: &str, prefix: &str, n: usize) -> Vec<String> {
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let body = format!("{prefix} text {i}").into_bytes();
            ids.push(
                self.upload(&self.api_key, dir, &format!("{prefix}{i}.txt"), body)
                    .await,
            );
        }
        ids
    }

    /// Polls `get_status` until the batch is terminal, asserting progress never goes down.
    pub async fn wait_terminal(&self, batch_id: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last_progress = 0.0;
        loop {
            let (s, b) = self
                .get(&format!("/api/v1/beta/batch-processing/{batch_id}"))
                .await;
            assert_eq!(s, 200, "{b}");
            let p = b["progress_percentage"].as_f64().expect("progress");
            assert!(
                p >= last_progress,
                "progress went down: {last_progress} -> {p}"
            );
            last_progress = p;
            let status = b["job"]["status"].as_str().unwrap_or("");
            if matches!(status, "completed" | "failed" | "cancelled") {
                return b;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "batch not terminal in time: {b}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What an operator's `docfleet-dispatcher recount --batch` runs; the counters after it,
    /// as Redis holds them: (processed, failed).
    pub async fn recount(&self, batch_id: &str) -> (u64, u64) {
        let mut con = self.redis.clone();
        docfleet_shared::scripts::Scripts::new(self.keys.clone())
            .recount(&mut con, batch_id)
            .await
            .expect("recount");
        redis::cmd("HMGET")
            .arg(self.keys.batch(batch_id))
            .arg("processed")
            .arg("failed")
            .query_async(&mut con)
            .await
            .expect("counters")
    }

    /// Every item of a batch (all pages).
    pub async fn items(&self, batch_id: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let (s, b) = self
                .get(&format!(
                    "/api/v1/beta/batch-processing/{batch_id}/items?limit=100&offset={}",
                    out.len()
                ))
                .await;
            assert_eq!(s, 200, "{b}");
            let page = b["items"].as_array().cloned().unwrap_or_default();
            let total = b["total_size"].as_u64().unwrap_or(0) as usize;
            let done = page.is_empty();
            out.extend(page);
            if done || out.len() >= total {
                return out;
            }
        }
    }

    /// `body` with a subscription of every event to [`Fleet::sink`]: the outbox records events
    /// only for batches whose endpoints want them, and tests read the outbox.
    pub fn watched(&self, mut body: Value) -> Value {
        body["webhook_configurations"] = serde_json::json!([{ "webhook_url": self.sink.url() }]);
        body
    }

    /// Every outbox event of this fleet, in stream order, as (batch_id, type, item_id).
    pub async fn all_events(&self) -> Vec<(String, String, String)> {
        let reply = self.xrange_all().await;
        reply
            .ids
            .iter()
            .map(|e| {
                let f = |k: &str| e.get::<String>(k).unwrap_or_default();
                (f("batch_id"), f("type"), f("item_id"))
            })
            .collect()
    }

    /// The outbox events of a batch, in stream order, as (type, item_id).
    pub async fn events(&self, batch_id: &str) -> Vec<(String, String)> {
        let reply = self.xrange_all().await;
        reply
            .ids
            .iter()
            .filter(|e| e.get::<String>("batch_id").as_deref() == Some(batch_id))
            .map(|e| {
                (
                    e.get::<String>("type").unwrap_or_default(),
                    e.get::<String>("item_id").unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Messages ready in the work queues together and in the dead-letter queue.
    pub async fn queue_depths(&self) -> (u32, u32) {
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("amqp");
        let ch = conn.create_channel().await.expect("channel");
        let t = Topology::new(self.dispatcher_settings.broker.queue_prefix.clone());
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut ready = 0;
        for q in t.work_queues() {
            ready += ch
                .queue_declare(q.as_str().into(), passive, Default::default())
                .await
                .expect("work queue")
                .message_count();
        }
        let b = ch
            .queue_declare(t.dead_queue().as_str().into(), passive, Default::default())
            .await
            .expect("dead queue");
        let _ = conn.close(200, "".into()).await;
        (ready, b.message_count())
    }

    /// Stops everything and removes this fleet's queues, keys and files.
    pub async fn shutdown(mut self) {
        self.stop_workers().await;
        self.stop_dispatcher().await;
        cleanup(&self.dispatcher_settings).await;
        self.cleaned = true;
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        // A failed test: still leave nothing behind.
        for s in self.workers.drain(..).chain(self.dispatcher.take()) {
            s.handle.abort();
        }
        let settings = self.dispatcher_settings.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(cleanup(&settings));
            }
        })
        .join();
    }
}

async fn cleanup(settings: &DispatcherSettings) {
    if let Ok(conn) =
        docfleet_shared::services::connect_amqp(&settings.broker, Duration::from_secs(2)).await
    {
        if let Ok(ch) = conn.create_channel().await {
            let _ = Topology::new(settings.broker.queue_prefix.clone())
                .delete(&ch)
                .await;
        }
        let _ = conn.close(200, "".into()).await;
    }
    if let Ok(mut con) = docfleet_shared::services::connect_redis(&settings.redis.url).await {
        let pattern = format!("{}:*", settings.redis.key_prefix);
        let mut cursor: u64 = 0;
        loop {
            let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut con)
                .await;
            let Ok((next, keys)) = r else { break };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&keys).query_async(&mut con).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    let _ = std::fs::remove_dir_all(&settings.store.root);
    if settings.store.backend == StoreBackend::S3 {
        if let Ok(store) = FileStore::open(&settings.store) {
            let _ = store.remove_dir("projects").await;
        }
    }
}

/// The store of a fleet named `prefix`: its own folder, or its own folder of the test bucket.
pub fn test_store(prefix: &str) -> StoreSettings {
    let root = std::env::temp_dir().join(prefix);
    if std::env::var("DOCFLEET_TEST_STORE").as_deref() != Ok("s3") {
        return StoreSettings {
            root,
            ..StoreSettings::default()
        };
    }
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("DOCFLEET_TEST_STORE=s3 needs {name} (deploy/local/test sets it)")
        })
    };
    StoreSettings {
        root,
        backend: StoreBackend::S3,
        s3: S3Settings {
            endpoint: Some(var("DOCFLEET_TEST_S3_ENDPOINT")),
            bucket: var("DOCFLEET_TEST_S3_BUCKET"),
            prefix: prefix.to_owned(),
            access_key: var("DOCFLEET_TEST_S3_ACCESS_KEY"),
            secret_key: var("DOCFLEET_TEST_S3_SECRET_KEY"),
            ..S3Settings::default()
        },
        ..StoreSettings::default()
    }
}

/// The `DOCFLEET__STORE__…` variables that give a spawned binary this store.
pub fn store_env(store: &StoreSettings) -> Vec<(&'static str, String)> {
    let mut env = vec![("DOCFLEET__STORE__ROOT", store.root.display().to_string())];
    if store.backend == StoreBackend::S3 {
        let s3 = &store.s3;
        env.extend([
            ("DOCFLEET__STORE__BACKEND", "s3".to_owned()),
            (
                "DOCFLEET__STORE__S3__ENDPOINT",
                s3.endpoint.clone().unwrap_or_default(),
            ),
            ("DOCFLEET__STORE__S3__BUCKET", s3.bucket.clone()),
            ("DOCFLEET__STORE__S3__PREFIX", s3.prefix.clone()),
            ("DOCFLEET__STORE__S3__ACCESS_KEY", s3.access_key.clone()),
            ("DOCFLEET__STORE__S3__SECRET_KEY", s3.secret_key.clone()),
        ]);
    }
    env
}

async fn split(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

/// The test fleets' `webhook.secrets_key` (32 bytes of base64).
pub const TEST_SECRETS_KEY: &str = "ZG9jZmxlZXQtdGVzdC1rZXktMzItYnl0ZXMtbG9uZyE=";

/// Where the fleet's binaries were built (`DOCFLEET_BIN_DIR`, else next to the test binary).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DOCFLEET_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test> or target/<profile>/<bin> → target/<profile>
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(PathBuf::from).unwrap_or_default()
    } else {
        dir
    }
}

/// A fleet binary running as its own OS process, killed on drop.
pub struct Process {
    /// The child.
    pub child: tokio::process::Child,
}

impl Process {
    /// SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait for the exit status.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let pid = self.child.id()?;
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Fleet {
    fn common_env(&self, cmd: &mut tokio::process::Command) {
        let d = &self.dispatcher_settings;
        cmd.env("DOCFLEET__BROKER__URL", &d.broker.url)
            .env("DOCFLEET__BROKER__QUEUE_PREFIX", &d.broker.queue_prefix)
            .env("DOCFLEET__REDIS__URL", &d.redis.url)
            .env("DOCFLEET__REDIS__KEY_PREFIX", &d.redis.key_prefix)
            .env(
                "DOCFLEET__BROKER__QUEUE_TYPE",
                match d.broker.queue_type {
                    docfleet_shared::settings::QueueType::Classic => "classic",
                    docfleet_shared::settings::QueueType::Quorum => "quorum",
                },
            )
            .env(
                "DOCFLEET__REDIS__ALLOW_NO_PERSISTENCE",
                d.redis.allow_no_persistence.to_string(),
            )
            .envs(store_env(&d.store))
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
    }

    /// Starts the dispatcher binary on `port`, sharing this fleet's names.
    pub async fn spawn_dispatcher_process(&self, port: u16) -> Process {
        self.spawn_dispatcher_process_with(port, &[]).await
    }

    /// [`Fleet::spawn_dispatcher_process`] with settings of its own (`DOCFLEET__…`).
    pub async fn spawn_dispatcher_process_with(
        &self,
        port: u16,
        extra_env: &[(&str, &str)],
    ) -> Process {
        let mut cmd = tokio::process::Command::new(bin_dir().join("docfleet-dispatcher"));
        self.common_env(&mut cmd);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.env("DOCFLEET__LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "DOCFLEET__EXPANSION_LEASE_SECS",
                self.dispatcher_settings.expansion_lease_secs.to_string(),
            )
            .env("DOCFLEET__WEBHOOK__ALLOW_CIDRS", "127.0.0.0/8")
            .env("DOCFLEET__WEBHOOK__SECRETS_KEY", TEST_SECRETS_KEY)
            .env(
                "DOCFLEET__WEBHOOK__FIRST_RETRY_MS",
                self.dispatcher_settings.webhook.first_retry_ms.to_string(),
            );
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {}: {e} (deploy/local/test builds the binaries first)",
                bin_dir().join("docfleet-dispatcher").display()
            )
        });
        Process { child }
    }

    /// Starts the worker binary, sharing this fleet's names.
    pub async fn spawn_worker_process(&self, extra_env: &[(&str, &str)]) -> Process {
        let mut cmd = tokio::process::Command::new(bin_dir().join("docfleet-worker"));
        self.common_env(&mut cmd);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "spawn {}: {e} (deploy/local/test builds the binaries first)",
                bin_dir().join("docfleet-worker").display()
            )
        });
        Process { child }
    }

    /// A free loopback port.
    pub async fn free_port() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr").port()
    }

    /// The fleet's file store, as its workers and dispatcher see it.
    pub fn store(&self) -> FileStore {
        FileStore::open(&self.dispatcher_settings.store).expect("the fleet's store")
    }

    /// Reads a batch hash field straight from Redis.
    pub async fn batch_field(&self, batch_id: &str, field: &str) -> Option<String> {
        let mut con = self.redis.clone();
        redis::AsyncCommands::hget(&mut con, self.keys.batch(batch_id), field)
            .await
            .ok()
            .flatten()
    }
}
