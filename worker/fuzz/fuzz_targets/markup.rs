//! Text formats: plain text (any encoding), Markdown, CSV and HTML; the first byte picks one.
#![no_main]
use docfleet_worker::parse::{parse, ParseRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((pick, bytes)) = data.split_first() else {
        return;
    };
    let name = ["fuzz.txt", "fuzz.md", "fuzz.csv", "fuzz.html"][usize::from(*pick) % 4];
    let _ = parse(bytes, name, &ParseRequest::default());
});
