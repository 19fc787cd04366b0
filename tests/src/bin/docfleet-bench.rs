//! docfleet's benchmark suite: prints a table and one JSON line per figure.
//!
//! `cargo run --release -p docfleet-tests --bin docfleet-bench -- [SCENARIO…] [--items N] [--runs R] [--skip-alone]`
//! (or `deploy/local/bench`). Scenarios: `fleet`, `ceiling`, `python` (Celery, Dramatiq),
//! `many` (20 batches of 1,000 created together), `fair` (another project's 10-file batch
//! behind a running `--items` batch), `status`, `webhooks`, `parse`, `scale`, `create`
//! (create latency alone), `million` (status and memory through one batch of `--million`
//! files, 1,000,000 unless told), `retention` (Redis bytes per item of an `--items` batch,
//! and Redis's memory once retention has forgotten it), `real` (the reference corpus'
//! documents through the fleet, against the engine in-process and `pdftotext`);
//! all of them when none is named. Runs against the local RabbitMQ and Redis under a fresh
//! prefix, with the release binaries next to this one as worker processes. `ceiling`, `fleet`
//! and `python` run in `--runs` rounds, one run of each per round, and their ratios are the
//! medians of the rounds' ratios; the other scenarios make their `--runs` runs in a row.

use std::collections::HashMap;

// The same allocator as the worker binary, so the parse figures are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use docfleet_tests::receiver::Receiver;
use docfleet_tests::Fleet;
use futures_util::StreamExt;
use serde_json::{json, Value};

const BATCH: &str = "/api/v1/beta/batch-processing";

#[derive(Clone)]
struct Args {
    scenarios: Vec<String>,
    items: usize,
    runs: usize,
    /// Files in the `million` scenario's batch.
    million: usize,
    /// `fleet` without its expansion-alone runs, for quicker comparisons of the fleet itself.
    skip_alone: bool,
}

fn args() -> Args {
    let mut a = Args {
        scenarios: Vec::new(),
        items: 100_000,
        runs: 3,
        million: 1_000_000,
        skip_alone: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--items" => a.items = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.items),
            "--runs" => a.runs = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.runs),
            "--million" => a.million = it.next().and_then(|n| n.parse().ok()).unwrap_or(a.million),
            "--skip-alone" => a.skip_alone = true,
            s => a.scenarios.push(s.to_owned()),
        }
    }
    if a.scenarios.is_empty() {
        a.scenarios = [
            "ceiling", "fleet", "many", "python", "fair", "status", "webhooks", "parse", "million",
        ]
        .map(String::from)
        .to_vec();
    }
    a
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// The figures measured so far; `round` tags each JSON line of a round of the paired scenarios.
#[derive(Default)]
struct Report {
    figures: Vec<(String, f64, String)>,
    round: Option<usize>,
}

impl Report {
    /// `<prefix>_cpu_us_per_item_<process>`: the median over runs of each process's share.
    fn add_cpu_split(&mut self, prefix: &str, split: HashMap<String, Vec<f64>>) {
        let mut split: Vec<(String, Vec<f64>)> = split.into_iter().collect();
        split.sort_by(|a, b| a.0.cmp(&b.0));
        for (who, runs) in split {
            self.add_median(
                &format!("{prefix}_cpu_us_per_item_{who}"),
                runs,
                "µs CPU/item",
                json!({}),
            );
        }
    }

    /// A figure from several runs: their median, with every run in the detail.
    fn add_median(&mut self, name: &str, runs: Vec<f64>, unit: &str, mut extra: Value) {
        let value = median(runs.clone());
        extra["runs"] = json!(runs);
        self.add(name, value, unit, extra);
    }

    fn add(&mut self, name: &str, value: f64, unit: &str, extra: Value) {
        let mut line = json!({ "figure": name, "value": (value * 100.0).round() / 100.0, "unit": unit, "detail": extra });
        if let Some(r) = self.round {
            line["round"] = json!(r);
        }
        // Which store the fleets kept their files in (`deploy/local/bench --store`).
        line["store"] = json!(
            if std::env::var("DOCFLEET_TEST_STORE").as_deref() == Ok("s3") {
                "s3"
            } else {
                "local"
            }
        );
        println!("{line}");
        self.figures.push((name.to_owned(), value, unit.to_owned()));
    }
}

/// Uploads `n` tiny text files into a new directory: (directory id, file ids).
async fn upload_many(f: &Fleet, n: usize) -> (String, Vec<String>) {
    upload_many_as(f, &f.api_key, n).await
}

/// [`upload_many`] into a directory of the project of `key`.
async fn upload_many_as(f: &Fleet, key: &str, n: usize) -> (String, Vec<String>) {
    let dir = f.create_dir(key, "bench").await;
    let done = AtomicUsize::new(0);
    let ids: Vec<String> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (f, dir, done) = (&f, &dir, &done);
            async move {
                let id = f
                    .upload(
                        key,
                        dir,
                        &format!("t{i}.txt"),
                        format!("tiny file {i}").into_bytes(),
                    )
                    .await;
                let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                if d % 10_000 == 0 {
                    eprintln!("  uploaded {d}/{n}");
                }
                id
            }
        })
        .buffered(32)
        .collect()
        .await;
    (dir, ids)
}

/// Redis's `used_memory`, once lazy frees have settled (two equal reads 200 ms apart).
async fn redis_used_memory(f: &Fleet) -> f64 {
    let read = || async {
        let info: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut f.redis.clone())
            .await
            .expect("info");
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut last = read().await;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = read().await;
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// What one batch of `--items` tiny files holds in Redis once completed (bytes per item over
/// the uploads' baseline), and what is left once retention (2 s here) has forgotten it.
async fn retention(rep: &mut Report, a: &Args) {
    eprintln!("retention: one batch of {} tiny files", a.items);
    let mut f = Fleet::start(0).await;
    f.dispatcher_settings.reconcile.every_secs = 1;
    f.dispatcher_settings.reconcile.retention_secs = 2;
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    let (dir, _) = upload_many(&f, a.items).await;
    let mut workers = vec![
        f.spawn_worker_process(TINY_ITEMS).await,
        f.spawn_worker_process(TINY_ITEMS).await,
    ];
    let base = redis_used_memory(&f).await;
    // From the directory, so that any size fits one create (item_ids stop at 100,000).
    let (id, _, _) = create_timed(
        &f,
        &json!({ "job_config": { "parameters": {} }, "directory_id": dir, "page_size": 1000 }),
    )
    .await;
    wait_done(&f, &id).await;
    let held = redis_used_memory(&f).await;
    let t = Instant::now();
    while f.get(&format!("{BATCH}/{id}")).await.0 != 404 && t.elapsed() < Duration::from_secs(900) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let forgotten_after = t.elapsed().as_secs_f64();
    let after = redis_used_memory(&f).await;
    let n = a.items as f64;
    rep.add(
        "retention_redis_bytes_per_item",
        (held - base) / n,
        "bytes",
        json!({ "baseline_bytes": base, "completed_bytes": held, "items": a.items }),
    );
    rep.add(
        "retention_redis_bytes_left_per_item",
        (after - base) / n,
        "bytes",
        json!({ "after_bytes": after, "forgotten_after_s": forgotten_after }),
    );
    for w in &mut workers {
        w.terminate().await;
    }
    f.shutdown().await;
}

/// Copies of each reference document in the `real` scenario's batches.
const REAL_COPIES: usize = 4;

/// The reference corpus' text PDFs and every other document the parser reads, each
/// `REAL_COPIES` times (a PDF made distinct by a comment after its end), as (name, bytes,
/// is a PDF with a text layer).
fn real_documents() -> Vec<(String, Vec<u8>, bool)> {
    let root = docfleet_tests::repo_root().join("../shared/corpus");
    let Ok(manifest) = std::fs::read(root.join("manifest.json")) else {
        return Vec::new();
    };
    let manifest: Value = serde_json::from_slice(&manifest).unwrap_or(Value::Null);
    let mut out = Vec::new();
    for f in manifest["files"].as_array().into_iter().flatten() {
        if f["encrypted"] == true || f["password"].is_string() {
            continue;
        }
        let Some(path) = f["path"].as_str() else {
            continue;
        };
        let Ok(bytes) = std::fs::read(root.join(path)) else {
            continue;
        };
        let pdf = f["format"] == "pdf";
        let text_pdf = pdf && f["needs_ocr"] != true;
        let name = path.rsplit('/').next().unwrap_or(path).to_owned();
        for copy in 0..REAL_COPIES {
            let mut b = bytes.clone();
            if pdf {
                b.extend_from_slice(format!("\n% docfleet copy {copy}\n").as_bytes());
            }
            out.push((format!("{copy}-{name}"), b, text_pdf));
        }
    }
    out
}

/// `real`: real documents through the fleet end to end (2 worker processes, production
/// defaults), against docfleet's engine in-process and `pdftotext` with a process per core on
/// the same files; text PDFs with OCR off and on, and every format with OCR on.
async fn real(rep: &mut Report, a: &Args) {
    let docs = real_documents();
    if docs.is_empty() {
        eprintln!("real: ../shared/corpus not found; skipped");
        return;
    }
    let text_pdfs: Vec<&(String, Vec<u8>, bool)> = docs.iter().filter(|d| d.2).collect();
    eprintln!(
        "real: {} text-PDF copies, {} documents in all, {} rounds",
        text_pdfs.len(),
        docs.len(),
        a.runs
    );
    // Pages per text PDF, as the engine reads them, to turn documents into pages.
    let off = docfleet_worker::parse::ParseRequest {
        disable_ocr: true,
        ..Default::default()
    };
    let pages: usize = text_pdfs
        .iter()
        .filter_map(|d| docfleet_worker::parse::parse(&d.1, &d.0, &off).ok())
        .map(|p| p.pages.len())
        .sum();
    let f = Fleet::start(0).await;
    let pdf_dir = f.create_dir(&f.api_key, "real-pdf").await;
    for d in &text_pdfs {
        f.upload(&f.api_key, &pdf_dir, &d.0, d.1.clone()).await;
    }
    let all_dir = f.create_dir(&f.api_key, "real-all").await;
    for d in &docs {
        f.upload(&f.api_key, &all_dir, &d.0, d.1.clone()).await;
    }
    let mut workers = vec![
        f.spawn_worker_process(&[]).await,
        f.spawn_worker_process(&[]).await,
    ];
    let wpids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    let worker_cpu = || -> f64 { wpids.iter().map(|p| tree_cpu_secs(*p)).sum() };
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let n = text_pdfs.len() as f64;
    let (mut fleet_off, mut fleet_on, mut fleet_all) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_off, mut engine, mut engine_cpu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut theirs, mut theirs_cpu) = (Vec::new(), Vec::new());
    for round in 0..a.runs {
        for (params, dir, out, count) in [
            (json!({ "disable_ocr": true }), &pdf_dir, &mut fleet_off, n),
            (json!({}), &pdf_dir, &mut fleet_on, n),
            (json!({}), &all_dir, &mut fleet_all, docs.len() as f64),
        ] {
            let cpu = worker_cpu();
            let t = Instant::now();
            let (id, _, _) = create_timed(
                &f,
                &json!({ "job_config": { "parameters": params }, "directory_id": dir }),
            )
            .await;
            let done = wait_done(&f, &id).await;
            let secs = t.elapsed().as_secs_f64();
            out.push(count / secs);
            if params["disable_ocr"] == true {
                cpu_off.push((worker_cpu() - cpu) * 1000.0 / pages as f64);
            }
            eprintln!(
                "  round {round}: {params} over {count} documents: {:.1} docs/s, {} failed",
                count / secs,
                done["job"]["failed_items"]
            );
        }
        // The engine in this process, one document after another (it spreads a document's
        // pages over the cores itself).
        let cpu = cpu_secs(std::process::id());
        let t = Instant::now();
        for d in &text_pdfs {
            let _ = docfleet_worker::parse::parse(&d.1, &d.0, &off);
        }
        engine.push(n / t.elapsed().as_secs_f64());
        engine_cpu.push((cpu_secs(std::process::id()) - cpu) * 1000.0 / pages as f64);
        // pdftotext, a process per core, over the same files.
        let folder = std::env::temp_dir().join(format!("docfleet-real-{}", std::process::id()));
        std::fs::create_dir_all(&folder).ok();
        let paths: Vec<std::path::PathBuf> = text_pdfs
            .iter()
            .map(|d| {
                let p = folder.join(&d.0);
                std::fs::write(&p, &d.1).ok();
                p
            })
            .collect();
        let cpu = children_cpu_secs();
        let t = Instant::now();
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..cores {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = paths.get(i) else { break };
                    let _ = std::process::Command::new("pdftotext")
                        .arg("-layout")
                        .arg(p)
                        .arg("-")
                        .output();
                });
            }
        });
        theirs.push(n / t.elapsed().as_secs_f64());
        theirs_cpu.push((children_cpu_secs() - cpu) * 1000.0 / pages as f64);
        let _ = std::fs::remove_dir_all(&folder);
    }
    let detail = json!({ "documents": n, "pages": pages, "copies": REAL_COPIES });
    rep.add_median(
        "real_fleet_docs_per_s_ocr_off",
        fleet_off.clone(),
        "docs/s",
        detail.clone(),
    );
    rep.add_median(
        "real_fleet_docs_per_s_ocr_on",
        fleet_on.clone(),
        "docs/s",
        detail.clone(),
    );
    rep.add_median(
        "real_fleet_docs_per_s_every_format",
        fleet_all,
        "docs/s",
        json!({ "documents": docs.len() }),
    );
    rep.add_median(
        "real_engine_docs_per_s",
        engine.clone(),
        "docs/s",
        detail.clone(),
    );
    rep.add_median(
        "real_pdftotext_docs_per_s",
        theirs.clone(),
        "docs/s",
        json!({ "processes": cores }),
    );
    rep.add_median(
        "real_fleet_cpu_ms_per_page_ocr_off",
        cpu_off,
        "ms",
        json!({ "workers": "incl. parser children" }),
    );
    rep.add_median("real_engine_cpu_ms_per_page", engine_cpu, "ms", json!({}));
    rep.add_median(
        "real_pdftotext_cpu_ms_per_page",
        theirs_cpu,
        "ms",
        json!({}),
    );
    let ratio = |x: &[f64], y: &[f64]| median(x.to_vec()) / median(y.to_vec()).max(1e-9);
    rep.add(
        "real_fleet_ocr_off_over_engine",
        ratio(&fleet_off, &engine),
        "ratio",
        json!({ "target": 0.85 }),
    );
    rep.add(
        "real_fleet_ocr_off_over_pdftotext",
        ratio(&fleet_off, &theirs),
        "ratio",
        json!({ "target": 1.0 }),
    );
    rep.add(
        "real_fleet_ocr_off_over_ocr_on",
        ratio(&fleet_off, &fleet_on),
        "ratio",
        json!({ "target": "at most 1.2" }),
    );
    for w in &mut workers {
        w.terminate().await;
    }
    f.shutdown().await;
}

async fn wait_done(f: &Fleet, id: &str) -> Value {
    loop {
        let (_, b) = f.get(&format!("{BATCH}/{id}")).await;
        if matches!(
            b["job"]["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            return b;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Worker settings for items of a few bytes of text, whose parse takes microseconds: an item's
/// life is its waits on Redis and the broker, so many more are kept in flight than the
/// defaults' twice the cores (BENCHMARKS.md, "Tuning for tiny items"). Every tiny-file
/// scenario's workers run with them, as an operator of such a workload would. The deadline
/// is for items that take milliseconds: with a document's, 256 prefetched deliveries could
/// wait past the broker's consumer timeout, and the worker refuses the settings.
const TINY_ITEMS: &[(&str, &str)] = &[
    ("DOCFLEET__CONCURRENCY", "64"),
    ("DOCFLEET__PREFETCH", "256"),
    ("DOCFLEET__ITEM_DEADLINE_SECS", "5"),
];

/// 20 batches of 1,000 tiny files each, in directories of their own, created together
/// through the API, through 2 worker processes: items/s from the first create to the last
/// batch completed.
async fn many(rep: &mut Report, a: &Args) {
    const BATCHES: usize = 20;
    const EACH: usize = 1000;
    eprintln!("many: {BATCHES} batches of {EACH} tiny files created together, 2 worker processes");
    let f = Fleet::start(0).await;
    let mut dirs = Vec::new();
    for _ in 0..BATCHES {
        dirs.push(upload_many(&f, EACH).await.0);
    }
    let mut workers = vec![
        f.spawn_worker_process(TINY_ITEMS).await,
        f.spawn_worker_process(TINY_ITEMS).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut rates = Vec::new();
    for run in 0..a.runs {
        let t0 = Instant::now();
        let created = futures_util::future::join_all(dirs.iter().map(|d| {
            let body = json!({ "job_config": { "parameters": {} }, "directory_id": d });
            let f = &f;
            async move {
                let (s, b) = f.post(BATCH, &body).await;
                assert_eq!(s, 200, "{b}");
                b["id"].as_str().unwrap_or_default().to_owned()
            }
        }))
        .await;
        let mut slowest = 0.0f64;
        for id in &created {
            let st = wait_done(&f, id).await;
            assert_eq!(st["job"]["processed_items"], EACH, "{st}");
            slowest = slowest.max(t0.elapsed().as_secs_f64());
        }
        let rate = (BATCHES * EACH) as f64 / slowest;
        eprintln!("  run {run}: {rate:.0} items/s, the last batch done after {slowest:.2} s");
        rates.push(rate);
    }
    rep.add_median(
        "many_items_per_s",
        rates,
        "items/s",
        json!({ "batches": BATCHES, "items_each": EACH }),
    );
    for w in &mut workers {
        w.terminate().await;
    }
    f.shutdown().await;
}

/// A 10-file batch of one project created while another project's `--items`-file batch runs,
/// through 2 worker processes: create → completed of the small batch, 5 times a run, spread
/// over the big batch's life.
async fn fair(rep: &mut Report, a: &Args) {
    eprintln!(
        "fair: 10-file batches of project B behind a {}-file batch of project A",
        a.items
    );
    let f = Fleet::start(0).await;
    let (big_dir, _) = upload_many(&f, a.items).await;
    let other = f.new_key("bench-b").await;
    let (small_dir, _) = upload_many_as(&f, &other, 10).await;
    let mut workers = vec![
        f.spawn_worker_process(TINY_ITEMS).await,
        f.spawn_worker_process(TINY_ITEMS).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut waits = Vec::new();
    for _ in 0..a.runs {
        let (s, b) = f
            .post(
                BATCH,
                &json!({ "job_config": { "parameters": {} }, "directory_id": big_dir, "page_size": 1000 }),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let big = b["id"].as_str().unwrap_or_default().to_owned();
        for k in 1..=5 {
            // Spread over the big batch's life: at each sixth of it.
            loop {
                let (_, st) = f.get(&format!("{BATCH}/{big}")).await;
                let done = st["job"]["processed_items"].as_u64().unwrap_or(0) as usize;
                if done * 6 >= a.items * k || st["job"]["status"] == "completed" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let t0 = Instant::now();
            let (s, b) = f
                .post_as(
                    &other,
                    BATCH,
                    &json!({ "job_config": { "parameters": {} }, "directory_id": small_dir }),
                )
                .await;
            assert_eq!(s, 200, "{b}");
            let small = b["id"].as_str().unwrap_or_default().to_owned();
            loop {
                let (_, st) = f.get_as(&other, &format!("{BATCH}/{small}")).await;
                if st["job"]["status"] == "completed" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let ms = t0.elapsed().as_secs_f64() * 1000.0;
            eprintln!("  small batch {k}: completed {ms:.0} ms after create");
            waits.push(ms);
        }
        let st = wait_done(&f, &big).await;
        assert_eq!(st["job"]["processed_items"], a.items, "{st}");
    }
    let n = waits.len();
    rep.add(
        "fair_small_batch_create_to_completed_p50_ms",
        pct(&mut waits, 0.5),
        "ms",
        json!({ "n": n, "big_batch_items": a.items }),
    );
    rep.add(
        "fair_small_batch_create_to_completed_max_ms",
        pct(&mut waits, 1.0),
        "ms",
        json!({ "n": n }),
    );
    for w in &mut workers {
        w.terminate().await;
    }
    f.shutdown().await;
}

async fn fleet(rep: &mut Report, a: &Args) {
    eprintln!(
        "fleet: {} tiny text files, 2 worker processes, {} runs",
        a.items, a.runs
    );
    let mut f = Fleet::start(0).await;
    // The dispatcher settings the fleet's rate depends on, read as the dispatcher binary reads
    // them, for trying other values.
    let setting = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let (limit, per_consumer) = (
        setting("DOCFLEET__EXPANSION_QUEUE_LIMIT"),
        setting("DOCFLEET__EXPANSION_QUEUE_PER_CONSUMER"),
    );
    // The work queues' type, as `broker.queue_type` says (the workers are told it too).
    let queue_type = match std::env::var("DOCFLEET__BROKER__QUEUE_TYPE").as_deref() {
        Ok("classic") => Some(docfleet_shared::settings::QueueType::Classic),
        Ok("quorum") => Some(docfleet_shared::settings::QueueType::Quorum),
        _ => None,
    };
    if limit.is_some() || per_consumer.is_some() || queue_type.is_some() {
        let d = &mut f.dispatcher_settings;
        d.expansion_queue_limit = limit.unwrap_or(d.expansion_queue_limit);
        d.expansion_queue_per_consumer = per_consumer.unwrap_or(d.expansion_queue_per_consumer);
        f.stop_dispatcher().await;
        if let Some(t) = queue_type {
            // A queue keeps the type it was declared with.
            let conn = lapin::Connection::connect(&docfleet_tests::amqp_url(), Default::default())
                .await
                .expect("amqp");
            let ch = conn.create_channel().await.expect("channel");
            docfleet_shared::topology::Topology::new(
                f.dispatcher_settings.broker.queue_prefix.clone(),
            )
            .delete(&ch)
            .await
            .expect("delete the queues");
            f.dispatcher_settings.broker.queue_type = t;
        }
        f.start_dispatcher().await;
    }
    let (dir, ids) = upload_many(&f, a.items).await;
    // Expansion alone, as the ceiling's publish rate is measured: no consumer, and an empty
    // queue at each start (the messages are purged after each run, and those batches are
    // left unfinished).
    let alone = if a.skip_alone {
        vec![]
    } else {
        vec![
            (
                "item_ids",
                json!({ "job_config": { "parameters": {} }, "item_ids": ids }),
            ),
            (
                "directory",
                json!({ "job_config": { "parameters": {} }, "directory_id": dir, "page_size": 1000 }),
            ),
        ]
    };
    for (source, body) in alone {
        let (mut rates, mut creates) = (Vec::new(), Vec::new());
        for _ in 0..a.runs {
            let (server_ms, rate) = expand_timed(&f, &body, a.items).await;
            eprintln!("  expansion alone, {source}: {rate:.0} msgs/s, create {server_ms:.1} ms in the dispatcher");
            rates.push(rate);
            creates.push(server_ms);
            purge_items(&f).await;
        }
        rep.add_median(
            &format!("expansion_alone_msgs_per_s_{source}"),
            rates,
            "msgs/s",
            json!({ "create_server_ms": creates }),
        );
    }
    let mut workers = vec![
        f.spawn_worker_process(TINY_ITEMS).await,
        f.spawn_worker_process(TINY_ITEMS).await,
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut rates, mut creates, mut expansions) = (Vec::new(), Vec::new(), Vec::new());
    let mut split: HashMap<String, Vec<f64>> = HashMap::new();
    let mut fleet_written = Vec::new();
    let (mut servers, mut bodies) = (Vec::new(), Vec::new());
    let worker_pids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    for run in 0..a.runs {
        let body = json!({ "job_config": { "parameters": {} }, "item_ids": ids });
        let cpu = CpuSplit::start("dispatcher", &worker_pids);
        let written = broker_written();
        let t0 = Instant::now();
        let (id, server_ms, body_ms) = create_timed(&f, &body).await;
        let create_ms = t0.elapsed().as_secs_f64() * 1000.0;
        servers.push(server_ms);
        bodies.push(body_ms);
        let mut expanded_at = None;
        loop {
            if expanded_at.is_none() && f.batch_field(&id, "expanded").await.as_deref() == Some("1")
            {
                expanded_at = Some(t0.elapsed().as_secs_f64());
            }
            let (_, st) = f.get(&format!("{BATCH}/{id}")).await;
            if st["job"]["status"] == "completed" {
                assert_eq!(st["job"]["processed_items"], a.items);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = t0.elapsed().as_secs_f64();
        cpu.add_to(a.items, &mut split);
        fleet_written.push((broker_written() - written) / a.items as f64);
        let rate = a.items as f64 / secs;
        let exp = expanded_at.unwrap_or(secs);
        eprintln!(
            "  run {run}: {rate:.0} items/s, create {create_ms:.1} ms, expanded in {exp:.2} s"
        );
        rates.push(rate);
        creates.push(create_ms);
        expansions.push(a.items as f64 / exp);
    }
    rep.add_median("fleet_items_per_s", rates, "items/s", json!({}));
    rep.add_median(
        "create_call_ms_item_ids",
        creates,
        "ms",
        json!({ "items": a.items }),
    );
    rep.add_median(
        "create_server_ms_item_ids",
        servers,
        "ms",
        json!({ "items": a.items, "from": "Server-Timing app", "body_received_ms": bodies }),
    );
    rep.add_median(
        "expansion_msgs_per_s",
        expansions,
        "msgs/s",
        json!({ "note": "while the workers consume" }),
    );
    rep.add_cpu_split("fleet", split);
    rep.add_median(
        "fleet_broker_bytes_written_per_item",
        fleet_written,
        "bytes",
        json!({}),
    );
    for w in &mut workers {
        w.terminate().await;
    }
    f.shutdown().await;
}

/// Create latency alone: `--runs` creates of one `--items`-id batch, each expanded into an
/// empty queue before the next, with no workers, and the expansion rate of each (the `fleet` scenario measures both
/// among its runs).
async fn create(rep: &mut Report, a: &Args) {
    eprintln!("create: {} item_ids, {} runs", a.items, a.runs);
    let f = Fleet::start(0).await;
    let (_, ids) = upload_many(&f, a.items).await;
    let body = json!({ "job_config": { "parameters": {} }, "item_ids": ids });
    let (mut servers, mut rates) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        let (server_ms, rate) = expand_timed(&f, &body, a.items).await;
        eprintln!(
            "  run {run}: create {server_ms:.1} ms in the dispatcher, expanded at {rate:.0} msgs/s"
        );
        servers.push(server_ms);
        rates.push(rate);
        purge_items(&f).await;
    }
    rep.add_median(
        "create_alone_expansion_msgs_per_s",
        rates,
        "msgs/s",
        json!({ "items": a.items }),
    );
    rep.add_median(
        "create_alone_server_ms_item_ids",
        servers,
        "ms",
        json!({ "items": a.items, "from": "Server-Timing" }),
    );
    f.shutdown().await;
}

/// Creates a batch of `items` and waits until it is expanded: (the create's server time in
/// ms, messages published per second from the create call on).
async fn expand_timed(f: &Fleet, body: &Value, items: usize) -> (f64, f64) {
    let t0 = Instant::now();
    let (id, server_ms, _) = create_timed(f, body).await;
    while f.batch_field(&id, "expanded").await.as_deref() != Some("1") {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (server_ms, items as f64 / t0.elapsed().as_secs_f64())
}

/// Empties the fleet's work queues.
async fn purge_items(f: &Fleet) {
    let conn = lapin::Connection::connect(
        &docfleet_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    let topology =
        docfleet_shared::topology::Topology::new(f.dispatcher_settings.broker.queue_prefix.clone());
    for queue in topology.work_queues() {
        ch.queue_purge(queue.as_str().into(), Default::default())
            .await
            .expect("purge");
    }
    let _ = conn.close(200, "".into()).await;
}

/// The dispatcher's own time for a response, from its `Server-Timing` header, ms.
fn server_timing(res: &reqwest::Response) -> f64 {
    timing_metric(res, "app")
}

/// One metric of a `Server-Timing` header (`name;dur=<ms>, …`), ms; NaN if absent.
fn timing_metric(res: &reqwest::Response, name: &str) -> f64 {
    res.headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|m| m.trim().strip_prefix(name)?.strip_prefix(";dur="))
        })
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(f64::NAN)
}

/// One `get_status`: (its latency as the client sees it, the dispatcher's own time from
/// `Server-Timing`), ms.
async fn timed_status(f: &Fleet, batch_id: &str) -> (f64, f64) {
    let (ms, server_ms, _) = poll(&f.http, &f.base_url, &f.api_key, batch_id).await;
    (ms, server_ms)
}

/// One bare `HGETALL` of a batch's record straight from Redis, ms: the floor under any status
/// read, since the dispatcher answers from that record. Sampled beside each `get_status`, it
/// tells a slow read that docfleet causes from one that the machine causes (a Redis or a
/// client process waiting for a CPU).
async fn timed_redis_read(f: &Fleet, batch_id: &str) -> f64 {
    let mut con = f.redis.clone();
    let t = Instant::now();
    let record: HashMap<String, String> =
        redis::AsyncCommands::hgetall(&mut con, f.keys.batch(batch_id))
            .await
            .expect("hgetall");
    assert!(!record.is_empty(), "batch {batch_id} has no record");
    t.elapsed().as_secs_f64() * 1000.0
}

/// Creates a batch: (its id, the dispatcher's own time and the time it took to receive the
/// body, from `Server-Timing`, ms).
async fn create_timed(f: &Fleet, body: &Value) -> (String, f64, f64) {
    let res = f
        .req(reqwest::Method::POST, BATCH)
        .json(body)
        .send()
        .await
        .expect("create");
    let (server_ms, body_ms) = (server_timing(&res), timing_metric(&res, "body"));
    let status = res.status();
    let b: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 200, "{b}");
    (
        b["id"].as_str().unwrap_or_default().to_owned(),
        server_ms,
        body_ms,
    )
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_secs(pid: u32) -> f64 {
    // Fields after the command name: utime is the 12th, stime the 13th (0-based 11, 12).
    stat_secs(pid, &[11, 12])
}

/// CPU seconds (user + system) of this process's children that were waited for.
fn children_cpu_secs() -> f64 {
    // cutime and cstime follow utime and stime.
    stat_secs(std::process::id(), &[13, 14])
}

/// CPU seconds of process `pid` and its children, those waited for and those still running
/// (a worker's parser children live across documents): its tools are in their own counts.
fn tree_cpu_secs(pid: u32) -> f64 {
    let all = [11, 12, 13, 14];
    let parent = pid.to_string();
    let live: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|child| stat_fields(*child).get(1) == Some(&parent))
        .map(|child| stat_secs(child, &all))
        .sum();
    stat_secs(pid, &all) + live
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces): index 0
/// is field 3, `state`.
fn stat_fields(pid: u32) -> Vec<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// The sum of these clock-tick fields of `/proc/<pid>/stat` (counted after the command name),
/// in seconds.
fn stat_secs(pid: u32, fields: &[usize]) -> f64 {
    let all = stat_fields(pid);
    let ticks = |i: &usize| {
        all.get(*i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    fields.iter().map(ticks).sum::<f64>() / 100.0
}

/// How the kernel schedules a process (policy and nice, from `/proc/<pid>/stat`): a loaded
/// Redis that waits for a CPU answers late whatever its clients do, so the status figures
/// name the policy they were taken under.
fn scheduling(pid: u32) -> String {
    let all = stat_fields(pid);
    // Fields 19 (nice) and 41 (policy).
    let policy = match all.get(38).map(String::as_str) {
        Some("0") => "SCHED_OTHER",
        Some("1") => "SCHED_FIFO",
        Some("2") => "SCHED_RR",
        Some("3") => "SCHED_BATCH",
        Some("5") => "SCHED_IDLE",
        _ => "unknown",
    };
    format!("{policy}, nice {}", all.get(16).map_or("?", String::as_str))
}

/// Bytes the broker process has written so far (`wchar` of `/proc/<pid>/io`): whether a
/// message reached the broker's disk or was acknowledged before it had to.
fn broker_written() -> f64 {
    pid_of("beam.smp")
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/io")).ok())
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("wchar:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(f64::NAN)
}

/// The first process whose command name is `comm`, from /proc.
fn pid_of(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        (name.trim() == comm).then_some(pid)
    })
}

/// CPU used by each process of the fleet over a run: where an item's cost goes.
struct CpuSplit(Vec<(String, u32, f64)>);

impl CpuSplit {
    /// `me` names this process: the in-process dispatcher, or the ceiling's client.
    fn start(me: &str, workers: &[u32]) -> CpuSplit {
        let mut pids = vec![(me.to_owned(), std::process::id())];
        pids.extend(workers.iter().map(|p| ("workers".to_owned(), *p)));
        pids.extend(pid_of("redis-server").map(|p| ("redis".to_owned(), p)));
        pids.extend(pid_of("beam.smp").map(|p| ("rabbitmq".to_owned(), p)));
        CpuSplit(pids.into_iter().map(|(n, p)| (n, p, cpu_secs(p))).collect())
    }

    /// Appends this run's [`CpuSplit::per_item`] to `split`.
    fn add_to(&self, items: usize, split: &mut HashMap<String, Vec<f64>>) {
        for (who, us) in self.per_item(items) {
            split.entry(who).or_default().push(us);
        }
    }

    /// µs of CPU per item by process kind since `start`.
    fn per_item(&self, items: usize) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64)> = Vec::new();
        for (name, pid, before) in &self.0 {
            let us = (cpu_secs(*pid) - before) * 1e6 / items as f64;
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, v)) => *v += us,
                None => out.push((name.clone(), us)),
            }
        }
        out
    }
}

async fn scale(rep: &mut Report, a: &Args) {
    let n = a.items.min(20_000);
    eprintln!("scale: {n} tiny files with 1, 2 and 4 worker processes");
    let f = Fleet::start(0).await;
    let (_, ids) = upload_many(&f, n).await;
    for workers in [1usize, 2, 4] {
        let mut w = Vec::new();
        for _ in 0..workers {
            w.push(f.spawn_worker_process(TINY_ITEMS).await);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before: f64 = w.iter().filter_map(|p| p.child.id()).map(cpu_secs).sum();
        let t0 = Instant::now();
        let id = {
            let (_, b) = f
                .post(
                    BATCH,
                    &json!({ "job_config": { "parameters": {} }, "item_ids": ids }),
                )
                .await;
            b["id"].as_str().unwrap_or_default().to_owned()
        };
        wait_done(&f, &id).await;
        let secs = t0.elapsed().as_secs_f64();
        let cpu: f64 = w
            .iter()
            .filter_map(|p| p.child.id())
            .map(cpu_secs)
            .sum::<f64>()
            - before;
        rep.add(
            &format!("scale_{workers}_workers_items_per_s"),
            n as f64 / secs,
            "items/s",
            json!({ "seconds": secs }),
        );
        rep.add(
            &format!("scale_{workers}_workers_cpu_us_per_item"),
            cpu * 1e6 / n as f64,
            "µs CPU/item",
            json!({ "worker_cpu_s": cpu }),
        );
        for p in &mut w {
            p.terminate().await;
        }
    }
    f.shutdown().await;
}

/// Resident and peak resident memory of a process, in MB, from /proc.
fn rss_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What the million scenario's probe polls, and how.
struct PollPlan {
    base: String,
    api_key: String,
    redis_url: String,
    /// The 1k batch's record, read bare beside each poll.
    small_record: String,
    small: String,
    big: String,
    n: usize,
    /// The dispatcher whose RSS is taken at each tenth.
    dpid: u32,
    t0: Instant,
}

/// What the probe gathered, ms (RSS in MB).
struct Polls {
    small: Vec<f64>,
    big: Vec<f64>,
    server_small: Vec<f64>,
    bare_small: Vec<f64>,
    rss_by_tenth: Vec<f64>,
}

/// Polls until the big batch is done, on a thread of its own with a one-thread runtime, its
/// own HTTP client and Redis connection.
fn poll_until_done(plan: PollPlan) -> std::thread::JoinHandle<Polls> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("probe runtime");
        rt.block_on(poll_loop(plan))
    })
}

/// One `get_status` through `base`: (ms, the dispatcher's own ms, the body).
async fn poll(http: &reqwest::Client, base: &str, key: &str, id: &str) -> (f64, f64, Value) {
    let t = Instant::now();
    let res = http
        .get(format!("{base}{BATCH}/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("get_status");
    assert_eq!(res.status(), 200);
    let server_ms = server_timing(&res);
    let body = res.bytes().await.expect("body");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    (
        ms,
        server_ms,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn poll_loop(plan: PollPlan) -> Polls {
    let http = reqwest::Client::new();
    let mut redis = redis::Client::open(plan.redis_url.as_str())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut out = Polls {
        small: Vec::new(),
        big: Vec::new(),
        server_small: Vec::new(),
        bare_small: Vec::new(),
        rss_by_tenth: Vec::new(),
    };
    let key = plan.api_key.as_str();
    let mut last_print = Instant::now();
    loop {
        let (ms, server_ms, _) = poll(&http, &plan.base, key, &plan.small).await;
        out.small.push(ms);
        out.server_small.push(server_ms);
        let (ms, _, st) = poll(&http, &plan.base, key, &plan.big).await;
        out.big.push(ms);
        let t = Instant::now();
        let record: HashMap<String, String> =
            redis::AsyncCommands::hgetall(&mut redis, &plan.small_record)
                .await
                .expect("hgetall");
        out.bare_small.push(t.elapsed().as_secs_f64() * 1000.0);
        assert!(!record.is_empty(), "the 1k batch has no record");
        let done = st["job"]["processed_items"].as_u64().unwrap_or(0) as usize;
        while out.rss_by_tenth.len() < 10 && done * 10 >= plan.n * (out.rss_by_tenth.len() + 1) {
            out.rss_by_tenth.push(rss_mb(plan.dpid).0);
        }
        if last_print.elapsed() > Duration::from_secs(30) {
            last_print = Instant::now();
            eprintln!(
                "  {done}/{} after {:.0} s; dispatcher {:.1} MB",
                plan.n,
                plan.t0.elapsed().as_secs_f64(),
                rss_mb(plan.dpid).0
            );
        }
        if matches!(
            st["job"]["status"].as_str(),
            Some("completed" | "failed" | "cancelled")
        ) {
            assert_eq!(st["job"]["processed_items"], plan.n, "{st}");
            return out;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A batch of `--million` files from one directory (a million by default) through
/// a dispatcher process and 2 worker processes: status latency for it and for a 1,000-item
/// batch while it runs, and the memory of every process along the way.
///
/// A poll's latency here is mostly the machine's: on 2 vCPUs that the fleet keeps busy, the
/// dispatcher and the probe each wait for a CPU when they wake.
async fn million(rep: &mut Report, a: &Args) {
    let n = a.million;
    eprintln!("million: a {n}-file directory batch; status latency and memory while it runs");
    let mut f = Fleet::start(0).await;
    let (dir, _) = upload_many(&f, n).await;
    let (_, small_ids) = upload_many(&f, 1000).await;
    // The dispatcher as a process of its own, so its memory is its own.
    f.stop_dispatcher().await;
    let port = Fleet::free_port().await;
    let mut dispatcher = f.spawn_dispatcher_process(port).await;
    f.base_url = format!("http://127.0.0.1:{port}");
    assert!(
        f.wait_ready(&f.base_url.clone()).await,
        "dispatcher not ready"
    );
    let Some(dpid) = dispatcher.child.id() else {
        panic!("dispatcher exited")
    };
    let mut workers = vec![
        f.spawn_worker_process(TINY_ITEMS).await,
        f.spawn_worker_process(TINY_ITEMS).await,
    ];
    let wpids: Vec<u32> = workers.iter().filter_map(|w| w.child.id()).collect();
    // Idle: started and consuming an empty queue.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_worker = wpids.iter().map(|p| rss_mb(*p).0).fold(0.0, f64::max);
    let (small, _, _) = create_timed(
        &f,
        &json!({ "job_config": { "parameters": {} }, "item_ids": small_ids }),
    )
    .await;
    wait_done(&f, &small).await;
    let t0 = Instant::now();
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "directory_id": dir, "page_size": 1000 }),
        )
        .await;
    let create_ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(s, 200, "{b}");
    let big = b["id"].as_str().unwrap_or_default().to_owned();
    let plan = PollPlan {
        base: f.base_url.clone(),
        api_key: f.api_key.clone(),
        redis_url: f.dispatcher_settings.redis.url.clone(),
        small_record: f.keys.batch(&small),
        small: small.clone(),
        big: big.clone(),
        n,
        dpid,
        t0,
    };
    let Polls {
        small: mut lat_small,
        big: mut lat_big,
        mut server_small,
        mut bare_small,
        rss_by_tenth,
    } = tokio::task::spawn_blocking(move || poll_until_done(plan).join())
        .await
        .expect("probe thread")
        .expect("probe");
    let secs = t0.elapsed().as_secs_f64();
    rep.add(
        "million_items_per_s",
        n as f64 / secs,
        "items/s",
        json!({ "items": n, "seconds": secs, "create_ms": create_ms }),
    );
    let conditions = json!({
        "dispatcher": scheduling(dpid),
        "redis": pid_of("redis-server").map(scheduling),
    });
    for (name, lat) in [("1k", &mut lat_small), ("big", &mut lat_big)] {
        let samples = lat.len();
        rep.add(
            &format!("million_status_p50_ms_{name}"),
            pct(lat, 0.5),
            "ms",
            json!({ "n": samples }),
        );
        rep.add(
            &format!("million_status_p99_ms_{name}"),
            pct(lat, 0.99),
            "ms",
            json!({ "n": samples, "scheduling": conditions }),
        );
    }
    let samples = server_small.len();
    rep.add(
        "million_status_p99_ms_1k_server_side",
        pct(&mut server_small, 0.99),
        "ms",
        json!({ "n": samples }),
    );
    let samples = bare_small.len();
    rep.add(
        "million_redis_hgetall_p99_ms_1k",
        pct(&mut bare_small, 0.99),
        "ms",
        json!({ "n": samples, "note": "the batch record read straight from Redis: the floor" }),
    );
    let (_, dispatcher_peak) = rss_mb(dpid);
    rep.add(
        "million_dispatcher_peak_rss_mb",
        dispatcher_peak,
        "MB",
        json!({ "rss_at_each_tenth_mb": rss_by_tenth }),
    );
    for (i, pid) in wpids.iter().enumerate() {
        rep.add(
            &format!("million_worker{}_peak_rss_mb", i + 1),
            rss_mb(*pid).1,
            "MB",
            json!({}),
        );
    }
    rep.add("idle_worker_rss_mb", idle_worker, "MB", json!({}));
    for w in &mut workers {
        w.terminate().await;
    }
    dispatcher.terminate().await;
    f.shutdown().await;
}

/// Celery and Dramatiq on the same broker and Redis (`tests/bench/run_python_queue.py`, in the
/// `.venv-bench` that `deploy/local/bench` creates), each a median of `runs`.
fn python_queues(rep: &mut Report, a: &Args) {
    let root = docfleet_tests::repo_root();
    let python = root.join(".venv-bench/bin/python");
    let n = a.items;
    for system in ["celery", "dramatiq"] {
        eprintln!(
            "{system}: {n} tasks, RabbitMQ broker, one Redis INCR each, worker attached first"
        );
        let mut runs = Vec::new();
        for _ in 0..a.runs {
            let out = std::process::Command::new(&python)
                .arg(root.join("tests/bench/run_python_queue.py"))
                .arg(system)
                .arg(n.to_string())
                .output();
            let Ok(out) = out else {
                eprintln!("  {} missing: run deploy/local/bench", python.display());
                return;
            };
            let line = String::from_utf8_lossy(&out.stdout);
            if let Some(v) = serde_json::from_str::<Value>(line.trim())
                .ok()
                .and_then(|v| v["items_per_s"].as_f64())
            {
                eprintln!("  {v:.0} items/s");
                runs.push(v);
            }
        }
        if !runs.is_empty() {
            rep.add_median(
                &format!("{system}_items_per_s"),
                runs,
                "items/s",
                json!({ "items": n }),
            );
        }
    }
}

/// The ceiling's message: the size of the fleet's `ItemMessage`.
const CEILING_BODY: &[u8] = br#"{"v":1,"batch_id":"bjb-00000000-0000-0000-0000-000000000000","item_id":"dfl-00000000-0000-0000-0000-000000000000"}"#;

/// Publishes `n` persistent messages to `q` and waits for every confirm.
async fn ceiling_publish(ch: &lapin::Channel, q: &str, n: usize) {
    use lapin::options::BasicPublishOptions;
    // Windows of 1,000 confirms, each window's publishes queued together (awaiting each
    // publish in turn waits for lapin's I/O thread once per message; the fleet does not).
    let mut left = n;
    while left > 0 {
        let n = left.min(1000);
        left -= n;
        let sent = futures_util::future::join_all((0..n).map(|_| {
            ch.basic_publish(
                "".into(),
                q.into(),
                BasicPublishOptions::default(),
                CEILING_BODY,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
        }))
        .await;
        for c in sent {
            c.expect("publish").await.expect("confirm");
        }
    }
}

/// Consumes `n` messages from `q` on a channel of its own: one script run per message
/// (pipelined: whatever has arrived, up to 250, on one round trip), then one `multiple` ack
/// for the lot. The cheapest way to do the required work; the fleet groups its updates and
/// acks too.
async fn ceiling_consume(
    conn: &lapin::Connection,
    q: &str,
    n: usize,
    redis: &mut redis::aio::ConnectionManager,
    key: &str,
) {
    use lapin::options::*;
    let cch = conn.create_channel().await.expect("channel");
    cch.basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = cch
        .basic_consume(
            q.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .expect("consume");
    let script = redis::Script::new("return redis.call('HINCRBY', KEYS[1], 'n', 1)");
    let invocation = script.key(key);
    // A pipelined EVALSHA does not load its script; load it once up front.
    script.load_async(redis).await.expect("script load");
    let mut done = 0;
    while done < n {
        let first = consumer.next().await.expect("stream").expect("delivery");
        let mut group = vec![first];
        while group.len() < 250.min(n - done) {
            match futures_util::FutureExt::now_or_never(consumer.next()) {
                Some(Some(d)) => group.push(d.expect("delivery")),
                _ => break,
            }
        }
        let mut pipe = redis::pipe();
        for _ in &group {
            pipe.invoke_script(&invocation);
        }
        let _: Vec<i64> = pipe.query_async(redis).await.expect("evalsha");
        if let Some(last) = group.last() {
            last.ack(BasicAckOptions { multiple: true })
                .await
                .expect("ack");
        }
        done += group.len();
    }
    cch.close(200, "".into()).await.ok();
}

/// The raw broker + Redis ceiling, two ways: publish everything, then consume it (each
/// side's rate alone), and both at once on separate connections, as the fleet runs. The
/// higher end-to-end rate is the ceiling the fleet is held to.
async fn ceiling(rep: &mut Report, a: &Args) {
    use lapin::options::*;
    eprintln!(
        "ceiling: raw lapin publish with confirms, consume with grouped manual acks + one EVALSHA per message; sequential, then concurrent"
    );
    let prefix = format!("ceil-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let connect = || async {
        lapin::Connection::connect(
            &docfleet_tests::amqp_url(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .expect("amqp")
    };
    let (conn, consumer_conn) = (connect().await, connect().await);
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let q = format!("{prefix}.q");
    // The storage version the fleet's queues have, so both sides pay the broker alike.
    let mut version = lapin::types::FieldTable::default();
    version.insert(
        "x-queue-version".into(),
        lapin::types::AMQPValue::LongInt(docfleet_shared::topology::QUEUE_VERSION),
    );
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        version,
    )
    .await
    .expect("declare");
    let mut redis = docfleet_shared::services::connect_redis(&docfleet_tests::redis_url())
        .await
        .expect("redis");
    let key = format!("{prefix}:counter");
    let (mut pubs, mut cons, mut seq, mut both) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut both_written = Vec::new();
    let (mut split, mut split_both): (HashMap<String, Vec<f64>>, HashMap<String, Vec<f64>>) =
        Default::default();
    for _ in 0..a.runs {
        let cpu = CpuSplit::start("client", &[]);
        let t0 = Instant::now();
        ceiling_publish(&ch, &q, a.items).await;
        let p = a.items as f64 / t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        ceiling_consume(&consumer_conn, &q, a.items, &mut redis, &key).await;
        let c = a.items as f64 / t0.elapsed().as_secs_f64();
        cpu.add_to(a.items, &mut split);
        let s = 1.0 / (1.0 / p + 1.0 / c);
        pubs.push(p);
        cons.push(c);
        seq.push(s);

        let cpu = CpuSplit::start("client", &[]);
        let written = broker_written();
        let t0 = Instant::now();
        let mut redis2 = redis.clone();
        tokio::join!(
            ceiling_publish(&ch, &q, a.items),
            ceiling_consume(&consumer_conn, &q, a.items, &mut redis2, &key),
        );
        let b = a.items as f64 / t0.elapsed().as_secs_f64();
        cpu.add_to(a.items, &mut split_both);
        both.push(b);
        both_written.push((broker_written() - written) / a.items as f64);
        eprintln!("  publish {p:.0}/s, consume {c:.0}/s, in turn {s:.0}/s; at once {b:.0}/s");
    }
    rep.add_median("ceiling_publish_per_s", pubs, "msgs/s", json!({}));
    rep.add_median("ceiling_consume_per_s", cons, "msgs/s", json!({}));
    let (seq_median, both_median) = (median(seq.clone()), median(both.clone()));
    rep.add_median(
        "ceiling_sequential_items_per_s",
        seq,
        "items/s",
        json!({ "note": "publish, then consume" }),
    );
    rep.add_median(
        "ceiling_concurrent_items_per_s",
        both,
        "items/s",
        json!({ "note": "publish and consume at once, separate connections" }),
    );
    rep.add(
        "ceiling_items_per_s",
        seq_median.max(both_median),
        "items/s",
        json!({ "note": "the higher of sequential and concurrent" }),
    );
    rep.add_cpu_split("ceiling", split);
    rep.add_cpu_split("ceiling_concurrent", split_both);
    rep.add_median(
        "ceiling_concurrent_broker_bytes_written_per_item",
        both_written,
        "bytes",
        json!({}),
    );
    ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
        .await
        .ok();
    let _: Result<(), _> = redis::AsyncCommands::del(&mut redis, &key).await;
    conn.close(200, "".into()).await.ok();
    consumer_conn.close(200, "".into()).await.ok();
}

async fn status(rep: &mut Report, a: &Args) {
    eprintln!(
        "status: get_status latency for a 1,000-item batch while {} items run, {} runs",
        a.items.min(20_000),
        a.runs
    );
    let f = Fleet::start(0).await;
    let (_, small_ids) = upload_many(&f, 1000).await;
    let (small, _, _) = create_timed(
        &f,
        &json!({ "job_config": { "parameters": {} }, "item_ids": small_ids }),
    )
    .await;
    let (_, load) = upload_many(&f, a.items.min(20_000)).await;
    let mut w = vec![
        f.spawn_worker_process(TINY_ITEMS).await,
        f.spawn_worker_process(TINY_ITEMS).await,
    ];
    // Per figure, one value per run (its p50 or p99 over that run's samples), and the samples
    // each run took.
    let mut figures: Vec<(&str, f64, Vec<f64>)> = [
        ("status_p50_ms", 0.5),
        ("status_p99_ms", 0.99),
        ("status_p99_ms_while_expanding", 0.99),
        ("status_p99_ms_after_expansion", 0.99),
        ("status_p99_ms_server_side", 0.99),
        ("status_redis_hgetall_p99_ms", 0.99),
    ]
    .into_iter()
    .map(|(name, p)| (name, p, Vec::new()))
    .collect();
    let mut samples = Vec::new();
    for run in 0..a.runs {
        // A new batch over the same files each run: the load is the same work every time.
        let (_, b) = f
            .post(
                BATCH,
                &json!({ "job_config": { "parameters": {} }, "item_ids": load }),
            )
            .await;
        let big = b["id"].as_str().unwrap_or_default().to_owned();
        let mut lat = Vec::new();
        // The same samples split by phase: while the dispatcher expands the big batch (it
        // publishes on the runtime that serves the reads), then while only the workers run.
        let (mut expanding, mut running) = (Vec::new(), Vec::new());
        // The dispatcher's own share of each read (`Server-Timing`): the rest is the client's
        // and the network's, and waiting for a CPU on this busy machine.
        let mut server = Vec::new();
        let mut bare = Vec::new();
        let mut expanded = false;
        // When each read was taken, to tell where in the run the slowest ones fall.
        let mut at = Vec::new();
        let t0 = Instant::now();
        // Only while the load runs (expansion included): samples taken after it ends would
        // flatter the p99.
        let mut checked = Instant::now();
        while t0.elapsed() < Duration::from_secs(60) {
            let (ms, server_ms) = timed_status(&f, &small).await;
            lat.push(ms);
            at.push(t0.elapsed().as_secs_f64());
            server.push(server_ms);
            bare.push(timed_redis_read(&f, &small).await);
            if expanded {
                &mut running
            } else {
                &mut expanding
            }
            .push(ms);
            if checked.elapsed() > Duration::from_millis(200) {
                checked = Instant::now();
                expanded = f.batch_field(&big, "expanded").await.as_deref() == Some("1");
                if f.batch_field(&big, "status").await.as_deref() == Some("completed") {
                    break;
                }
            }
        }
        wait_done(&f, &big).await;
        let mut slowest: Vec<(f64, f64, f64)> = lat
            .iter()
            .zip(&at)
            .zip(&bare)
            .map(|((ms, t), b)| (*ms, *t, *b))
            .collect();
        slowest.sort_by(|a, b| b.0.total_cmp(&a.0));
        eprintln!(
            "  run {run}: slowest reads (ms at s, bare HGETALL ms): {}",
            slowest
                .iter()
                .take(12)
                .map(|(ms, t, b)| format!("{ms:.1}@{t:.2}/{b:.1}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        samples.push(lat.len());
        let phases = [lat.clone(), lat, expanding, running, server, bare];
        for ((name, p, values), mut phase) in figures.iter_mut().zip(phases) {
            // The load may finish expanding after sampling ends: no value rather than 0 ms.
            if phase.is_empty() {
                eprintln!("  run {run}: {name}: no samples");
                continue;
            }
            values.push(pct(&mut phase, *p));
        }
        eprintln!(
            "  run {run}: p50 {:.2} ms, p99 {:.2} ms over {} reads",
            figures[0].2.last().unwrap_or(&f64::NAN),
            figures[1].2.last().unwrap_or(&f64::NAN),
            samples.last().unwrap_or(&0)
        );
    }
    let redis_scheduling = pid_of("redis-server").map(scheduling);
    for (name, _, values) in figures {
        if !values.is_empty() {
            rep.add_median(
                name,
                values,
                "ms",
                json!({ "reads_per_run": samples, "redis_scheduling": redis_scheduling }),
            );
        }
    }
    for x in &mut w {
        x.terminate().await;
    }
    f.shutdown().await;
}

async fn webhooks(rep: &mut Report, a: &Args) {
    let n = a.items.min(5_000);
    eprintln!("webhooks: every event of a {n}-item batch to a local receiver");
    let f = Fleet::start(0).await;
    let r = Receiver::start().await;
    let (_, ids) = upload_many(&f, n).await;
    let mut w = vec![
        f.spawn_worker_process(TINY_ITEMS).await,
        f.spawn_worker_process(TINY_ITEMS).await,
    ];
    let (_, b) = f
        .post(BATCH, &json!({ "job_config": { "parameters": {} }, "item_ids": ids, "webhook_configurations": [{ "webhook_url": r.url(), "webhook_output_format": "json" }] }))
        .await;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    wait_done(&f, &id).await;
    let expected = 3 * n + 3;
    let got = r
        .wait_for(Duration::from_secs(300), |x| x.len() >= expected)
        .await;
    let first = got.iter().map(|x| x.at).min();
    let last = got.iter().map(|x| x.at).max();
    let secs = match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64().max(1e-3),
        _ => 1.0,
    };
    // Transition → POST: the event's own timestamp against the receiver's clock (same machine).
    let base_wall = chrono::Utc::now();
    let base_inst = Instant::now();
    let mut lat: Vec<f64> = got
        .iter()
        .filter_map(|x| {
            let at =
                chrono::DateTime::parse_from_rfc3339(x.payload()["timestamp"].as_str()?).ok()?;
            let recv = base_wall - chrono::Duration::from_std(base_inst - x.at).ok()?;
            Some((recv - at.with_timezone(&chrono::Utc)).num_microseconds()? as f64 / 1000.0)
        })
        .collect();
    rep.add(
        "webhook_deliveries_per_s",
        got.len() as f64 / secs,
        "POST/s",
        json!({ "deliveries": got.len() }),
    );
    rep.add(
        "webhook_latency_p50_ms",
        pct(&mut lat, 0.5),
        "ms",
        json!({}),
    );
    rep.add(
        "webhook_latency_p99_ms",
        pct(&mut lat, 0.99),
        "ms",
        json!({}),
    );
    for x in &mut w {
        x.terminate().await;
    }
    f.shutdown().await;
}

fn parse(rep: &mut Report) {
    let corpus = docfleet_tests::repo_root().join("../shared/corpus/pdf");
    let Ok(dir) = std::fs::read_dir(&corpus) else {
        eprintln!("parse: {} not found; skipped", corpus.display());
        return;
    };
    let files: Vec<std::path::PathBuf> = dir.flatten().map(|e| e.path()).collect();
    // Without pdftotext every file would count as unreadable and its side would read 0 pages/s.
    let have_pdftotext = std::process::Command::new("pdftotext")
        .arg("-v")
        .output()
        .is_ok();
    if !have_pdftotext {
        eprintln!(
            "parse: pdftotext not found (apt-get install poppler-utils); only docfleet measured"
        );
    }
    eprintln!(
        "parse: {} PDFs, docfleet's parser vs pdftotext, median of 3",
        files.len()
    );
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut pages_ours = 0usize;
    let mut pages_theirs = 0usize;
    // Pages per CPU second too: our parser spreads a document's pages over the cores (rayon),
    // pdftotext uses one, so wall-clock pages/s alone flatters us on a multi-core machine.
    let (mut ours_cpu, mut theirs_cpu) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let (mut p, mut t) = (0usize, 0.0f64);
        let cpu = cpu_secs(std::process::id());
        for f in &files {
            let bytes = std::fs::read(f).unwrap_or_default();
            let s = Instant::now();
            // Text layers only, as pdftotext reads them: OCR is measured separately.
            let req = docfleet_worker::parse::ParseRequest {
                disable_ocr: true,
                ..Default::default()
            };
            if let Ok(doc) = docfleet_worker::parse::parse(&bytes, "x.pdf", &req) {
                p += doc.pages.len();
            }
            t += s.elapsed().as_secs_f64();
        }
        pages_ours = p;
        ours.push(p as f64 / t);
        ours_cpu.push(p as f64 / (cpu_secs(std::process::id()) - cpu).max(0.01));
        if !have_pdftotext {
            continue;
        }
        let (mut p, mut t) = (0usize, 0.0f64);
        let cpu = children_cpu_secs();
        for f in &files {
            let s = Instant::now();
            let out = std::process::Command::new("pdftotext")
                .arg("-layout")
                .arg(f)
                .arg("-")
                .output();
            t += s.elapsed().as_secs_f64();
            if let Ok(o) = out {
                if o.status.success() {
                    p += String::from_utf8_lossy(&o.stdout).matches('\u{c}').count();
                }
            }
        }
        pages_theirs = p;
        theirs.push(p as f64 / t);
        theirs_cpu.push(p as f64 / (children_cpu_secs() - cpu).max(0.01));
    }
    rep.add_median(
        "parse_pages_per_s_docfleet",
        ours,
        "pages/s",
        json!({ "pages": pages_ours }),
    );
    rep.add_median(
        "parse_pages_per_cpu_s_docfleet",
        ours_cpu,
        "pages/CPU s",
        json!({}),
    );
    if !have_pdftotext {
        return;
    }
    rep.add_median(
        "parse_pages_per_s_pdftotext",
        theirs,
        "pages/s",
        json!({ "pages": pages_theirs }),
    );
    rep.add_median(
        "parse_pages_per_cpu_s_pdftotext",
        theirs_cpu,
        "pages/CPU s",
        json!({}),
    );
}

#[tokio::main]
async fn main() {
    let a = args();
    let mut rep = Report::default();
    // The throughput scenarios run in rounds, one run of each per round, and every ratio
    // between them is the median of the rounds' own ratios. Run in turn (all the ceiling's
    // runs, then all the fleet's, then Celery's and Dramatiq's), each side met a different
    // machine: in one invocation the ceiling measured 16,614 items/s at 05:06 and 20,729 at
    // 05:39, on a machine that drifts within minutes.
    let paired: Vec<String> = a
        .scenarios
        .iter()
        .filter(|s| PAIRED.contains(&s.as_str()))
        .cloned()
        .collect();
    let mut rounds: Vec<HashMap<String, f64>> = Vec::new();
    if !paired.is_empty() {
        let once = Args {
            runs: 1,
            ..a.clone()
        };
        let mut order: Vec<(String, String)> = Vec::new();
        for r in 0..a.runs {
            eprintln!("round {} of {}: {}", r + 1, a.runs, paired.join(", "));
            let mut round = Report {
                round: Some(r),
                ..Report::default()
            };
            for s in &paired {
                scenario(s, &mut round, &once).await;
            }
            for (name, _, unit) in &round.figures {
                if !order.iter().any(|(n, _)| n == name) {
                    order.push((name.clone(), unit.clone()));
                }
            }
            rounds.push(
                round
                    .figures
                    .into_iter()
                    .map(|(name, value, _)| (name, value))
                    .collect(),
            );
        }
        for (name, unit) in order {
            let values = rounds
                .iter()
                .filter_map(|r| r.get(&name).copied())
                .collect();
            rep.add_median(&name, values, &unit, json!({ "of": "rounds" }));
        }
    }
    for s in a.scenarios.iter().filter(|s| !PAIRED.contains(&s.as_str())) {
        scenario(s, &mut rep, &a).await;
    }
    let figures: HashMap<String, f64> = rep
        .figures
        .iter()
        .map(|(n, v, _)| (n.clone(), *v))
        .collect();
    for (ours, theirs, name) in [
        (
            "fleet_items_per_s",
            "ceiling_items_per_s",
            "fleet_over_ceiling",
        ),
        (
            "fleet_items_per_s",
            "celery_items_per_s",
            "fleet_over_celery",
        ),
        (
            "fleet_items_per_s",
            "dramatiq_items_per_s",
            "fleet_over_dramatiq",
        ),
        ("many_items_per_s", "fleet_items_per_s", "many_over_fleet"),
        ("many_items_per_s", "celery_items_per_s", "many_over_celery"),
        (
            "parse_pages_per_s_docfleet",
            "parse_pages_per_s_pdftotext",
            "parse_over_pdftotext",
        ),
        (
            "parse_pages_per_cpu_s_docfleet",
            "parse_pages_per_cpu_s_pdftotext",
            "parse_over_pdftotext_per_cpu_s",
        ),
    ] {
        // A side that measured nothing (pdftotext missing, a Python queue that never ran)
        // gives no ratio rather than an infinite one.
        let ratio = |f: &HashMap<String, f64>| match (f.get(ours), f.get(theirs)) {
            (Some(o), Some(t)) if *t > 0.0 => Some(o / t),
            _ => None,
        };
        let per_round: Vec<f64> = rounds.iter().filter_map(ratio).collect();
        if !per_round.is_empty() {
            let of_medians = ratio(&figures);
            rep.add_median(
                name,
                per_round,
                "ratio",
                json!({ "of": "rounds", "ratio_of_medians": of_medians }),
            );
        } else if let Some(r) = ratio(&figures) {
            rep.add(name, r, "ratio", json!({}));
        }
    }
    println!("\n| figure | value | unit |\n|---|---|---|");
    for (n, v, u) in &rep.figures {
        println!("| {n} | {v:.2} | {u} |");
    }
}

/// The scenarios measured in rounds (see `main`).
const PAIRED: [&str; 4] = ["ceiling", "fleet", "many", "python"];

async fn scenario(name: &str, rep: &mut Report, a: &Args) {
    match name {
        "fleet" => fleet(rep, a).await,
        "ceiling" => ceiling(rep, a).await,
        "status" => status(rep, a).await,
        "webhooks" => webhooks(rep, a).await,
        "parse" => parse(rep),
        "scale" => scale(rep, a).await,
        "create" => create(rep, a).await,
        "million" => million(rep, a).await,
        "many" => many(rep, a).await,
        "fair" => fair(rep, a).await,
        "retention" => retention(rep, a).await,
        "real" => real(rep, a).await,
        "python" => python_queues(rep, a),
        other => eprintln!("unknown scenario {other}"),
    }
}
