//! Outputs written to the user's own bucket (`output_s3_path_prefix`), on the real
//! S3-compatible server `deploy/local/test` starts (the bucket `DOCFLEET_TEST_S3_OUTPUT_BUCKET`
//! beside the store's), whichever store the fleet itself uses.

use std::time::Duration;

use docfleet_shared::settings::{OutputSettings, S3Settings, StoreBackend, StoreSettings};
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
    let outputs = OutputSettings {
        s3: server(),
        allow: vec![format!("proj-a=s3://{bucket}/{folder}/team-a")],
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

    f.dispatcher_settings.outputs = outputs.clone();
    f.worker_settings.outputs = outputs;
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
