//! The official Python SDK (llama-cloud 2.13.0, strict validation) against a live fleet.
//!
//! Needs the virtual environment that `deploy/local/test` creates (`.venv`, or the Python
//! named by `DOCFLEET_PYTHON`); without it this test fails and says how to get it.

use docfleet_tests::{repo_root, Fleet};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_official_sdk_drives_the_whole_flow() {
    let f = Fleet::start(2).await;
    let other = f.new_key("proj-sdk-other").await;
    let root = repo_root();
    let python = std::env::var("DOCFLEET_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    assert!(
        python.exists(),
        "{} not found: run deploy/local/test (it creates .venv with llama-cloud==2.13.0)",
        python.display()
    );
    let out = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(root.join("tests/python/test_sdk_flow.py"))
        .env("DOCFLEET_API_URL", &f.base_url)
        .env("DOCFLEET_API_KEY", &f.api_key)
        .env("DOCFLEET_OTHER_KEY", &other)
        .env("DOCFLEET_SAMPLES", root.join("deploy/samples"))
        .output()
        .await
        .expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "SDK flow failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("5 passed"), "{stdout}");
    f.shutdown().await;
}
