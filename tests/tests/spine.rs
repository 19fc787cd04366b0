//! The spine end to end: HTTP API → RabbitMQ → workers → Redis, on the real services.

use std::time::Duration;

use docfleet_shared::settings::StoreBackend;
use docfleet_tests::{sample, Fleet};
use serde_json::{json, Value};

const BATCH: &str = "/api/v1/beta/batch-processing";

fn parse_config() -> Value {
    json!({ "job_name": "parse_raw_file_job", "parameters": { "type": "parse", "lang": "en" } })
}

fn classify_config() -> Value {
    json!({
        "rules": [
            { "type": "invoice", "description": "A bill requesting payment, with line items, amounts, VAT and a total due" },
            { "type": "resume", "description": "A CV describing a person's work experience, education and skills" },
            { "type": "meeting_notes", "description": "Minutes of a meeting: attendees, decisions and action items" }
        ],
        "mode": "FAST",
        // The SDK types classify configs as whole job records; these must be accepted and ignored.
        "id": "ignored", "project_id": "ignored", "user_id": "ignored", "status": "PENDING"
    })
}

/// The sample invoice, alone in a new directory: its file id.
async fn upload_invoice(f: &Fleet, dir_name: &str) -> String {
    let dir = f.create_dir(&f.api_key, dir_name).await;
    let name = "invoice-1042.pdf";
    f.upload(&f.api_key, &dir, name, sample(name)).await
}

async fn upload_samples(f: &Fleet, dir: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for name in [
        "invoice-1042.pdf",
        "jane-doe-cv.pdf",
        "meeting-minutes.txt",
        "release-notes.md",
        "parts-price-list.csv",
    ] {
        ids.push(f.upload(&f.api_key, dir, name, sample(name)).await);
    }
    ids
}

/// A one-page PDF with no text layer whose page an image covers: a scan, which OCR reads.
fn scanned_page_pdf() -> Vec<u8> {
    let pixels = vec![0xEEu8; 100 * 100];
    let draw = b"q 200 0 0 200 0 0 cm /Im0 Do Q";
    let objects: Vec<Vec<u8>> = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Resources << /XObject << /Im0 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
        [&b"<< /Type /XObject /Subtype /Image /Width 100 /Height 100 /ColorSpace /DeviceGray /BitsPerComponent 8 /Length 10000 >>\nstream\n"[..], &pixels, b"\nendstream"].concat(),
        [format!("<< /Length {} >>\nstream\n", draw.len()).as_bytes(), draw, b"\nendstream"].concat(),
    ];
    docfleet_worker::parse::pdf_of(&objects)
}

fn assert_exact_accounting(status: &Value, items: &[Value]) {
    let job = &status["job"];
    let total = job["total_items"].as_u64().unwrap();
    assert_eq!(
        items.len() as u64,
        total,
        "one item record per counted item"
    );
    let terminal = items
        .iter()
        .filter(|i| {
            matches!(
                i["status"].as_str(),
                Some("completed" | "failed" | "skipped" | "cancelled")
            )
        })
        .count() as u64;
    assert_eq!(
        job["processed_items"].as_u64().unwrap(),
        terminal,
        "{status}"
    );
    let failed = items.iter().filter(|i| i["status"] == "failed").count() as u64;
    assert_eq!(job["failed_items"].as_u64().unwrap(), failed);
    if job["status"] == "completed" {
        assert_eq!(terminal, total);
        assert_eq!(status["progress_percentage"].as_f64().unwrap(), 100.0);
        assert!(job["completed_at"].is_string() && job["started_at"].is_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parse_batch_over_a_directory_with_two_workers() {
    let f = Fleet::start(2).await;
    let dir = f.create_dir(&f.api_key, "samples").await;
    upload_samples(&f, &dir).await;
    // Files that cannot be parsed fail their own item, with the detected type; the batch goes on.
    f.upload(
        &f.api_key,
        &dir,
        "broken.pdf",
        b"%PDF-1.7\n garbage".to_vec(),
    )
    .await;
    f.upload(
        &f.api_key,
        &dir,
        "photo.txt",
        b"\x89PNG\r\n\x1a\n0000".to_vec(),
    )
    .await;
    f.upload(&f.api_key, &dir, "scan.pdf", scanned_page_pdf())
        .await;
    let (s, b) = f
        .post(
            BATCH,
            &f.watched(
                json!({ "job_config": parse_config(), "directory_id": dir, "page_size": 2 }),
            ),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["status"], "pending");
    assert_eq!(b["job_type"], "parse");
    let id = b["id"].as_str().unwrap().to_owned();
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    assert_eq!(status["job"]["total_items"], 8);
    assert_eq!(status["job"]["failed_items"], 2);
    // Pages read by the six that completed (two, then one each), and the scan's one by OCR.
    assert_eq!(status["job"]["pages_processed"], 7, "{status}");
    assert_eq!(status["job"]["pages_ocr"], 1, "{status}");
    let items = f.items(&id).await;
    assert_exact_accounting(&status, &items);
    for i in &items {
        let error = i["error_message"].as_str().unwrap_or("");
        match i["item_name"].as_str().unwrap() {
            "broken.pdf" => assert!(i["status"] == "failed" && error.contains("pdf"), "{i}"),
            "photo.txt" => assert!(i["status"] == "failed" && error.contains("png"), "{i}"),
            _ => assert_eq!(i["status"], "completed", "{i}"),
        }
    }

    // The PDF's text came out page by page.
    let invoice = items
        .iter()
        .find(|i| i["item_name"] == "invoice-1042.pdf")
        .unwrap();
    let job = invoice["job_id"].as_str().unwrap();
    let (s, r) = f
        .get(&format!(
            "/api/v2/parse/{job}?expand=text&expand=markdown&expand=items&expand=metadata"
        ))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["job"]["status"], "COMPLETED");
    let pages = r["text"]["pages"].as_array().unwrap();
    assert_eq!(pages.len(), 2);
    assert_eq!(pages[0]["page_number"], 1);
    assert!(
        pages[0]["text"].as_str().unwrap().contains("INVOICE 1042"),
        "{r}"
    );
    assert!(
        pages[1]["text"]
            .as_str()
            .unwrap()
            .contains("Total due: 126.00"),
        "{r}"
    );
    assert_eq!(r["markdown"]["pages"][1]["success"], true);
    assert_eq!(r["metadata"]["page_count"], 2);
    // Without expand, only the job.
    let (_, bare) = f.get(&format!("/api/v2/parse/{job}")).await;
    assert!(bare.get("text").is_none());

    // Processing results name the run.
    let item_id = invoice["item_id"].as_str().unwrap();
    let (s, pr) = f
        .get(&format!(
            "{BATCH}/items/{item_id}/processing-results?job_type=parse"
        ))
        .await;
    assert_eq!(s, 200, "{pr}");
    assert_eq!(pr["processing_results"][0]["result_id"], job);

    // Exactly one terminal batch event and one success event per item.
    let events = f.events(&id).await;
    let terminal = events.iter().filter(|(t, _)| t == "batch.success").count();
    assert_eq!(terminal, 1, "{events:?}");
    assert_eq!(
        events.iter().filter(|(t, _)| t == "parse.success").count(),
        6
    );
    assert_eq!(events.iter().filter(|(t, _)| t == "parse.error").count(), 2);
    // Failed files are recorded and their messages acked, not dead-lettered; nothing is left
    // in the work queue.
    assert_eq!(f.queue_depths().await, (0, 0));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn classify_batch_over_item_ids_with_two_workers() {
    let f = Fleet::start(2).await;
    let dir = f.create_dir(&f.api_key, "to-classify").await;
    let ids = upload_samples(&f, &dir).await;
    // Duplicates in the input count once.
    let mut item_ids = ids[..3].to_vec();
    item_ids.push(ids[0].clone());
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": classify_config(), "item_ids": item_ids }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["total_items"], 3);
    let id = b["id"].as_str().unwrap().to_owned();
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    let items = f.items(&id).await;
    assert_exact_accounting(&status, &items);
    let expect = [
        ("invoice-1042.pdf", "invoice"),
        ("jane-doe-cv.pdf", "resume"),
        ("meeting-minutes.txt", "meeting_notes"),
    ];
    for (name, want) in expect {
        let item = items.iter().find(|i| i["item_name"] == name).unwrap();
        let (s, r) = f
            .get(&format!(
                "/api/v2/classify/{}",
                item["job_id"].as_str().unwrap()
            ))
            .await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["status"], "COMPLETED");
        assert_eq!(r["result"]["type"], want, "{name}: {r}");
        let c = r["result"]["confidence"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&c));
        assert!(
            r["result"]["reasoning"].as_str().unwrap().contains(want),
            "{r}"
        );
        assert_eq!(r["configuration"]["mode"], "FAST");
        let reasoning = r["result"]["reasoning"].as_str().unwrap();
        if std::env::var_os("DOCFLEET_TEST_MODEL_DIR").is_some() {
            assert!(reasoning.contains("semantic similarity"), "{r}");
        } else {
            assert!(reasoning.contains("Lexical evidence only"), "{r}");
        }
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_delivered_twice_counts_once() {
    let mut f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "dup").await;
    let ids = upload_samples(&f, &dir).await;
    let (_, b) = f
        .post(
            BATCH,
            &f.watched(json!({ "job_config": parse_config(), "item_ids": ids })),
        )
        .await;
    let id = b["id"].as_str().unwrap().to_owned();
    // Wait until every message is published, then publish each one again, by hand onto a
    // work queue as a platform team would.
    f.wait_status(&id, "dispatched").await;
    let conn = lapin::Connection::connect(&docfleet_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let shared =
        docfleet_shared::topology::Topology::new(f.dispatcher_settings.broker.queue_prefix.clone())
            .priority_queue(docfleet_shared::model::Priority::High);
    for i in &ids {
        ch.basic_publish(
            "".into(),
            shared.as_str().into(),
            Default::default(),
            &docfleet_shared::wire::ItemMessage::new(&id, i).encode(),
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    conn.close(200, "".into()).await.unwrap();
    assert_eq!(f.queue_depths().await.0, 10);
    f.start_worker().await;
    f.start_worker().await;
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["processed_items"], 5, "{status}");
    assert_eq!(status["job"]["total_items"], 5);
    // Let the duplicates drain, then check nothing was counted again.
    for _ in 0..100 {
        if f.queue_depths().await == (0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(f.queue_depths().await, (0, 0));
    let (_, again) = f.get(&format!("{BATCH}/{id}")).await;
    assert_eq!(again["job"]["processed_items"], 5);
    let events = f.events(&id).await;
    assert_eq!(
        events.iter().filter(|(t, _)| t == "parse.success").count(),
        5
    );
    assert_eq!(
        events.iter().filter(|(t, _)| t == "batch.success").count(),
        1
    );
    f.shutdown().await;
}

/// The worker's ledger sends claims and outcomes of one batch as one script run. Within a
/// group, a repeated item is claimed again (a second attempt) and recorded once; an unknown
/// one is missing; a page registered again changes nothing; the items, counters and events
/// the API shows end as if each item ran alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_claims_and_outcomes_count_each_item_once() {
    use docfleet_shared::scripts::{Claim, Finished, Outcome, OutcomeFields, Recorded, Scripts};

    let f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "groups").await;
    let ids = f.upload_texts(&dir, "g", 3).await;
    let (a, b, c) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    let (s, body) = f
        .post(
            BATCH,
            &f.watched(
                json!({ "job_config": parse_config(), "item_ids": [a, "dfl-unknown", b, c] }),
            ),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    f.wait_status(&id, "dispatched").await;
    let mut con = f.redis.clone();
    let listed = |status: &'static str| {
        let path = format!("{BATCH}/{id}/items?status={status}");
        let f = &f;
        async move {
            let (s, page) = f.get(&path).await;
            assert_eq!(s, 200, "{page}");
            page["total_size"].as_u64().unwrap()
        }
    };
    // The unknown id was registered and failed at once.
    assert_eq!(listed("pending").await, 3);
    assert_eq!(listed("failed").await, 1);

    let scripts = Scripts::new(f.keys.clone());
    let claims = scripts
        .claim(&mut con, &id, &[a, a, b, c, "dfl-never-registered"])
        .await
        .unwrap();
    let attempts: Vec<Option<u32>> = claims
        .iter()
        .map(|c| match c {
            Claim::Run(r) => Some(r.attempt),
            _ => None,
        })
        .collect();
    assert_eq!(
        attempts,
        [Some(1), Some(2), Some(1), Some(1), None],
        "{claims:?}"
    );
    assert_eq!(claims[4], Claim::Missing);
    // A claim answers the item's order, which its job id derives from: one per item, in the
    // order the batch listed them (the unknown id took the second).
    let orders: Vec<i64> = claims[..4]
        .iter()
        .map(|c| match c {
            Claim::Run(r) => r.order,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(orders[0], orders[1]);
    assert!(orders[1] < orders[2] && orders[2] < orders[3], "{orders:?}");
    assert_eq!(listed("pending").await, 0);
    assert_eq!(listed("processing").await, 3);

    // A page registered again (an expansion resumed after a crash) registers nothing new and
    // leaves the claimed items as they are.
    let again: Vec<_> = [(a, orders[0]), (b, orders[2])]
        .into_iter()
        .map(|(item, order)| docfleet_shared::scripts::NewItem {
            item_id: item.to_owned(),
            order,
            refusal: None,
        })
        .collect();
    assert_eq!(
        scripts.register(&mut con, &id, &again).await.unwrap(),
        Some(0)
    );
    assert_eq!(listed("pending").await, 0);
    assert_eq!(listed("processing").await, 3);

    let done = |item_id, outcome, error_message| Finished {
        item_id,
        outcome,
        fields: OutcomeFields {
            error_message,
            result: "{}",
            pages: "3",
            ..OutcomeFields::default()
        },
    };
    let recorded = scripts
        .finish(
            &mut con,
            &id,
            &[
                done(a, Outcome::Completed, ""),
                done(a, Outcome::Completed, ""),
                done(b, Outcome::Failed, "broken"),
                done(c, Outcome::Skipped, ""),
            ],
        )
        .await
        .unwrap();
    assert_eq!(
        recorded,
        [
            Recorded::Recorded,
            Recorded::Duplicate,
            Recorded::Recorded,
            Recorded::Recorded
        ]
    );
    for (status, n) in [
        ("processing", 0),
        ("completed", 1),
        ("failed", 2),
        ("skipped", 1),
    ] {
        assert_eq!(listed(status).await, n, "{status}");
    }
    // A file's processing results are its completed items: a's run, once; none of b or c.
    for (item, n) in [(a, 1), (b, 0), (c, 0)] {
        let (s, pr) = f
            .get(&format!("{BATCH}/items/{item}/processing-results"))
            .await;
        assert_eq!(s, 200, "{pr}");
        let runs = pr["processing_results"].as_array().unwrap();
        assert_eq!(runs.len(), n, "{item}: {pr}");
        if n == 1 {
            assert_eq!(runs[0]["item_id"], item);
            assert_eq!(runs[0]["output_metadata"]["pages"], 3, "{pr}");
            assert_eq!(runs[0]["job_type"], "parse");
            assert!(runs[0]["processed_at"].is_string(), "{pr}");
        }
    }
    // The last outcome of the group finished the batch, once. A status read may answer from
    // a snapshot up to `status.max_staleness_ms` old, as it would after a worker's write.
    f.wait_status(&id, "completed").await;
    let (_, st) = f.get(&format!("{BATCH}/{id}")).await;
    let job = &st["job"];
    assert_eq!(job["status"], "completed", "{st}");
    assert_eq!(
        (
            &job["total_items"],
            &job["processed_items"],
            &job["failed_items"]
        ),
        (&json!(4), &json!(4), &json!(2)),
        "{st}"
    );
    // A later group of the same items changes nothing.
    let again = scripts
        .finish(&mut con, &id, &[done(b, Outcome::Completed, "")])
        .await
        .unwrap();
    assert_eq!(again, [Recorded::Duplicate]);
    let events = f.events(&id).await;
    let count = |t: &str| events.iter().filter(|(e, _)| e == t).count();
    assert_eq!(
        (
            count("parse.running"),
            count("parse.success"),
            count("parse.error")
        ),
        (3, 1, 3),
        "{events:?}"
    );
    assert_eq!((count("batch.running"), count("batch.success")), (1, 1));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_workers_finishing_together_make_one_terminal_transition() {
    let mut f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "race").await;
    let ids = f.upload_texts(&dir, "n", 40).await;
    let (_, b) = f
        .post(
            BATCH,
            &f.watched(json!({ "job_config": parse_config(), "item_ids": ids })),
        )
        .await;
    let id = b["id"].as_str().unwrap().to_owned();
    f.wait_status(&id, "dispatched").await;
    // Twenty workers, each taking at most two items at once, all start on a full queue.
    let mut ws = f.worker_settings.clone();
    ws.concurrency = 1;
    ws.prefetch = 2;
    for _ in 0..20 {
        f.start_worker_with(ws.clone()).await;
    }
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed");
    assert_eq!(status["job"]["processed_items"], 40);
    let events = f.events(&id).await;
    let terminal: Vec<_> = events
        .iter()
        .filter(|(t, _)| t.starts_with("batch.") && t != "batch.running" && t != "batch.pending")
        .collect();
    assert_eq!(terminal.len(), 1, "{events:?}");
    assert_eq!(
        events.iter().filter(|(t, _)| t == "batch.running").count(),
        1
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_mid_batch_stops_new_work() {
    let mut f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "cancel").await;
    for i in 0..30 {
        f.upload(
            &f.api_key,
            &dir,
            &format!("c{i}.txt"),
            format!("cancel me {i}").into_bytes(),
        )
        .await;
    }
    let (_, b) = f
        .post(
            BATCH,
            &f.watched(json!({ "job_config": parse_config(), "directory_id": dir })),
        )
        .await;
    let id = b["id"].as_str().unwrap().to_owned();
    // One slow-ish worker so the batch is surely mid-way when cancelled.
    let mut ws = f.worker_settings.clone();
    ws.concurrency = 1;
    ws.prefetch = 1;
    f.start_worker_with(ws).await;
    for _ in 0..400 {
        let (_, s) = f.get(&format!("{BATCH}/{id}")).await;
        if s["job"]["processed_items"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (s, c) = f
        .post(
            &format!("{BATCH}/{id}/cancel"),
            &json!({ "reason": "changed my mind" }),
        )
        .await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["status"], "cancelled");
    assert_eq!(c["job_id"], id);
    // In-flight items may finish; then every item is terminal and counted once.
    let status = f.wait_terminal(&id, Duration::from_secs(5)).await;
    assert_eq!(status["job"]["status"], "cancelled");
    let mut items = Vec::new();
    for _ in 0..100 {
        items = f.items(&id).await;
        if items.iter().all(|i| i["status"] != "processing") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, status) = f.get(&format!("{BATCH}/{id}")).await;
    assert_exact_accounting(&status, &items);
    let cancelled = items.iter().filter(|i| i["status"] == "cancelled").count();
    let completed = items.iter().filter(|i| i["status"] == "completed").count();
    assert!(
        cancelled > 0 && completed >= 3,
        "cancelled {cancelled}, completed {completed}"
    );
    assert_eq!(cancelled + completed, items.len());
    // Workers drain the rest of the queue without doing work.
    for _ in 0..100 {
        if f.queue_depths().await.0 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, after) = f
        .get(&format!("{BATCH}/{id}/items?status=completed&limit=100"))
        .await;
    assert_eq!(after["total_size"].as_u64().unwrap() as usize, completed);
    // Cancelling a cancelled batch again sweeps it again (a cancel cut short is finished so),
    // and changes no count.
    let (s, e) = f.post(&format!("{BATCH}/{id}/cancel"), &json!({})).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["status"], "cancelled", "{e}");
    assert_eq!(
        e["processed_items"], status["job"]["processed_items"],
        "{e}"
    );
    assert_eq!(
        f.events(&id)
            .await
            .iter()
            .filter(|(t, _)| t == "batch.cancelled")
            .count(),
        1
    );
    f.shutdown().await;
}

/// While a consumer is attached, expansion publishes no page past `expansion_queue_limit`
/// waiting messages; it finishes once they drain, every item counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expansion_holds_back_while_consumers_have_enough_waiting() {
    expansion_holds_back_at(6, 0).await;
}

/// The same, held by the per-consumer allowance (one consumer, 6 each) well below the
/// overall limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expansion_keeps_a_short_queue_per_consumer() {
    expansion_holds_back_at(1_000, 6).await;
}

/// Holds 6 messages waiting for one stalled consumer, by `limit` or by `per_consumer`.
async fn expansion_holds_back_at(limit: u32, per_consumer: u32) {
    use lapin::options::{BasicConsumeOptions, BasicQosOptions};
    let mut f = Fleet::start(0).await;
    f.stop_dispatcher().await;
    f.dispatcher_settings.expansion_queue_limit = limit;
    f.dispatcher_settings.expansion_queue_per_consumer = per_consumer;
    f.start_dispatcher().await;
    let dir = f.create_dir(&f.api_key, "held").await;
    f.upload_texts(&dir, "h", 40).await;
    // A consumer that takes one message and never settles it: attached, but draining nothing.
    let conn = lapin::Connection::connect(
        &docfleet_tests::amqp_url(),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let queue =
        docfleet_shared::topology::Topology::new(f.dispatcher_settings.broker.queue_prefix.clone())
            .priority_queue(docfleet_shared::model::Priority::Medium);
    let _stalled = ch
        .basic_consume(
            queue.as_str().into(),
            "stalled".into(),
            BasicConsumeOptions::default(),
            Default::default(),
        )
        .await
        .unwrap();
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": parse_config(), "directory_id": dir, "page_size": 4 }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (ready, _) = f.queue_depths().await;
    // Held at the limit; past it by at most the page let through and the one still being
    // confirmed then. Without the limit all 39 would wait.
    assert!((6..6 + 2 * 4).contains(&ready), "{ready} messages ready");
    assert_eq!(f.batch_field(&id, "expanded").await.as_deref(), Some("0"));
    // The stalled consumer goes (its message returns to the queue) and workers drain it all.
    conn.close(200, "".into()).await.unwrap();
    f.start_worker().await;
    let status = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    assert_eq!(status["job"]["total_items"], 40);
    let items = f.items(&id).await;
    assert_exact_accounting(&status, &items);
    assert_eq!(f.queue_depths().await, (0, 0));
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_critical_batch_overtakes_a_queue_full_of_low_ones() {
    let mut f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "prio").await;
    let ids = f.upload_texts(&dir, "p", 60).await;
    let create = |prio: &str, items: &[String]| {
        f.watched(
            json!({ "job_config": { "parameters": { "priority": prio } }, "item_ids": items }),
        )
    };
    let (_, low) = f.post(BATCH, &create("low", &ids[..50])).await;
    let low = low["id"].as_str().unwrap().to_owned();
    f.wait_status(&low, "dispatched").await;
    let (_, crit) = f.post(BATCH, &create("critical", &ids[50..])).await;
    let crit = crit["id"].as_str().unwrap().to_owned();
    f.wait_status(&crit, "dispatched").await;
    // One worker working on one item at a time: it must pick the critical ones first. Its
    // prefetch exceeds its concurrency, as by default (256 and 64): each queue's consumer
    // holds deliveries while one is worked on, so the critical queue refills before its
    // buffer runs dry. With equal values the buffer empties at every item and a held low
    // delivery is taken while the next critical one is on its way.
    let mut ws = f.worker_settings.clone();
    ws.concurrency = 1;
    ws.prefetch = 8;
    f.start_worker_with(ws).await;
    f.wait_terminal(&crit, Duration::from_secs(60)).await;
    f.wait_terminal(&low, Duration::from_secs(60)).await;
    // In the order items finished: how many low ones came before the last critical one?
    let done: Vec<String> = f
        .all_events()
        .await
        .into_iter()
        .filter(|(_, t, _)| t == "parse.success")
        .map(|(b, _, _)| b)
        .collect();
    let last_crit = done.iter().rposition(|b| *b == crit).unwrap();
    let low_before = done[..last_crit].iter().filter(|b| **b == low).count();
    assert!(
        low_before <= 2,
        "critical finished after {low_before} low items: {done:?}"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recount_rebuilds_counters_and_failed_items_can_be_rerun() {
    let f = Fleet::start(2).await;
    let dir = f.create_dir(&f.api_key, "recount").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            f.upload(&f.api_key, &dir, &format!("r{i}.txt"), b"fine".to_vec())
                .await,
        );
    }
    ids.push(
        f.upload(&f.api_key, &dir, "bad.pdf", b"%PDF-1.4 broken".to_vec())
            .await,
    );
    let (_, b) = f
        .post(
            BATCH,
            &json!({ "job_config": parse_config(), "item_ids": ids }),
        )
        .await;
    let id = b["id"].as_str().unwrap().to_owned();
    let done = f.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["job"]["failed_items"], 1);
    // A failover lost writes: counters and a status set are wrong.
    let mut con = f.redis.clone();
    let key = f.keys.batch(&id);
    let _: () =
        redis::AsyncCommands::hset_multiple(&mut con, &key, &[("processed", 2), ("failed", 0)])
            .await
            .unwrap();
    let pending = f
        .keys
        .batch_status_set(&id, docfleet_shared::model::ItemStatus::Pending);
    let _: () = redis::AsyncCommands::zadd(&mut con, &pending, &ids[0], 0)
        .await
        .unwrap();
    let (processed, failed) = f.recount(&id).await;
    assert_eq!((processed, failed), (6, 1));
    let (_, p) = f.get(&format!("{BATCH}/{id}/items?status=pending")).await;
    assert_eq!(p["total_size"], 0);

    // Re-run only the failed item, as a new batch with the same config: an operator's call.
    let (s, e) = f
        .post(&format!("{BATCH}/{id}/retry-failed"), &json!({}))
        .await;
    assert_eq!(s, 403, "{e}");
    let op = f.operator_key().await;
    let (s, again) = f
        .post_as(&op, &format!("{BATCH}/{id}/retry-failed"), &json!({}))
        .await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["total_items"], 1);
    let new_id = again["id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, id);
    let st = f.wait_terminal(&new_id, Duration::from_secs(30)).await;
    assert_eq!(
        st["job"]["status"], "failed",
        "every item failed again: {st}"
    );
    let (s, e) = f
        .post_as(&op, &format!("{BATCH}/{new_id}/retry-failed"), &json!({}))
        .await;
    assert_eq!(s, 200, "{e}");
    let ok_batch = {
        let (_, b) = f
            .post(
                BATCH,
                &json!({ "job_config": parse_config(), "item_ids": &ids[..1] }),
            )
            .await;
        b["id"].as_str().unwrap().to_owned()
    };
    f.wait_terminal(&ok_batch, Duration::from_secs(30)).await;
    let (s, e) = f
        .post_as(&op, &format!("{BATCH}/{ok_batch}/retry-failed"), &json!({}))
        .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["detail"].as_str().unwrap().contains("no failed items"));
    f.shutdown().await;
}

/// A recount while outcomes keep landing counts each of them once: the batch still completes,
/// with exact counts. Its 1,200 items take two of recount's chunks, so outcomes land between
/// them; a recount that tallied chunks and then wrote the tally would lose those and leave
/// the batch running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recount_while_outcomes_land_counts_each_once() {
    let f = Fleet::start(2).await;
    let dir = f.create_dir(&f.api_key, "recount-live").await;
    let ids = f.upload_texts(&dir, "l", 1_200).await;
    let id = f
        .create_batch(&json!({ "job_config": parse_config(), "item_ids": ids }))
        .await;
    // Recounts while the first three quarters land; then none, so a count lost by one is
    // never repaired by a later one.
    let mut recounts = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (processed, _) = f.recount(&id).await;
        recounts += 1;
        if processed >= 900 || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    assert!(
        recounts > 1,
        "the batch was done before a recount overlapped it"
    );
    let st = f.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(st["job"]["processed_items"], 1_200, "{st}");
    assert_exact_accounting(&st, &f.items(&id).await);
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_and_session_ids_travel_in_message_headers() {
    let f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "trace").await;
    let id = f.upload(&f.api_key, &dir, "t.txt", b"trace".to_vec()).await;
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "correlation_id": "corr-42", "session_id": "sess-7", "parameters": {} }, "item_ids": [id] }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let conn = lapin::Connection::connect(&docfleet_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue =
        docfleet_shared::topology::Topology::new(f.dispatcher_settings.broker.queue_prefix.clone())
            .priority_queue(docfleet_shared::model::Priority::Medium);
    let mut msg = None;
    for _ in 0..100 {
        msg = ch
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap();
        if msg.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let msg = msg.expect("a published message");
    let headers = msg.delivery.properties.headers().clone().unwrap();
    let get = |k: &str| match headers.inner().get(k) {
        Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("{k}: {other:?}"),
    };
    assert_eq!(get("x-correlation-id"), "corr-42");
    assert_eq!(get("x-session-id"), "sess-7");
    conn.close(200, "".into()).await.ok();
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_language_and_stored_outputs() {
    let f = Fleet::start(1).await;
    let id = upload_invoice(&f, "shots").await;
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": { "images_to_save": ["screenshot"], "custom_metadata": { "team": "ap" } } }, "item_ids": [id] }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let batch = b["id"].as_str().unwrap().to_owned();
    f.wait_terminal(&batch, Duration::from_secs(60)).await;
    let items = f.items(&batch).await;
    let job = items[0]["job_id"].as_str().unwrap();
    let (_, r) = f.get(&format!("/api/v2/parse/{job}?expand=metadata")).await;
    let meta = &r["metadata"];
    assert_eq!(meta["language"], "eng", "{meta}");
    assert_eq!(meta["custom_metadata"]["team"], "ap");
    let images = meta["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "{meta}");
    // The outputs live in the store under a stable layout users can read without the API.
    let store = f.store();
    for img in images {
        let key = img["key"].as_str().unwrap();
        assert_eq!(img["uri"], store.uri(key), "{img}");
        let png = store.get(key).await.unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{key}");
    }

    // ... and can be taken home through links that need no key (the bucket's own presigned
    // URLs in an S3 store).
    let (s, r) = f
        .get(&format!(
            "/api/v2/parse/{job}?expand=images_content_metadata&expand=result_content_metadata&expand=text_full&expand=markdown_full"
        ))
        .await;
    assert_eq!(s, 200, "{r}");
    let listed = &r["images_content_metadata"];
    assert_eq!(listed["total_count"], 2, "{listed}");
    let anonymous = reqwest::Client::new();
    let fetch = |url: String| {
        let anonymous = anonymous.clone();
        async move {
            let resp = anonymous.get(&url).send().await.unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
        }
    };
    for (image, kept) in listed["images"].as_array().unwrap().iter().zip(images) {
        assert_eq!(image["filename"], kept["name"], "{image}");
        assert_eq!(image["category"], "screenshot", "{image}");
        let url = image["presigned_url"].as_str().unwrap().to_owned();
        let served_by = match &f.dispatcher_settings.store.s3.endpoint {
            Some(bucket) if f.dispatcher_settings.store.backend == StoreBackend::S3 => bucket,
            _ => &f.base_url,
        };
        assert!(url.starts_with(served_by.as_str()), "{url}");
        let (status, png) = fetch(url.clone()).await;
        assert_eq!(status, 200, "{url}");
        assert_eq!(png, store.get(kept["key"].as_str().unwrap()).await.unwrap());
    }
    let files = &r["result_content_metadata"];
    let (status, json) = fetch(files["json"]["presigned_url"].as_str().unwrap().into()).await;
    assert_eq!(status, 200, "{files}");
    assert_eq!(files["json"]["size_bytes"], json.len(), "{files}");
    let whole: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(whole["markdown_full"], r["markdown_full"]);
    let (status, text) = fetch(files["text"]["presigned_url"].as_str().unwrap().into()).await;
    assert_eq!(status, 200);
    assert_eq!(
        Some(String::from_utf8(text).unwrap().as_str()),
        r["text_full"].as_str()
    );
    // A filter by name, and a link that was tampered with.
    let first = images[0]["name"].as_str().unwrap();
    let (_, one) = f
        .get(&format!(
            "/api/v2/parse/{job}?expand=images_content_metadata&image_filenames={first}"
        ))
        .await;
    assert_eq!(one["images_content_metadata"]["total_count"], 1, "{one}");
    let text_link = files["text"]["presigned_url"].as_str().unwrap();
    let forged = text_link.replace("/content/text?", "/content/json?");
    assert_eq!(
        fetch(forged).await.0,
        404,
        "a link for one output opened another"
    );
    // The batch's zip holds the kept images beside the result, the same bytes.
    let (_, _, zipped) = f
        .download(&format!("{BATCH}/{batch}/results?format=zip"))
        .await;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(zipped)).unwrap();
    let item = items[0]["item_id"].as_str().unwrap();
    for kept in images {
        let mut png = Vec::new();
        std::io::Read::read_to_end(
            &mut zip
                .by_name(&format!("{item}/{}", kept["name"].as_str().unwrap()))
                .unwrap(),
            &mut png,
        )
        .unwrap();
        assert_eq!(png, store.get(kept["key"].as_str().unwrap()).await.unwrap());
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn multimodal_classify_asks_the_configured_vision_model() {
    use docfleet_tests::receiver::{Receiver, Reply};
    let model = Receiver::start().await;
    let mut f = Fleet::start(0).await;
    let vision = docfleet_shared::settings::VisionSettings {
        url: Some(format!("http://{}/v1", model.addr)),
        model: "test-vision".into(),
        api_key: Some("sk-test".into()),
        ..Default::default()
    };
    let id = upload_invoice(&f, "mm").await;
    let mut config = classify_config();
    config["mode"] = json!("MULTIMODAL");
    let body = json!({ "job_config": config, "item_ids": [id] });

    // Without an endpoint the batch is refused, saying what to configure.
    let (s, b) = f.post(BATCH, &body).await;
    assert_eq!(s, 422, "{b}");
    let detail = b["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("job_config.mode") && detail.contains("DOCFLEET__VISION__URL"),
        "{b}"
    );

    f.stop_dispatcher().await;
    f.dispatcher_settings.vision = vision.clone();
    f.start_dispatcher().await;
    let mut ws = f.worker_settings.clone();
    ws.vision = vision;
    f.start_worker_with(ws).await;
    // A 500 first: a transient failure, retried; then the model's answer.
    let answer = json!({ "type": "invoice", "confidence": 0.93, "reasoning": "It asks for payment of a total due." });
    model.plan([
        Reply::Status(500),
        Reply::Json(json!({ "choices": [{ "message": { "role": "assistant", "content": answer.to_string() } }] })),
    ]);
    let (s, b) = f.post(BATCH, &body).await;
    assert_eq!(s, 200, "{b}");
    let batch = b["id"].as_str().unwrap().to_owned();
    let status = f.wait_terminal(&batch, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");
    let items = f.items(&batch).await;
    let (s, r) = f
        .get(&format!(
            "/api/v2/classify/{}",
            items[0]["job_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["result"]["type"], "invoice", "{r}");
    assert_eq!(r["result"]["confidence"], 0.93, "{r}");
    assert_eq!(
        r["result"]["reasoning"],
        "It asks for payment of a total due."
    );

    let sent = model.received();
    assert_eq!(sent.len(), 2, "one failed call, one retry");
    let req: Value = serde_json::from_slice(&sent[1].body).unwrap();
    assert_eq!(req["model"], "test-vision");
    assert_eq!(sent[1].headers["authorization"], "Bearer sk-test");
    let content = req["messages"][1]["content"].as_array().unwrap();
    let prompt = content[0]["text"].as_str().unwrap();
    assert!(
        prompt.contains("- meeting_notes: Minutes") && prompt.contains("1042"),
        "{prompt}"
    );
    let image = content[1]["image_url"]["url"].as_str().unwrap();
    assert!(
        image.starts_with("data:image/png;base64,"),
        "a rendered page"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_says_how_long_the_dispatcher_took() {
    let f = Fleet::start(0).await;
    let res = f
        .req(reqwest::Method::GET, BATCH)
        .send()
        .await
        .expect("list");
    assert_eq!(res.status(), 200);
    let timing = res
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let ms: f64 = timing
        .strip_prefix("app;dur=")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("server-timing {timing:?}"));
    assert!(ms >= 0.0);
    f.shutdown().await;
}

/// A small output rides in the batch's results hash; a large one goes to a file. The API serves both
/// the same way, and only the file leaves anything in the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_outputs_live_in_redis_and_large_ones_in_files() {
    let mut f = Fleet::start(0).await;
    let id = upload_invoice(&f, "placement").await;
    let mut outputs = Vec::new();
    for inline_max in [0, 1 << 20] {
        let mut settings = f.worker_settings.clone();
        settings.store.inline_max_bytes = inline_max;
        f.start_worker_with(settings).await;
        let (s, b) = f
            .post(
                BATCH,
                &json!({ "job_config": parse_config(), "item_ids": [id] }),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        let batch = b["id"].as_str().unwrap().to_owned();
        let status = f.wait_terminal(&batch, Duration::from_secs(60)).await;
        assert_eq!(status["job"]["status"], "completed", "{status}");
        f.stop_workers().await;
        let items = f.items(&batch).await;
        let (job, item) = (
            items[0]["job_id"].as_str().unwrap().to_owned(),
            items[0]["item_id"].as_str().unwrap().to_owned(),
        );
        let (s, r) = f
            .get(&format!(
                "/api/v2/parse/{job}?expand=text&expand=markdown_full&expand=metadata"
            ))
            .await;
        assert_eq!(s, 200, "{r}");
        let (_, pr) = f
            .get(&format!("{BATCH}/items/{item}/processing-results"))
            .await;
        let runs = pr["processing_results"].as_array().unwrap();
        let path = runs.last().unwrap()["output_s3_path"]
            .as_str()
            .unwrap()
            .to_owned();
        let key = docfleet_shared::store::result_key("proj-a", &batch, &job);
        let stored = f.store().get(&key).await.ok().map(|_| f.store().uri(&key));
        outputs.push((r, path, job, stored));
    }
    let (file, inline) = (&outputs[0], &outputs[1]);
    assert!(
        file.0["text"]["pages"][1]["text"]
            .as_str()
            .unwrap()
            .contains("Total due: 126.00"),
        "{}",
        file.0
    );
    for section in ["text", "markdown_full", "metadata"] {
        assert_eq!(file.0[section], inline.0[section], "{section}");
    }
    assert_eq!(
        file.3.as_ref(),
        Some(&file.1),
        "the output is where its record says"
    );
    assert_eq!(inline.1, format!("/api/v2/parse/{}", inline.2));
    assert_eq!(inline.3, None, "an inline output writes no file");
    f.shutdown().await;
}

/// A batch's results come as one JSON Lines download, one line per item in input order, with
/// each completed parse job's whole output (from a file or from the item's record) and each
/// failed item's error, or as a zip of the outputs, a folder per completed item; another
/// project cannot download them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_s_results_download_as_json_lines_or_a_zip() {
    let mut f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "export").await;
    let mut ids = f.upload_texts(&dir, "e", 3).await;
    ids.insert(1, "dfl-00000000-0000-0000-0000-000000000000".into());
    // Outputs in files: the download reads them from the store.
    let mut settings = f.worker_settings.clone();
    settings.store.inline_max_bytes = 0;
    f.start_worker_with(settings).await;
    let batch = f
        .create_batch(&json!({ "job_config": parse_config(), "item_ids": ids }))
        .await;
    let status = f.wait_terminal(&batch, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["failed_items"], 1, "{status}");
    let (s, kind, body) = f.download(&format!("{BATCH}/{batch}/results")).await;
    assert_eq!((s, kind.as_str()), (200, "application/jsonl"));
    let body = String::from_utf8(body).unwrap();
    let lines: Vec<Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{body}");
    let items = f.items(&batch).await;
    for (line, item) in lines.iter().zip(&items) {
        assert_eq!(line["item_id"], item["item_id"], "input order");
        assert_eq!(line["job_id"], item["job_id"]);
        assert_eq!(line["status"], item["status"]);
    }
    assert_eq!(lines[1]["status"], "failed", "{}", lines[1]);
    assert!(lines[1]["result"].is_null());
    assert!(lines[1]["error_message"].is_string(), "{}", lines[1]);
    for (line, n) in [(&lines[0], 0), (&lines[2], 1), (&lines[3], 2)] {
        assert_eq!(line["status"], "completed", "{line}");
        assert_eq!(
            line["result"]["pages"][0]["text"].as_str().map(str::trim),
            Some(format!("e text {n}").as_str()),
            "{line}"
        );
    }

    let (s, kind, bytes) = f
        .download(&format!("{BATCH}/{batch}/results?format=zip"))
        .await;
    assert_eq!((s, kind.as_str()), (200, "application/zip"));
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    names.sort();
    let mut want: Vec<String> = [0, 2, 3]
        .iter()
        .flat_map(|&i| {
            let (id, name) = (
                lines[i]["item_id"].as_str().unwrap(),
                lines[i]["item_name"].as_str().unwrap(),
            );
            ["json", "md", "txt"].map(|ext| format!("{id}/{name}.{ext}"))
        })
        .collect();
    want.sort();
    assert_eq!(
        names, want,
        "a folder per completed item, none for the failed one"
    );
    for i in [0, 2, 3] {
        let (id, name) = (
            lines[i]["item_id"].as_str().unwrap(),
            lines[i]["item_name"].as_str().unwrap(),
        );
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut zip.by_name(&format!("{id}/{name}.txt")).unwrap(),
            &mut text,
        )
        .unwrap();
        assert_eq!(text, lines[i]["result"]["text_full"].as_str().unwrap());
        let whole: Value =
            serde_json::from_reader(zip.by_name(&format!("{id}/{name}.json")).unwrap()).unwrap();
        assert_eq!(whole, lines[i]["result"]);
    }
    let (s, b) = f.get(&format!("{BATCH}/{batch}/results?format=tar")).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["detail"].as_str().unwrap().starts_with("format: "), "{b}");

    let other = f.new_key("proj-b").await;
    for format in ["jsonl", "zip"] {
        let (s, _) = f
            .get_as(&other, &format!("{BATCH}/{batch}/results?format={format}"))
            .await;
        assert_eq!(s, 404);
    }
    f.shutdown().await;
}

/// The queues docfleet declares are classic queues of storage version 2: the broker refuses
/// a redeclaration without the version, and declaring twice is harmless.
#[tokio::test]
async fn work_queues_are_version_2() {
    use docfleet_shared::model::Priority;
    use docfleet_shared::topology::Topology;
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable};

    let t = Topology::new(format!("dft-cqv-{}", uuid::Uuid::new_v4().simple()));
    let conn = lapin::Connection::connect(&docfleet_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut unversioned = FieldTable::default();
    unversioned.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(t.dead_letter_exchange().into()),
    );
    let medium = t.priority_queue(Priority::Medium);
    // Every outcome first, then the clean-up, then the checks: a failed check leaves nothing.
    let first = t.declare(&conn).await;
    let again = t.declare(&conn).await;
    let ch = conn.create_channel().await.unwrap();
    let same = ch
        .queue_declare(
            medium.as_str().into(),
            durable,
            t.priority_queue_arguments(),
        )
        .await;
    let refused = ch
        .queue_declare(medium.as_str().into(), durable, unversioned)
        .await;
    let ch = conn.create_channel().await.unwrap();
    let cleaned = t.delete(&ch).await;
    let _ = conn.close(200, "".into()).await;

    first.expect("declare");
    again.expect("declare again");
    same.expect("the queue has the version 2 arguments");
    let refused = refused.expect_err("a declaration without the version is refused");
    assert!(
        format!("{refused:?}").contains("x-queue-version"),
        "{refused:?}"
    );
    cleaned.expect("clean-up");
}

/// A cancel cut short after the batch turned cancelled and before its sweep (its dispatcher
/// died in between) is finished by the reconciler: every item ends cancelled, counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_cut_short_is_swept_by_the_reconciler() {
    let mut f = Fleet::start(0).await;
    f.dispatcher_settings.reconcile.every_secs = 1;
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    let dir = f.create_dir(&f.api_key, "cut").await;
    let ids = f.upload_texts(&dir, "c", 20).await;
    let id = f
        .create_batch(&json!({ "job_config": parse_config(), "item_ids": ids }))
        .await;
    f.wait_status(&id, "dispatched").await;
    // All a dying dispatcher got to do of the cancel.
    let scripts = docfleet_shared::scripts::Scripts::new(f.keys.clone());
    let mut con = f.redis.clone();
    scripts.cancel(&mut con, &id, "").await.unwrap();
    let mut items = Vec::new();
    for _ in 0..100 {
        items = f.items(&id).await;
        if items.iter().all(|i| i["status"] == "cancelled") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        items.iter().all(|i| i["status"] == "cancelled"),
        "{items:?}"
    );
    let (_, status) = f.get(&format!("{BATCH}/{id}")).await;
    assert_eq!(status["job"]["status"], "cancelled", "{status}");
    assert_exact_accounting(&status, &items);
    f.shutdown().await;
}

/// A message no queue takes is not confirmed into nothing: with its work queue deleted under
/// a running dispatcher (an operator, a broker that lost its definitions), a publish comes
/// back, the dispatcher declares its queues again and publishes the page again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_deleted_queue_is_published_again() {
    let mut f = Fleet::start(0).await;
    // Expansion that never looks at the queue before it publishes.
    f.dispatcher_settings.expansion_queue_limit = 0;
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    let dir = f.create_dir(&f.api_key, "returned").await;
    let ids = f.upload_texts(&dir, "r", 3).await;
    let queue = f.default_queue();
    let conn = lapin::Connection::connect(&docfleet_tests::amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let id = f
        .create_batch(&json!({ "job_config": parse_config(), "item_ids": ids }))
        .await;
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut ready = 0;
    for _ in 0..100 {
        // A passive declare of a missing queue closes its channel: one channel per look.
        let ch = conn.create_channel().await.unwrap();
        if let Ok(q) = ch
            .queue_declare(queue.as_str().into(), passive, Default::default())
            .await
        {
            ready = q.message_count();
            if ready == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ready, 3, "the page never reached a queue");
    f.start_worker().await;
    let st = f.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(st["job"]["status"], "completed", "{st}");
    assert_exact_accounting(&st, &f.items(&id).await);
    let _ = conn.close(200, "".into()).await;
    f.shutdown().await;
}

/// Keys of the fleet's prefix, by SCAN.
async fn fleet_keys(f: &Fleet) -> std::collections::BTreeSet<String> {
    let mut con = f.redis.clone();
    let mut iter: redis::AsyncIter<String> =
        redis::AsyncCommands::scan_match(&mut con, format!("{}:*", f.keys.prefix()))
            .await
            .unwrap();
    let mut keys = std::collections::BTreeSet::new();
    while let Some(k) = iter.next_item().await {
        keys.insert(k.unwrap());
    }
    keys
}

/// Past its retention a finished batch is gone: its status is a 404, a file's processing
/// results no longer list it, and Redis holds nothing of it (the keys are those from before
/// it, besides the fleet's own stream, lease and schedule). Its directory and files stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_batch_is_forgotten_after_its_retention() {
    let mut f = Fleet::start(1).await;
    f.dispatcher_settings.reconcile.every_secs = 1;
    f.dispatcher_settings.reconcile.retention_secs = 2;
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    let dir = f.create_dir(&f.api_key, "retention").await;
    let ids = f.upload_texts(&dir, "k", 3).await;
    let before = fleet_keys(&f).await;
    let id = f
        .create_batch(&f.watched(json!({ "job_config": parse_config(), "item_ids": ids })))
        .await;
    let done = f.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(done["job"]["status"], "completed", "{done}");
    let runs = |item: String| {
        let f = &f;
        async move {
            let (s, pr) = f
                .get(&format!("{BATCH}/items/{item}/processing-results"))
                .await;
            assert_eq!(s, 200, "{pr}");
            pr["processing_results"].as_array().unwrap().len()
        }
    };
    assert_eq!(runs(ids[0].clone()).await, 1);
    let mut status = 200;
    for _ in 0..100 {
        status = f.get(&format!("{BATCH}/{id}")).await.0;
        if status == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 404, "the batch outlived its retention");
    assert_eq!(runs(ids[0].clone()).await, 0);
    let fleet_wide = [":events", ":reconciler", ":webhook:due"];
    let left: Vec<String> = fleet_keys(&f)
        .await
        .difference(&before)
        .filter(|k| !fleet_wide.iter().any(|w| k.ends_with(w)))
        .cloned()
        .collect();
    assert_eq!(left, Vec::<String>::new());
    let (s, files) = f
        .get(&format!("/api/v1/beta/directories/{dir}/files"))
        .await;
    assert_eq!(s, 200, "{files}");
    assert_eq!(files["items"].as_array().map(Vec::len), Some(3), "{files}");
    f.shutdown().await;
}

/// By default (`broker.queue_type = "quorum"`) the fleet declares quorum work queues (the
/// broker says so), and a batch runs through them, a worker process included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_work_queues_are_quorum_queues() {
    let f = Fleet::start(0).await;
    let out = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "name", "type"])
        .output()
        .expect("rabbitmqctl");
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let queue = f.default_queue();
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().next() == Some(queue.as_str()))
        .unwrap_or_default();
    assert!(line.ends_with("quorum"), "{queue}: {listing}");
    let dir = f.create_dir(&f.api_key, "quorum").await;
    let ids = f.upload_texts(&dir, "q", 20).await;
    let id = f
        .create_batch(&json!({ "job_config": parse_config(), "item_ids": ids }))
        .await;
    let mut w = f.spawn_worker_process(&[]).await;
    let st = f.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(st["job"]["status"], "completed", "{st}");
    assert_exact_accounting(&st, &f.items(&id).await);
    assert_eq!(f.queue_depths().await, (0, 0));
    w.terminate().await;
    f.shutdown().await;
}
