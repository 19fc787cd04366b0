//! Users' own buckets, on the real S3-compatible server `deploy/local/test` starts (the bucket
//! `DOCFLEET_TEST_S3_OUTPUT_BUCKET` beside the store's), whichever store the fleet itself
//! uses: outputs written there (`output_s3_path_prefix`), directories filled from there.

use std::time::Duration;

use docfleet_shared::settings::{BucketSettings, S3Settings, StoreBackend, StoreSettings};
use docfleet_shared::store::FileStore;
use docfleet_tests::Fleet;
use serde_json::{json, Value};

const BATCH: &str = "/api/v1/beta/batch-processing";

fn var(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set: run the tests with deploy/local/test"))
}

fn server() -> S3Settings {
    S3Settings {
        endpoint: Some(var("DOCFLEET_TEST_S3_ENDPOINT")),
        access_key: var("DOCFLEET_TEST_S3_ACCESS_KEY"),
        secret_key: var("DOCFLEET_TEST_S3_SECRET_KEY"),
        ..S3Settings::default()
    }
}

/// The user's bucket, read the way the user would: a store over it.
fn users_bucket(folder: &str) -> FileStore {
    FileStore::open(&StoreSettings {
        backend: StoreBackend::S3,
        s3: S3Settings {
            bucket: var("DOCFLEET_TEST_S3_OUTPUT_BUCKET"),
            prefix: folder.to_owned(),
            ..server()
        },
        ..StoreSettings::default()
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_job_writes_its_outputs_where_its_project_may_and_nowhere_else() {
    let bucket = var("DOCFLEET_TEST_S3_OUTPUT_BUCKET");
    let folder = format!(
        "dft-out-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let mut f = Fleet::start(0).await;
    let other = f.new_key("proj-b").await;
    let buckets = BucketSettings {
        s3: server(),
        write: vec![format!("proj-a=s3://{bucket}/{folder}/team-a")],
        read: Vec::new(),
    };
    let job = |prefix: String| {
        json!({ "job_config": { "parameters": { "output_s3_path_prefix": prefix } },
                "item_ids": ["dfl-00000000-0000-0000-0000-000000000000"] })
    };
    let allowed = format!("s3://{bucket}/{folder}/team-a/run-1");

    // A deployment without outputs.s3 refuses the field rather than ignore it.
    let (s, b) = f.post(BATCH, &job(allowed.clone())).await;
    assert_eq!(s, 422, "{b}");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .starts_with("job_config.parameters.output_s3_path_prefix: "),
        "{b}"
    );

    f.dispatcher_settings.buckets = buckets.clone();
    f.worker_settings.buckets = buckets;
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    for (who, prefix) in [
        (&f.api_key, format!("s3://{bucket}/{folder}/team-b")),
        (&f.api_key, format!("s3://{bucket}/{folder}/team-a-not")),
        (&other, allowed.clone()),
    ] {
        let (s, b) = f.post_as(who, BATCH, &job(prefix.clone())).await;
        assert_eq!(s, 422, "{prefix}: {b}");
        assert!(
            b["detail"].as_str().unwrap().contains("may not write to"),
            "{b}"
        );
    }
    let (s, b) = f
        .post(
            BATCH,
            &json!({ "job_config": { "parameters": { "output_s3_path_prefix": "run-1" } },
                     "item_ids": ["x"] }),
        )
        .await;
    assert_eq!(s, 422, "a folder without a bucket: {b}");

    f.start_worker().await;
    let dir = f.create_dir(&f.api_key, "exports").await;
    let file_id = f
        .upload(
            &f.api_key,
            &dir,
            "invoice 1042.pdf",
            docfleet_tests::sample("invoice-1042.pdf"),
        )
        .await;
    let batch = f
        .create_batch(&json!({
            "job_config": { "parameters": { "output_s3_path_prefix": allowed,
                                            "images_to_save": ["screenshot"] } },
            "directory_id": dir,
        }))
        .await;
    let status = f.wait_terminal(&batch, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["status"], "completed", "{status}");

    let mine = users_bucket(&folder);
    let key = |ext: &str| format!("team-a/run-1/{file_id}/invoice_1042.pdf.{ext}");
    let whole: Value = serde_json::from_slice(&mine.get(&key("json")).await.unwrap()).unwrap();
    assert_eq!(
        String::from_utf8(mine.get(&key("txt")).await.unwrap()).unwrap(),
        whole["text_full"].as_str().unwrap()
    );
    assert!(whole["text_full"]
        .as_str()
        .unwrap()
        .contains("Total due: 126.00"));
    let shot = mine
        .get(&format!("team-a/run-1/{file_id}/page-1.png"))
        .await
        .unwrap();
    assert!(shot.starts_with(b"\x89PNG"));
    assert_eq!(
        String::from_utf8(mine.get(&key("md")).await.unwrap()).unwrap(),
        whole["markdown_full"].as_str().unwrap()
    );
    let (_, pr) = f
        .get(&format!("{BATCH}/items/{file_id}/processing-results"))
        .await;
    assert_eq!(
        pr["processing_results"][0]["output_s3_path"],
        format!("s3://{bucket}/{folder}/{}", key("json")),
        "{pr}"
    );
    mine.remove_dir("team-a").await.unwrap();
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_filled_from_a_bucket_is_parsed_there_and_left_there() {
    let bucket = var("DOCFLEET_TEST_S3_OUTPUT_BUCKET");
    let folder = format!("dft-in-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let theirs = users_bucket(&folder);
    let invoice = docfleet_tests::sample("invoice-1042.pdf");
    theirs
        .put("team-a/q1/invoice-1042.pdf", &invoice)
        .await
        .unwrap();
    theirs
        .put(
            "team-a/q1/notes/minutes.txt",
            b"Minutes of the imported meeting",
        )
        .await
        .unwrap();
    theirs.put("team-b/secret.txt", b"not yours").await.unwrap();

    let mut f = Fleet::start(0).await;
    let import = |dir: &str| format!("/api/v1/beta/directories/{dir}/files/import");
    let dir = f.create_dir(&f.api_key, "imported").await;
    let source = format!("s3://{bucket}/{folder}/team-a/q1");
    // Without buckets.s3 the deployment reaches no user's bucket: said, not ignored.
    let (s, b) = f.post(&import(&dir), &json!({ "source": source })).await;
    assert_eq!(s, 422, "{b}");
    assert!(b["detail"].as_str().unwrap().starts_with("source: "), "{b}");

    let buckets = BucketSettings {
        s3: server(),
        write: Vec::new(),
        read: vec![format!("proj-a=s3://{bucket}/{folder}/team-a")],
    };
    f.dispatcher_settings.buckets = buckets.clone();
    f.worker_settings.buckets = buckets.clone();
    f.stop_dispatcher().await;
    f.start_dispatcher().await;
    let other = f.new_key("proj-b").await;
    let other_dir = f.create_dir(&other, "not allowed").await;
    for (who, d, body) in [
        (
            &f.api_key,
            &dir,
            json!({ "source": format!("s3://{bucket}/{folder}/team-b") }),
        ),
        (&other, &other_dir, json!({ "source": source })),
        (&f.api_key, &dir, json!({ "source": "team-a/q1" })),
        (&f.api_key, &dir, json!({ "source": source, "region": "" })),
    ] {
        let (s, b) = f.post_as(who, &import(d), &body).await;
        assert_eq!(s, 422, "{body}: {b}");
        let detail = b["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("source: ") || detail.starts_with("region: "),
            "{b}"
        );
    }
    let (s, b) = f.post(&import(&dir), &json!({ "source": source })).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["imported"], 2, "{b}");
    let (_, listed) = f
        .get(&format!("/api/v1/beta/directories/{dir}/files"))
        .await;
    let mut names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["display_name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["invoice-1042.pdf", "notes/minutes.txt"], "{listed}");
    let (_, one) = f
        .get(&format!(
            "/api/v1/beta/files/{}",
            listed["items"][0]["file_id"].as_str().unwrap()
        ))
        .await;
    let size = one["size_bytes"].as_u64().unwrap();
    assert!(
        size == invoice.len() as u64 || size == 31,
        "the object's own size: {one}"
    );

    f.start_worker().await;
    let batch = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "directory_id": dir }))
        .await;
    let status = f.wait_terminal(&batch, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["processed_items"], 2, "{status}");
    assert_eq!(status["job"]["status"], "completed", "{status}");
    let (_, _, body) = f.download(&format!("{BATCH}/{batch}/results")).await;
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("Total due: 126.00"), "{body}");
    assert!(body.contains("Minutes of the imported meeting"), "{body}");

    // The file's download reads the user's object.
    let file_id = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["display_name"] == "invoice-1042.pdf")
        .unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, link) = f
        .get(&format!("/api/v1/beta/files/{file_id}/content"))
        .await;
    let got = f
        .http
        .get(link["url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.as_ref(), invoice.as_slice());

    // A narrowed allow-list holds for what was imported already: the worker checks again.
    let mut narrowed = f.worker_settings.clone();
    narrowed.buckets.read = vec![format!("proj-a=s3://{bucket}/{folder}/team-c")];
    f.stop_workers().await;
    f.start_worker_with(narrowed).await;
    let again = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "directory_id": dir }))
        .await;
    let status = f.wait_terminal(&again, Duration::from_secs(60)).await;
    assert_eq!(status["job"]["failed_items"], 2, "{status}");

    // Deleting the directory forgets the files and leaves the user's objects alone.
    let s = f
        .req(
            reqwest::Method::DELETE,
            &format!("/api/v1/beta/directories/{dir}"),
        )
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(s, 204);
    let (s, _) = f.get(&format!("/api/v1/beta/files/{file_id}")).await;
    assert_eq!(s, 404);
    assert_eq!(
        theirs.get("team-a/q1/invoice-1042.pdf").await.unwrap(),
        invoice
    );
    theirs.remove_dir("team-a").await.unwrap();
    theirs.remove_dir("team-b").await.unwrap();
    f.shutdown().await;
}
