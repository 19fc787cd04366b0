//! The fault suite: real batches of 2,000 items through a dispatcher and several worker
//! processes on the real RabbitMQ and Redis, one injected fault per scenario. After each it
//! checks every item is in exactly one terminal state, counters equal a recount of item
//! states, exactly one terminal batch event, nothing left in the queue or `processing`, and
//! prints a table. It fails if anything was lost, double-counted or stuck.
//!
//! Scenarios run one after another (some restart the shared broker) in one test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use docfleet_tests::{Fleet, Process};
use serde_json::{json, Value};

const BATCH: &str = "/api/v1/beta/batch-processing";
const ITEMS: usize = 2000;
const WORKERS: usize = 3;

struct Row {
    scenario: &'static str,
    items: usize,
    faults: usize,
    lost: usize,
    double: usize,
    stuck: usize,
    secs: f64,
    note: String,
}

fn worker_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("DOCFLEET__CONCURRENCY", "2"),
        ("DOCFLEET__PREFETCH", "8"),
        ("DOCFLEET__MAX_ATTEMPTS", "6"),
        ("DOCFLEET__ITEM_DEADLINE_SECS", "3"),
        ("DOCFLEET__MAX_FILE_BYTES", "100000"),
        ("DOCFLEET__DRAIN_SECS", "10"),
    ]
}

async fn spawn_workers(f: &Fleet, n: usize) -> Vec<Process> {
    let env = worker_env();
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(f.spawn_worker_process(&env).await);
    }
    out
}

async fn upload(f: &Fleet, n: usize) -> (String, Vec<String>) {
    use futures_util::StreamExt;
    let dir = f.create_dir(&f.api_key, "faults").await;
    let ids = futures_util::stream::iter(0..n)
        .map(|i| {
            let (f, dir) = (&f, &dir);
            async move {
                f.upload(
                    &f.api_key,
                    dir,
                    &format!("f{i}.txt"),
                    format!("fault file {i}").into_bytes(),
                )
                .await
            }
        })
        .buffered(32)
        .collect()
        .await;
    (dir, ids)
}

/// Status, tolerating a dependency that is down for a moment.
async fn status(f: &Fleet, id: &str) -> Option<Value> {
    let r = f
        .http
        .get(format!("{}{BATCH}/{id}", f.base_url))
        .bearer_auth(&f.api_key)
        .send()
        .await
        .ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

async fn processed(f: &Fleet, id: &str) -> u64 {
    status(f, id)
        .await
        .map(|s| s["job"]["processed_items"].as_u64().unwrap_or(0))
        .unwrap_or(0)
}

async fn wait_processed(f: &Fleet, id: &str, n: u64) {
    let t = Instant::now();
    while processed(f, id).await < n {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "batch stalled below {n} processed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_terminal(f: &Fleet, id: &str) -> Value {
    let t = Instant::now();
    loop {
        if let Some(s) = status(f, id).await {
            if matches!(
                s["job"]["status"].as_str(),
                Some("completed" | "failed" | "cancelled")
            ) {
                return s;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(180),
            "batch {id} not terminal in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks the invariants after a scenario and returns (lost, double-counted, stuck).
async fn audit(
    f: &Fleet,
    id: &str,
    expected_items: usize,
    workers: &mut Vec<Process>,
    expect_dead: u32,
) -> (usize, usize, usize, String) {
    let st = wait_terminal(f, id).await;
    // Duplicates may still be queued after the last item settled; the workers ack them.
    let t = Instant::now();
    while f.queue_depths().await.0 > 0 && t.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in workers.iter_mut() {
        w.terminate().await;
    }
    workers.clear();
    let job = &st["job"];
    let items = f.items(id).await;
    let mut by_status: HashMap<String, usize> = HashMap::new();
    for i in &items {
        *by_status
            .entry(i["status"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    let terminal: usize = ["completed", "failed", "skipped", "cancelled"]
        .iter()
        .map(|s| by_status.get(*s).copied().unwrap_or(0))
        .sum();
    let processing = by_status.get("processing").copied().unwrap_or(0);
    let pending = by_status.get("pending").copied().unwrap_or(0);
    let counter = |k: &str| job[k].as_u64().unwrap_or(0) as usize;
    let mut double = counter("processed_items").saturating_sub(terminal);
    double += counter("failed_items").saturating_sub(by_status.get("failed").copied().unwrap_or(0));
    // Each item settles once: one terminal event per item, one terminal batch event.
    let events = f.events(id).await;
    let mut settled: HashMap<&str, usize> = HashMap::new();
    for (t, item) in &events {
        if t.ends_with(".success") || t.ends_with(".error") || t.ends_with(".cancelled") {
            *settled.entry(item.as_str()).or_default() += 1;
        }
    }
    let batch_terminal = settled.remove("").unwrap_or(0);
    double += settled.values().map(|n| n - 1).sum::<usize>();
    double += batch_terminal.saturating_sub(1);
    let mut lost = expected_items.saturating_sub(terminal)
        - processing.min(expected_items.saturating_sub(terminal));
    if batch_terminal == 0 {
        lost += 1;
    }
    let (ready, dead) = f.queue_depths().await;
    let stuck = processing + ready as usize;
    let mut note = format!(
        "status {}, {by_status:?}, dead-lettered {dead}",
        job["status"].as_str().unwrap_or("?")
    );
    if job["status"] == "completed" && counter("processed_items") != counter("total_items") {
        note.push_str(" processed != total!");
        lost += 1;
    }
    if counter("total_items") != expected_items {
        note.push_str(&format!(
            " total_items {} != {expected_items}!",
            counter("total_items")
        ));
        lost += expected_items.saturating_sub(counter("total_items"));
    }
    if dead < expect_dead {
        note.push_str(&format!(" expected {expect_dead} dead-lettered!"));
    }
    let _ = pending;
    (lost, double, stuck, note)
}

fn row(
    scenario: &'static str,
    items: usize,
    faults: usize,
    (lost, double, stuck, note): (usize, usize, usize, String),
    started: Instant,
) -> Row {
    Row {
        scenario,
        items,
        faults,
        lost,
        double,
        stuck,
        secs: started.elapsed().as_secs_f64(),
        note,
    }
}

async fn create(f: &Fleet, body: Value) -> String {
    // Subscribed, so the outbox records every event and the check can count them.
    let (s, b) = f.post(BATCH, &f.watched(body)).await;
    assert_eq!(s, 200, "{b}");
    b["id"].as_str().unwrap().to_owned()
}

fn parse_job(ids: &[String]) -> Value {
    json!({ "job_config": { "parameters": {} }, "item_ids": ids })
}

async fn kill_workers(f: &Fleet, ids: &[String]) -> Row {
    let mut w = spawn_workers(f, WORKERS).await;
    let t = Instant::now();
    let id = create(f, parse_job(ids)).await;
    let mut faults = 0;
    for k in 0..10u64 {
        wait_processed(f, &id, 100 + k * 150).await;
        let victim = (k as usize) % w.len();
        w[victim].kill().await;
        w[victim] = f.spawn_worker_process(&worker_env()).await;
        faults += 1;
    }
    let (lost, double, stuck, note) = audit(f, &id, ids.len(), &mut w, 0).await;
    row(
        "1 SIGKILL worker ×10",
        ids.len(),
        faults,
        (lost, double, stuck, note),
        t,
    )
}

/// `rabbitmqctl stop_app`, then `start_app`.
fn restart_broker() {
    for cmd in ["stop_app", "start_app"] {
        let ok = std::process::Command::new("rabbitmqctl")
            .arg(cmd)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "rabbitmqctl {cmd} failed");
    }
}

async fn restart_rabbitmq(f: &Fleet, ids: &[String]) -> Row {
    let mut w = spawn_workers(f, WORKERS).await;
    let t = Instant::now();
    let id = create(f, parse_job(ids)).await;
    wait_processed(f, &id, 400).await;
    restart_broker();
    let (lost, double, stuck, note) = audit(f, &id, ids.len(), &mut w, 0).await;
    row(
        "2 RabbitMQ restart",
        ids.len(),
        1,
        (lost, double, stuck, note),
        t,
    )
}

struct TestRedis {
    port: u16,
    dir: PathBuf,
}

impl TestRedis {
    /// A Redis with an AOF synced on every write.
    fn start(port: u16, dir: PathBuf) -> TestRedis {
        Self::start_with(
            port,
            dir,
            &["--appendonly", "yes", "--appendfsync", "always"],
        )
    }

    /// A Redis with these persistence arguments, keeping its files in `dir`.
    fn start_with(port: u16, dir: PathBuf, persistence: &[&str]) -> TestRedis {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--daemonize",
                "yes",
                "--save",
                "",
            ])
            .args(persistence)
            .arg("--dir")
            .arg(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not start a test redis-server");
        let r = TestRedis { port, dir };
        r.wait_up();
        r
    }

    fn wait_up(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("test redis not up");
    }

    fn stop(&self) {
        self.cli(&["shutdown"]);
        self.wait_down();
    }

    /// Stops it without writing anything more to disk: what was written since the last
    /// snapshot is lost, as in a crash.
    fn crash(&self) {
        self.cli(&["shutdown", "nosave"]);
        self.wait_down();
    }

    fn cli(&self, args: &[&str]) -> bool {
        std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A field of INFO (`used_memory`, `master_link_status`, …).
    fn info(&self, field: &str) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "info"])
            .output()
            .expect("redis-cli");
        let prefix = format!("{field}:");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(|v| v.trim().to_owned()))
            .unwrap_or_default()
    }

    fn wait_down(&self) {
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn restart_redis() -> Row {
    let port = Fleet::free_port().await;
    let dir = std::env::temp_dir().join(format!("docfleet-redis-{port}"));
    let redis = TestRedis::start(port, dir.clone());
    let f = Fleet::start_on_redis(0, &format!("redis://127.0.0.1:{port}/0")).await;
    let (_, ids) = upload(&f, ITEMS).await;
    let mut w = spawn_workers(&f, WORKERS).await;
    let t = Instant::now();
    let id = create(&f, parse_job(&ids)).await;
    wait_processed(&f, &id, 400).await;
    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The same port and folder: the restarted server replays the AOF.
    let restarted = TestRedis::start(port, dir);
    let (lost, double, stuck, note) = audit(&f, &id, ids.len(), &mut w, 0).await;
    let row = row(
        "3 Redis restart (AOF)",
        ids.len(),
        1,
        (lost, double, stuck, note),
        t,
    );
    end_on_own_redis(f, redis, restarted).await;
    row
}

/// Redis at `maxmemory` with `noeviction` mid-batch: writes are refused for a few seconds.
/// A create gets a 503 that says so, scripts refused write nothing (the counts stay exact),
/// and the batch finishes once memory is freed.
async fn redis_full() -> Row {
    let port = Fleet::free_port().await;
    let dir = std::env::temp_dir().join(format!("docfleet-redis-{port}"));
    let redis = TestRedis::start(port, dir);
    let f = Fleet::start_on_redis(0, &format!("redis://127.0.0.1:{port}/0")).await;
    let (_, ids) = upload(&f, ITEMS).await;
    let mut w = spawn_workers(&f, WORKERS).await;
    let t = Instant::now();
    let id = create(&f, parse_job(&ids)).await;
    wait_processed(&f, &id, 500).await;
    let used: u64 = redis.info("used_memory").parse().expect("used_memory");
    let limit = used.saturating_sub(1).to_string();
    assert!(
        redis.cli(&["config", "set", "maxmemory-policy", "noeviction"])
            && redis.cli(&["config", "set", "maxmemory", &limit]),
        "config set failed"
    );
    let refused = f
        .http
        .post(format!("{}{BATCH}", f.base_url))
        .bearer_auth(&f.api_key)
        .json(&parse_job(&ids[..1]))
        .send()
        .await
        .expect("create");
    let (code, body) = (
        refused.status().as_u16(),
        refused.text().await.unwrap_or_default(),
    );
    let stalled_at = processed(&f, &id).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stalled_after = processed(&f, &id).await;
    assert!(
        redis.cli(&["config", "set", "maxmemory", "0"]),
        "config set failed"
    );
    let (lost, double, mut stuck, mut note) = audit(&f, &id, ids.len(), &mut w, 0).await;
    note = format!(
        "create while full: {code} {body}; processed {stalled_at} → {stalled_after} while full; {note}"
    );
    if code != 503 || !body.contains("full") {
        note.push_str(" no clear 503!");
        stuck += 1;
    }
    if stalled_after > stalled_at + 50 {
        note.push_str(" (Redis took writes while full?)");
    }
    let row = row(
        "13 Redis at maxmemory (noeviction) for 3 s",
        ids.len(),
        1,
        (lost, double, stuck, note),
        t,
    );
    f.shutdown().await;
    drop(redis);
    row
}

/// Ends a fleet on a Redis of its own, started twice: dropping the restarted server stops it
/// and removes its folder; the first has nothing left to do.
async fn end_on_own_redis(f: Fleet, first: TestRedis, restarted: TestRedis) {
    f.shutdown().await;
    drop(restarted);
    std::mem::forget(first);
}

/// RabbitMQ restarted while the dispatcher has nothing to publish: it must become ready again
/// on its own (an unready replica gets no traffic that would make it reconnect), within 10 s,
/// and a batch created afterwards completes.
async fn restart_rabbitmq_idle(f: &Fleet, ids: &[String]) -> Row {
    let t = Instant::now();
    restart_broker();
    let back = Instant::now();
    let mut ready = false;
    while back.elapsed() < Duration::from_secs(10) {
        let r = f.http.get(format!("{}/readyz", f.base_url)).send().await;
        if r.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_secs = back.elapsed().as_secs_f64();
    let mut w = spawn_workers(f, WORKERS).await;
    let id = create(f, parse_job(ids)).await;
    let (lost, double, mut stuck, mut note) = audit(f, &id, ids.len(), &mut w, 0).await;
    if ready {
        note = format!("ready again {ready_secs:.1} s after start_app; {note}");
    } else {
        note = format!("NOT ready 10 s after start_app!; {note}");
        stuck += 1;
    }
    row(
        "9 RabbitMQ restart, dispatcher idle",
        ids.len(),
        1,
        (lost, double, stuck, note),
        t,
    )
}

/// A fleet on the Redis at `port` whose reconciler looks every second and takes 3 s without
/// progress for lost messages (tiny items never take long), and a batch of `ITEMS` at 30%,
/// with every message published: a restored or promoted Redis then has no expansion left to
/// publish anything again, so what it forgot only the reconciler can bring back. (Before,
/// a held-back expansion restored to an early cursor published most of it again, and the
/// scenario proved nothing in some runs.)
async fn batch_for_lost_writes(port: u16) -> (Fleet, Vec<String>, Vec<Process>, String, Instant) {
    let mut f = Fleet::start_on_redis(0, &format!("redis://127.0.0.1:{port}/0")).await;
    f.dispatcher_settings.reconcile.every_secs = 1;
    f.dispatcher_settings.reconcile.stale_secs = 3;
    // Expansion publishes everything at once (it would hold back behind the workers).
    f.dispatcher_settings.expansion_queue_limit = 0;
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    let (_, ids) = upload(&f, ITEMS).await;
    let w = spawn_workers(&f, WORKERS).await;
    let t = Instant::now();
    let id = create(&f, parse_job(&ids)).await;
    wait_processed(&f, &id, (ITEMS * 3 / 10) as u64).await;
    while f.batch_field(&id, "expanded").await.as_deref() != Some("1") {
        assert!(t.elapsed() < Duration::from_secs(60), "never expanded");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (f, ids, w, id, t)
}

/// The row of a scenario where Redis forgot outcomes: `processed` before the loss, and what
/// the surviving Redis `kept` (`where` it was kept). Unless writes were really lost and the
/// reconciler published items again, the scenario proved nothing, and the row says so.
async fn judge_lost_writes(
    scenario: &'static str,
    (f, id, n, w): (&Fleet, &str, usize, &mut Vec<Process>),
    (processed, kept, place): (u64, u64, &str),
    t: Instant,
) -> Row {
    let (lost, mut double, stuck, mut note) = audit(f, id, n, w, 0).await;
    let republished = metrics_value(f, "docfleet_items_republished_total").await;
    note = format!(
        "processed {processed} before, {kept} {place}, {republished} items republished; {note}"
    );
    if kept >= processed || republished < 1.0 {
        note.push_str(" nothing was lost, or nothing republished!");
        double += 1;
    }
    row(scenario, n, 1, (lost, double, stuck, note), t)
}

/// Redis forgets writes it acknowledged: restarted from a snapshot taken at 30% of the batch,
/// after the workers recorded (and acked) up to 60%. The items recorded in between have no
/// message left; the reconciler finds the batch stalled and publishes them again.
async fn redis_loses_writes() -> Row {
    let port = Fleet::free_port().await;
    let dir = std::env::temp_dir().join(format!("docfleet-redis-{port}"));
    let snapshot = ["--appendonly", "no", "--dbfilename", "dump.rdb"];
    let redis = TestRedis::start_with(port, dir.clone(), &snapshot);
    let (f, ids, mut w, id, t) = batch_for_lost_writes(port).await;
    assert!(redis.cli(&["save"]), "snapshot failed");
    wait_processed(&f, &id, (ITEMS * 6 / 10) as u64).await;
    let forgotten = processed(&f, &id).await;
    redis.crash();
    let restarted = TestRedis::start_with(port, dir, &snapshot);
    // Read straight from Redis, once the fleet's connection is back.
    let mut restored = None;
    for _ in 0..100 {
        restored = f
            .batch_field(&id, "processed")
            .await
            .and_then(|p| p.parse::<u64>().ok());
        if restored.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let restored = restored.unwrap_or(u64::MAX);
    let row = judge_lost_writes(
        "10 Redis loses acknowledged writes (snapshot restore)",
        (&f, &id, ids.len(), &mut w),
        (forgotten, restored, "in the snapshot restored"),
        t,
    )
    .await;
    end_on_own_redis(f, redis, restarted).await;
    row
}

/// Redis fails over to a replica that lagged: the replica is cut off from its primary while
/// the workers record outcomes there, the primary is killed a second later, the replica is
/// promoted, and the fleet's processes move to it (what Sentinel or a DNS switch does).
/// What the replica never got has no message left; the reconciler brings it back.
async fn replica_promoted() -> Row {
    let (pport, rport) = (Fleet::free_port().await, Fleet::free_port().await);
    let tmp = std::env::temp_dir();
    let primary = TestRedis::start_with(
        pport,
        tmp.join(format!("docfleet-redis-{pport}")),
        &["--appendonly", "no", "--repl-diskless-sync-delay", "0"],
    );
    let replica = TestRedis::start_with(
        rport,
        tmp.join(format!("docfleet-redis-{rport}")),
        &[
            "--appendonly",
            "no",
            "--replicaof",
            "127.0.0.1",
            &pport.to_string(),
        ],
    );
    let synced = Instant::now();
    while replica.info("master_link_status") != "up" {
        assert!(
            synced.elapsed() < Duration::from_secs(30),
            "replica never synced"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (mut f, ids, mut w, id, t) = batch_for_lost_writes(pport).await;
    // The replica is cut off (a partition): it keeps what it had, the primary goes on taking
    // outcomes for a second, then dies, and the stale replica is promoted.
    assert!(replica.cli(&["replicaof", "no", "one"]), "promotion failed");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let forgotten = processed(&f, &id).await;
    primary.crash();
    // The fleet moves to the promoted replica.
    for p in w.iter_mut() {
        p.kill().await;
    }
    f.stop_dispatcher().await;
    let url = format!("redis://127.0.0.1:{rport}/0");
    f.dispatcher_settings.redis.url = url.clone();
    f.worker_settings.redis.url = url.clone();
    f.redis = docfleet_shared::services::connect_redis(&url)
        .await
        .expect("replica");
    f.start_dispatcher().await;
    let mut w = spawn_workers(&f, WORKERS).await;
    let kept = f
        .batch_field(&id, "processed")
        .await
        .and_then(|p| p.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    let row = judge_lost_writes(
        "10b Redis fails over to a replica that lagged",
        (&f, &id, ids.len(), &mut w),
        (forgotten, kept, "on the promoted replica"),
        t,
    )
    .await;
    let primary_dir = primary.dir.clone();
    end_on_own_redis(f, primary, replica).await;
    let _ = std::fs::remove_dir_all(primary_dir);
    row
}

/// A counter of the dispatcher's `/metrics`.
async fn metrics_value(f: &Fleet, name: &str) -> f64 {
    let text = match f.http.get(format!("{}/metrics", f.base_url)).send().await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn kill_dispatcher(f: &mut Fleet, ids: &[String]) -> Row {
    f.stop_dispatcher().await;
    let port = Fleet::free_port().await;
    let mut d = f.spawn_dispatcher_process(port).await;
    f.base_url = format!("http://127.0.0.1:{port}");
    assert!(
        f.wait_ready(&f.base_url.clone()).await,
        "dispatcher process not ready"
    );
    let mut w = spawn_workers(f, WORKERS).await;
    let t = Instant::now();
    let mut body = parse_job(ids);
    body["page_size"] = json!(10);
    let id = create(f, body).await;
    loop {
        let c: u64 = f
            .batch_field(&id, "cursor")
            .await
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if c >= 300 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    d.kill().await;
    let mid = f.batch_field(&id, "expanded").await.as_deref() == Some("0");
    let port = Fleet::free_port().await;
    let mut d2 = f.spawn_dispatcher_process(port).await;
    f.base_url = format!("http://127.0.0.1:{port}");
    let (lost, double, stuck, mut note) = audit(f, &id, ids.len(), &mut w, 0).await;
    if !mid {
        note.push_str(" (expansion had finished before the kill)");
    }
    d2.kill().await;
    f.start_dispatcher().await;
    row(
        "4 SIGKILL dispatcher mid-expansion",
        ids.len(),
        1,
        (lost, double, stuck, note),
        t,
    )
}

/// `rabbitmqctl close_all_connections` on the default vhost: every client's connection is
/// closed at once (the dispatcher's publisher and every worker's consumer).
fn close_all_connections() {
    let ok = std::process::Command::new("rabbitmqctl")
        .args(["close_all_connections", "-p", "/", "docfleet fault suite"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "rabbitmqctl close_all_connections failed");
}

/// Waits until `n` consumers are attached to the default priority's queue.
async fn wait_consumers(f: &Fleet, n: u32) {
    let queue = f.default_queue();
    let conn = lapin::Connection::connect(&docfleet_tests::amqp_url(), Default::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        let q = ch
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await
            .expect("work queue");
        if q.consumer_count() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = conn.close(200, "".into()).await;
}

async fn close_connections_mid_expansion(f: &Fleet, ids: &[String]) -> Row {
    let mut w = spawn_workers(f, WORKERS).await;
    // With consumers attached, expansion keeps pace with them, so it runs for most of the
    // batch and the closes fall within it.
    wait_consumers(f, WORKERS as u32).await;
    let t = Instant::now();
    let id = create(f, parse_job(ids)).await;
    let mut faults = 0;
    let mut mid = 0;
    for k in 1..=5u64 {
        wait_processed(f, &id, k * 100).await;
        if f.batch_field(&id, "expanded").await.as_deref() == Some("0") {
            mid += 1;
        }
        close_all_connections();
        faults += 1;
    }
    let (lost, double, stuck, mut note) = audit(f, &id, ids.len(), &mut w, 0).await;
    note = format!("{mid} of {faults} closes while expansion ran; {note}");
    row(
        "11 broker connections closed ×5 during expansion",
        ids.len(),
        faults,
        (lost, double, stuck, note),
        t,
    )
}

/// Waits until no item of `id` is pending or processing (a cancelled batch's sweep).
async fn wait_swept(f: &Fleet, id: &str, within: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        let items = f.items(id).await;
        if items
            .iter()
            .all(|i| !matches!(i["status"].as_str(), Some("pending" | "processing")))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// The dispatcher that serves a cancel is SIGKILLed while it sweeps; the batch must still end
/// cancelled with exact counts (the next dispatcher's reconciler sweeps what was left).
async fn kill_dispatcher_mid_cancel(f: &mut Fleet, ids: &[String]) -> Row {
    f.stop_dispatcher().await;
    let reconcile = [("DOCFLEET__RECONCILE__EVERY_SECS", "1")];
    let port = Fleet::free_port().await;
    let mut d = f.spawn_dispatcher_process_with(port, &reconcile).await;
    f.base_url = format!("http://127.0.0.1:{port}");
    assert!(
        f.wait_ready(&f.base_url.clone()).await,
        "dispatcher process not ready"
    );
    let mut w = spawn_workers(f, WORKERS).await;
    let t = Instant::now();
    let id = create(f, parse_job(ids)).await;
    wait_processed(f, &id, 200).await;
    let cancel = {
        let req = f
            .http
            .post(format!("{}{BATCH}/{id}/cancel", f.base_url))
            .bearer_auth(&f.api_key)
            .json(&json!({}));
        tokio::spawn(req.send())
    };
    // The moment the cancel script has run, before its sweep is through.
    let asked = Instant::now();
    while f.batch_field(&id, "status").await.as_deref() != Some("cancelled")
        && asked.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    d.kill().await;
    let answered = matches!(cancel.await, Ok(Ok(r)) if r.status().is_success());
    let cancelled = f.batch_field(&id, "status").await.as_deref() == Some("cancelled");
    // Read straight from Redis: no dispatcher is up.
    let pending_left: u64 = redis::AsyncCommands::zcard(
        &mut f.redis.clone(),
        f.keys
            .batch_status_set(&id, docfleet_shared::model::ItemStatus::Pending),
    )
    .await
    .unwrap_or(0);
    let port = Fleet::free_port().await;
    let mut d2 = f.spawn_dispatcher_process_with(port, &reconcile).await;
    f.base_url = format!("http://127.0.0.1:{port}");
    assert!(
        f.wait_ready(&f.base_url.clone()).await,
        "dispatcher process not ready"
    );
    let swept = wait_swept(f, &id, Duration::from_secs(60)).await;
    // A cancel during expansion fixes the batch at the items registered so far.
    let total = status(f, &id)
        .await
        .and_then(|s| s["job"]["total_items"].as_u64())
        .unwrap_or(0) as usize;
    let (lost, double, mut stuck, mut note) = audit(f, &id, total, &mut w, 0).await;
    note = format!(
        "cancel answered before the kill: {answered}; batch cancelled at the kill: {cancelled}; \
         pending items left by the kill: {pending_left}; {total} items registered; {note}"
    );
    if !swept {
        note.push_str(" items left pending!");
        stuck += 1;
    }
    if !cancelled {
        // The kill came before the cancel script ran: nothing of the scenario happened.
        note.push_str(" (the kill preceded the cancel)");
    }
    d2.kill().await;
    f.start_dispatcher().await;
    row(
        "12 SIGKILL dispatcher mid-cancel",
        total,
        1,
        (lost, double, stuck, note),
        t,
    )
}

async fn republish(f: &Fleet, batch: &str, items: &[String]) {
    let p = docfleet_dispatcher::publisher::Publisher::connect(
        &f.dispatcher_settings.broker,
        docfleet_shared::topology::Topology::for_broker(&f.dispatcher_settings.broker),
    )
    .await
    .unwrap();
    let bodies: Vec<Vec<u8>> = items
        .iter()
        .map(|i| docfleet_shared::wire::ItemMessage::new(batch, i).encode())
        .collect();
    p.publish_all(&bodies, docfleet_shared::model::Priority::Medium)
        .await
        .unwrap();
}

async fn duplicates(f: &Fleet, ids: &[String]) -> Row {
    let t = Instant::now();
    let id = create(f, parse_job(ids)).await;
    f.wait_status(&id, "dispatched").await;
    let singles: Vec<String> = ids.iter().step_by(10).cloned().collect();
    republish(f, &id, &singles).await;
    republish(f, &id, &ids[..100]).await; // a whole expansion page again
    let faults = singles.len() + 100;
    let mut w = spawn_workers(f, WORKERS).await;
    let (lost, double, stuck, note) = audit(f, &id, ids.len(), &mut w, 0).await;
    row(
        "5 duplicate messages + page",
        ids.len(),
        faults,
        (lost, double, stuck, note),
        t,
    )
}

async fn poison(f: &Fleet, ids: &[String]) -> Row {
    let mut w = spawn_workers(f, WORKERS).await;
    let t = Instant::now();
    let id = create(f, parse_job(ids)).await;
    wait_processed(f, &id, 200).await;
    let p = docfleet_dispatcher::publisher::Publisher::connect(
        &f.dispatcher_settings.broker,
        docfleet_shared::topology::Topology::for_broker(&f.dispatcher_settings.broker),
    )
    .await
    .unwrap();
    let bodies = vec![
        b"not json at all".to_vec(),
        br#"{"v":99,"batch_id":"x","item_id":"y"}"#.to_vec(),
        docfleet_shared::wire::ItemMessage::new(
            "bjb-00000000-0000-0000-0000-000000000000",
            &ids[0],
        )
        .encode(),
    ];
    p.publish_all(&bodies, docfleet_shared::model::Priority::Medium)
        .await
        .unwrap();
    let (lost, double, stuck, note) = audit(f, &id, ids.len(), &mut w, 3).await;
    row(
        "6 poison messages",
        ids.len(),
        3,
        (lost, double, stuck, note),
        t,
    )
}

async fn hostile_files(f: &Fleet, dir: &str, ids: &[String]) -> Row {
    let mut all = ids.to_vec();
    all.push(
        f.upload(
            &f.api_key,
            dir,
            "panic.txt",
            b"DOCFLEET-FAULT:PANIC".to_vec(),
        )
        .await,
    );
    all.push(
        f.upload(&f.api_key, dir, "hang.txt", b"DOCFLEET-FAULT:HANG".to_vec())
            .await,
    );
    all.push(
        f.upload(&f.api_key, dir, "huge.txt", vec![b'x'; 200_000])
            .await,
    );
    let mut w = spawn_workers(f, WORKERS).await;
    let t = Instant::now();
    let id = create(f, parse_job(&all)).await;
    // The failed items are recorded and acked: nothing more is dead-lettered.
    let (lost, double, stuck, mut note) = audit(f, &id, all.len(), &mut w, 0).await;
    let items = f.items(&id).await;
    let by_name = |n: &str| {
        items
            .iter()
            .find(|i| i["item_name"] == n)
            .cloned()
            .unwrap_or_default()
    };
    let (p, h, g) = (
        by_name("panic.txt"),
        by_name("hang.txt"),
        by_name("huge.txt"),
    );
    let ok = p["status"] == "failed"
        && p["error_message"].as_str().unwrap_or("").contains("panic")
        && h["status"] == "failed"
        && h["error_message"]
            .as_str()
            .unwrap_or("")
            .contains("deadline")
        && g["status"] == "skipped"
        && g["skip_reason"]
            .as_str()
            .unwrap_or("")
            .contains("size limit");
    assert!(ok, "hostile files not isolated as expected (worker built without the fault-injection feature?): {p} {h} {g}");
    note.push_str("; panic → failed, hang → failed at deadline, oversize → skipped");
    row(
        "7 panic / hang / oversize files",
        all.len(),
        3,
        (lost, double, stuck, note),
        t,
    )
}

async fn rolling_restart(f: &Fleet, ids: &[String]) -> Row {
    let mut w = spawn_workers(f, WORKERS).await;
    let t = Instant::now();
    let id = create(f, parse_job(ids)).await;
    let mut faults = 0;
    for (k, slot) in w.iter_mut().enumerate() {
        wait_processed(f, &id, 300 + 400 * k as u64).await;
        let replacement = f.spawn_worker_process(&worker_env()).await;
        let code = slot.terminate().await;
        assert!(
            code.is_some_and(|c| c.success()),
            "worker did not drain and exit 0: {code:?}"
        );
        *slot = replacement;
        faults += 1;
    }
    let (lost, double, stuck, note) = audit(f, &id, ids.len(), &mut w, 0).await;
    row(
        "8 rolling restart (SIGTERM)",
        ids.len(),
        faults,
        (lost, double, stuck, note),
        t,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_suite() {
    let suite = Instant::now();
    let mut f = Fleet::start(0).await;
    let (dir, ids) = upload(&f, ITEMS).await;
    let mut rows = vec![kill_workers(&f, &ids).await];
    rows.push(restart_rabbitmq(&f, &ids).await);
    rows.push(restart_redis().await);
    rows.push(restart_rabbitmq_idle(&f, &ids).await);
    rows.push(redis_loses_writes().await);
    rows.push(replica_promoted().await);
    rows.push(kill_dispatcher(&mut f, &ids).await);
    rows.push(duplicates(&f, &ids).await);
    rows.push(poison(&f, &ids).await);
    rows.push(hostile_files(&f, &dir, &ids).await);
    rows.push(rolling_restart(&f, &ids).await);
    rows.push(close_connections_mid_expansion(&f, &ids).await);
    rows.push(kill_dispatcher_mid_cancel(&mut f, &ids).await);
    rows.push(redis_full().await);
    println!("\n| scenario | items | faults injected | lost | double-counted | stuck | seconds |");
    println!("|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.1} |",
            r.scenario, r.items, r.faults, r.lost, r.double, r.stuck, r.secs
        );
    }
    for r in &rows {
        println!("{}: {}", r.scenario, r.note);
    }
    println!("suite: {:.0} s", suite.elapsed().as_secs_f64());
    f.shutdown().await;
    let bad: Vec<&Row> = rows
        .iter()
        .filter(|r| r.lost + r.double + r.stuck > 0)
        .collect();
    assert!(
        bad.is_empty(),
        "lost, double-counted or stuck items in: {:?}",
        bad.iter().map(|r| r.scenario).collect::<Vec<_>>()
    );
}
