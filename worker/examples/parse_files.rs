//! Times docfleet's parser file by file: `parse_files [--text DIR] [--ocr] <file>…` prints ms,
//! pages, pages the second engine read and pages OCR read per file (best of 5; one run with
//! `--text`), to find where the parser is slow and which engine read what. With `--text`, each
//! file's page text is also written to `DIR/<file name>.txt` (pages joined by form feeds),
//! for `tests/pdfs/score.py`. The benchmark's `parse` scenario gives the totals against
//! `pdftotext`.
use std::time::Instant;

// As in the worker: the allocator changes parse time by a fifth.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let text_dir = args.iter().position(|a| a == "--text").map(|i| {
        let dir = args.remove(i + 1);
        args.remove(i);
        std::path::PathBuf::from(dir)
    });
    let ocr = args
        .iter()
        .position(|a| a == "--ocr")
        .map(|i| args.remove(i));
    let req = docfleet_worker::parse::ParseRequest {
        disable_ocr: ocr.is_none(),
        ..Default::default()
    };
    for path in args {
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!("{path}: unreadable");
            continue;
        };
        let mut best = f64::MAX;
        let mut last = None;
        for _ in 0..if text_dir.is_some() { 1 } else { 5 } {
            let t = Instant::now();
            last = Some(docfleet_worker::parse::parse(&bytes, &path, &req));
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        let Some(parsed) = last else { continue };
        let count =
            |f: fn(&docfleet_worker::parse::Parsed) -> usize| parsed.as_ref().map(f).unwrap_or(0);
        let pages = count(|d| d.pages.len());
        let reread = count(|d| d.reread_pages.len());
        let ocr = count(|d| d.ocr_pages.len());
        println!("{best:.2}\t{pages}\t{reread}\t{ocr}\t{path}");
        if let (Some(dir), Ok(doc)) = (&text_dir, &parsed) {
            let name = std::path::Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let text: Vec<&str> = doc.pages.iter().map(|p| p.text.as_str()).collect();
            if let Err(e) = std::fs::write(dir.join(format!("{name}.txt")), text.join("\x0c")) {
                eprintln!("{path}: {e}");
            }
        }
    }
}
