//! PDF text extraction (OCR off: Tesseract is a separate process with its own robustness).
#![no_main]
use docfleet_worker::parse::{parse, ParseRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut bytes = Vec::with_capacity(data.len() + 5);
    if !data.starts_with(b"%PDF-") {
        bytes.extend_from_slice(b"%PDF-");
    }
    bytes.extend_from_slice(data);
    let req = ParseRequest {
        disable_ocr: true,
        ..ParseRequest::default()
    };
    let _ = parse(&bytes, "fuzz.pdf", &req);
});
