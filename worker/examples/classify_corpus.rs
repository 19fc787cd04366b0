//! Classifies the labelled documents of `../shared/corpus` in-process, without the fleet: the
//! quick loop for working on the classify engine. The official evaluation runs through the
//! fleet (`deploy/local/classify-eval`); both use the rules in `deploy/local/classify-rules.json`.
//!
//!     cargo run --release -p docfleet-worker --example classify_corpus -- ../shared [model-dir]

use std::sync::Arc;
use std::time::Instant;

use docfleet_shared::model::ClassifyRule;
use docfleet_worker::classify::{Classifier, Document};
use docfleet_worker::embedding::Embedder;
use docfleet_worker::parse::{parse, ParseRequest};

fn main() -> anyhow::Result<()> {
    docfleet_worker::embedding::one_thread_per_inference();
    let args: Vec<String> = std::env::args().collect();
    let shared = std::path::PathBuf::from(args.get(1).map_or("../shared", String::as_str));
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules: Vec<ClassifyRule> = serde_json::from_str(&std::fs::read_to_string(
        here.join("../deploy/local/classify-rules.json"),
    )?)?;
    let model = match args.get(2) {
        Some(dir) => Ok(Arc::new(Embedder::load(std::path::Path::new(dir))?)),
        None => Err("no model folder given".to_owned()),
    };
    let classifier = Classifier::new(&rules, &[], model)?;
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        shared.join("corpus/manifest.json"),
    )?)?;
    // EVIDENCE=file.jsonl writes every rule's measurements per document, for analysis.
    let dump = std::env::var_os("EVIDENCE")
        .map(std::fs::File::create)
        .transpose()?;
    let (mut n, mut right, mut confident, mut confident_right) = (0, 0, 0, 0);
    let mut cpu = Vec::new();
    for f in manifest["files"].as_array().into_iter().flatten() {
        let Some(label) = f["label"].as_str() else {
            continue;
        };
        let path = f["path"].as_str().unwrap_or_default();
        let bytes = std::fs::read(shared.join("corpus").join(path))?;
        let req = ParseRequest {
            max_pages: Some(5),
            ..ParseRequest::default()
        };
        let (got, conf, why) = match parse(&bytes, path, &req) {
            Ok(parsed) => {
                let text = parsed.full_text("\n");
                let started = Instant::now();
                let doc = Document {
                    text: &text,
                    format: parsed.format,
                    page_count: parsed.page_count,
                    title: parsed.title.as_deref(),
                };
                let c = classifier.classify(&doc)?;
                if let Some(dump) = &dump {
                    let e = classifier.evidence(&doc)?;
                    let line = serde_json::json!({ "label": label, "path": path, "evidence": e });
                    use std::io::Write;
                    writeln!(&*dump, "{line}")?;
                }
                cpu.push(started.elapsed().as_secs_f64() * 1000.0);
                (c.kind.unwrap_or_default(), c.confidence, c.reasoning)
            }
            Err(e) => ("(failed)".into(), 0.0, e.to_string()),
        };
        n += 1;
        right += usize::from(got == label);
        if conf >= 0.8 {
            confident += 1;
            confident_right += usize::from(got == label);
        }
        let mark = if got == label { " " } else { "x" };
        println!("{mark} {label:>11} → {got:<11} {conf:.2} {path}");
        if got != label && std::env::var_os("VERBOSE").is_some() {
            println!("      {why}");
        }
    }
    cpu.sort_by(f64::total_cmp);
    println!(
        "{n} documents, accuracy {:.3}; confidence ≥ 0.8: {confident} answers, accuracy {:.3}; classify ms p50 {:.1} max {:.1}",
        right as f64 / n as f64,
        confident_right as f64 / confident.max(1) as f64,
        cpu.get(cpu.len() / 2).copied().unwrap_or(0.0),
        cpu.last().copied().unwrap_or(0.0),
    );
    Ok(())
}
