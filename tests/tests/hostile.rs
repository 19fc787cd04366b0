//! The hostile corpus (`tests/hostile/make_corpus.py`, generated here, nothing large
//! committed): files made to hurt a parser, through one worker process with the production
//! defaults and the test fleet's 30 s item deadline, while a tiny file waits behind them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use docfleet_tests::Fleet;
use serde_json::{json, Value};

/// Resident memory of a process and of everything it started, in MB (from /proc).
fn rss_mb(pid: u32) -> (f64, f64) {
    let own = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    let kids: f64 = descendants(pid).into_iter().map(own).sum();
    (own(pid), kids)
}

/// Every live process below `pid` (zombies are dead).
fn descendants(pid: u32) -> Vec<u32> {
    let mut parent = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // Fields after the command name: state, then the parent's pid.
        let mut rest = stat
            .rsplit_once(')')
            .map(|r| r.1)
            .unwrap_or("")
            .split_whitespace();
        let (state, ppid) = (rest.next(), rest.next().and_then(|v| v.parse::<u32>().ok()));
        if let (Some(s), Some(pp)) = (state, ppid) {
            if s != "Z" {
                parent.insert(p, pp);
            }
        }
    }
    parent
        .keys()
        .copied()
        .filter(|&p| {
            let mut at = p;
            while let Some(&pp) = parent.get(&at) {
                if pp == pid {
                    return true;
                }
                at = pp;
            }
            false
        })
        .collect()
}

struct Case {
    name: String,
    batch: String,
    started: Option<Instant>,
    ended: Option<(Instant, Value)>,
}

impl Case {
    /// Seconds from first seen running to ended (polled every 250 ms), and the item.
    fn outcome(&self) -> (f64, &Value) {
        let (end, item) = self.ended.as_ref().expect("ended");
        let secs = self
            .started
            .map_or(0.0, |s| end.duration_since(s).as_secs_f64());
        (secs, item)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hostile_file_holds_a_worker_or_its_memory() {
    let folder = std::env::temp_dir().join(format!("docfleet-hostile-{}", uuid::Uuid::new_v4()));
    let made = std::process::Command::new("python3")
        .arg(docfleet_tests::repo_root().join("tests/hostile/make_corpus.py"))
        .arg(&folder)
        .output()
        .expect("python3");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let corpus: Vec<Value> = String::from_utf8_lossy(&made.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("corpus line"))
        .collect();
    assert_eq!(corpus.len(), 10);
    // What fuzzing found (deploy/local/fuzz), kept as regression files: PDFs as they crashed
    // the in-process fuzz target, which must fail alone here.
    let regressions = docfleet_tests::repo_root().join("worker/fuzz/regressions/pdf");
    let found: Vec<(String, std::path::PathBuf, Value)> = std::fs::read_dir(&regressions)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let name = format!("fuzz-{}.pdf", e.file_name().to_string_lossy());
            (name, e.path(), json!({}))
        })
        .collect();
    assert!(
        !found.is_empty(),
        "no regression files in {}",
        regressions.display()
    );
    // Queued last, behind them all.
    let tiny = folder.join("tiny.txt");
    std::fs::write(&tiny, b"a tiny file behind the hostile ones").unwrap();
    let inputs: Vec<(String, std::path::PathBuf, Value)> = corpus
        .iter()
        .map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_owned();
            (name.clone(), folder.join(&name), c["parameters"].clone())
        })
        .chain(found)
        .chain([("tiny.txt".to_owned(), tiny, json!({}))])
        .collect();

    let f = Fleet::start(0).await;
    // The production defaults but a shorter deadline and memory bound, as the test fleet's.
    let deadline = f.worker_settings.item_deadline_secs;
    let memory = f.worker_settings.parse_memory_mb;
    let mut worker = f
        .spawn_worker_process(&[
            ("DOCFLEET__ITEM_DEADLINE_SECS", &deadline.to_string()),
            ("DOCFLEET__PARSE_MEMORY_MB", &memory.to_string()),
        ])
        .await;
    let wpid = worker.child.id().expect("worker pid");
    let dir = f.create_dir(&f.api_key, "hostile").await;
    let mut cases = Vec::new();
    for (name, path, parameters) in inputs {
        let bytes = std::fs::read(&path).expect("input file");
        let file = f.upload(&f.api_key, &dir, &name, bytes).await;
        let batch = f
            .create_batch(&json!({
                "job_config": { "parameters": parameters },
                "item_ids": [file],
            }))
            .await;
        cases.push(Case {
            name,
            batch,
            started: None,
            ended: None,
        });
    }
    let _ = std::fs::remove_dir_all(&folder);
    let queued = Instant::now();

    let (mut peak_worker, mut peak_children) = (0.0f64, 0.0f64);
    let limit = Duration::from_secs(20 * deadline);
    while cases.iter().any(|c| c.ended.is_none()) {
        assert!(
            queued.elapsed() < limit,
            "not all items ended within {limit:?}"
        );
        assert!(
            worker.child.try_wait().ok().flatten().is_none(),
            "the worker process died"
        );
        let (w, k) = rss_mb(wpid);
        peak_worker = peak_worker.max(w);
        peak_children = peak_children.max(k);
        for c in cases.iter_mut().filter(|c| c.ended.is_none()) {
            let items = f.items(&c.batch).await;
            let Some(item) = items.first() else { continue };
            match item["status"].as_str() {
                Some("processing") if c.started.is_none() => c.started = Some(Instant::now()),
                Some("completed" | "failed" | "skipped") => {
                    c.ended = Some((Instant::now(), item.clone()));
                }
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    println!("| file | outcome | seconds | error_message |");
    println!("|---|---|---|---|");
    for c in &cases {
        let (secs, item) = c.outcome();
        println!(
            "| {} | {} | {secs:.1} | {} |",
            c.name,
            item["status"].as_str().unwrap_or_default(),
            item["error_message"].as_str().unwrap_or("")
        );
    }
    println!("peak RSS: worker {peak_worker:.0} MB, its children together {peak_children:.0} MB");

    // An item is `processing` from its claim; its deadline runs from when a CPU slot takes it.
    // A worker claims `concurrency` (2 × cores) items for `cpu_slots` (cores) slots, so a
    // claimed item waits at most one deadline for its slot.
    let bound = (2 * deadline + 10) as f64;
    for c in &cases {
        let (secs, item) = c.outcome();
        assert!(
            secs <= bound,
            "{} ran {secs:.1} s from its claim, past its {deadline} s deadline and one wait",
            c.name
        );
        if item["status"] != "completed" {
            assert!(
                !item["error_message"].as_str().unwrap_or("").is_empty(),
                "{} ended {} without saying why",
                c.name,
                item["status"]
            );
        }
    }
    let tiny_item = cases.last().expect("tiny").outcome().1;
    assert_eq!(tiny_item["status"], "completed", "{tiny_item}");
    // Every hostile item ran once: none was retried because another took the worker down.
    for c in &cases {
        let item_id = c.outcome().1["item_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let attempts: Option<String> = redis::cmd("HGET")
            .arg(f.keys.item(&c.batch, &item_id))
            .arg("attempts")
            .query_async(&mut f.redis.clone())
            .await
            .expect("redis");
        assert_eq!(
            attempts.as_deref(),
            Some("1"),
            "{} ran more than once",
            c.name
        );
    }
    // The worker's own memory stays small: parses happen in bounded children.
    assert!(peak_worker < 400.0, "worker peak RSS {peak_worker:.0} MB");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = descendants(wpid);
    assert!(left.is_empty(), "processes left behind: {left:?}");
    worker.terminate().await;
    f.shutdown().await;
}
