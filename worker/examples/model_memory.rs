//! What a classify model costs in memory and time: the process's resident memory (and its
//! peak) before and after loading a model folder, its tokenizer alone, and the CPU of
//! embedding a passage.
//!
//!     cargo run --release -p docfleet-worker --example model_memory -- var/models/<name>

use std::time::Instant;

use docfleet_worker::embedding::{Embedder, Role};

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

fn main() -> anyhow::Result<()> {
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
    for _ in 0..runs {
        model.embed_all(Role::Passage, &passage, 48)?;
    }
    println!(
        "48-token passage: {:.1} ms each (wall, {runs} runs)",
        started.elapsed().as_secs_f64() * 1000.0 / f64::from(runs)
    );
    memory("after embedding")?;
    Ok(())
}
