//! `redis.wait_aof`: workers ack only after Redis says the outcome is in its AOF on disk.
//! Run on a Redis new enough for `WAITAOF` (7.2 or later), which the test starts on its own
//! port with `appendfsync everysec`: the setting under which a host crash forgets writes.
//! deploy/local/test provides that Redis (`DOCFLEET_REDIS_AOF_SERVER`); the machine's own
//! Redis may be older, and a worker set to wait refuses it.

use std::time::Duration;

use docfleet_tests::Fleet;
use serde_json::json;

/// The `redis-server` to start: `DOCFLEET_REDIS_AOF_SERVER`, or the one deploy/local/test
/// unpacks into `var/redis`.
fn redis_server() -> std::path::PathBuf {
    let path = std::env::var_os("DOCFLEET_REDIS_AOF_SERVER")
        .map(Into::into)
        .unwrap_or_else(|| docfleet_tests::repo_root().join("var/redis/redis-server"));
    assert!(
        path.exists(),
        "no redis-server with WAITAOF at {} (deploy/local/test unpacks one there)",
        path.display()
    );
    path
}

/// A Redis on its own port keeping an AOF synced each second; stopped and removed on drop.
struct AofRedis {
    port: u16,
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl AofRedis {
    fn start(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("docfleet-aof-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new(redis_server())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            .arg("--dir")
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, dir, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// How many `WAITAOF` calls this Redis has served.
    async fn wait_aof_calls(&self) -> u64 {
        let mut con = docfleet_shared::services::connect_redis(&self.url())
            .await
            .expect("redis");
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut con)
            .await
            .expect("info");
        stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_waitaof:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for AofRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acks_wait_for_the_aof_on_a_redis_that_can() {
    let redis = AofRedis::start(Fleet::free_port().await);
    let mut f = Fleet::start_on_redis(0, &redis.url()).await;
    let mut ws = f.worker_settings.clone();
    ws.redis.wait_aof = true;
    f.start_worker_with(ws).await;
    let dir = f.create_dir(&f.api_key, "aof").await;
    let ids = f.upload_texts(&dir, "t", 30).await;
    let id = f
        .create_batch(&json!({ "job_config": { "parameters": {} }, "item_ids": ids }))
        .await;
    let st = f.wait_terminal(&id, Duration::from_secs(60)).await;
    assert_eq!(st["job"]["status"], "completed", "{st}");
    assert_eq!(st["job"]["processed_items"], 30, "{st}");
    // The start-up check is one call; every ledger round with outcomes is another.
    let calls = redis.wait_aof_calls().await;
    assert!(
        calls >= 2,
        "the worker never waited for the AOF ({calls} WAITAOF calls)"
    );
    f.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_set_to_wait_refuses_a_redis_without_an_aof() {
    // The machine's Redis keeps no AOF (and may predate WAITAOF): waiting cannot be honoured.
    let f = Fleet::start(0).await;
    let mut ws = f.worker_settings.clone();
    ws.redis.wait_aof = true;
    let refused = docfleet_worker::run(ws, std::future::pending())
        .await
        .expect_err("a worker set to wait for an AOF started without one");
    let text = refused.to_string();
    assert!(text.contains("redis.wait_aof needs Redis 7.2"), "{text}");
    f.shutdown().await;
}
