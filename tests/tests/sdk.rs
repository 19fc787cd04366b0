//! The official Python SDK against one live fleet, both lines of it: llama-cloud 2.13.0 (the
//! legacy batch API) and 2.19.0 (v2 batches, configurations, files), strict validation on.
//! The 2.19.0 run batches a directory the 2.13.0 run made, and reads its batches.
//!
//! Needs the virtual environments that `deploy/local/test` creates (`.venv` and
//! `.venv-current`, or the Pythons named by `DOCFLEET_PYTHON` and `DOCFLEET_PYTHON_CURRENT`);
//! without them this test fails and says how to get them.

use std::path::PathBuf;

use docfleet_tests::{repo_root, Fleet};
use serde_json::Value;

fn python(var: &str, venv: &str) -> PathBuf {
    let path = std::env::var(var)
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(venv).join("bin/python"));
    assert!(
        path.exists(),
        "{} not found: run deploy/local/test (it creates {venv})",
        path.display()
    );
    path
}

async fn pytest(f: &Fleet, python: &PathBuf, file: &str, other: &str, handoff: &PathBuf) -> String {
    let root = repo_root();
    let out = tokio::process::Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("tests/python").join(file))
        .env("DOCFLEET_API_URL", &f.base_url)
        .env("DOCFLEET_API_KEY", &f.api_key)
        .env("DOCFLEET_OTHER_KEY", other)
        .env("DOCFLEET_SAMPLES", root.join("deploy/samples"))
        .env("DOCFLEET_HANDOFF", handoff)
        .output()
        .await
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{file} failed:\n{stdout}\n{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_sdk_lines_drive_the_same_fleet() {
    let f = Fleet::start(2).await;
    let other = f.new_key("proj-sdk-other").await;
    let handoff = std::env::temp_dir().join(format!("docfleet-sdk-{}.json", uuid::Uuid::new_v4()));
    let legacy = python("DOCFLEET_PYTHON", ".venv");
    let current = python("DOCFLEET_PYTHON_CURRENT", ".venv-current");
    let out = pytest(&f, &legacy, "test_sdk_flow.py", &other, &handoff).await;
    assert!(out.contains("6 passed"), "{out}");
    let out = pytest(&f, &current, "test_sdk_v2_flow.py", &other, &handoff).await;
    assert!(out.contains("7 passed"), "{out}");

    // The batch 2.19.0 made reads through the legacy API with exact counts.
    let facts: Value =
        serde_json::from_slice(&std::fs::read(&handoff).expect("handoff")).expect("json");
    let _ = std::fs::remove_file(&handoff);
    let id = facts["v2_batch_id"].as_str().expect("v2 batch id");
    let st: Value = f
        .http
        .get(format!("{}/api/v1/beta/batch-processing/{id}", f.base_url))
        .bearer_auth(&f.api_key)
        .send()
        .await
        .expect("get_status")
        .json()
        .await
        .expect("json");
    assert_eq!(st["job"]["status"], "completed", "{st}");
    assert_eq!(st["job"]["job_type"], "parse", "{st}");
    assert_eq!(st["job"]["processed_items"], facts["files"], "{st}");
    assert_eq!(st["job"]["total_items"], facts["files"], "{st}");
    f.shutdown().await;
}
