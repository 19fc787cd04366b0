//! The fleet on a Redis that speaks TLS only (`rediss://`), and on a RabbitMQ node that
//! speaks TLS only (`amqps://`): each started by the test on its own ports with a certificate
//! made for it, and a batch run end to end through it.

use std::time::Duration;

use docfleet_tests::Fleet;
use serde_json::json;

/// Writes into `dir` a CA of its own (`ca.pem`) and a server certificate for 127.0.0.1 that it
/// signed (`cert.pem`, `key.pem`): what a private CA hands out.
fn certificates(dir: &std::path::Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=docfleet test CA",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "cert.pem",
        ],
    ];
    for args in steps {
        let made = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
}

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
        certificates(&dir);
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
            .arg(dir.join("ca.pem"))
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

/// A RabbitMQ node of its own (name, ports, data folder) listening on TLS only; stopped and
/// removed on drop.
struct TlsRabbit {
    node: String,
    port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl TlsRabbit {
    async fn start() -> Self {
        let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let dir = std::env::temp_dir().join(format!("docfleet-amqps-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        certificates(&dir);
        // Debian's rabbitmq-server runs the node as the rabbitmq user, which must read the key
        // (a throwaway one) and write its data and logs here.
        use std::os::unix::fs::PermissionsExt;
        for (path, mode) in [(dir.clone(), 0o777), (dir.join("key.pem"), 0o644)] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let port = Fleet::free_port().await;
        let dist_port = Fleet::free_port().await;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\n\
                 listeners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.certfile = {cert}\n\
                 ssl_options.keyfile = {key}\n\
                 ssl_options.cacertfile = {ca}\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n",
                cert = dir.join("cert.pem").display(),
                ca = dir.join("ca.pem").display(),
                key = dir.join("key.pem").display(),
            ),
        )
        .unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].").unwrap();
        let node = format!("dftls-{id}@localhost");
        let child = std::process::Command::new("rabbitmq-server")
            .env("RABBITMQ_NODENAME", &node)
            .env("RABBITMQ_DIST_PORT", dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rabbitmq-server");
        let rabbit = Self {
            node,
            port,
            dir,
            child,
        };
        // A node boots in a few seconds; the listener opens last.
        for _ in 0..600 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return rabbit;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the TLS RabbitMQ node did not start (logs in {})",
            rabbit.dir.display()
        );
    }
}

impl Drop for TlsRabbit {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-n", &self.node, "shutdown"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fleet_runs_on_a_broker_that_speaks_only_tls() {
    let rabbit = TlsRabbit::start().await;
    let url = format!("amqps://guest:guest@127.0.0.1:{}/%2f", rabbit.port);
    // Without its CA the certificate is refused: the connection really is verified TLS.
    let untrusted = docfleet_shared::settings::BrokerSettings {
        url: url.clone(),
        ..Default::default()
    };
    let refused =
        docfleet_shared::services::connect_amqp(&untrusted, Duration::from_millis(10)).await;
    let refused = format!(
        "{:?}",
        refused.expect_err("a certificate no CA vouches for was taken")
    );
    assert!(refused.contains("Certificate"), "{refused}");
    let broker = docfleet_shared::settings::BrokerSettings {
        tls_ca_file: Some(rabbit.dir.join("ca.pem")),
        ..untrusted
    };
    let f = Fleet::start_on(1, &docfleet_tests::redis_url(), broker).await;
    let dir = f.create_dir(&f.api_key, "amqps").await;
    let ids = f.upload_texts(&dir, "t", 20).await;
    let id = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "item_ids": ids }))
        .await;
    let st = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(st["job"]["status"], "completed", "{st}");
    assert_eq!(st["job"]["processed_items"], 20, "{st}");
    f.shutdown().await;
}
