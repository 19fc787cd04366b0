//! Bad input, auth and tenancy at the HTTP boundary, on the real services.

use docfleet_tests::{sample, Fleet};
use serde_json::{json, Value};

const BATCH: &str = "/api/v1/beta/batch-processing";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_4xx_naming_the_field() {
    let f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "d").await;
    let file = f.upload(&f.api_key, &dir, "a.txt", b"hello".to_vec()).await;
    let parse = json!({ "job_name": "parse_raw_file_job", "parameters": {} });
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({ "job_config": parse }), 400, "directory_id"),
        (
            json!({ "job_config": parse, "directory_id": dir, "item_ids": [file] }),
            400,
            "item_ids",
        ),
        (
            json!({ "job_config": parse, "directory_id": null, "item_ids": null }),
            400,
            "directory_id",
        ),
        (json!({ "directory_id": dir }), 422, "job_config"),
        (
            json!({ "job_config": parse, "item_ids": [] }),
            422,
            "item_ids",
        ),
        (
            json!({ "job_config": parse, "item_ids": [file, "dfl-a\ndfl-b"] }),
            422,
            "item_ids[1]",
        ),
        (
            json!({ "job_config": parse, "item_ids": [file, file, ""] }),
            422,
            "item_ids[2]",
        ),
        (
            json!({ "job_config": parse, "item_ids": "dfl-x" }),
            422,
            "item_ids",
        ),
        (
            json!({ "job_config": parse, "directory_id": "dir-nope" }),
            422,
            "directory_id",
        ),
        (
            json!({ "job_config": parse, "directory_id": dir, "page_size": 0 }),
            422,
            "page_size",
        ),
        (
            json!({ "job_config": parse, "directory_id": dir, "page_size": "big" }),
            422,
            "page_size",
        ),
        (
            json!({ "job_config": { "rules": [] }, "directory_id": dir }),
            422,
            "job_config.rules",
        ),
        (
            json!({ "job_config": { "rules": [{ "type": "a" }] }, "directory_id": dir }),
            422,
            "rules[0]",
        ),
        (
            json!({ "job_config": { "rules": [{ "type": "a", "description": "x" }, { "type": "a", "description": "y" }] }, "directory_id": dir }),
            422,
            "rules[1].type",
        ),
        (
            json!({ "job_config": { "rules": [{ "type": "a", "description": "x" }], "mode": "MULTIMODAL" }, "directory_id": dir }),
            422,
            "job_config.mode",
        ),
        (
            json!({ "job_config": { "rules": [{ "type": "a", "description": "x" }], "mode": "SLOW" }, "directory_id": dir }),
            422,
            "mode",
        ),
        (
            json!({ "job_config": { "parameters": { "parse_mode": "parse_page_with_llm" } }, "directory_id": dir }),
            422,
            "parse_mode",
        ),
        (
            json!({ "job_config": { "parameters": { "parse_mode": "nonsense" } }, "directory_id": dir }),
            422,
            "parse_mode",
        ),
        (
            json!({ "job_config": { "parameters": { "priority": "urgent" } }, "directory_id": dir }),
            422,
            "priority",
        ),
        (
            json!({ "job_config": { "parameters": { "max_pages": "ten" } }, "directory_id": dir }),
            422,
            "max_pages",
        ),
        (
            json!({ "job_config": { "parameters": { "target_pages": "3-1" } }, "directory_id": dir }),
            422,
            "target_pages",
        ),
        (
            json!({ "job_config": { "parameters": { "type": "extract" } }, "directory_id": dir }),
            422,
            "parameters.type",
        ),
        (
            json!({ "job_config": [1, 2], "directory_id": dir }),
            422,
            "job_config",
        ),
    ];
    for (body, want, field) in cases {
        let (s, b) = f.post(BATCH, &body).await;
        assert_eq!(s, want, "{body} -> {b}");
        let detail = b["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail: {b}"));
        assert!(
            detail.contains(field),
            "{body}: detail {detail:?} does not name {field}"
        );
    }
    // Malformed JSON.
    let r = f
        .req(reqwest::Method::POST, BATCH)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json::<Value>().await.unwrap()["detail"].is_string());
    // Bad query parameters.
    for q in [
        "limit=abc",
        "limit=0",
        "offset=-1",
        "status=done",
        "job_type=ocr",
    ] {
        let (s, b) = f.get(&format!("{BATCH}?{q}")).await;
        assert_eq!(s, 422, "{q}: {b}");
        assert!(b["detail"]
            .as_str()
            .unwrap()
            .contains(q.split('=').next().unwrap()));
    }
    // An upload without the file part, and a path-like display name that stays a name.
    let form = reqwest::multipart::Form::new().text("display_name", "x");
    let r = f
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/beta/directories/{dir}/files/upload"),
        )
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    assert!(r.json::<Value>().await.unwrap()["detail"]
        .as_str()
        .unwrap()
        .contains("upload_file"));
    let form = reqwest::multipart::Form::new()
        .text("display_name", "../../etc/passwd")
        .part(
            "upload_file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("p"),
        );
    let r = f
        .req(
            reqwest::Method::POST,
            &format!("/api/v1/beta/directories/{dir}/files/upload"),
        )
        .multipart(form)
        .send()
        .await
        .unwrap();
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["display_name"], "../../etc/passwd");
    assert!(!std::path::Path::new("/etc/passwd.docfleet").exists());
    // Unknown route.
    let (s, b) = f.get("/api/v1/nothing").await;
    assert_eq!(s, 404);
    assert!(b["detail"].is_string());
    // Priority is accepted in every spelling the SDK has.
    for p in ["low", "medium", "high", "critical"] {
        let (s, b) = f
            .post(
                BATCH,
                &json!({ "job_config": { "parameters": { "priority": p } }, "item_ids": [file] }),
            )
            .await;
        assert_eq!(s, 200, "{p}: {b}");
    }
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_ids_fail_as_items_and_the_rest_run() {
    let f = Fleet::start(1).await;
    let dir = f.create_dir(&f.api_key, "d").await;
    let file = f
        .upload(&f.api_key, &dir, "m.txt", sample("meeting-minutes.txt"))
        .await;
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "item_ids": [file, "dfl-nope", file] }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    // Duplicates count once.
    assert_eq!(b["total_items"], 2, "{b}");
    let batch = b["id"].as_str().unwrap().to_owned();
    let done = f
        .wait_terminal(&batch, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(done["job"]["status"], "completed", "{done}");
    assert_eq!(done["job"]["processed_items"], 2, "{done}");
    assert_eq!(done["job"]["failed_items"], 1, "{done}");
    let (_, failed) = f.get(&format!("{BATCH}/{batch}/items?status=failed")).await;
    assert_eq!(failed["total_size"], 1, "{failed}");
    // Registered and failed in one script run, it is in the failed set only.
    let (_, pending) = f
        .get(&format!("{BATCH}/{batch}/items?status=pending"))
        .await;
    assert_eq!(pending["total_size"], 0, "{pending}");
    let item = &failed["items"][0];
    assert_eq!(item["item_id"], "dfl-nope");
    assert_eq!(item["item_name"], "dfl-nope");
    assert_eq!(
        item["error_message"],
        "no file \"dfl-nope\" in this project"
    );
    let (_, ok) = f
        .get(&format!("{BATCH}/{batch}/items?status=completed"))
        .await;
    assert_eq!(ok["items"][0]["item_id"], file.as_str(), "{ok}");
    assert_eq!(ok["items"][0]["item_name"], "m.txt");
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_see_only_their_own_project() {
    let f = Fleet::start(1).await;
    let other = f.new_key("proj-b").await;
    let a_dir = f.create_dir(&f.api_key, "a").await;
    let a_file = f
        .upload(&f.api_key, &a_dir, "m.txt", sample("meeting-minutes.txt"))
        .await;
    let (_, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "item_ids": [a_file] }),
        )
        .await;
    let batch = b["id"].as_str().unwrap().to_owned();
    let done = f
        .wait_terminal(&batch, std::time::Duration::from_secs(30))
        .await;
    let (_, items) = f.get(&format!("{BATCH}/{batch}/items")).await;
    let job = items["items"][0]["job_id"].as_str().unwrap().to_owned();
    assert_eq!(done["job"]["status"], "completed");

    for path in [
        format!("/api/v1/beta/directories/{a_dir}"),
        format!("/api/v1/beta/directories/{a_dir}/files"),
        format!("{BATCH}/{batch}"),
        format!("{BATCH}/{batch}/items"),
        format!("{BATCH}/items/{a_file}/processing-results"),
        format!("/api/v2/parse/{job}"),
        format!("/api/v2/classify/{job}"),
    ] {
        let (s, b) = f.get_as(&other, &path).await;
        assert_eq!(s, 404, "{path}: {b}");
        assert!(b["detail"].is_string());
    }
    let (s, _) = f
        .post_as(&other, &format!("{BATCH}/{batch}/cancel"), &json!({}))
        .await;
    assert_eq!(s, 404);
    // B cannot batch A's files or directory. An id is checked as the batch expands, so B's
    // batch of A's file is accepted and its item fails, telling B nothing of the file.
    let (s, b) = f
        .post_as(
            &other,
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "item_ids": [a_file] }),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let stolen = b["id"].as_str().unwrap().to_owned();
    let mut items = Value::Null;
    for _ in 0..300 {
        let (_, st) = f.get_as(&other, &format!("{BATCH}/{stolen}")).await;
        if st["job"]["status"] == "failed" {
            (_, items) = f.get_as(&other, &format!("{BATCH}/{stolen}/items")).await;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let item = &items["items"][0];
    assert_eq!(item["status"], "failed", "{items}");
    assert_eq!(
        item["item_name"],
        a_file.as_str(),
        "A's file name leaked: {item}"
    );
    assert_eq!(
        item["error_message"],
        format!("no file {a_file:?} in this project"),
        "{item}"
    );
    let (s, _) = f
        .post_as(
            &other,
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "directory_id": a_dir }),
        )
        .await;
    assert_eq!(s, 422);
    // Lists are per project.
    let (_, l) = f.get_as(&other, BATCH).await;
    assert_eq!(l["total_size"], 1);
    let (_, l) = f.get_as(&other, "/api/v1/beta/directories").await;
    assert_eq!(l["items"].as_array().unwrap().len(), 0);
    let (_, l) = f.get(BATCH).await;
    assert_eq!(l["total_size"], 1);
    // No key, wrong key: 401 with a detail.
    let r = f
        .http
        .get(format!("{}{BATCH}", f.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let (s, b) = f.get_as("dfk_wrong", BATCH).await;
    assert_eq!(s, 401);
    assert!(b["detail"].is_string());
    f.shutdown().await;
}

/// A per-file job id names its batch and the item's order, so no Redis key maps it back; a
/// made-up one is a 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_ids_resolve_without_a_key_per_item() {
    let f = Fleet::start(1).await;
    let dir = f.create_dir(&f.api_key, "d").await;
    let mut files = Vec::new();
    for name in ["a.txt", "b.txt"] {
        files.push(
            f.upload(&f.api_key, &dir, name, sample("meeting-minutes.txt"))
                .await,
        );
    }
    let (_, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "item_ids": files }),
        )
        .await;
    let batch = b["id"].as_str().unwrap().to_owned();
    let done = f
        .wait_terminal(&batch, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(done["job"]["status"], "completed", "{done}");
    let items = f.items(&batch).await;
    assert_eq!(items.len(), 2);

    for item in &items {
        let job = item["job_id"].as_str().unwrap();
        let derived = docfleet_shared::model::parse_job_id(job).expect(job);
        assert_eq!(derived.batch_id, batch);
        let (s, r) = f.get(&format!("/api/v2/parse/{job}?expand=text")).await;
        assert_eq!(s, 200, "{r}");
        assert_eq!(r["job"]["id"], job, "{r}");
        assert!(r["text"]["pages"][0]["text"].is_string(), "{r}");
        // The same id asked of the other job type, and the id with a digit added (an alias of
        // order 0, `.00`, or an order no item has): not found.
        for path in [
            format!("/api/v2/classify/{job}"),
            format!("/api/v2/parse/{job}0"),
        ] {
            let (s, r) = f.get(&path).await;
            assert_eq!(s, 404, "{path}: {r}");
            assert!(r["detail"].as_str().unwrap().contains("job"), "{r}");
        }
    }
    // Cancelling a completed batch is a 400 with a detail, never a 409 (the SDK retries 409).
    let (s, e) = f.post(&format!("{BATCH}/{batch}/cancel"), &json!({})).await;
    assert_eq!(s, 400, "{e}");
    assert!(
        e["detail"].as_str().unwrap().contains("already completed"),
        "{e}"
    );

    f.shutdown().await;
}

/// Every response says how long docfleet took (`app`); one whose JSON body was read whole
/// first also says how long receiving it took (`body`), kept out of `app`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_timing_keeps_receiving_the_body_apart() {
    let f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "d").await;
    let file = f.upload(&f.api_key, &dir, "a.txt", b"hello".to_vec()).await;
    let metrics = |res: &reqwest::Response| -> Vec<(String, f64)> {
        let header = res
            .headers()
            .get("server-timing")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        header
            .split(',')
            .map(|m| {
                let (name, dur) = m.trim().split_once(";dur=").unwrap_or_default();
                (name.to_owned(), dur.parse().unwrap_or(f64::NAN))
            })
            .collect()
    };
    let created = f
        .req(reqwest::Method::POST, BATCH)
        .json(&json!({ "job_config": { "parameters": {} }, "item_ids": [file] }))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 200);
    let timing = metrics(&created);
    let names: Vec<&str> = timing.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["body", "app"], "{timing:?}");
    assert!(timing.iter().all(|(_, ms)| *ms >= 0.0), "{timing:?}");
    let id = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let status = f
        .req(reqwest::Method::GET, &format!("{BATCH}/{id}"))
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), 200);
    let timing = metrics(&status);
    assert_eq!(timing.len(), 1, "{timing:?}");
    assert_eq!(timing[0].0, "app");
    assert!(timing[0].1 >= 0.0, "{timing:?}");
    f.shutdown().await;
}

/// The create call answers with the record it stored, without reading it back: every field
/// of the answer is what `get_status` shows for the batch, apart from what expansion moves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_answers_with_the_batch_it_stored() {
    let f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "d").await;
    let files = f.upload_texts(&dir, "c", 3).await;
    let config = json!({ "parameters": {}, "correlation_id": "corr-1", "session_id": "s-1" });
    for body in [
        json!({ "job_config": config, "item_ids": files }),
        json!({ "job_config": config, "directory_id": dir }),
    ] {
        let (code, created) = f.post(BATCH, &body).await;
        assert_eq!(code, 200, "{created}");
        assert_eq!(created["status"], "pending", "{created}");
        assert_eq!(created["total_items"], 3, "{created}");
        let id = created["id"].as_str().expect("id");
        let (code, status) = f.get(&format!("{BATCH}/{id}")).await;
        assert_eq!(code, 200, "{status}");
        let (mut created, mut stored) = (created.clone(), status["job"].clone());
        for moving in ["status", "updated_at"] {
            created[moving].take();
            stored[moving].take();
        }
        assert_eq!(created, stored);
    }
    f.shutdown().await;
}

/// `docfleet_status_reads_total{source=…}` from the dispatcher's metrics.
async fn status_reads(f: &Fleet, source: &str) -> u64 {
    let body = f
        .req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let line = format!("docfleet_status_reads_total{{source=\"{source}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_of_a_running_batch_are_answered_from_memory_until_it_changes_here() {
    // No workers: the batch stays dispatched until cancelled.
    let f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "d").await;
    let files = f.upload_texts(&dir, "p", 3).await;
    let (code, created) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "item_ids": files }),
        )
        .await;
    assert_eq!(code, 200, "{created}");
    let id = created["id"].as_str().expect("id");
    let path = format!("{BATCH}/{id}");
    f.wait_status(id, "dispatched").await;
    let from_memory = status_reads(&f, "memory").await;
    for _ in 0..20 {
        let (code, status) = f.get(&path).await;
        assert_eq!(code, 200, "{status}");
        assert_eq!(status["job"]["total_items"], 3, "{status}");
    }
    assert!(
        status_reads(&f, "memory").await > from_memory,
        "back-to-back polls of a running batch all went to Redis"
    );
    // Another project's key gets a 404 from a snapshot as from Redis.
    let other = f.new_key("another-project").await;
    let (code, _) = f.get_as(&other, &path).await;
    assert_eq!(code, 404);
    // The replica that cancels drops its snapshot: the very next poll sees the cancel.
    let (code, c) = f.post(&format!("{path}/cancel"), &json!({})).await;
    assert_eq!(code, 200, "{c}");
    let (_, status) = f.get(&path).await;
    assert_eq!(status["job"]["status"], "cancelled", "{status}");
    // A cancelled batch is always read from Redis: in-flight items may still be counted.
    let from_memory = status_reads(&f, "memory").await;
    for _ in 0..5 {
        f.get(&path).await;
    }
    assert_eq!(status_reads(&f, "memory").await, from_memory);
    f.shutdown().await;
}

/// `DELETE` of a directory file and of a directory (`directories.files.delete`,
/// `directories.delete`): 204 with no body, then 404s; the stored bytes go too; another
/// project's key deletes nothing; a batch's item whose file was deleted fails and the counts
/// stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_and_their_files_can_be_deleted() {
    let mut f = Fleet::start(0).await;
    let other = f.new_key("proj-b").await;
    let dir = f.create_dir(&f.api_key, "doomed").await;
    let ids = f.upload_texts(&dir, "d", 3).await;
    let dirs = format!("/api/v1/beta/directories/{dir}");
    let file = |id: &str| format!("{dirs}/files/{id}");
    let (s, got) = f.get(&file(&ids[0])).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["id"], ids[0].as_str());
    let stored = walk(&f.dispatcher_settings.store.root);
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert_eq!(delete(&f, &other, file(&ids[0])).await.0, 404);
    assert_eq!(delete(&f, &other, dirs.clone()).await.0, 404);
    assert_eq!(
        delete(&f, &f.api_key, file(&ids[0])).await,
        (204, String::new())
    );
    assert_eq!(f.get(&file(&ids[0])).await.0, 404);
    assert_eq!(delete(&f, &f.api_key, file(&ids[0])).await.0, 404);
    let (_, listed) = f.get(&format!("{dirs}/files")).await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(2),
        "{listed}"
    );
    assert_eq!(walk(&f.dispatcher_settings.store.root).len(), 2);

    // A batch over a deleted file: its item fails, the others run.
    let batch = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "item_ids": ids }))
        .await;
    f.start_worker().await;
    let done = f
        .wait_terminal(&batch, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(
        (
            &done["job"]["processed_items"],
            &done["job"]["failed_items"]
        ),
        (&json!(3), &json!(1)),
        "{done}"
    );

    assert_eq!(
        delete(&f, &f.api_key, dirs.clone()).await,
        (204, String::new())
    );
    assert_eq!(f.get(&dirs).await.0, 404);
    assert_eq!(f.get(&file(&ids[1])).await.0, 404);
    let (_, all) = f.get("/api/v1/beta/directories").await;
    assert!(
        !all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["id"] == dir.as_str()),
        "{all}"
    );
    assert_eq!(
        walk(&f.dispatcher_settings.store.root),
        Vec::<std::path::PathBuf>::new()
    );
    // The batch that ran on it keeps its own records.
    assert_eq!(f.get(&format!("{BATCH}/{batch}")).await.0, 200);
    f.shutdown().await;
}

/// DELETE with a key: status and body text.
async fn delete(f: &Fleet, key: &str, path: String) -> (u16, String) {
    let r = f
        .http
        .delete(format!("{}{path}", f.base_url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Every stored object (uploads) under `root`, results excluded.
fn walk(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("results") {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A request made to cost the server is refused before it does: a page selection that would
/// expand to millions of entries, a JSON body over the limit, an id that is a key fragment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_are_refused_cheaply() {
    let f = Fleet::start(0).await;
    let dir = f.create_dir(&f.api_key, "hostile").await;
    let pages = vec!["0-100000"; 300].join(",");
    let (s, r) = f
        .post(
            BATCH,
            &json!({ "directory_id": dir, "job_config": { "parameters": { "target_pages": pages } } }),
        )
        .await;
    assert_eq!(s, 422, "{r}");
    assert!(r["detail"]
        .as_str()
        .unwrap()
        .starts_with("job_config.parameters.target_pages:"));
    // Just over the limit, so the answer comes before the client has much left to send.
    let big = "x".repeat(f.dispatcher_settings.max_json_bytes);
    let (s, r) = f
        .post(BATCH, &json!({ "directory_id": dir, "job_config": { "parameters": { "custom_metadata": big } } }))
        .await;
    assert_eq!(s, 413, "{r}");
    for path in [
        "/api/v1/beta/directories/dir-x:files".to_owned(),
        format!("{BATCH}/bjb-x:lease"),
        "/api/v1/beta/files/fil-*".to_owned(),
    ] {
        let (s, r) = f.get(&path).await;
        assert_eq!(s, 404, "{path}: {r}");
        assert!(!r["detail"].as_str().unwrap().contains("Redis"), "{r}");
    }
    f.shutdown().await;
}

/// Keys expire and are revoked; a project's keys can be listed (as digests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_and_are_revoked() {
    let f = Fleet::start(0).await;
    let mut con = f.redis.clone();
    let short = docfleet_dispatcher::auth::create_key(&mut con, &f.keys, "proj-keys", Some(1))
        .await
        .unwrap();
    let kept = f.new_key("proj-keys").await;
    let listed = docfleet_dispatcher::auth::list_keys(&mut con, &f.keys, "proj-keys")
        .await
        .unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed.iter().any(|l| l.contains("expires in")),
        "{listed:?}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(f.get_as(&short, "/api/v1/beta/directories").await.0, 401);
    assert_eq!(f.get_as(&kept, "/api/v1/beta/directories").await.0, 200);
    let prefix = listed
        .iter()
        .find(|l| l.contains("no expiry"))
        .and_then(|l| l.split(' ').next())
        .unwrap()
        .to_owned();
    let victim = f.new_key("proj-keys").await;
    // Seen (and cached) before it is revoked: refused all the same within a second.
    assert_eq!(f.get_as(&victim, "/api/v1/beta/directories").await.0, 200);
    assert_eq!(
        docfleet_dispatcher::auth::revoke_key(&mut con, &f.keys, "proj-keys", &victim)
            .await
            .unwrap(),
        1
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(f.get_as(&victim, "/api/v1/beta/directories").await.0, 401);
    // The operator routes: keys made, listed and revoked over HTTP; a project key is a 403
    // there, and an operator key is a 403 on the project API.
    let op = f.operator_key().await;
    assert_eq!(f.get_as(&op, "/api/v1/beta/directories").await.0, 403);
    let (s, _) = f
        .post("/api/v1/admin/keys", &json!({ "project": "proj-keys" }))
        .await;
    assert_eq!(s, 403);
    let (s, made) = f
        .post_as(
            &op,
            "/api/v1/admin/keys",
            &json!({ "project": "proj-keys", "expires_in_days": 1 }),
        )
        .await;
    assert_eq!(s, 200, "{made}");
    let fresh = made["key"].as_str().unwrap().to_owned();
    assert_eq!(f.get_as(&fresh, "/api/v1/beta/directories").await.0, 200);
    let (_, listed) = f.get_as(&op, "/api/v1/admin/keys?project=proj-keys").await;
    let line = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|l| l.contains("expires in"))
        .unwrap()
        .to_owned();
    let digest = line.split(' ').next().unwrap();
    let s = f
        .http
        .delete(format!(
            "{}/api/v1/admin/keys/{digest}?project=proj-keys",
            f.base_url
        ))
        .bearer_auth(&op)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 204);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(f.get_as(&fresh, "/api/v1/beta/directories").await.0, 401);
    // Rotated with an overlap: the successor works at once, the old key until the overlap
    // ends, and then only the successor; a prefix that names no key is a 404.
    let before = docfleet_dispatcher::auth::list_keys(&mut con, &f.keys, "proj-keys")
        .await
        .unwrap();
    let old = f.new_key("proj-keys").await;
    let old_prefix = docfleet_dispatcher::auth::list_keys(&mut con, &f.keys, "proj-keys")
        .await
        .unwrap()
        .into_iter()
        .find(|l| !before.contains(l))
        .and_then(|l| l.split(' ').next().map(str::to_owned))
        .unwrap();
    let (s, rotated) = f
        .post_as(
            &op,
            &format!("/api/v1/admin/keys/{old_prefix}/rotate?project=proj-keys"),
            &json!({ "overlap_secs": 2 }),
        )
        .await;
    assert_eq!(s, 200, "{rotated}");
    assert_eq!(rotated["old_expires_in_secs"], 2, "{rotated}");
    let successor = rotated["key"].as_str().unwrap().to_owned();
    assert_eq!(
        f.get_as(&successor, "/api/v1/beta/directories").await.0,
        200
    );
    assert_eq!(f.get_as(&old, "/api/v1/beta/directories").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(3200)).await;
    assert_eq!(f.get_as(&old, "/api/v1/beta/directories").await.0, 401);
    assert_eq!(
        f.get_as(&successor, "/api/v1/beta/directories").await.0,
        200
    );
    let (s, _) = f
        .post_as(
            &op,
            "/api/v1/admin/keys/000000000000/rotate?project=proj-keys",
            &json!({}),
        )
        .await;
    assert_eq!(s, 404);
    // By digest prefix (what `list-keys` prints); another project's keys are out of reach.
    assert_eq!(
        docfleet_dispatcher::auth::revoke_key(&mut con, &f.keys, "proj-other", &prefix)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        docfleet_dispatcher::auth::revoke_key(&mut con, &f.keys, "proj-keys", &prefix)
            .await
            .unwrap(),
        1
    );
    f.shutdown().await;
}

/// A project over `max_queued_items_per_project` gets a 429 with `Retry-After`; another
/// project is not held back by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_over_its_quota_gets_429() {
    let mut f = Fleet::start(0).await;
    f.stop_dispatcher().await;
    f.dispatcher_settings.max_queued_items_per_project = 5;
    f.start_dispatcher().await;
    let dir = f.create_dir(&f.api_key, "quota").await;
    let ids: Vec<String> = f.upload_texts(&dir, "q", 3).await;
    let body = json!({ "job_config": { "parameters": {} }, "item_ids": ids });
    let (s, r) = f.post(BATCH, &body).await;
    assert_eq!(s, 200, "{r}");
    let resp = f
        .req(reqwest::Method::POST, BATCH)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "30");
    let r: Value = resp.json().await.unwrap();
    assert!(r["detail"]
        .as_str()
        .unwrap()
        .contains("max_queued_items_per_project"));
    let other = f.new_key("proj-quota-other").await;
    let odir = f.create_dir(&other, "quota").await;
    let ofile = f.upload(&other, &odir, "o.txt", b"other".to_vec()).await;
    let (s, r) = f
        .post_as(
            &other,
            BATCH,
            &json!({ "job_config": { "parameters": {} }, "item_ids": [ofile] }),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    f.shutdown().await;
}

/// A client that trickles its headers is cut off at `http.header_read_timeout_ms`, and the
/// server goes on answering others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut f = Fleet::start(0).await;
    f.stop_dispatcher().await;
    f.dispatcher_settings.http.header_read_timeout_ms = 300;
    f.start_dispatcher().await;
    let addr = f.base_url.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read(&mut buf))
        .await
        .expect("the server kept a half-sent request open");
    // Closed, with or without a 408 first.
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => assert!(
            String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert_eq!(f.get("/api/v1/beta/directories").await.0, 200);
    f.shutdown().await;
}
