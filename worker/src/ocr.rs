//! OCR with Tesseract, run as a child process (Debian's `tesseract-ocr`), and scanned PDF pages
//! rendered with `pdftoppm` (poppler-utils) first.
//!
//! A child process is the isolation we want for this step anyway: it cannot take the worker
//! down, and it is killed when the item's deadline drops its future. `OMP_THREAD_LIMIT=1`
//! because OpenMP makes Tesseract about 9× slower on two cores; `--psm 1` detects orientation,
//! so rotated scans read.

use std::process::Stdio;
use std::sync::OnceLock;

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
pub fn image(bytes: &[u8], lang: &str) -> Result<Vec<String>, ParseError> {
    if !available() {
        return Err(unavailable());
    }
    let dir = tempdir()?;
    let input = dir.join("image");
    std::fs::write(&input, bytes).map_err(io)?;
    let out = std::process::Command::new("tesseract")
        .arg(&input)
        .arg("stdout")
        .args(["-l", lang, "--psm", "1"])
        .env("OMP_THREAD_LIMIT", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(io);
    let _ = std::fs::remove_dir_all(&dir);
    let out = out?;
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

/// Renders page `number` (1-based) of a PDF to PNG bytes at `dpi`: for OCR (grey) and for
/// `images_to_save` screenshots (colour).
pub fn render_pdf_page(
    pdf: &[u8],
    number: u32,
    dpi: u32,
    grey: bool,
) -> Result<Vec<u8>, ParseError> {
    let dir = tempdir()?;
    let input = dir.join("doc.pdf");
    std::fs::write(&input, pdf).map_err(io)?;
    let n = number.to_string();
    let mut cmd = std::process::Command::new("pdftoppm");
    cmd.args([
        "-r",
        &dpi.to_string(),
        "-png",
        "-singlefile",
        "-f",
        &n,
        "-l",
        &n,
    ]);
    if grey {
        cmd.arg("-gray");
    }
    let out = cmd
        .arg(&input)
        .arg(dir.join("page"))
        .stdin(Stdio::null())
        .output();
    let result = match out {
        Ok(o) if o.status.success() => std::fs::read(dir.join("page.png")).map_err(io),
        Ok(o) => Err(ParseError::Corrupt {
            format: "pdf",
            reason: format!(
                "page {number} could not be rendered: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        }),
        Err(_) => Err(ParseError::Unsupported(
            "rendering PDF pages needs pdftoppm (apt-get install poppler-utils)".into(),
        )),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The images embedded in pages `first..=last` of a PDF, as PNG (`pdfimages -png -p`), named
/// `p<page, 3 digits>-<n>.png`; at most `limit`.
pub fn pdf_images(
    pdf: &[u8],
    first: u32,
    last: u32,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>)>, ParseError> {
    let dir = tempdir()?;
    let input = dir.join("doc.pdf");
    std::fs::write(&input, pdf).map_err(io)?;
    let out = std::process::Command::new("pdfimages")
        .args([
            "-png",
            "-p",
            "-f",
            &first.to_string(),
            "-l",
            &last.to_string(),
        ])
        .arg(&input)
        .arg(dir.join("img"))
        .stdin(Stdio::null())
        .output();
    let result = match out {
        Ok(o) if o.status.success() => {
            let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
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
        Ok(o) => Err(ParseError::Corrupt {
            format: "pdf",
            reason: format!(
                "embedded images could not be extracted: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        }),
        Err(_) => Err(ParseError::Unsupported(
            "extracting PDF images needs pdfimages (apt-get install poppler-utils)".into(),
        )),
    };
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Renders page `number` (1-based) of a PDF at 300 dpi and OCRs it.
pub fn pdf_page(pdf: &[u8], number: u32, lang: &str) -> Result<String, ParseError> {
    if !available() {
        return Err(unavailable());
    }
    let png = render_pdf_page(pdf, number, 300, true)?;
    image(&png, lang).map(|pages| pages.join("\n"))
}

fn io(e: std::io::Error) -> ParseError {
    ParseError::Corrupt {
        format: "image",
        reason: format!("OCR scratch file: {e}"),
    }
}

fn tempdir() -> Result<std::path::PathBuf, ParseError> {
    let d = std::env::temp_dir().join(format!("docfleet-ocr-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).map_err(io)?;
    Ok(d)
}
