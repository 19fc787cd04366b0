//! OCR with Tesseract, run as a child process (Debian's `tesseract-ocr`), and scanned PDF pages
//! rendered with `pdftoppm` (poppler-utils) first.
//!
//! A child process is the isolation we want for this step anyway: it cannot take the worker
//! down, and each runs in a process group killed at its bound (`children`); inside the parser
//! child the parent's deadline kills them all at once. `OMP_THREAD_LIMIT=1` because OpenMP
//! makes Tesseract about 9× slower on two cores; `--psm 1` detects orientation, so rotated
//! scans read.

use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::parse::ParseError;

/// Tesseract language code for an SDK `ParsingLanguages` code; `None` when unknown.
fn tesseract_lang(code: &str) -> Option<&'static str> {
    Some(match code {
        "en" => "eng",
        "fr" => "fra",
        "de" => "deu",
        "es" => "spa",
        "it" => "ita",
        "pt" => "por",
        "nl" => "nld",
        "ru" => "rus",
        "uk" => "ukr",
        "pl" => "pol",
        "ar" => "ara",
        "hi" => "hin",
        "ja" => "jpn",
        "ko" => "kor",
        "th" => "tha",
        "vi" => "vie",
        "tr" => "tur",
        "ch_sim" => "chi_sim",
        "ch_tra" => "chi_tra",
        "sv" => "swe",
        "da" => "dan",
        "no" => "nor",
        "cs" => "ces",
        _ => return None,
    })
}

fn installed_langs() -> &'static Vec<String> {
    static LANGS: OnceLock<Vec<String>> = OnceLock::new();
    LANGS.get_or_init(|| {
        std::process::Command::new("tesseract")
            .arg("--list-langs")
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .skip(1)
                    .map(|l| l.trim().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    })
}

/// Whether Tesseract is installed.
pub fn available() -> bool {
    !installed_langs().is_empty()
}

/// The `-l` argument for the requested languages: installed ones only, English otherwise.
pub fn lang_arg(codes: &[String]) -> String {
    let have = installed_langs();
    let mut picked: Vec<&str> = codes
        .iter()
        .filter_map(|c| tesseract_lang(c))
        .filter(|l| have.iter().any(|h| h == l))
        .collect();
    picked.dedup();
    if picked.is_empty() {
        "eng".into()
    } else {
        picked.join("+")
    }
}

fn unavailable() -> ParseError {
    ParseError::Unsupported(
        "image needs OCR, and Tesseract is not installed (apt-get install tesseract-ocr)".into(),
    )
}

/// OCRs an image file (PNG, JPEG, TIFF; a multi-page TIFF gives one string per page).
pub fn image(bytes: &[u8], lang: &str, bound: Duration) -> Result<Vec<String>, ParseError> {
    if !available() {
        return Err(unavailable());
    }
    let dir = Scratch::new()?;
    let input = dir.path().join("image");
    std::fs::write(&input, bytes).map_err(io)?;
    recognise(&input, lang, bound)
}

/// Tesseract on one image file.
fn recognise(
    input: &std::path::Path,
    lang: &str,
    bound: Duration,
) -> Result<Vec<String>, ParseError> {
    let out = crate::children::output(
        Command::new("tesseract")
            .arg(input)
            .arg("stdout")
            .args(["-l", lang, "--psm", "1"])
            .env("OMP_THREAD_LIMIT", "1"),
        bound,
    )
    .map_err(|e| killed("OCR", bound, e))?;
    if !out.status.success() {
        return Err(ParseError::Corrupt {
            format: "image",
            reason: String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(300)
                .collect(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Tesseract ends every page with a form feed.
    let mut pages: Vec<String> = text.split('\u{c}').map(|p| p.trim().to_owned()).collect();
    if pages.len() > 1 && pages.last().is_some_and(String::is_empty) {
        pages.pop();
    }
    Ok(pages)
}

/// Renders `pages` (1-based, ascending) of a PDF to PNG bytes at `dpi`, in colour: for
/// `images_to_save` screenshots and the vision model. The pages that rendered, by number.
pub fn render_pdf_pages(
    pdf: &[u8],
    pages: &[u32],
    dpi: u32,
    bound: Duration,
) -> Result<Vec<(u32, Vec<u8>)>, ParseError> {
    render(&PdfOnDisk::write(pdf)?, pages, dpi, false, bound)?
        .into_iter()
        .map(|(n, path)| std::fs::read(path).map(|png| (n, png)).map_err(io))
        .collect()
}

/// A PDF written once into a scratch folder: the poppler tools read files.
pub struct PdfOnDisk {
    dir: Scratch,
    path: std::path::PathBuf,
}

impl PdfOnDisk {
    /// Writes `pdf` into a scratch folder of its own, removed when this is dropped.
    pub fn write(pdf: &[u8]) -> Result<Self, ParseError> {
        let dir = Scratch::new()?;
        let path = dir.path().join("doc.pdf");
        std::fs::write(&path, pdf).map_err(io)?;
        Ok(Self { dir, path })
    }
}

/// Ascending page numbers as runs of consecutive pages, `(first, last)`: one tool run each.
fn runs(pages: &[u32]) -> Vec<(u32, u32)> {
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for &p in pages {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == p => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    runs
}

/// The text layer of `pages` (1-based, ascending; all of them when `None`) as poppler's
/// `pdftotext` reads it: the second engine, for pages the first misread, and for documents it
/// could not open. One run per run of consecutive pages; each page's text by number.
pub fn text_layer(
    doc: &PdfOnDisk,
    pages: Option<&[u32]>,
    bound: Duration,
) -> Result<Vec<(u32, String)>, ParseError> {
    let spans = match pages {
        Some(pages) => runs(pages).into_iter().map(Some).collect(),
        None => vec![None],
    };
    let mut texts = Vec::new();
    for span in spans {
        let mut cmd = Command::new("pdftotext");
        cmd.args(["-q", "-enc", "UTF-8"]);
        if let Some((first, last)) = span {
            cmd.args(["-f", &first.to_string(), "-l", &last.to_string()]);
        }
        let out = poppler(cmd.arg(&doc.path).arg("-"), "reading the text layer", bound)?;
        // pdftotext ends every page with a form feed.
        let text = String::from_utf8_lossy(&out.stdout);
        let mut split: Vec<&str> = text.split('\u{c}').collect();
        if split.last().is_some_and(|p| p.trim().is_empty()) {
            split.pop();
        }
        let first = span.map_or(1, |(first, _)| first);
        texts.extend(
            (first..)
                .zip(split)
                .map(|(n, t)| (n, t.trim_end().to_owned())),
        );
    }
    Ok(texts)
}

/// Renders `pages` (1-based, ascending) of `doc` into its folder: one `pdftoppm` per run of
/// consecutive pages. The PNG of each page that rendered, by page number.
fn render(
    doc: &PdfOnDisk,
    pages: &[u32],
    dpi: u32,
    grey: bool,
    bound: Duration,
) -> Result<Vec<(u32, std::path::PathBuf)>, ParseError> {
    for (i, (first, last)) in runs(pages).iter().enumerate() {
        let mut cmd = Command::new("pdftoppm");
        cmd.args(["-r", &dpi.to_string(), "-png", "-f"])
            .arg(first.to_string())
            .arg("-l")
            .arg(last.to_string());
        if grey {
            cmd.arg("-gray");
        }
        poppler(
            cmd.arg(&doc.path)
                .arg(doc.dir.path().join(format!("run{i}"))),
            &format!("rendering pages {first}-{last}"),
            bound,
        )?;
    }
    // `pdftoppm` names each page `<root>-<n>.png`, `n` zero-padded to the document's width.
    let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir(doc.dir.path())
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.to_owned();
            let n = stem.rsplit('-').next()?.parse::<u32>().ok()?;
            (stem.starts_with("run") && p.extension().is_some_and(|x| x == "png")).then_some((n, p))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// The images embedded in pages `first..=last` of a PDF, as PNG (`pdfimages -png -p`), named
/// `p<page, 3 digits>-<n>.png`; at most `limit`.
pub fn pdf_images(
    pdf: &[u8],
    first: u32,
    last: u32,
    limit: usize,
    bound: Duration,
) -> Result<Vec<(String, Vec<u8>)>, ParseError> {
    let doc = PdfOnDisk::write(pdf)?;
    let dir = &doc.dir;
    poppler(
        Command::new("pdfimages")
            .args([
                "-png",
                "-p",
                "-f",
                &first.to_string(),
                "-l",
                &last.to_string(),
            ])
            .arg(&doc.path)
            .arg(dir.path().join("img")),
        "extracting embedded images",
        bound,
    )?;
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(dir.path())
        .map_err(io)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    names.sort();
    names
        .into_iter()
        .take(limit)
        .map(|p| {
            // img-<page>-<n>.png → p<page>-<n>.png
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
            let name = format!(
                "p{}.png",
                stem.as_deref().unwrap_or("").trim_start_matches("img-")
            );
            std::fs::read(&p).map(|b| (name, b)).map_err(io)
        })
        .collect()
}

/// The area (square points) that images cover on each of pages `first..=last` of a PDF, from
/// `pdfimages -list` (pixels over resolution): how a page that is a scan tells itself from a
/// blank one or a page of drawings. Pages without images are absent.
pub fn image_cover(
    doc: &PdfOnDisk,
    first: u32,
    last: u32,
    bound: Duration,
) -> Result<std::collections::HashMap<u32, f64>, ParseError> {
    let out = poppler(
        Command::new("pdfimages")
            .args(["-list", "-f", &first.to_string(), "-l", &last.to_string()])
            .arg(&doc.path),
        "listing images",
        bound,
    )?;
    Ok(cover_of_listing(&String::from_utf8_lossy(&out.stdout)))
}

/// Sums, per page, `width / x-ppi × height / y-ppi` (in points) of the `image` rows of a
/// `pdfimages -list` listing (masks and stencils are not pictures of anything).
fn cover_of_listing(listing: &str) -> std::collections::HashMap<u32, f64> {
    let mut cover = std::collections::HashMap::new();
    for line in listing.lines().skip(2) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| cols.get(i).and_then(|v| v.parse::<f64>().ok());
        let (Some(page), Some("image")) = (num(0), cols.get(2).copied()) else {
            continue;
        };
        // An inline image has `[inline]` where others have an object number and generation.
        let ppi = if cols.get(10) == Some(&"[inline]") {
            11
        } else {
            12
        };
        if let (Some(w), Some(h), Some(xppi), Some(yppi)) = (num(3), num(4), num(ppi), num(ppi + 1))
        {
            if xppi > 0.0 && yppi > 0.0 {
                *cover.entry(page as u32).or_insert(0.0) += (w / xppi * 72.0) * (h / yppi * 72.0);
            }
        }
    }
    cover
}

/// One page's OCR: its number and its text, or why it could not be read.
pub type PageText = (u32, Result<String, ParseError>);

/// Renders `pages` (1-based, ascending) of `doc` at 300 dpi and OCRs each: each run of
/// consecutive pages is rendered by one `pdftoppm`. Each call is bounded by `bound`.
pub fn pdf_pages(
    doc: &PdfOnDisk,
    pages: &[u32],
    lang: &str,
    bound: Duration,
) -> Result<Vec<PageText>, ParseError> {
    if !available() {
        return Err(unavailable());
    }
    let rendered = render(doc, pages, 300, true, bound)?;
    Ok(pages
        .iter()
        .map(|&n| {
            let text = match rendered.iter().find(|(p, _)| *p == n) {
                Some((_, png)) => recognise(png, lang, bound).map(|t| t.join("\n")),
                None => Err(ParseError::Corrupt {
                    format: "pdf",
                    reason: format!("page {n} could not be rendered"),
                }),
            };
            (n, text)
        })
        .collect())
}

/// Runs one poppler tool under `bound`: its output when it succeeded, or why `what` could not
/// be done (the tool missing, failing, or stopped at its bound).
fn poppler(
    cmd: &mut Command,
    what: &str,
    bound: Duration,
) -> Result<std::process::Output, ParseError> {
    let tool = cmd.get_program().to_string_lossy().into_owned();
    match crate::children::output(cmd, bound) {
        Ok(o) if o.status.success() => Ok(o),
        Ok(o) => Err(ParseError::Corrupt {
            format: "pdf",
            reason: format!(
                "{what}: {tool} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        }),
        Err(Some(_)) => Err(ParseError::Unsupported(format!(
            "{what} needs {tool} (apt-get install poppler-utils)"
        ))),
        Err(None) => Err(killed(what, bound, None)),
    }
}

fn io(e: std::io::Error) -> ParseError {
    ParseError::Corrupt {
        format: "image",
        reason: format!("OCR scratch file: {e}"),
    }
}

/// A child that did not start, or was killed at its bound (`None`).
fn killed(what: &str, bound: Duration, e: Option<std::io::Error>) -> ParseError {
    match e {
        Some(e) => ParseError::Unsupported(format!("{what}: could not run the tool: {e}")),
        None => ParseError::Corrupt {
            format: "pdf",
            reason: format!(
                "{what} took longer than {}s and was stopped",
                bound.as_secs()
            ),
        },
    }
}

/// A scratch folder (the `tempfile` crate's), named after this process so that whoever
/// outlives it (the parent of a parser child that was killed) can remove it; removed when
/// dropped.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Result<Self, ParseError> {
        tempfile::Builder::new()
            .prefix(&format!("{SCRATCH}{}-", std::process::id()))
            .tempdir()
            .map(Self)
            .map_err(io)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

/// What every scratch folder's name starts with.
pub(crate) const SCRATCH: &str = "docfleet-ocr-";

/// Removes the scratch folders a (finished or killed) process `pid` left.
pub fn remove_scratch_of(pid: u32) {
    sweep(|owner| owner == pid);
}

/// Removes the scratch folders of processes that are gone: what a worker killed with its
/// children left behind. Run at start-up.
pub fn sweep_scratch() {
    sweep(|owner| !std::path::Path::new(&format!("/proc/{owner}")).exists());
}

fn sweep(owned: impl Fn(u32) -> bool) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = name
            .strip_prefix(SCRATCH)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if owner.is_some_and(&owned) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listing_says_how_much_of_each_page_images_cover() {
        let listing = "page   num  type   width height color comp bpc  enc interp  object ID x-ppi y-ppi size ratio
--------------------------------------------------------------------------------------------
   1     0 image    2550  3300  gray    1   1  jbig2  no         7  0   300   300 69.4K 6.8%
   2     1 image     100   100  rgb     3   8  jpeg   no         9  0    72    72 2.0K  5%
   2     2 smask     100   100  gray    1   8  image  no        10  0    72    72 1.0K  5%
   4     0 image     144   144  gray    1   8  image  yes  [inline]      72    72    0B 0.0%
";
        let cover = cover_of_listing(listing);
        assert!((cover[&1] - 612.0 * 792.0).abs() < 1.0, "{cover:?}");
        assert!((cover[&2] - 100.0 * 100.0).abs() < 1.0, "{cover:?}");
        assert!(!cover.contains_key(&3));
        assert!((cover[&4] - 144.0 * 144.0).abs() < 1.0, "{cover:?}");
    }

    #[test]
    fn scratch_of_dead_processes_is_swept() {
        // No pid reaches 4,000,000,000: that process is gone.
        let dead = std::env::temp_dir().join(format!("{SCRATCH}4000000000-test"));
        std::fs::create_dir_all(dead.join("inner")).unwrap();
        let live = Scratch::new().unwrap();
        sweep_scratch();
        assert!(!dead.exists(), "a dead process's scratch stayed");
        assert!(live.path().exists(), "a live process's scratch was taken");
        let path = live.path().to_owned();
        drop(live);
        assert!(!path.exists(), "a scratch folder outlived its owner");
    }
}
