//! The real binaries as OS processes: killed mid-expansion, drained on SIGTERM.

use std::time::Duration;

use docfleet_tests::Fleet;
use serde_json::json;

const BATCH: &str = "/api/v1/beta/batch-processing";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_killed_mid_expansion_is_resumed_by_another() {
    let mut f = Fleet::start(0).await;
    f.dispatcher_settings.expansion_lease_secs = 2;
    // The in-process dispatcher only serves the files; expansion runs in the processes below.
    let dir = f.create_dir(&f.api_key, "big").await;
    let n = 400;
    for i in 0..n {
        f.upload(
            &f.api_key,
            &dir,
            &format!("f{i}.txt"),
            format!("file {i}").into_bytes(),
        )
        .await;
    }
    f.stop_dispatcher().await;
    let port = Fleet::free_port().await;
    let mut first = f.spawn_dispatcher_process(port).await;
    f.base_url = format!("http://127.0.0.1:{port}");
    let ready = f.wait_ready(&f.base_url.clone()).await;
    assert!(ready, "dispatcher process not ready");
    let (s, b) = f
        .post(
            BATCH,
            &f.watched(
                json!({ "job_config": { "parameters": {} }, "directory_id": dir, "page_size": 1 }),
            ),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    // Kill it once some pages, but not all, are published.
    let mut cursor_at_kill = 0;
    for _ in 0..2000 {
        let c: i64 = f
            .batch_field(&id, "cursor")
            .await
            .unwrap_or_default()
            .parse()
            .unwrap_or(0);
        if c >= 20 {
            cursor_at_kill = c;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    first.kill().await;
    assert!(cursor_at_kill > 0, "expansion never started");
    assert_eq!(
        f.batch_field(&id, "expanded").await.as_deref(),
        Some("0"),
        "too late to kill"
    );
    // A replacement takes the lease over once it lapses and finishes from the cursor.
    let port = Fleet::free_port().await;
    let mut second = f.spawn_dispatcher_process(port).await;
    f.base_url = format!("http://127.0.0.1:{port}");
    f.start_worker().await;
    f.start_worker().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = f.wait_terminal(&id, Duration::from_secs(90)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    assert_eq!(status["job"]["total_items"], n);
    assert_eq!(status["job"]["processed_items"], n);
    let events = f.events(&id).await;
    assert_eq!(
        events.iter().filter(|(t, _)| t == "parse.success").count(),
        n
    );
    assert_eq!(
        events.iter().filter(|(t, _)| t == "parse.pending").count(),
        n
    );
    assert_eq!(
        events.iter().filter(|(t, _)| t == "batch.success").count(),
        1
    );
    for _ in 0..100 {
        if f.queue_depths().await == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.queue_depths().await, (0, 0));
    second.kill().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_drains_and_exits_zero_on_sigterm() {
    let f = Fleet::start(0).await;
    let port = Fleet::free_port().await;
    let addr = format!("127.0.0.1:{port}");
    let mut w = f
        .spawn_worker_process(&[("DOCFLEET__HEALTH_LISTEN", addr.as_str())])
        .await;
    // Probes: live, ready once attached to the broker, and metrics in Prometheus text.
    let ready = f.wait_ready(&format!("http://{addr}")).await;
    assert!(ready, "worker never reported ready");
    let live = f
        .http
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert!(live.status().is_success());
    let dir = f.create_dir(&f.api_key, "m").await;
    let id = f
        .upload(&f.api_key, &dir, "m.txt", b"metrics".to_vec())
        .await;
    let (_, b) = f
        .post(
            "/api/v1/beta/batch-processing",
            &serde_json::json!({ "job_config": { "parameters": {} }, "item_ids": [id] }),
        )
        .await;
    f.wait_terminal(b["id"].as_str().unwrap(), Duration::from_secs(30))
        .await;
    let m = f
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(r#"docfleet_items_total{job_type="parse",outcome="completed"} 1"#),
        "{m}"
    );
    assert!(m.contains("docfleet_item_duration_seconds_bucket"), "{m}");
    let d = f
        .http
        .get(format!("{}/metrics", f.base_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(d.contains("docfleet_messages_published_total 1"), "{d}");
    let status = w.terminate().await.expect("worker exited");
    assert!(status.success(), "{status:?}");
    // Invalid configuration: exit 64 before opening any socket (or building the runtime).
    for key in ["DOCFLEET__CONCURRENCY", "DOCFLEET__RUNTIME_THREADS"] {
        let mut bad = f.spawn_worker_process(&[(key, "0")]).await;
        let code = tokio::time::timeout(Duration::from_secs(10), bad.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(code.code(), Some(64), "{key}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_dispatchers_agree_and_expand_each_batch_once() {
    let mut f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "replicas").await;
    for i in 0..300 {
        f.upload(&f.api_key, &dir, &format!("r{i}.txt"), b"replica".to_vec())
            .await;
    }
    // Two more replicas as processes beside the in-process one; all three expand and serve.
    let mut others = Vec::new();
    let mut urls = vec![f.base_url.clone()];
    for _ in 0..2 {
        let port = Fleet::free_port().await;
        others.push(f.spawn_dispatcher_process(port).await);
        urls.push(format!("http://127.0.0.1:{port}"));
    }
    for u in &urls {
        assert!(f.wait_ready(u).await, "{u} not ready");
    }
    let mut batches = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        f.base_url = u.clone();
        let (s, b) = f
            .post(
                "/api/v1/beta/batch-processing",
                &f.watched(serde_json::json!({ "job_config": { "parameters": {} }, "directory_id": dir, "page_size": 7 + i })),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        batches.push(b["id"].as_str().unwrap().to_owned());
    }
    f.start_worker().await;
    f.start_worker().await;
    for id in &batches {
        let done = f.wait_terminal(id, Duration::from_secs(60)).await;
        assert_eq!(done["job"]["processed_items"], 300);
        // Expanded once: one pending event per file, whichever replica held the lease.
        let events = f.events(id).await;
        assert_eq!(
            events.iter().filter(|(t, _)| t == "parse.pending").count(),
            300
        );
        assert_eq!(
            events.iter().filter(|(t, _)| t == "parse.success").count(),
            300
        );
        // Every replica reports the same status.
        let mut seen = Vec::new();
        for u in &urls {
            f.base_url = u.clone();
            let (_, s) = f.get(&format!("/api/v1/beta/batch-processing/{id}")).await;
            seen.push(s);
        }
        assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    }
    // A key revoked is refused by every replica within a second, however recently each saw it.
    let victim = f.new_key("proj-a").await;
    for u in &urls {
        f.base_url = u.clone();
        assert_eq!(f.get_as(&victim, "/api/v1/beta/directories").await.0, 200);
    }
    let mut con = f.redis.clone();
    let revoked = docfleet_dispatcher::auth::revoke_key(&mut con, &f.keys, "proj-a", &victim)
        .await
        .unwrap();
    assert_eq!(revoked, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for u in &urls {
        f.base_url = u.clone();
        assert_eq!(
            f.get_as(&victim, "/api/v1/beta/directories").await.0,
            401,
            "{u} still takes a revoked key"
        );
    }
    for o in &mut others {
        o.kill().await;
    }
    f.base_url = urls[0].clone();
    f.shutdown().await;
}

/// A file that makes the parser allocate without end fails alone, with a message naming the
/// bound, and the worker goes on (the hog is the worker binary's test-only failpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parse_past_the_memory_bound_fails_only_its_item() {
    let mut f = Fleet::start(0).await;
    let mut ws = f.worker_settings.clone();
    ws.parse_memory_mb = 256;
    ws.engine_binary = Some(docfleet_tests::bin_dir().join("docfleet-worker"));
    f.start_worker_with(ws).await;
    let dir = f.create_dir(&f.api_key, "hog").await;
    let hog = f
        .upload(
            &f.api_key,
            &dir,
            "hog.pdf",
            b"%PDF-1.4\nDOCFLEET-FAULT:MEMORY\n".to_vec(),
        )
        .await;
    let fine = f
        .upload(
            &f.api_key,
            &dir,
            "invoice-1042.pdf",
            docfleet_tests::sample("invoice-1042.pdf"),
        )
        .await;
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "item_ids": [hog, fine] }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    assert_eq!(status["job"]["failed_items"], 1, "{status}");
    let items = f.items(&id).await;
    let by_name = |n: &str| items.iter().find(|i| i["item_name"] == n).unwrap().clone();
    let failed = by_name("hog.pdf");
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error_message"].as_str().unwrap_or_default();
    assert!(error.contains("memory bound of 256 MB"), "{failed}");
    assert_eq!(by_name("invoice-1042.pdf")["status"], "completed");
    f.shutdown().await;
}

/// With a backlog of slow documents and the production defaults, a worker holds only what it
/// runs (`prefetch` = `concurrency`), so a worker started later (an autoscaler's) finds work
/// still in the queue and takes some within a second of being ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_late_gets_work_at_once() {
    let f = Fleet::start(0).await;
    let defaults = docfleet_shared::settings::WorkerSettings::default();
    let held = defaults.concurrency;
    let dir = f.create_dir(&f.api_key, "slow").await;
    let mut ids = Vec::new();
    for i in 0..(4 * held) {
        let body = format!("DOCFLEET-FAULT:SLOW document {i}").into_bytes();
        ids.push(
            f.upload(&f.api_key, &dir, &format!("slow-{i}.txt"), body)
                .await,
        );
    }
    let processing = |id: String| {
        let f = &f;
        async move {
            let (_, b) = f
                .get(&format!("{BATCH}/{id}/items?status=processing&limit=1"))
                .await;
            b["total_size"].as_u64().unwrap_or(0) as usize
        }
    };
    let mut first = started_worker(&f).await;
    let id = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "item_ids": ids }))
        .await;
    let t0 = std::time::Instant::now();
    while processing(id.clone()).await < held {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the first worker never filled up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first worker is full, and the rest waits in the queue, not in its prefetch.
    let (ready, _) = f.queue_depths().await;
    assert!(ready as usize >= held, "{ready} ready behind a full worker");
    let mut second = started_worker(&f).await;
    let ready_at = std::time::Instant::now();
    let mut most = 0;
    while ready_at.elapsed() < Duration::from_secs(1) && most <= held {
        most = most.max(processing(id.clone()).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        most > held,
        "the late worker took nothing within a second: {most} processing"
    );
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    assert_eq!(status["job"]["processed_items"], 4 * held);
    first.terminate().await;
    second.terminate().await;
    f.shutdown().await;
}

/// A worker process with its probes on a free port, once it reports ready.
async fn started_worker(f: &Fleet) -> docfleet_tests::Process {
    let addr = format!("127.0.0.1:{}", Fleet::free_port().await);
    let w = f
        .spawn_worker_process(&[("DOCFLEET__HEALTH_LISTEN", addr.as_str())])
        .await;
    assert!(
        f.wait_ready(&format!("http://{addr}")).await,
        "worker not ready"
    );
    w
}

/// On a Redis that keeps nothing on disk (the machine's, started with `--save ""
/// --appendonly no`), both binaries refuse to start unless told it is a development setup,
/// and say how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_persistence_is_refused_outside_development() {
    let f = Fleet::start(0).await;
    for bin in ["docfleet-worker", "docfleet-dispatcher"] {
        let port = Fleet::free_port().await;
        let out = tokio::process::Command::new(docfleet_tests::bin_dir().join(bin))
            .env("DOCFLEET__BROKER__URL", &f.dispatcher_settings.broker.url)
            .env(
                "DOCFLEET__BROKER__QUEUE_PREFIX",
                &f.dispatcher_settings.broker.queue_prefix,
            )
            .env("DOCFLEET__REDIS__URL", &f.dispatcher_settings.redis.url)
            .env(
                "DOCFLEET__REDIS__KEY_PREFIX",
                &f.dispatcher_settings.redis.key_prefix,
            )
            .env("DOCFLEET__STORE__ROOT", &f.dispatcher_settings.store.root)
            .env("DOCFLEET__LISTEN", format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(30), out)
            .await
            .expect("still running on a Redis without persistence")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bin} started: {stderr}");
        assert!(
            stderr.contains("no persistence") && stderr.contains("allow_no_persistence"),
            "{bin}: {stderr}"
        );
    }
    f.shutdown().await;
}

/// `docfleet-dispatcher dead-letters` lists what workers parked (a message that is not an
/// item message, one of an unknown batch), leaves it parked, and `--replay` puts each back
/// into the queue it died in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed() {
    let mut f = Fleet::start(0).await;
    let queue = f.default_queue();
    let conn = lapin::Connection::connect(&docfleet_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let unknown = docfleet_shared::wire::ItemMessage::new("bjb-gone", "dfl-gone").encode();
    for body in [b"not an item".to_vec(), unknown] {
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            Default::default(),
            &body,
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    f.start_worker().await;
    let mut depths = (0, 0);
    for _ in 0..100 {
        depths = f.queue_depths().await;
        if depths == (0, 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(depths, (0, 2), "both parked");
    f.stop_workers().await;
    let cli = |args: &[&str]| {
        let mut cmd =
            tokio::process::Command::new(docfleet_tests::bin_dir().join("docfleet-dispatcher"));
        cmd.args(args)
            .env("DOCFLEET__BROKER__URL", &f.dispatcher_settings.broker.url)
            .env(
                "DOCFLEET__BROKER__QUEUE_PREFIX",
                &f.dispatcher_settings.broker.queue_prefix,
            )
            .stdin(std::process::Stdio::null());
        async move {
            let out = cmd.output().await.unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    let listed: Vec<serde_json::Value> = cli(&["dead-letters"])
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["body"], "not an item");
    assert_eq!(listed[1]["item_id"], "dfl-gone");
    assert_eq!(listed[1]["batch_id"], "bjb-gone");
    for m in &listed {
        assert_eq!(m["queue"], queue.as_str(), "{m}");
        assert_eq!(m["reason"], "rejected", "{m}");
    }
    assert_eq!(f.queue_depths().await, (0, 2), "listing leaves them parked");
    assert_eq!(
        cli(&["dead-letters", "--replay"]).await.trim(),
        "replayed 2"
    );
    assert_eq!(f.queue_depths().await, (2, 0));
    let _ = conn.close(200, "".into()).await;
    f.shutdown().await;
}

/// The dispatcher binary under hostile clients: every oversized or malformed input gets its
/// 4xx, many half-sent requests are closed after the header timeout, a project over its
/// request rate gets 429s, and the process's peak RSS (printed) stays under 100 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_client_costs_the_dispatcher_little() {
    use tokio::io::AsyncWriteExt;
    let f = Fleet::start(0).await;
    let port = Fleet::free_port().await;
    let mut d = f
        .spawn_dispatcher_process_with(
            port,
            &[
                ("DOCFLEET__HTTP__HEADER_READ_TIMEOUT_MS", "500"),
                ("DOCFLEET__MAX_REQUESTS_PER_SECOND_PER_PROJECT", "50"),
            ],
        )
        .await;
    let base = format!("http://127.0.0.1:{port}");
    assert!(f.wait_ready(&base).await);
    let dir = f.create_dir(&f.api_key, "hostile").await;
    let post = |body: String| {
        f.http
            .post(format!("{base}/api/v1/beta/batch-processing"))
            .bearer_auth(&f.api_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let pages = vec!["0-100000"; 3000].join(",");
    let cases = [
        (json!({ "directory_id": dir, "job_config": { "parameters": { "target_pages": pages } } }).to_string(), 422),
        (format!("{{\"directory_id\": \"{dir}\", \"job_config\": {{\"parameters\": {{\"x\": \"{}\"}}}}}}", "y".repeat(9 << 20)), 413),
        (format!("{{\"item_ids\": [{}], \"job_config\": {{}}}}", vec!["\"dfl-x\""; 200_000].join(",")), 422),
        ("{\"item_ids\": [".repeat(50_000), 422),
    ];
    for (body, want) in cases {
        let large = body.len() > 1 << 20;
        match post(body).await {
            Ok(r) => assert_eq!(r.status().as_u16(), want, "{:?}", r.text().await),
            // Refused while it was still being sent (too large, or too many ids counted as they
            // arrived): the server answers and closes, and the client may see the close first.
            Err(e) => assert!(large, "{e}"),
        }
    }
    // Half-sent requests: each is closed once its header timeout passes.
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(b"POST /api/v1/beta/batch-processing HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        slow.push(c);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut closed = 0;
    for c in &mut slow {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(
            Duration::from_millis(200),
            tokio::io::AsyncReadExt::read(c, &mut buf),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => closed += 1,
            Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 408") => closed += 1,
            _ => {}
        }
    }
    assert_eq!(closed, 200, "half-sent requests left open");
    // A burst past the project's rate: some 429 with Retry-After, and the server still answers.
    let mut limited = 0;
    for _ in 0..200 {
        let r = f
            .http
            .get(format!("{base}/api/v1/beta/directories"))
            .bearer_auth(&f.api_key)
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            assert_eq!(r.headers()["retry-after"], "1");
            limited += 1;
        }
    }
    assert!(
        limited > 0,
        "200 requests at once never reached the rate limit of 50/s"
    );
    let pid = d.child.id().expect("pid");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    println!(
        "dispatcher peak RSS under hostile clients: {} MB",
        hwm_kb / 1024
    );
    assert!(hwm_kb < 100 * 1024, "peak RSS {hwm_kb} kB");
    d.kill().await;
    f.shutdown().await;
}

/// A parse stuck in a tool it started (a hostile scan can keep `tesseract` busy for hours)
/// is killed at the item's deadline together with the tool: the item fails saying so, no
/// process of it is left, and the worker's slot takes the next file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stuck_parse_is_killed_with_its_tools_at_the_deadline() {
    let mut f = Fleet::start(0).await;
    let mut ws = f.worker_settings.clone();
    ws.item_deadline_secs = 3;
    ws.max_attempts = 1;
    ws.cpu_slots = 1;
    ws.engine_binary = Some(docfleet_tests::bin_dir().join("docfleet-worker"));
    f.start_worker_with(ws).await;
    let dir = f.create_dir(&f.api_key, "stuck").await;
    let stuck = f
        .upload(
            &f.api_key,
            &dir,
            "stuck.pdf",
            b"%PDF-1.4\nDOCFLEET-FAULT:GRANDKID\n".to_vec(),
        )
        .await;
    let fine = f
        .upload(
            &f.api_key,
            &dir,
            "invoice-1042.pdf",
            docfleet_tests::sample("invoice-1042.pdf"),
        )
        .await;
    let before = sleepers();
    let started = std::time::Instant::now();
    let id = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "item_ids": [stuck, fine] }))
        .await;
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status["job"]["failed_items"], 1, "{status}");
    let items = f.items(&id).await;
    let failed = items
        .iter()
        .find(|i| i["item_name"] == "stuck.pdf")
        .unwrap();
    assert!(
        failed["error_message"]
            .as_str()
            .unwrap_or_default()
            .contains("killed with its children"),
        "{failed}"
    );
    assert_eq!(
        items
            .iter()
            .find(|i| i["item_name"] == "invoice-1042.pdf")
            .unwrap()["status"],
        "completed"
    );
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<u32> = sleepers()
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    assert!(
        left.is_empty(),
        "the stuck tool outlived its item: {left:?}"
    );
    f.shutdown().await;
}

/// Live processes (zombies are dead) whose command line and `stat` pass `keep`.
fn live_processes(keep: impl Fn(&[u8], &str) -> bool) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        if !stat.contains(") Z ") && keep(&cmd, &stat) {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

/// Live `sleep 3600` processes.
fn sleepers() -> Vec<u32> {
    live_processes(|cmd, _| cmd == b"sleep\x003600\x00")
}

/// Runs each (name, bytes) through the fleet's parser child, one batch; each file's error
/// message (what the test-only markers answer with) by name.
async fn parser_answers(f: &Fleet, files: Vec<(&str, Vec<u8>)>) -> Vec<(String, String)> {
    let dir = f.create_dir(&f.api_key, "child").await;
    let mut ids = Vec::new();
    for (name, bytes) in files {
        ids.push(f.upload(&f.api_key, &dir, name, bytes).await);
    }
    let id = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "item_ids": ids }))
        .await;
    f.wait_terminal(&id, Duration::from_secs(90)).await;
    f.items(&id)
        .await
        .iter()
        .map(|i| {
            let text = |k: &str| i[k].as_str().unwrap_or_default().to_owned();
            (text("item_name"), text("error_message"))
        })
        .collect()
}

/// The answer for `name` among [`parser_answers`]'.
fn answer<'a>(answers: &'a [(String, String)], name: &str) -> &'a str {
    answers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, e)| e.as_str())
        .unwrap_or_else(|| panic!("no item {name}: {answers:?}"))
}

/// The parser child runs without the worker's environment: no Redis or broker URL, no
/// credential reaches code that reads hostile files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parser_child_gets_no_credentials() {
    let f = Fleet::start(0).await;
    let mut w = f
        .spawn_worker_process(&[("DOCFLEET__VISION__API_KEY", "sk-secret")])
        .await;
    let answers = parser_answers(
        &f,
        vec![("env.pdf", b"%PDF-1.4\nDOCFLEET-FAULT:ENVIRON\n".to_vec())],
    )
    .await;
    let error = answer(&answers, "env.pdf");
    assert!(error.contains("environment: "), "{error}");
    assert!(error.contains("PATH"), "{error}");
    assert!(!error.contains("DOCFLEET"), "{error}");
    w.kill().await;
    f.shutdown().await;
}

/// The parser child is confined: no network (a namespace of its own, which this machine
/// allows, and Landlock), no file outside its private folder (Landlock), and a bounded
/// number of processes (`nobody` or a user namespace of its own, under `RLIMIT_NPROC`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parser_child_reaches_no_network_no_file_and_starts_few_processes() {
    assert!(
        docfleet_worker::isolation::network_namespaces(),
        "unshare --net is not available here"
    );
    assert!(
        docfleet_worker::sandbox::filesystem_confined(),
        "this kernel does not enforce Landlock"
    );
    let secret = std::env::temp_dir().join(format!("docfleet-secret-{}", uuid::Uuid::new_v4()));
    std::fs::write(&secret, b"redis://:password@redis").unwrap();
    let mut f = Fleet::start(0).await;
    let mut ws = f.worker_settings.clone();
    ws.engine_binary = Some(docfleet_tests::bin_dir().join("docfleet-worker"));
    f.start_worker_with(ws).await;
    let touch = format!("%PDF-1.4\nDOCFLEET-FAULT:TOUCH {}\n", secret.display());
    let answers = parser_answers(
        &f,
        vec![
            ("net.pdf", b"%PDF-1.4\nDOCFLEET-FAULT:NETWORK\n".to_vec()),
            ("touch.pdf", touch.into_bytes()),
            ("forks.pdf", b"%PDF-1.4\nDOCFLEET-FAULT:FORKS\n".to_vec()),
        ],
    )
    .await;
    let network = answer(&answers, "net.pdf");
    assert!(network.contains("network: unreachable"), "{network}");
    assert_eq!(
        answer(&answers, "touch.pdf"),
        "touch: read Err(PermissionDenied), write Err(PermissionDenied)",
        "the parser reached a file outside its folder"
    );
    assert!(!secret.with_extension("touched").exists());
    let started: u64 = answer(&answers, "forks.pdf")
        .strip_prefix("forks: ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{answers:?}"));
    eprintln!("the parser child started {started} of 1,000 processes");
    assert!(
        started < docfleet_worker::sandbox::MAX_PROCESSES,
        "{started} processes started"
    );
    let _ = std::fs::remove_file(&secret);
    f.shutdown().await;
}

/// Only the reuse test's children have this memory bound: the other tests' in-process
/// workers start parser children of this process too.
const REUSE_TEST_MB: u64 = 511;

/// The live parser children the reuse test started (`docfleet-worker engine`, possibly
/// through `unshare`, which execs in place).
fn parser_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let bound = REUSE_TEST_MB.to_string();
    live_processes(|cmd, stat| {
        // The parent's pid is the second field after the command's closing parenthesis.
        let parent = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split(' ').nth(1));
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let ours = args
            .windows(2)
            .any(|w| w[0] == b"--memory-mb" && w[1] == bound.as_bytes());
        args.contains(&&b"engine"[..]) && ours && parent == Some(me.as_str())
    })
}

/// A parser child serves one project's documents one after another; another project gets a
/// child of its own; a failure ends the child, and the next document gets a fresh one.
#[test]
fn parser_children_are_reused_within_a_project_and_replaced_after_a_failure() {
    use docfleet_worker::{input::Input, isolation::Isolation, parse::ParseRequest};
    let dir = std::env::temp_dir().join(format!("docfleet-reuse-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        Input::new(std::fs::File::open(&path).unwrap()).unwrap()
    };
    let invoice = file("invoice.pdf", &docfleet_tests::sample("invoice-1042.pdf"));
    let cv = file("cv.pdf", &docfleet_tests::sample("jane-doe-cv.pdf"));
    let broken = file("broken.pdf", b"%PDF-1.4\nnot a pdf at all\n");
    let isolation = Isolation::new(
        docfleet_tests::bin_dir().join("docfleet-worker"),
        REUSE_TEST_MB,
        30,
        2,
    );
    let req = ParseRequest {
        disable_ocr: true,
        ..ParseRequest::default()
    };
    let parse = |project: &str, input: &Input, name: &str| {
        isolation.parse(project, input, name, &req, Duration::from_secs(30))
    };
    let text = |r: Result<(docfleet_worker::parse::Parsed, Vec<_>), _>| {
        let (parsed, _) = r.expect("parsed");
        parsed
            .pages
            .iter()
            .map(|p| p.text.clone())
            .collect::<String>()
    };
    assert!(parser_children().is_empty(), "{:?}", parser_children());

    assert!(text(parse("p1", &invoice, "invoice.pdf")).contains("1042"));
    let first = parser_children();
    assert_eq!(first.len(), 1, "{first:?}");
    // The same child reads the project's next documents, each its own.
    assert!(text(parse("p1", &cv, "cv.pdf")).contains("Jane"));
    assert!(text(parse("p1", &invoice, "invoice.pdf")).contains("1042"));
    assert_eq!(parser_children(), first);

    // Another project's document is read by another child.
    assert!(text(parse("p2", &cv, "cv.pdf")).contains("Jane"));
    let both = parser_children();
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.contains(&first[0]));

    // A failure ends the child that met it; the project's next document gets a fresh one.
    let failed = parse("p1", &broken, "broken.pdf");
    assert!(failed.is_err(), "{:?}", failed.map(|_| ()));
    let after = parser_children();
    assert!(!after.contains(&first[0]), "{after:?} still has {first:?}");
    assert!(text(parse("p1", &invoice, "invoice.pdf")).contains("1042"));
    let fresh = parser_children();
    assert_eq!(fresh.len(), 2, "{fresh:?}");
    assert!(!fresh.contains(&first[0]));

    // Dropped with the worker's last handle, the waiting children end.
    drop(isolation);
    assert!(parser_children().is_empty(), "{:?}", parser_children());
    std::fs::remove_dir_all(&dir).unwrap();
}
