//! deploy/: Dockerfiles (hadolint), compose, and every Kustomize overlay rendered and validated
//! against Kubernetes and KEDA schemas plus docfleet's invariants (tests/python/check_deploy.py).

use docfleet_tests::repo_root;

#[test]
fn deploy_files_lint_render_and_validate() {
    let root = repo_root();
    let python = std::env::var("DOCFLEET_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| root.join(".venv/bin/python"));
    assert!(
        std::process::Command::new("kubectl")
            .arg("version")
            .arg("--client")
            .output()
            .is_ok(),
        "kubectl (with Kustomize) is needed to render deploy/k8s"
    );
    let out = std::process::Command::new(&python)
        .arg(root.join("tests/python/check_deploy.py"))
        .arg(&root)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run deploy/local/test to create .venv)",
                python.display()
            )
        });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deploy checks ok"), "{stdout}");
}
