//! Webhook delivery to real HTTP receivers on loopback.

use std::collections::HashSet;
use std::time::Duration;

use base64::Engine;
use docfleet_tests::receiver::{Receiver, Reply};
use docfleet_tests::{repo_root, Fleet};
use serde_json::{json, Value};

const BATCH: &str = "/api/v1/beta/batch-processing";

async fn files(f: &Fleet, n: usize) -> Vec<String> {
    let dir = f.create_dir(&f.api_key, "hooks").await;
    f.upload_texts(&dir, "h", n).await
}

async fn create(f: &Fleet, ids: &[String], webhooks: Value) -> String {
    let (s, b) = f
        .post(BATCH, &json!({ "job_config": { "parameters": { "webhook_configurations": webhooks } }, "item_ids": ids }))
        .await;
    assert_eq!(s, 200, "{b}");
    b["id"].as_str().unwrap().to_owned()
}

async fn deliveries(f: &Fleet, batch: &str) -> Vec<Value> {
    let (s, b) = f
        .get(&format!("{BATCH}/{batch}/webhook-deliveries?limit=1000"))
        .await;
    assert_eq!(s, 200, "{b}");
    b["items"].as_array().unwrap().clone()
}

fn verify_independently(secret: &str, r: &docfleet_tests::receiver::Received) {
    let python = std::env::var("DOCFLEET_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python"));
    let input = json!({
        "secret": secret,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(&r.body),
        "headers": r.headers,
    });
    let mut child = std::process::Command::new(&python)
        .arg(repo_root().join("tests/python/verify_webhook.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run deploy/local/test to create .venv)",
                python.display()
            )
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_filtered_signed_and_shaped_as_asked() {
    let f = Fleet::start(2).await;
    let filtered = Receiver::start().await;
    let everything = Receiver::start().await;
    let ids = files(&f, 2).await;
    let batch = create(&f, &ids, json!([
        { "webhook_url": filtered.url(), "webhook_events": ["parse.success", "batch.success", "extract.error"],
          "webhook_headers": { "X-Token": "abc", "Authorization": "Bearer rcv" },
          "webhook_output_format": "json", "webhook_signing_secret": "s3cret" },
        { "webhook_url": everything.url() },
    ])).await;
    f.wait_terminal(&batch, Duration::from_secs(30)).await;
    // Deliveries run concurrently, so the batch's event may come before its items' ones.
    let got = filtered
        .wait_for(Duration::from_secs(10), |r| {
            r.iter().any(|x| x.event() == "batch.success")
                && r.iter().filter(|x| x.event() == "parse.success").count() >= 2
        })
        .await;
    let mut events: Vec<String> = got.iter().map(|r| r.event()).collect();
    events.sort();
    assert_eq!(events, ["batch.success", "parse.success", "parse.success"]);
    for r in &got {
        assert_eq!(r.headers["x-token"], "abc");
        assert_eq!(r.headers["authorization"], "Bearer rcv");
        assert_eq!(r.headers["content-type"], "application/json");
        // json format: the body is the object itself.
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(v.is_object());
        assert!(v["event_id"].as_str().unwrap().starts_with("evt-"));
        assert_eq!(v["batch_id"], batch);
        assert_eq!(r.headers["webhook-id"], v["event_id"]);
        verify_independently("s3cret", r);
    }
    let success = got
        .iter()
        .find(|r| r.event() == "batch.success")
        .unwrap()
        .payload();
    assert_eq!(success["data"]["status"], "completed");
    assert_eq!(success["data"]["processed_items"], 2);
    let item = got
        .iter()
        .find(|r| r.event() == "parse.success")
        .unwrap()
        .payload();
    assert!(item["data"]["job_id"].as_str().unwrap().starts_with("pjb-"));
    assert!(ids.contains(&item["data"]["item_id"].as_str().unwrap().to_owned()));

    // Null events = all events; string format = a JSON string holding the payload; unsigned.
    let wanted = [
        "batch.pending",
        "batch.running",
        "parse.pending",
        "parse.running",
        "parse.success",
        "batch.success",
    ];
    let all = everything
        .wait_for(Duration::from_secs(10), |r| {
            let kinds: HashSet<String> = r.iter().map(|x| x.event()).collect();
            r.iter().filter(|x| x.event() == "parse.success").count() == 2
                && wanted.iter().all(|k| kinds.contains(*k))
        })
        .await;
    let kinds: HashSet<String> = all.iter().map(|r| r.event()).collect();
    for k in wanted {
        assert!(kinds.contains(k), "{k} missing from {kinds:?}");
    }
    for r in &all {
        assert!(serde_json::from_slice::<Value>(&r.body)
            .unwrap()
            .is_string());
        assert!(!r.headers.contains_key("lc-signature"));
    }
    // Sequence numbers are per batch and unique.
    let seqs: HashSet<u64> = all
        .iter()
        .map(|r| r.payload()["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), all.len());
    // The secret and the header values were sent, and are nowhere in Redis in clear.
    let stored = everything_stored(&f).await;
    for secret in ["s3cret", "Bearer rcv"] {
        assert!(!stored.contains(secret), "{secret:?} is stored in clear");
    }
    assert!(stored.contains("sealed:v1:"), "nothing was sealed");
    f.shutdown().await;
}

/// Every value of every key of the fleet, as one text: whatever its layout, a credential
/// stored in clear shows up in it.
async fn everything_stored(f: &Fleet) -> String {
    let mut con = f.redis.clone();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", f.keys.prefix()))
        .query_async(&mut con)
        .await
        .unwrap();
    let mut out = String::new();
    for k in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        let text: String = match kind.as_str() {
            "string" => redis::cmd("GET")
                .arg(&k)
                .query_async(&mut con)
                .await
                .unwrap_or_default(),
            "hash" => {
                let h: Vec<String> = redis::cmd("HGETALL")
                    .arg(&k)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                h.join(" ")
            }
            "set" => {
                let m: Vec<String> = redis::cmd("SMEMBERS")
                    .arg(&k)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                m.join(" ")
            }
            "zset" => {
                let m: Vec<String> = redis::cmd("ZRANGE")
                    .arg(&k)
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                m.join(" ")
            }
            "stream" => {
                let v: redis::Value = redis::cmd("XRANGE")
                    .arg(&k)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut con)
                    .await
                    .unwrap();
                format!("{v:?}")
            }
            _ => String::new(),
        };
        out.push_str(&text);
        out.push('\n');
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_are_retried_and_logged() {
    let f = Fleet::start(1).await;
    let r = Receiver::start().await;
    // 500, then 429 with Retry-After: 1, then 200; a redelivery later gets 404 (permanent).
    r.plan([
        Reply::Status(500),
        Reply::RetryAfter(1),
        Reply::Status(200),
        Reply::Status(404),
    ]);
    let ids = files(&f, 1).await;
    let batch = create(
        &f,
        &ids,
        json!([{ "webhook_url": r.url(), "webhook_events": ["batch.pending"] }]),
    )
    .await;
    let got = r.wait_for(Duration::from_secs(10), |x| x.len() >= 3).await;
    // 500 → retried after ~first_retry_ms; 429 → retried after Retry-After (1 s).
    assert!(
        got[2].at - got[1].at >= Duration::from_millis(900),
        "{:?}",
        got[2].at - got[1].at
    );
    // The sender records the 200 after the receiver answered it.
    let mut d = deliveries(&f, &batch).await;
    for _ in 0..100 {
        if d.first().is_some_and(|x| x["status"] == "delivered") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        d = deliveries(&f, &batch).await;
    }
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["status"], "delivered", "{d:?}");
    assert_eq!(d[0]["attempts"], 3);
    assert_eq!(d[0]["last_status_code"], 200);
    // Redelivery sends the same event again; this time the receiver says 404: permanent.
    let id = d[0]["id"].as_str().unwrap();
    let redeliver = format!("{BATCH}/{batch}/webhook-deliveries/{id}/redeliver");
    let (s, b) = f.post(&redeliver, &json!({})).await;
    assert_eq!(s, 403, "an operator route, refused to a project key: {b}");
    let (s, b) = f
        .post_as(&f.operator_key().await, &redeliver, &json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    let again = r.wait_for(Duration::from_secs(10), |x| x.len() >= 4).await;
    assert_eq!(
        again[3].payload()["event_id"],
        again[0].payload()["event_id"]
    );
    // The sender records the 404 after the receiver answered it.
    let mut d = deliveries(&f, &batch).await;
    for _ in 0..100 {
        if d[0]["status"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        d = deliveries(&f, &batch).await;
    }
    assert_eq!(d[0]["status"], "failed", "{d:?}");
    assert_eq!(d[0]["last_status_code"], 404);
    assert_eq!(r.received().len(), 4, "a 404 is not retried");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_receiver_hits_the_timeout_and_is_retried() {
    let mut f = Fleet::start(0).await;
    f.stop_dispatcher().await;
    f.dispatcher_settings.webhook.request_timeout_ms = 500;
    f.start_dispatcher().await;
    let r = Receiver::start().await;
    r.plan([Reply::Slow(Duration::from_millis(1500))]);
    let ids = files(&f, 1).await;
    let batch = create(
        &f,
        &ids,
        json!([{ "webhook_url": r.url(), "webhook_events": ["batch.pending"] }]),
    )
    .await;
    // The timed-out request is abandoned by the client (the receiver never finishes it); the
    // retry is what arrives.
    r.wait_for(Duration::from_secs(10), |x| !x.is_empty()).await;
    let mut d = Vec::new();
    for _ in 0..50 {
        d = deliveries(&f, &batch).await;
        if d[0]["status"] == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(d[0]["status"], "delivered", "{d:?}");
    assert_eq!(d[0]["attempts"], 2);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_is_lost_when_the_receiver_and_the_dispatcher_are_down() {
    let mut f = Fleet::start(0).await;
    let port = Fleet::free_port().await;
    let url = format!("http://127.0.0.1:{port}/hook");
    let ids = files(&f, 5).await;
    // The in-process dispatcher is replaced by a process we can SIGKILL.
    f.stop_dispatcher().await;
    let dport = Fleet::free_port().await;
    let mut first = f.spawn_dispatcher_process(dport).await;
    f.base_url = format!("http://127.0.0.1:{dport}");
    assert!(f.wait_ready(&f.base_url.clone()).await);
    let batch = create(
        &f,
        &ids,
        json!([{ "webhook_url": url, "webhook_events": ["parse.success", "batch.success"] }]),
    )
    .await;
    f.start_worker().await;
    f.wait_terminal(&batch, Duration::from_secs(30)).await;
    // The receiver is down: attempts fail and are rescheduled. Then the dispatcher dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill().await;
    let pending = deliveries_direct(&f, &batch).await;
    assert_eq!(pending, 6, "one delivery per subscribed event");
    let r = Receiver::start_on(port).await;
    let dport = Fleet::free_port().await;
    let mut second = f.spawn_dispatcher_process(dport).await;
    // A delivery the first dispatcher had taken when it died is due again only once its lease
    // runs out: wait past that, not a fixed 30 s.
    let lease = docfleet_dispatcher::webhook::delivery::lease(&f.dispatcher_settings.webhook);
    let got = r
        .wait_for(lease + Duration::from_secs(20), |x| {
            x.iter()
                .map(|r| r.payload()["event_id"].as_str().unwrap_or("").to_owned())
                .collect::<HashSet<_>>()
                .len()
                == 6
        })
        .await;
    assert_eq!(
        got.iter()
            .filter(|x| x.event() == "batch.success")
            .map(|x| x.payload()["event_id"].clone())
            .collect::<HashSet<_>>()
            .len(),
        1
    );
    assert_eq!(
        got.iter()
            .filter(|x| x.event() == "parse.success")
            .map(|x| x.payload()["event_id"].clone())
            .collect::<HashSet<_>>()
            .len(),
        5
    );
    second.kill().await;
    f.shutdown().await;
}

/// Deliveries of a batch, counted straight from Redis (the dispatcher may be down).
async fn deliveries_direct(f: &Fleet, batch: &str) -> usize {
    let mut con = f.redis.clone();
    let n: usize = redis::AsyncCommands::zcard(&mut con, f.keys.batch_deliveries(batch))
        .await
        .unwrap();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_workers_finishing_together_send_one_terminal_event() {
    let mut f = Fleet::start(0).await;
    let r = Receiver::start().await;
    let ids = files(&f, 40).await;
    let batch = create(
        &f,
        &ids,
        json!([{ "webhook_url": r.url(), "webhook_events": ["batch.success", "batch.error"] }]),
    )
    .await;
    let mut ws = f.worker_settings.clone();
    ws.concurrency = 1;
    ws.prefetch = 2;
    for _ in 0..20 {
        f.start_worker_with(ws.clone()).await;
    }
    f.wait_terminal(&batch, Duration::from_secs(60)).await;
    r.wait_for(Duration::from_secs(10), |x| !x.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(r.received().len(), 1);
    assert_eq!(r.received()[0].event(), "batch.success");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn internal_targets_are_refused_without_an_allowlist() {
    let mut f = Fleet::start(0).await;
    f.stop_dispatcher().await;
    f.dispatcher_settings.webhook.allow_cidrs.clear();
    f.start_dispatcher().await;
    let r = Receiver::start().await;
    let ids = files(&f, 1).await;
    // By name (resolved at send time) and by literal address: both refused, never contacted.
    let by_name = format!("http://localhost:{}/hook", r.addr.port());
    let batch = create(
        &f,
        &ids,
        json!([
            { "webhook_url": by_name, "webhook_events": ["batch.pending"] },
            { "webhook_url": r.url(), "webhook_events": ["batch.pending"] },
        ]),
    )
    .await;
    let mut d = Vec::new();
    for _ in 0..100 {
        d = deliveries(&f, &batch).await;
        if d.len() == 2 && d.iter().all(|x| x["status"] == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        d.len() == 2 && d.iter().all(|x| x["status"] == "failed"),
        "{d:?}"
    );
    for x in &d {
        assert!(
            x["last_error"]
                .as_str()
                .unwrap()
                .contains("internal address"),
            "{x}"
        );
        assert_eq!(x["attempts"], 1, "a refused target is not retried");
    }
    assert!(r.received().is_empty());
    // Create-time checks: a non-http URL and an unknown event are 422s naming the field.
    for (hooks, field) in [
        (json!([{ "webhook_url": "gopher://x" }]), "webhook_url"),
        (
            json!([{ "webhook_url": "http://x.example", "webhook_events": ["parse.finished"] }]),
            "webhook_events[0]",
        ),
        (
            json!([{ "webhook_url": "http://x.example", "webhook_headers": { "Host": "evil" } }]),
            "Host",
        ),
    ] {
        let (s, b) = f
            .post(BATCH, &json!({ "job_config": { "parameters": {} }, "item_ids": ids, "webhook_configurations": hooks }))
            .await;
        assert_eq!(s, 422, "{b}");
        assert!(b["detail"].as_str().unwrap().contains(field), "{b}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatcher_replicas_deliver_each_event_once() {
    let f = Fleet::start(2).await;
    // A second replica on the same Redis and RabbitMQ: both read the outbox and send.
    let port = Fleet::free_port().await;
    let mut other = f.spawn_dispatcher_process(port).await;
    let r = Receiver::start().await;
    let ids = files(&f, 30).await;
    let batch = create(&f, &ids, json!([{ "webhook_url": r.url() }])).await;
    f.wait_terminal(&batch, Duration::from_secs(60)).await;
    // 1 batch.pending + 1 running + 1 success + 30 × (pending, running, success).
    let got = r.wait_for(Duration::from_secs(20), |x| x.len() >= 93).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = r.received();
    let ids: HashSet<String> = got_now
        .iter()
        .map(|x| x.payload()["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 93, "{:?}", got.len());
    assert_eq!(got_now.len(), 93, "an event was sent twice");
    other.kill().await;
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_outbox_holds_only_events_some_endpoint_wants() {
    let f = Fleet::start(2).await;
    let r = Receiver::start().await;
    let ids = files(&f, 3).await;
    let quiet = create(&f, &ids, json!([])).await;
    let picky = create(
        &f,
        &ids,
        json!([{ "webhook_url": r.url(), "webhook_events": ["parse.success", "batch.success"] }]),
    )
    .await;
    for id in [&quiet, &picky] {
        let done = f.wait_terminal(id, Duration::from_secs(30)).await;
        assert_eq!(done["job"]["status"], "completed", "{done}");
    }
    // Nobody listens to the first batch: nothing is written for it.
    assert_eq!(f.events(&quiet).await, Vec::<(String, String)>::new());
    let mut kinds: Vec<String> = f.events(&picky).await.into_iter().map(|(t, _)| t).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "batch.success",
            "parse.success",
            "parse.success",
            "parse.success"
        ]
    );
    r.wait_for(Duration::from_secs(10), |got| got.len() == 4)
        .await;
    f.shutdown().await;
}

/// Handled events leave the outbox once kept for `webhook.events_kept_secs` (0 here): the
/// stream does not grow with every event ever sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handled_events_are_trimmed_from_the_outbox() {
    let mut f = Fleet::start(1).await;
    f.dispatcher_settings.webhook.events_kept_secs = 0;
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    let r = Receiver::start().await;
    let ids = files(&f, 3).await;
    let batch = create(
        &f,
        &ids,
        json!([{ "webhook_url": r.url(), "webhook_events": ["parse.success", "batch.success"] }]),
    )
    .await;
    f.wait_terminal(&batch, Duration::from_secs(30)).await;
    r.wait_for(Duration::from_secs(10), |got| got.len() == 4)
        .await;
    // A reclaim pass, which trims, runs every 10 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(25);
    let mut left = f.events(&batch).await;
    while !left.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = f.events(&batch).await;
    }
    assert_eq!(left, Vec::<(String, String)>::new());
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_projects_backlog_does_not_hold_back_anothers_deliveries() {
    let mut f = Fleet::start(1).await;
    f.stop_dispatcher().await;
    f.dispatcher_settings.webhook.concurrency = 2;
    f.dispatcher_settings.webhook.per_host_concurrency = 2;
    f.start_dispatcher().await;
    // Project A: 120 item events to a receiver that takes 100 ms each, 2 at a time: a backlog
    // of about 6 s, every delivery of it due before project B's one.
    let slow = Receiver::start().await;
    slow.plan((0..200).map(|_| Reply::Slow(Duration::from_millis(100))));
    let ids = files(&f, 120).await;
    let a = create(
        &f,
        &ids,
        json!([{ "webhook_url": slow.url(), "webhook_events": ["parse.success"] }]),
    )
    .await;
    f.wait_terminal(&a, Duration::from_secs(60)).await;
    slow.wait_for(Duration::from_secs(10), |x| x.len() >= 2)
        .await;
    // Project B: one event.
    let b_key = f.new_key("proj-b").await;
    let b_dir = f.create_dir(&b_key, "hooks-b").await;
    let b_file = f
        .upload(&b_key, &b_dir, "b.txt", b"project b".to_vec())
        .await;
    let other = Receiver::start().await;
    let body = json!({
        "job_config": { "parameters": { "webhook_configurations": [
            { "webhook_url": other.url(), "webhook_events": ["parse.success"] }
        ] } },
        "item_ids": [b_file],
    });
    let (s, created) = f.post_as(&b_key, BATCH, &body).await;
    assert_eq!(s, 200, "{created}");
    other
        .wait_for(Duration::from_secs(30), |x| !x.is_empty())
        .await;
    // Served in turn, B's delivery went out while most of A's backlog still waited; first come
    // first served would have sent all 120 of A's first.
    let a_sent = slow.received().len();
    assert!(
        a_sent < 60,
        "project B's delivery waited behind {a_sent} of project A's 120"
    );
    slow.wait_for(Duration::from_secs(30), |x| x.len() >= 120)
        .await;
    f.shutdown().await;
}
