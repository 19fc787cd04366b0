//! The parse engine: bytes in, per-page text, markdown and structured items out.
//!
//! Text-layer PDFs go through `unpdf` (MIT, pure Rust; the most accurate Rust extractor on
//! our corpus, see `../shared/parse-bench.md`). Plain text, Markdown and CSV are read
//! directly, decoding non-UTF-8 input with `encoding_rs`. Everything else fails with a
//! message naming the detected type; nothing is guessed.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Why a document could not be parsed. Every variant is permanent for that file.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// A format this build does not read.
    #[error("unsupported file type: {0}")]
    Unsupported(String),
    /// The file claims a format but its bytes are broken.
    #[error("could not read {format}: {reason}")]
    Corrupt {
        /// Detected format.
        format: &'static str,
        /// What the reader said.
        reason: String,
    },
    /// The selected pages do not exist.
    #[error("none of the selected pages exist (document has {0} pages)")]
    NoPages(usize),
    /// The bounded parser process failed; the message says how.
    #[error("{0}")]
    Isolated(String),
}

/// What to extract.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ParseRequest {
    /// 0-based pages to keep; all when `None`.
    pub target_pages: Option<Vec<u32>>,
    /// At most this many pages.
    pub max_pages: Option<u32>,
    /// Skip OCR: images fail, scanned PDF pages stay (almost) empty.
    pub disable_ocr: bool,
    /// SDK language codes for OCR (`en`, `fr`, `ch_sim`…); English when empty.
    pub languages: Vec<String>,
    /// Scanned pages OCR'd per document at most (`max_ocr_pages`); `None`: no cap.
    #[serde(default)]
    pub max_ocr_pages: Option<u32>,
    /// Longest one tool run (render, OCR) may take, in seconds; 0: the default of 300. In the
    /// parser child the parent's deadline kills everything sooner.
    #[serde(default)]
    pub tool_bound_secs: u64,
    /// Screenshots of the selected pages (`images_to_save: ["screenshot"]`).
    #[serde(default)]
    pub screenshots: bool,
    /// The images embedded in the document (`images_to_save: ["embedded"]`).
    #[serde(default)]
    pub embedded_images: bool,
}

impl ParseRequest {
    /// The bound of one tool run.
    pub fn tool_bound(&self) -> std::time::Duration {
        std::time::Duration::from_secs(match self.tool_bound_secs {
            0 => 300,
            s => s,
        })
    }
}

/// One page of output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page {
    /// 1-based.
    pub page_number: u32,
    /// Plain text.
    pub text: String,
    /// Markdown.
    pub md: String,
    /// Structured items (`heading`, `text`, `table`).
    pub items: Vec<Value>,
    /// Points.
    pub width: f32,
    /// Points.
    pub height: f32,
    /// Whether the page was read.
    pub success: bool,
    /// Why not, when it was not.
    pub error: Option<String>,
}

impl Page {
    /// A page of plain text (OCR, the second engine): its Markdown is the text, its items its
    /// paragraphs; its size is not known.
    fn of_text(page_number: u32, text: String) -> Self {
        Self {
            page_number,
            items: paragraph_items(&text),
            md: text.clone(),
            text,
            width: 0.0,
            height: 0.0,
            success: true,
            error: None,
        }
    }

    /// The page's text, Markdown and items, replaced by plain `text` another reader read.
    fn set_text(&mut self, text: String) {
        self.items = paragraph_items(&text);
        self.md = text.clone();
        self.text = text;
    }
}

/// A parsed document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Parsed {
    /// Selected pages in order.
    pub pages: Vec<Page>,
    /// Detected format.
    #[serde(deserialize_with = "known_format")]
    pub format: StaticStr,
    /// Pages in the whole document.
    pub page_count: usize,
    /// Document title, when the file says.
    pub title: Option<String>,
    /// 1-based numbers of the pages whose text came from OCR.
    pub ocr_pages: Vec<u32>,
    /// Pages that looked scanned but were not OCR'd: past the document's OCR page cap.
    #[serde(default)]
    pub ocr_skipped: Vec<u32>,
    /// 1-based numbers of the PDF pages the first engine misread and the second read.
    #[serde(default)]
    pub reread_pages: Vec<u32>,
}

/// Spelled as an alias so serde does not treat the field as borrowed from the input.
type StaticStr = &'static str;

/// Formats a parse can report, so one read back from the parser process is `'static` again.
const FORMATS: &[&str] = &[
    "pdf", "docx", "pptx", "xlsx", "html", "text", "markdown", "csv", "png", "jpeg", "tiff",
];

fn known_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let s = String::deserialize(d)?;
    FORMATS
        .iter()
        .find(|f| **f == s)
        .copied()
        .ok_or_else(|| serde::de::Error::custom(format!("unknown format {s:?}")))
}

impl Parsed {
    /// The document's language (ISO 639-3, e.g. `eng`), when the text says so reliably.
    pub fn language(&self) -> Option<&'static str> {
        // A few thousand characters settle the language; more only costs time.
        let mut sample = String::new();
        for page in &self.pages {
            sample.extend(page.text.chars().take(4_000 - sample.len().min(4_000)));
            sample.push('\n');
            if sample.len() >= 4_000 {
                break;
            }
        }
        // Under a sentence's worth of letters no detector is reliable, and whatlang's fixed
        // cost per call would dominate parsing a tiny file.
        if sample.chars().filter(|c| c.is_alphabetic()).count() < 40 {
            return None;
        }
        whatlang::detect(&sample)
            .filter(|i| i.is_reliable())
            .map(|i| i.lang().code())
    }

    /// Drops page header and footer items (`hide_headers` / `hide_footers`) where the format
    /// marks them (DOCX); the page text is rebuilt from what remains.
    pub fn hide(&mut self, headers: bool, footers: bool) {
        for page in &mut self.pages {
            let before = page.items.len();
            page.items.retain(|i| {
                let t = i["type"].as_str().unwrap_or("");
                !(headers && t == "header" || footers && t == "footer")
            });
            if page.items.len() != before {
                page.text = page
                    .items
                    .iter()
                    .filter_map(|i| i["value"].as_str())
                    .collect::<Vec<_>>()
                    .join("\n");
            }
        }
    }

    /// All page texts joined.
    pub fn full_text(&self, separator: &str) -> String {
        self.pages
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(separator)
    }
}

/// Detects the format from the bytes first, the name second.
pub fn detect(bytes: &[u8], name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    let head = &bytes[..bytes.len().min(1024)];
    if head.windows(5).any(|w| w == b"%PDF-") {
        return "pdf";
    }
    if bytes.starts_with(b"PK\x03\x04") {
        return match ext {
            "docx" => "docx",
            "pptx" => "pptx",
            "xlsx" => "xlsx",
            _ => "zip",
        };
    }
    if bytes.starts_with(b"\x89PNG") {
        return "png";
    }
    if bytes.starts_with(b"\xFF\xD8\xFF") {
        return "jpeg";
    }
    if bytes.starts_with(b"II*\0") || bytes.starts_with(b"MM\0*") {
        return "tiff";
    }
    if bytes.starts_with(b"\xD0\xCF\x11\xE0") {
        return "ole"; // legacy Office or an encrypted OOXML container
    }
    if looks_binary(head) {
        return "binary";
    }
    match ext {
        "md" | "markdown" => "markdown",
        "csv" => "csv",
        "htm" | "html" => "html",
        _ if looks_html(head) => "html",
        _ => "text",
    }
}

fn looks_html(head: &[u8]) -> bool {
    let h = String::from_utf8_lossy(head).to_ascii_lowercase();
    let h = h.trim_start();
    h.starts_with("<!doctype html") || h.starts_with("<html")
}

fn looks_binary(head: &[u8]) -> bool {
    if head.contains(&0) {
        // UTF-16 text has NULs too; a BOM says so.
        return !(head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF"));
    }
    let control = head
        .iter()
        .filter(|b| **b < 0x09 || (**b > 0x0D && **b < 0x20))
        .count();
    control * 10 > head.len()
}

/// [`parse`], then the images `req` asks for.
pub fn parse_with_images(
    bytes: &[u8],
    name: &str,
    req: &ParseRequest,
) -> Result<(Parsed, Vec<crate::images::Image>), ParseError> {
    let parsed = parse(bytes, name, req)?;
    let images = crate::images::collect(&parsed, bytes, req)?;
    Ok((parsed, images))
}

/// Parses a document.
pub fn parse(bytes: &[u8], name: &str, req: &ParseRequest) -> Result<Parsed, ParseError> {
    let format = detect(bytes, name);
    let parsed = match format {
        "pdf" => {
            let mut on_disk = OnDisk::new(bytes, req.tool_bound());
            let mut p = match parse_pdf(bytes, req) {
                Ok(p) => p,
                Err(first) => read_with_second_engine(&mut on_disk).ok_or(first)?,
            };
            // Only the pages asked for are read again or OCR'd.
            p = select(p, req)?;
            reread_misread_pages(&mut p, &mut on_disk);
            ocr_scanned_pages(&mut p, &mut on_disk, req);
            p
        }
        "text" | "markdown" | "csv" => parse_text(bytes, format, req)?,
        "zip" => {
            // A zip named otherwise may still be an Office document: look inside.
            if let Ok(p) = crate::office::docx(bytes) {
                p
            } else if let Ok(p) = crate::office::pptx(bytes) {
                p
            } else if let Ok(p) = crate::office::spreadsheet(bytes) {
                p
            } else {
                return Err(ParseError::Unsupported(
                    "zip (an archive, not a document)".into(),
                ));
            }
        }
        "docx" => crate::office::docx(bytes)?,
        "pptx" => crate::office::pptx(bytes)?,
        "xlsx" => crate::office::spreadsheet(bytes)?,
        "html" => parse_html(bytes),
        "ole" => {
            return Err(ParseError::Unsupported(
                "ole (a legacy Office file, or an encrypted OOXML document)".into(),
            ))
        }
        "png" | "jpeg" | "tiff" => parse_image(bytes, format, req)?,
        other => {
            return Err(ParseError::Unsupported(format!(
                "{other} (the bytes match no supported format)"
            )))
        }
    };
    select(parsed, req)
}

fn parse_image(
    bytes: &[u8],
    format: &'static str,
    req: &ParseRequest,
) -> Result<Parsed, ParseError> {
    if req.disable_ocr {
        return Err(ParseError::Unsupported(format!(
            "{format} image, and disable_ocr is set: an image has no text without OCR"
        )));
    }
    let texts = crate::ocr::image(
        bytes,
        &crate::ocr::lang_arg(&req.languages),
        req.tool_bound(),
    )
    .map_err(|e| match e {
        ParseError::Corrupt { reason, .. } => ParseError::Corrupt { format, reason },
        other => other,
    })?;
    let pages: Vec<Page> = texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| Page::of_text(i as u32 + 1, t))
        .collect();
    Ok(Parsed {
        page_count: pages.len(),
        ocr_pages: pages.iter().map(|p| p.page_number).collect(),
        ocr_skipped: Vec::new(),
        reread_pages: Vec::new(),
        pages,
        format,
        title: None,
    })
}

/// A PDF's bytes, written to scratch for the poppler tools the first time one needs them.
struct OnDisk<'a> {
    pdf: &'a [u8],
    bound: std::time::Duration,
    doc: Option<crate::ocr::PdfOnDisk>,
}

impl<'a> OnDisk<'a> {
    fn new(pdf: &'a [u8], bound: std::time::Duration) -> Self {
        Self {
            pdf,
            bound,
            doc: None,
        }
    }

    fn get(&mut self) -> Result<&crate::ocr::PdfOnDisk, ParseError> {
        let doc = match self.doc.take() {
            Some(doc) => doc,
            None => crate::ocr::PdfOnDisk::write(self.pdf)?,
        };
        Ok(self.doc.insert(doc))
    }
}

/// Whether a page's text looks misread: (nearly) none, glyphs that map to no character
/// (U+FFFD, private-use and control characters: a font without a usable `ToUnicode`), or no
/// word breaks (glyph positions read as one run). Such a page is read again by the second
/// engine, and OCR'd when that finds no text either.
fn misread(text: &str) -> bool {
    let (mut chars, mut unmapped, mut longest, mut run) = (0usize, 0usize, 0usize, 0usize);
    for c in text.chars() {
        if c.is_whitespace() {
            run = 0;
            continue;
        }
        chars += 1;
        run += 1;
        longest = longest.max(run);
        let private = matches!(c as u32, 0xE000..=0xF8FF | 0xF0000..=0x10FFFF);
        if c == '\u{FFFD}' || private || c.is_control() {
            unmapped += 1;
        }
    }
    chars < 10
        || unmapped * 50 >= chars
        || (longest > 60 && longest * 2 > chars)
        || copied_share(text) >= COPIED
}

/// A page whose text is this much copies of itself was drawn more than once.
const COPIED: f64 = 0.3;

/// The share of a page's text that is a copy of what comes just before it: text drawn several
/// times at small offsets (fake bold, shadows), which unpdf reads once per drawing
/// ("公司公司公司", "LTD. ANHUI ANLI … LTD. ANHUI ANLI", "项项目目"). Spaces are left out, since each
/// drawing may be spaced differently. A stretch counts when it equals the stretch right
/// before it (a tandem copy, at a distance of at most 256 characters), found through
/// 8-character windows with at least 4 distinct characters (not a rule of dashes or a row
/// of zeros). A table's rows share words with the row above, but not all of it, so they do
/// not count.
fn copied_share(text: &str) -> f64 {
    const UNIT: usize = 8;
    const REACH: usize = 256;
    // Where each window was last seen, by hash, as an LZ compressor looks for matches: a
    // collision costs a missed repeat, never a false one (the windows are compared).
    const SLOTS: usize = 1 << 12;
    let chars: Vec<char> = text.chars().filter(|c| !c.is_whitespace()).collect();
    if chars.len() < 5 * UNIT {
        return 0.0;
    }
    let mut last = vec![usize::MAX; SLOTS];
    let (mut covered, mut until) = (0usize, 0usize);
    // The run of consecutive windows that repeat at one distance: (distance, first window).
    let mut run: Option<(usize, usize)> = None;
    for (i, unit) in chars.windows(UNIT).enumerate() {
        let hash = unit.iter().fold(0u64, |h, c| {
            (h ^ u64::from(*c)).wrapping_mul(0x0100_0000_01b3)
        });
        let slot = &mut last[(hash >> 20) as usize % SLOTS];
        let at = std::mem::replace(slot, i);
        let distinct = || (0..UNIT).filter(|&k| !unit[..k].contains(&unit[k])).count();
        let repeats =
            at != usize::MAX && i - at <= REACH && chars[at..at + UNIT] == *unit && distinct() >= 4;
        if !repeats {
            run = None;
            continue;
        }
        let distance = i - at;
        let start = match run {
            Some((d, start)) if d == distance => start,
            _ => i,
        };
        run = Some((distance, start));
        // The stretch from `start` to the window's end equals the one `distance` before it;
        // once it is as long as the distance, it is a whole copy.
        let end = i + UNIT;
        if end - start >= distance {
            covered += end - until.max(start);
            until = end;
        }
    }
    // Each glyph drawn twice reads as doubled characters ("项项目目"): the second of each
    // pair is a copy too (a run of one character, a rule or "000", counts once).
    let doubled = (1..chars.len())
        .filter(|&i| chars[i] == chars[i - 1] && (i < 2 || chars[i - 1] != chars[i - 2]))
        .count();
    covered.max(doubled) as f64 / chars.len() as f64
}

/// Pages unpdf misread ([`misread`]) are read by `pdftotext`, and its text kept where it
/// reads: two extractors fail on different fonts, and poppler's is the reference. Listed in
/// `reread_pages`.
fn reread_misread_pages(parsed: &mut Parsed, on_disk: &mut OnDisk) {
    let pages: Vec<u32> = parsed
        .pages
        .iter()
        .filter(|p| misread(&p.text))
        .map(|p| p.page_number)
        .collect();
    if pages.is_empty() {
        return;
    }
    let bound = on_disk.bound;
    let Ok(texts) = on_disk
        .get()
        .and_then(|d| crate::ocr::text_layer(d, Some(&pages), bound))
    else {
        // Without the second engine the first one's text stays.
        return;
    };
    let letters = |t: &str| t.chars().filter(|c| !c.is_whitespace()).count() as f64;
    for (number, text) in texts {
        if misread(&text) {
            continue;
        }
        let Some(page) = parsed.pages.iter_mut().find(|p| p.page_number == number) else {
            continue;
        };
        // Text drawn several times is read right when the copies are gone: about the copied
        // share shorter. Text that is itself repeated (a demo of rotations) is kept, not
        // exchanged for another reading of the same repeats.
        let copied = copied_share(&page.text);
        if copied >= COPIED && letters(&text) > (1.1 - copied) * letters(&page.text) {
            continue;
        }
        page.set_text(text);
        parsed.reread_pages.push(number);
    }
}

/// A PDF unpdf cannot open, read whole by `pdftotext`; `None` when that reads nothing either.
fn read_with_second_engine(on_disk: &mut OnDisk) -> Option<Parsed> {
    let bound = on_disk.bound;
    let texts = crate::ocr::text_layer(on_disk.get().ok()?, None, bound).ok()?;
    if texts.iter().all(|(_, t)| t.trim().is_empty()) {
        return None;
    }
    let pages: Vec<Page> = texts
        .into_iter()
        .map(|(page_number, text)| Page::of_text(page_number, text))
        .collect();
    Some(Parsed {
        page_count: pages.len(),
        reread_pages: pages.iter().map(|p| p.page_number).collect(),
        pages,
        format: "pdf",
        title: None,
        ocr_pages: Vec::new(),
        ocr_skipped: Vec::new(),
    })
}

/// The share of a page that images must cover for a page without text to be read as a scan
/// (the corpus' scans: 0.3 to 1.0; its blank and drawn pages: 0).
const SCAN_COVER: f64 = 0.2;

/// Pages whose text layer is (nearly) empty and that images cover are scans: render and OCR
/// them, at most `max_ocr_pages` of them; the rest are named in `ocr_skipped`.
fn ocr_scanned_pages(parsed: &mut Parsed, on_disk: &mut OnDisk, req: &ParseRequest) {
    if req.disable_ocr {
        return;
    }
    let little_text: Vec<&Page> = parsed
        .pages
        .iter()
        .filter(|p| p.text.chars().filter(|c| !c.is_whitespace()).count() < 10)
        .collect();
    let (Some(first), Some(last)) = (
        little_text.iter().map(|p| p.page_number).min(),
        little_text.iter().map(|p| p.page_number).max(),
    ) else {
        return;
    };
    // A page with (almost) no text layer is a scan only if images cover a good part of it
    // ([`SCAN_COVER`]): a blank page, or one of drawings, has nothing OCR would read. Without
    // the listing (no pdfimages), every such page is tried.
    let doc = on_disk.get();
    let cover = doc
        .as_ref()
        .ok()
        .and_then(|d| crate::ocr::image_cover(d, first, last, req.tool_bound()).ok());
    let mut scanned: Vec<u32> = little_text
        .iter()
        .filter(|p| {
            let Some(cover) = &cover else { return true };
            let area = if p.width > 0.0 && p.height > 0.0 {
                f64::from(p.width) * f64::from(p.height)
            } else {
                612.0 * 792.0
            };
            cover.get(&p.page_number).copied().unwrap_or(0.0) >= SCAN_COVER * area
        })
        .map(|p| p.page_number)
        .collect();
    if scanned.is_empty() {
        return;
    }
    if let Some(cap) = req.max_ocr_pages {
        parsed.ocr_skipped = scanned.split_off(scanned.len().min(cap as usize));
    }
    let lang = crate::ocr::lang_arg(&req.languages);
    let read: Vec<(u32, Result<String, String>)> =
        match doc.and_then(|d| crate::ocr::pdf_pages(d, &scanned, &lang, req.tool_bound())) {
            Ok(r) => r
                .into_iter()
                .map(|(n, t)| (n, t.map_err(|e| e.to_string())))
                .collect(),
            Err(e) => scanned.iter().map(|&n| (n, Err(e.to_string()))).collect(),
        };
    for (number, text) in read {
        let Some(page) = parsed.pages.iter_mut().find(|p| p.page_number == number) else {
            continue;
        };
        match text {
            Ok(text) => {
                page.set_text(text);
                parsed.ocr_pages.push(number);
            }
            Err(e) => {
                // The text layer (if any) stays; the page says why it could not be read.
                page.error = Some(e);
                page.success = false;
            }
        }
    }
}

fn select(mut parsed: Parsed, req: &ParseRequest) -> Result<Parsed, ParseError> {
    if let Some(targets) = &req.target_pages {
        parsed
            .pages
            .retain(|p| targets.contains(&(p.page_number - 1)));
        if parsed.pages.is_empty() {
            return Err(ParseError::NoPages(parsed.page_count));
        }
    }
    if let Some(max) = req.max_pages {
        parsed.pages.truncate(max as usize);
    }
    Ok(parsed)
}

fn decode_text(bytes: &[u8]) -> String {
    if let Some((enc, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, _) = enc.decode_without_bom_handling(&bytes[bom_len..]);
        return text.into_owned();
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        // Not UTF-8 and no BOM: Windows-1252 is the most common legacy encoding.
        Err(_) => encoding_rs::WINDOWS_1252.decode(bytes).0.into_owned(),
    }
}

/// Records in one page of a CSV file (ours: CSV has no pages; a thousand rows read well and
/// let `max_pages` / `target_pages` take part of a long table).
const CSV_PAGE_ROWS: u64 = 1000;

/// Most bytes of a text, Markdown or CSV file that the pages asked for may hold: each page is
/// kept as text, Markdown and items (a CSV page also as rows, CSV and HTML), so more would
/// not fit the parser's memory bound.
const MAX_SELECTED_TEXT: usize = 32 << 20;

/// A CSV text cut into pages of [`CSV_PAGE_ROWS`] records, at record boundaries (a quoted
/// field may hold line breaks). A malformed record ends the paging: the rest is one page.
fn csv_chunks(text: &str) -> Vec<&str> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::ByteRecord::new();
    let (mut chunks, mut start, mut rows) = (Vec::new(), 0usize, 0u64);
    while let Ok(true) = reader.read_byte_record(&mut record) {
        rows += 1;
        if rows % CSV_PAGE_ROWS == 0 {
            let end = usize::try_from(reader.position().byte()).unwrap_or(text.len());
            // Record boundaries are byte offsets after a line break: always char boundaries.
            if let Some(chunk) = text.get(start..end) {
                chunks.push(chunk);
                start = end;
            }
        }
    }
    if start < text.len() || chunks.is_empty() {
        chunks.push(&text[start..]);
    }
    chunks
}

/// Plain text, Markdown or CSV: cut into pages (form feeds; CSV records), and only the pages
/// asked for are read into their forms.
fn parse_text(
    bytes: &[u8],
    format: &'static str,
    req: &ParseRequest,
) -> Result<Parsed, ParseError> {
    let text = decode_text(bytes);
    let chunks: Vec<&str> = match format {
        "csv" => csv_chunks(&text),
        // A form feed is the one page break plain text has.
        _ => text.split('\u{000C}').collect(),
    };
    let wanted = |i: usize| {
        req.target_pages
            .as_ref()
            .is_none_or(|t| u32::try_from(i).is_ok_and(|i| t.contains(&i)))
    };
    let limit = req.max_pages.map_or(usize::MAX, |m| m as usize);
    let mut pages = Vec::new();
    let mut selected = 0usize;
    for (i, chunk) in chunks.iter().enumerate().filter(|(i, _)| wanted(*i)) {
        if pages.len() >= limit {
            break;
        }
        selected += chunk.len();
        if selected > MAX_SELECTED_TEXT {
            return Err(ParseError::Corrupt {
                format,
                reason: format!(
                    "the pages asked for hold more than {} MiB of text; ask for fewer with \
                     max_pages or target_pages (the file has {} pages{})",
                    MAX_SELECTED_TEXT >> 20,
                    chunks.len(),
                    if format == "csv" {
                        format!(" of {CSV_PAGE_ROWS} rows")
                    } else {
                        String::new()
                    }
                ),
            });
        }
        let (md, items) = match format {
            "markdown" => ((*chunk).to_owned(), markdown_items(chunk)),
            "csv" => csv_page(chunk),
            _ => ((*chunk).to_owned(), paragraph_items(chunk)),
        };
        pages.push(Page {
            page_number: i as u32 + 1,
            text: (*chunk).to_owned(),
            md,
            items,
            width: 0.0,
            height: 0.0,
            success: true,
            error: None,
        });
    }
    let title = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.trim_start_matches('#').trim().chars().take(200).collect());
    Ok(Parsed {
        page_count: chunks.len(),
        pages,
        format,
        title,
        ocr_pages: Vec::new(),
        ocr_skipped: Vec::new(),
        reread_pages: Vec::new(),
    })
}

/// The charset an HTML document declares (BOM, then `<meta charset>` / `content=…charset=`).
fn html_encoding(bytes: &[u8]) -> &'static encoding_rs::Encoding {
    if let Some((enc, _)) = encoding_rs::Encoding::for_bom(bytes) {
        return enc;
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]).to_ascii_lowercase();
    if let Some(i) = head.find("charset=") {
        let rest = &head[i + 8..];
        let label: String = rest
            .trim_start_matches(['"', '\''])
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
            .collect();
        if let Some(enc) = encoding_rs::Encoding::for_label(label.as_bytes()) {
            return enc;
        }
    }
    encoding_rs::UTF_8
}

/// HTML: decoded by its declared charset; scripts, styles and navigation dropped; main
/// content as markdown (htmd) and as text (html2text).
fn parse_html(bytes: &[u8]) -> Parsed {
    let (html, _, _) = html_encoding(bytes).decode(bytes);
    let md = htmd::HtmlToMarkdown::builder()
        .skip_tags(vec![
            "script", "style", "noscript", "nav", "head", "iframe", "svg",
        ])
        .build()
        .convert(&html)
        .unwrap_or_default();
    let text = html2text::config::plain()
        .string_from_read(html.as_bytes(), 100_000)
        .unwrap_or_else(|_| md.clone());
    let title = md
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim().to_owned());
    let page = Page {
        page_number: 1,
        items: markdown_items(&md),
        text,
        md,
        width: 0.0,
        height: 0.0,
        success: true,
        error: None,
    };
    Parsed {
        pages: vec![page],
        format: "html",
        page_count: 1,
        title,
        ocr_pages: Vec::new(),
        ocr_skipped: Vec::new(),
        reread_pages: Vec::new(),
    }
}

fn paragraph_items(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| json!({ "type": "text", "value": p, "md": p }))
        .collect()
}

fn markdown_items(text: &str) -> Vec<Value> {
    let mut items = Vec::new();
    for block in text.split("\n\n").map(str::trim).filter(|b| !b.is_empty()) {
        let hashes = block.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && block[hashes..].starts_with(' ') && !block.contains('\n') {
            let value = block[hashes..].trim();
            items.push(json!({ "type": "heading", "level": hashes, "value": value, "md": block }));
        } else {
            items.push(json!({ "type": "text", "value": block, "md": block }));
        }
    }
    items
}

fn csv_page(text: &str) -> (String, Vec<Value>) {
    // The csv crate reads quoted fields across lines; a malformed record ends the table
    // rather than the page.
    let rows: Vec<Vec<String>> = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes())
        .records()
        .map_while(Result::ok)
        .filter(|r| r.iter().any(|c| !c.trim().is_empty()))
        .map(|r| r.iter().map(str::to_owned).collect())
        .collect();
    let item = table_item(&rows);
    let md = item["md"].as_str().unwrap_or_default().to_owned();
    (md, vec![item])
}

/// A `table` item in every representation the SDK's `TableItem` requires.
pub(crate) fn table_item(rows: &[Vec<String>]) -> Value {
    let md = markdown_table(rows);
    let csv = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| {
                    if c.contains([',', '"', '\n']) {
                        format!("\"{}\"", c.replace('"', "\"\""))
                    } else {
                        c.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let esc = |c: &str| {
        c.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let html = format!(
        "<table>{}</table>",
        rows.iter()
            .map(|r| format!(
                "<tr>{}</tr>",
                r.iter()
                    .map(|c| format!("<td>{}</td>", esc(c)))
                    .collect::<String>()
            ))
            .collect::<String>()
    );
    json!({ "type": "table", "rows": rows, "md": md, "csv": csv, "html": html })
}

fn markdown_table(rows: &[Vec<String>]) -> String {
    let Some(width) = rows.iter().map(Vec::len).max() else {
        return String::new();
    };
    let line = |r: &[String]| {
        let mut cells: Vec<String> = r.iter().map(|c| c.replace('|', "\\|")).collect();
        cells.resize(width, String::new());
        format!("| {} |", cells.join(" | "))
    };
    let mut out = vec![line(&rows[0])];
    out.push(format!("|{}", " --- |".repeat(width)));
    out.extend(rows[1..].iter().map(|r| line(r)));
    out.join("\n")
}

fn parse_pdf(bytes: &[u8], req: &ParseRequest) -> Result<Parsed, ParseError> {
    // Pages of one document in parallel (rayon): a long PDF finishes sooner, and the worker's
    // `cpu_slots` still bound how many documents run at once.
    let opts = unpdf::ParseOptions::new().lenient();
    // Parsing only the selected pages is much cheaper on long documents, but unpdf refuses a
    // selection naming pages the file lacks; then parse everything and select afterwards.
    let selected = req.target_pages.as_ref().and_then(|t| {
        let pages = unpdf::PageSelection::Pages(t.iter().map(|p| p + 1).collect());
        unpdf::parse_bytes_with_options(bytes, opts.clone().with_pages(pages)).ok()
    });
    let doc = match selected {
        Some(doc) => doc,
        None => unpdf::parse_bytes_with_options(bytes, opts).map_err(|e| ParseError::Corrupt {
            format: "pdf",
            reason: e.to_string(),
        })?,
    };
    let render = unpdf::RenderOptions {
        page_markers: unpdf::render::PageMarkerStyle::Comment,
        cleanup: Some(markdown_cleanup()),
        ..unpdf::RenderOptions::default()
    };
    let markdown = unpdf::render::to_markdown(&doc, &render).unwrap_or_default();
    let mut md_by_page = split_page_markers(&markdown);
    let pages = doc
        .pages
        .iter()
        .map(|p| Page {
            page_number: p.number,
            text: p.plain_text(),
            md: md_by_page.remove(&p.number).unwrap_or_default(),
            items: pdf_items(p),
            width: p.width,
            height: p.height,
            success: true,
            error: None,
        })
        .collect();
    Ok(Parsed {
        pages,
        format: "pdf",
        page_count: doc.metadata.page_count.max(doc.pages.len() as u32) as usize,
        title: doc.metadata.title.clone().filter(|t| !t.trim().is_empty()),
        ocr_pages: Vec::new(),
        ocr_skipped: Vec::new(),
        reread_pages: Vec::new(),
    })
}

/// unpdf's standard Markdown cleanup without its three line-merging passes (list markers, CJK
/// lines, single newlines). Each pass compiles its regular expressions on every call, some
/// with Unicode classes: over the corpus's PDFs they took 137 of the cleanup's 196 ms, a tenth
/// of all parse time. They changed the Markdown of 9 of 50 PDFs, by a few lines each, since
/// the renderer already writes a paragraph on one line; the words stay the same, and the
/// page text (`plain_text`) never went through the cleanup.
fn markdown_cleanup() -> unpdf::render::CleanupOptions {
    unpdf::render::CleanupOptions {
        merge_list_markers: false,
        merge_cjk_lines: false,
        merge_single_newlines: false,
        ..unpdf::render::CleanupOptions::standard()
    }
}

/// Splits markdown rendered with `<!-- page N -->` markers into pages.
fn split_page_markers(md: &str) -> std::collections::HashMap<u32, String> {
    let mut out = std::collections::HashMap::new();
    let mut current: Option<u32> = None;
    let mut buf = String::new();
    for line in md.lines() {
        let t = line.trim();
        if let Some(n) = t
            .strip_prefix("<!-- page ")
            .and_then(|r| r.strip_suffix(" -->"))
            .and_then(|n| n.trim().parse::<u32>().ok())
        {
            if let Some(c) = current {
                out.insert(c, buf.trim().to_owned());
            }
            buf.clear();
            current = Some(n);
            continue;
        }
        buf.push_str(line);
        buf.push('\n');
    }
    if let Some(c) = current {
        out.insert(c, buf.trim().to_owned());
    }
    out
}

fn pdf_items(page: &unpdf::Page) -> Vec<Value> {
    let mut items = Vec::new();
    for block in &page.elements {
        match block {
            unpdf::Block::Paragraph(p) => {
                let text = p.plain_text();
                if text.trim().is_empty() {
                    continue;
                }
                match p.heading_level() {
                    Some(lvl) => items.push(json!({
                        "type": "heading", "level": lvl, "value": text,
                        "md": format!("{} {}", "#".repeat(lvl as usize), text),
                    })),
                    None => items.push(json!({ "type": "text", "value": text, "md": text })),
                }
            }
            unpdf::Block::Table(t) => {
                let rows: Vec<Vec<String>> = t
                    .rows
                    .iter()
                    .map(|r| {
                        r.cells
                            .iter()
                            .map(|c| {
                                c.content
                                    .iter()
                                    .map(|p| p.plain_text())
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect()
                    })
                    .collect();
                items.push(table_item(&rows));
            }
            unpdf::Block::Code { content } | unpdf::Block::Raw { content } => {
                items.push(json!({ "type": "text", "value": content, "md": content }));
            }
            _ => {}
        }
    }
    items
}

/// A PDF of `objects` (numbered from 1; the first is the catalog), with a correct
/// cross-reference table: what the unit and integration tests build their documents from.
pub fn pdf_of(objects: &[Vec<u8>]) -> Vec<u8> {
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n", i + 1).as_bytes());
        pdf.extend_from_slice(o);
        pdf.extend_from_slice(b"\nendobj\n");
    }
    let xref = pdf.len();
    pdf.extend_from_slice(
        format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes(),
    );
    for o in offsets {
        pdf.extend_from_slice(format!("{o:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .as_bytes(),
    );
    pdf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_markdown_and_csv() {
        let p = parse(
            b"# Title\n\nHello world.\x0cPage two",
            "a.md",
            &ParseRequest::default(),
        )
        .unwrap();
        assert_eq!(p.pages.len(), 2);
        assert_eq!(p.pages[0].items[0]["type"], "heading");
        assert_eq!(p.pages[1].text, "Page two");
        // A quoted field may hold a newline.
        let q = parse(
            b"a,b\n1,\"two\nlines\"\n2,c\n",
            "q.csv",
            &ParseRequest::default(),
        )
        .unwrap();
        assert_eq!(
            q.pages[0].items[0]["rows"],
            json!([["a", "b"], ["1", "two\nlines"], ["2", "c"]])
        );
        let c = parse(b"a,b\n1,\"x,y\"\n", "t.csv", &ParseRequest::default()).unwrap();
        assert_eq!(c.pages[0].items[0]["rows"][1][1], "x,y");
        assert!(c.pages[0].md.starts_with("| a | b |"));
    }

    #[test]
    fn long_csv_is_paged_by_records_and_read_only_where_asked() {
        // Record 1,000 holds a quoted line break: the page ends after it, not inside it.
        let mut csv = String::new();
        for i in 1..=2500 {
            if i == 1000 {
                csv.push_str("999,\"two\nlines\"\n");
            } else {
                csv.push_str(&format!("{i},row\n"));
            }
        }
        let all = parse(csv.as_bytes(), "l.csv", &ParseRequest::default()).unwrap();
        assert_eq!(all.page_count, 3);
        assert_eq!(all.pages[0].items[0]["rows"][999][1], "two\nlines");
        assert_eq!(all.pages[1].items[0]["rows"][0][0], "1001");
        assert_eq!(all.pages[2].items[0]["rows"].as_array().unwrap().len(), 500);
        let req = ParseRequest {
            target_pages: Some(vec![2]),
            ..ParseRequest::default()
        };
        let third = parse(csv.as_bytes(), "l.csv", &req).unwrap();
        assert_eq!(third.pages.len(), 1);
        assert_eq!(third.pages[0].page_number, 3);
        // Past the bound, asking for less is the way.
        let big = "a value in the only column\n".repeat((MAX_SELECTED_TEXT / 27) + 1000);
        let e = parse(big.as_bytes(), "b.csv", &ParseRequest::default()).unwrap_err();
        assert!(e.to_string().contains("max_pages or target_pages"), "{e}");
        let req = ParseRequest {
            max_pages: Some(2),
            ..ParseRequest::default()
        };
        let head = parse(big.as_bytes(), "b.csv", &req).unwrap();
        assert_eq!(head.pages.len(), 2);
        assert!(head.page_count > 1000);
    }

    #[test]
    fn binary_and_images_fail_with_the_detected_type() {
        let e = parse(b"\x89PNG\r\n\x1a\n....", "x.txt", &ParseRequest::default()).unwrap_err();
        assert!(e.to_string().contains("png"), "{e}");
        let e = parse(
            &[0u8, 1, 2, 3, 4, 5, 6, 7],
            "x.bin",
            &ParseRequest::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("binary"), "{e}");
        let e = parse(b"%PDF-1.4 garbage", "x.pdf", &ParseRequest::default()).unwrap_err();
        assert!(e.to_string().contains("pdf"), "{e}");
    }

    #[test]
    fn page_selection_applies() {
        let req = ParseRequest {
            target_pages: Some(vec![1]),
            ..Default::default()
        };
        let p = parse(b"one\x0ctwo\x0cthree", "a.txt", &req).unwrap();
        assert_eq!(p.pages.len(), 1);
        assert_eq!(p.pages[0].text, "two");
        let req = ParseRequest {
            target_pages: Some(vec![7]),
            ..Default::default()
        };
        assert!(matches!(
            parse(b"one", "a.txt", &req),
            Err(ParseError::NoPages(1))
        ));
    }
}

/// The reference corpus beside the checkout (`../shared/corpus`), if it is there. Where
/// `DOCFLEET_REQUIRE_CORPUS` is set (`deploy/local/test` sets it when the corpus is beside the
/// repository), a missing corpus fails the test instead of skipping it.
#[cfg(test)]
fn test_corpus() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus");
    if root.is_dir() {
        return Some(root);
    }
    assert!(
        std::env::var_os("DOCFLEET_REQUIRE_CORPUS").is_none(),
        "the reference corpus is not at {}",
        root.display()
    );
    eprintln!("skipped: no reference corpus at {}", root.display());
    None
}

#[cfg(test)]
mod corpus_smoke {
    /// Every office/HTML file of the reference corpus, when it is beside the checkout: parsed
    /// or failed with a message, never a panic. (Quality is measured by deploy/local/quality.)
    #[test]
    fn corpus_office_and_html_files_parse_or_fail_cleanly() {
        let Some(root) = super::test_corpus() else {
            return;
        };
        let mut seen = 0;
        for dir in ["docx", "pptx", "xlsx", "html", "csv", "txt", "md"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
                continue;
            };
            for e in entries.flatten() {
                let bytes = std::fs::read(e.path()).unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                match super::parse(&bytes, &name, &Default::default()) {
                    Ok(p) => {
                        seen += 1;
                        eprintln!(
                            "{name}: {} pages, {} chars",
                            p.pages.len(),
                            p.full_text("").len()
                        );
                    }
                    Err(err) => {
                        // A failure must name what the file was found to be.
                        let msg = err.to_string();
                        assert!(
                            ["ole", "zip", "docx", "pptx", "xlsx"]
                                .iter()
                                .any(|t| msg.contains(t)),
                            "{name}: {msg}"
                        );
                    }
                }
            }
        }
        assert!(seen >= 30, "only {seen} corpus files parsed");
    }
}

#[cfg(test)]
mod ocr_tests {
    use super::*;

    fn corpus(p: &str) -> Option<Vec<u8>> {
        Some(std::fs::read(super::test_corpus()?.join(p)).expect("a corpus file"))
    }

    /// A PDF of `pages` 200-point pages, each with `page` in its dictionary, and `extra`
    /// objects after them (numbered from `3 + pages`).
    fn pages_pdf(pages: usize, page: &str, extra: Vec<Vec<u8>>) -> Vec<u8> {
        let kids: Vec<String> = (0..pages).map(|i| format!("{} 0 R", 3 + i)).collect();
        let mut objects = vec![
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            format!(
                "<< /Type /Pages /Kids [{}] /Count {pages} >>",
                kids.join(" ")
            )
            .into_bytes(),
        ];
        objects.extend((0..pages).map(|_| {
            format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] {page} >>").into_bytes()
        }));
        objects.extend(extra);
        super::pdf_of(&objects)
    }

    /// A PDF of `pages` empty pages: no text layer, and nothing for OCR to read.
    fn blank_pdf(pages: usize) -> Vec<u8> {
        pages_pdf(pages, "", Vec::new())
    }

    /// A PDF of `pages` pages that are each one grey image over the whole page: a scan of
    /// nothing.
    fn scan_pdf(pages: usize) -> Vec<u8> {
        let (image, content) = (3 + pages, 4 + pages);
        let pixels = vec![0xEEu8; 300 * 300];
        let draw = b"q 200 0 0 200 0 0 cm /Im0 Do Q";
        pages_pdf(
            pages,
            &format!("/Resources << /XObject << /Im0 {image} 0 R >> >> /Contents {content} 0 R"),
            vec![
                [
                    &b"<< /Type /XObject /Subtype /Image /Width 300 /Height 300 /ColorSpace /DeviceGray /BitsPerComponent 8 /Length 90000 >>\nstream\n"[..],
                    &pixels,
                    b"\nendstream",
                ]
                .concat(),
                [
                    format!("<< /Length {} >>\nstream\n", draw.len()).as_bytes(),
                    draw,
                    b"\nendstream",
                ]
                .concat(),
            ],
        )
    }

    #[test]
    fn misread_pages_are_told_from_read_ones() {
        assert!(!misread("A page of ordinary words, as most pages are."));
        assert!(misread("  \n\t "));
        assert!(misread("short"));
        // Glyphs without a character: a font with no usable ToUnicode map.
        assert!(misread(
            "Total \u{FFFD}\u{FFFD}\u{FFFD} of the year's revenue"
        ));
        assert!(misread(
            "\u{E001}\u{E002}\u{E003}\u{E004}\u{E005}\u{E006}\u{E007}\u{E008}\u{E009}\u{E00A}"
        ));
        // Glyph positions read with no word breaks.
        assert!(misread(&"Thewordsofthispageranintooneanother".repeat(3)));
        // One long token among words (a URL) is not a misreading.
        let prose = "The authors and publisher have taken care in the preparation of this book, \
            but make no expressed or implied warranty of any kind and assume no responsibility \
            for errors or omissions. No liability is assumed for incidental or consequential \
            damages in connection with or arising out of the use of the information herein.";
        let url = format!(
            "see https://example.org/{} for the rest. {prose}",
            "x".repeat(70)
        );
        assert!(!misread(&url));
        // Text drawn several times over (fake bold), read once per drawing.
        assert!(misread(
            "安徽安利合成革股份有限公司 安徽安利合成革股份有限公司安徽安利合成革股份有限公司 \
             ANHUI ANLI ARTIFICIAL LEATHER CO.,LTD. ANHUI ANLI ARTIFICIAL LEATHER CO.,LTD.\
             ANHUI ANLI ARTIFICIAL LEATHER CO.,LTD. 2011 年年度报告201120112011 年年度报告"
        ));
        // Each glyph drawn twice.
        assert!(misread(
            "项项目目描描述述：：负负责责四四川川省省甘甘孜孜州州丹丹巴巴磨磨子子电电站站引引水水隧隧洞洞"
        ));
        // A table's rows share most of their words with the row above, not all of them.
        let table: String = (1..=12)
            .map(|n| {
                format!(
                    "Item {n} | widget type {} | {}.50 EUR | ------------\n",
                    n * 7,
                    n * 3
                )
            })
            .collect();
        assert!(!misread(&table), "{table}");
        assert!(!misread(prose));
    }

    /// A test PDF of the pdf set (`tests/pdfs`, part of the repository), parsed.
    fn parse_pdf_set(name: &str) -> Parsed {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/pdfs/files")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        parse(&bytes, name, &ParseRequest::default()).unwrap()
    }

    /// Needs Debian's poppler-utils, which deploy/local/test installs.
    #[test]
    fn the_second_engine_reads_what_the_first_missed() {
        // unpdf reads no text from pdfcpu's annotTest; pdftotext reads its page.
        let p = parse_pdf_set("pdfcpu__pkg_testdata_annotTest.pdf");
        assert_eq!(p.reread_pages, vec![1]);
        assert!(p.pages[0].text.contains("gopher"), "{}", p.pages[0].text);
        assert!(p.ocr_pages.is_empty());
        // unpdf cannot open this PDF 2.0 file at all; pdftotext reads it whole.
        let p = parse_pdf_set("pdfcpu__pkg_testdata_pdf20_withOffsetStart.pdf");
        assert_eq!(p.reread_pages, vec![1]);
        let text = &p.pages[0].text;
        assert!(text.contains("PDF 2.0 document"), "{text}");
        // Text drawn four times over (fake bold) is read once, by pdftotext.
        let p = parse_pdf_set("pdfplumber__tests_pdfs_issue-842-example.pdf");
        assert_eq!(p.reread_pages, vec![1]);
        let text = &p.pages[0].text;
        assert_eq!(
            text.matches("安徽安利合成革股份有限公司").count(),
            1,
            "{text}"
        );
        // Text that is itself repeated (one line drawn at many angles) keeps the first
        // engine's reading, whole words in reading order; pdftotext splits the rotated ones.
        let p = parse_pdf_set("pdfcpu__pkg_samples_basic_TextRotateDemo.pdf");
        assert!(p.reread_pages.is_empty(), "{:?}", p.reread_pages);
        assert!(p.pages[0].text.matches("Hello Gopher!").count() > 20);
        // Pages the first engine read are not read again.
        if let Some(paper) = corpus("pdf/pdfjs__tracemonkey.pdf") {
            let p = parse(&paper, "tracemonkey.pdf", &ParseRequest::default()).unwrap();
            assert_eq!(p.pages.len(), 14);
            assert!(p.reread_pages.is_empty(), "{:?}", p.reread_pages);
        }
    }

    /// Needs Debian's tesseract-ocr and poppler-utils, which deploy/local/test installs.
    #[test]
    fn images_and_scanned_pdf_pages_are_read_by_ocr() {
        assert!(
            crate::ocr::available(),
            "tesseract is not installed (deploy/local/test installs it)"
        );
        let Some(tif) = corpus("tiff/tess__phototest.tif") else {
            return;
        };
        let p = parse(&tif, "phototest.tif", &ParseRequest::default()).unwrap();
        assert_eq!(p.ocr_pages, vec![1]);
        assert!(
            p.pages[0].text.contains("quick brown"),
            "{}",
            p.pages[0].text
        );
        let off = ParseRequest {
            disable_ocr: true,
            ..Default::default()
        };
        assert!(parse(&tif, "phototest.tif", &off)
            .unwrap_err()
            .to_string()
            .contains("disable_ocr"));
        // A page without text is OCR'd only when images cover it: a blank page is not.
        let p = parse(&blank_pdf(2), "blank.pdf", &ParseRequest::default()).unwrap();
        assert!(p.ocr_pages.is_empty(), "{:?}", p.ocr_pages);
        // Only the pages asked for are OCR'd, and at most `max_ocr_pages` of them.
        let blank = scan_pdf(3);
        let one = ParseRequest {
            target_pages: Some(vec![1]),
            ..Default::default()
        };
        let p = parse(&blank, "blank.pdf", &one).unwrap();
        assert_eq!(p.ocr_pages, vec![2]);
        let capped = ParseRequest {
            max_ocr_pages: Some(1),
            ..Default::default()
        };
        let p = parse(&blank, "blank.pdf", &capped).unwrap();
        assert_eq!((p.ocr_pages, p.ocr_skipped), (vec![1], vec![2, 3]));
        let scan = corpus("pdf/ocrmypdf__linn.pdf").unwrap();
        let p = parse(&scan, "linn.pdf", &ParseRequest::default()).unwrap();
        assert_eq!(p.ocr_pages, vec![1]);
        assert!(
            p.pages[0].text.split_whitespace().count() > 300,
            "{}",
            p.pages[0].text
        );
    }
}
