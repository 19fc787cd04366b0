//! What a classify model costs in memory and time: the process's resident memory (and its
//! peak) before and after loading a model folder, its tokenizer alone, and the CPU of
//! embedding a passage.
//!
//!     cargo run --release -p docfleet-worker --example model_memory -- var/models/<name>

use std::time::Instant;

use docfleet_worker::embedding::{Embedder, Role};

// The worker's allocator, so the figures are the worker's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn memory(tag: &str) -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .map_or(String::new(), |v| v.trim().to_owned())
    };
    println!(
        "{tag:<24} rss {:>12}  peak {:>12}",
        field("VmRSS:"),
        field("VmHWM:")
    );
    Ok(())
}

/// CPU time of every thread of the process so far, user and system.
fn cpu_seconds() -> anyhow::Result<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let usage = getrusage(UsageWho::RUSAGE_SELF)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(usage.user_time()) + secs(usage.system_time()))
}

fn main() -> anyhow::Result<()> {
    docfleet_worker::embedding::one_thread_per_inference();
    let dir = std::path::PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: model_memory <model folder>"))?,
    );
    memory("start")?;
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    memory("tokenizer alone")?;
    drop(tokenizer);
    let model = Embedder::load(&dir)?;
    memory("model loaded")?;
    let passage = vec!["Rechnung Nr. 4711. Leistung: Wartung. Gesamtbetrag 119,00 €. ".repeat(8)];
    let runs = 20;
    let started = Instant::now();
    let cpu_before = cpu_seconds()?;
    for _ in 0..runs {
        model.embed_all(Role::Passage, &passage, 48)?;
    }
    println!(
        "48-token passage: {:.1} ms wall, {:.1} ms CPU each ({runs} runs)",
        started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs),
        (cpu_seconds()? - cpu_before) * 1000.0 / f64::from(runs)
    );
    memory("after embedding")?;
    Ok(())
}
