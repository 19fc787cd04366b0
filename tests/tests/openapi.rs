//! The OpenAPI document (`/openapi.json`, made from the same list as the router) and
//! schemathesis against it: requests it generates for every route get no 5xx, JSON answers,
//! and errors in the `{"detail": …}` shape the document gives.

use docfleet_dispatcher::routes::{API, UPLOADS};
use docfleet_tests::Fleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_generated_requests_find_no_server_error() {
    let schemathesis = std::env::var("DOCFLEET_SCHEMATHESIS")
        .unwrap_or_else(|_| ".venv-api/bin/schemathesis".into());
    let schemathesis = std::path::Path::new(&schemathesis);
    assert!(
        schemathesis.exists(),
        "{} is missing (deploy/local/test installs it)",
        schemathesis.display()
    );
    let f = Fleet::start(1).await;
    let (s, doc) = f.get("/openapi.json").await;
    assert_eq!(s, 200, "{doc}");
    let ops: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(ops, API.len() + UPLOADS.len());
    // Every documented route is served: without a key it is refused by the route, never the
    // fallback's "no such route".
    for r in API.iter().chain(UPLOADS) {
        let path: String = r
            .path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        let method =
            reqwest::Method::from_bytes(r.method.to_uppercase().as_bytes()).expect("method");
        let res = f
            .http
            .request(method, format!("{}{path}", f.base_url))
            .send()
            .await
            .expect("request");
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert!(
            !body.contains("no such route"),
            "{} {} is documented but not served ({status})",
            r.method,
            r.path
        );
    }
    // The project's routes with a project key, the operator's with an operator key.
    let operator = f.operator_key().await;
    let operator_routes = "^/api/v1/admin|retry-failed|redeliver";
    for (key, filter) in [
        (&f.api_key, "--exclude-path-regex"),
        (&operator, "--include-path-regex"),
    ] {
        schemathesis_run(schemathesis, &f.base_url, key, &[filter, operator_routes]).await;
    }
    f.shutdown().await;
}

/// One schemathesis run over the document's operations (those `filter` selects).
async fn schemathesis_run(schemathesis: &std::path::Path, base: &str, key: &str, filter: &[&str]) {
    let out = tokio::process::Command::new(schemathesis)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(filter)
        .args([
            "--checks",
            "not_a_server_error,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "40",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            "--no-color",
        ])
        .arg("--header")
        .arg(format!("Authorization: Bearer {key}"))
        .output()
        .await
        .expect("schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = stdout.lines().rev().take(40).collect();
    for l in summary.iter().rev() {
        println!("{l}");
    }
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
