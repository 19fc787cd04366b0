//! The whole entry point: format detection from the bytes, then whichever parser they select.
#![no_main]
use docfleet_worker::parse::{parse, ParseRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let req = ParseRequest {
        disable_ocr: true,
        ..ParseRequest::default()
    };
    let _ = parse(data, "upload", &req);
});
