//! DOCX, PPTX and spreadsheets: zip containers of XML. The first byte picks the reader, so one
//! corpus of Office files exercises all three.
#![no_main]
use docfleet_worker::office;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((pick, bytes)) = data.split_first() else {
        return;
    };
    let _ = match pick % 3 {
        0 => office::docx(bytes),
        1 => office::pptx(bytes),
        _ => office::spreadsheet(bytes),
    };
});
