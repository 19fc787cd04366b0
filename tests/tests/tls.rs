//! The fleet on a Redis that speaks TLS only (`rediss://`): a Redis the test starts on its
//! own port with a certificate made for it, and a batch run end to end through it.

use std::time::Duration;

use docfleet_tests::Fleet;
use serde_json::json;

/// A `redis-server` listening on TLS only, stopped and removed on drop.
struct TlsRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl TlsRedis {
    fn start(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("docfleet-tls-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .output()
            .expect("openssl");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(dir.join("cert.pem"))
            .arg("--tls-key-file")
            .arg(dir.join("key.pem"))
            .arg("--tls-ca-cert-file")
            .arg(dir.join("cert.pem"))
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (with TLS support, as Debian builds it)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, child }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_runs_on_a_redis_that_speaks_only_tls() {
    let redis = TlsRedis::start(Fleet::free_port().await);
    // The certificate is the test's own, not in the system's trust store: `#insecure` skips
    // verification (test and development only; production trusts its CA system-wide).
    let url = format!("rediss://127.0.0.1:{}/#insecure", redis.port);
    // A plain connection to it is refused: it really is TLS only.
    let plain =
        docfleet_shared::services::connect_redis(&format!("redis://127.0.0.1:{}/", redis.port))
            .await;
    assert!(plain.is_err(), "the TLS port answered in clear text");
    let f = Fleet::start_on_redis(1, &url).await;
    let dir = f.create_dir(&f.api_key, "tls").await;
    let ids = f.upload_texts(&dir, "t", 20).await;
    let id = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "item_ids": ids }))
        .await;
    let st = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(st["job"]["status"], "completed", "{st}");
    assert_eq!(st["job"]["processed_items"], 20, "{st}");
    f.shutdown().await;
}
