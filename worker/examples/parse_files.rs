//! Times docfleet's parser file by file: `parse_files <file>…` prints ms and pages per file
//! (best of 5), to find where the parser is slow. The benchmark's `parse` scenario gives the
//! totals against `pdftotext`.
use std::time::Instant;

// As in the worker: the allocator changes parse time by a fifth.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let req = docfleet_worker::parse::ParseRequest {
        disable_ocr: true,
        ..Default::default()
    };
    for path in std::env::args().skip(1) {
        let Ok(bytes) = std::fs::read(&path) else {
            eprintln!("{path}: unreadable");
            continue;
        };
        let mut best = f64::MAX;
        let mut pages = 0;
        for _ in 0..5 {
            let t = Instant::now();
            pages = docfleet_worker::parse::parse(&bytes, &path, &req)
                .map(|d| d.pages.len())
                .unwrap_or(0);
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("{best:.2}\t{pages}\t{path}");
    }
}
