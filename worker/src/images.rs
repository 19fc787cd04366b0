//! Images kept beside a parse result (`images_to_save`): page screenshots and the images
//! embedded in the document. They are made where the parse runs, so in the parser child,
//! under its limits and sandbox, and cross to the worker as files in the child's private
//! folder, never in its answer.

use std::path::Path;
use std::time::Duration;

use crate::parse::{ParseError, ParseRequest, Parsed};

/// Images kept per document with `images_to_save: ["embedded"]`, and the largest kept.
const EMBEDDED_LIMIT: usize = 200;
const EMBEDDED_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// Most bytes of images kept per document, all kinds together.
const IMAGES_MAX_TOTAL: u64 = 64 * 1024 * 1024;
/// Screenshot resolution.
const SCREENSHOT_DPI: u32 = 100;

/// An image: its store name and its bytes.
pub type Image = (String, Vec<u8>);

/// The images `req` asks for of the parsed document: screenshots of its selected pages
/// (`page-<n>.png`, PDFs only) and its embedded images (`embedded-…`), at most
/// [`IMAGES_MAX_TOTAL`] bytes in all.
pub fn collect(
    parsed: &Parsed,
    bytes: &[u8],
    req: &ParseRequest,
) -> Result<Vec<Image>, ParseError> {
    let bound = req.tool_bound();
    let mut images = Vec::new();
    if req.screenshots && parsed.format == "pdf" {
        let numbers: Vec<u32> = parsed.pages.iter().map(|p| p.page_number).collect();
        // A page that does not render has no screenshot; the parse stands.
        for (n, png) in
            crate::ocr::render_pdf_pages(bytes, &numbers, SCREENSHOT_DPI, bound).unwrap_or_default()
        {
            images.push((format!("page-{n}.png"), png));
        }
    }
    if req.embedded_images {
        images.extend(embedded(parsed, bytes, bound)?);
    }
    let mut total = 0u64;
    images.retain(|(_, png)| {
        total += png.len() as u64;
        total <= IMAGES_MAX_TOTAL
    });
    Ok(images)
}

/// The images inside the document, named `embedded-…` (`embedded-p<page>-<n>.png` for PDFs,
/// the part name for Office files).
fn embedded(parsed: &Parsed, bytes: &[u8], bound: Duration) -> Result<Vec<Image>, ParseError> {
    let found = match parsed.format {
        "pdf" => {
            let first = parsed.pages.iter().map(|p| p.page_number).min();
            let last = parsed.pages.iter().map(|p| p.page_number).max();
            match first.zip(last) {
                Some((f, l)) => crate::ocr::pdf_images(bytes, f, l, EMBEDDED_LIMIT, bound)?,
                None => Vec::new(),
            }
        }
        "docx" | "pptx" | "xlsx" => {
            crate::office::media(bytes, EMBEDDED_LIMIT, EMBEDDED_MAX_BYTES, IMAGES_MAX_TOTAL)
        }
        _ => Vec::new(),
    };
    Ok(found
        .into_iter()
        .map(|(name, data)| (format!("embedded-{}", safe(&name)), data))
        .collect())
}

/// Part names inside a document are arbitrary; store keys and file names take a safe
/// alphabet only.
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The child's side: leaves the images in `dir` and names them.
pub fn leave(dir: &Path, images: Vec<Image>) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut names = Vec::with_capacity(images.len());
    for (name, data) in images {
        std::fs::write(dir.join(&name), data)?;
        names.push(name);
    }
    Ok(names)
}

/// The worker's side: takes the named images out of `dir`. A name is one the child made with
/// [`safe`]; anything else (a path) is not read.
pub fn take(dir: &Path, names: &[String]) -> Result<Vec<Image>, ParseError> {
    names
        .iter()
        .filter(|n| safe(n) == **n && !n.starts_with('.'))
        .map(|n| {
            std::fs::read(dir.join(n))
                .map(|data| (n.clone(), data))
                .map_err(|e| ParseError::Isolated(format!("image {n} from the parser: {e}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-page PDF drawing one 2×2 grey image.
    fn pdf_with_an_image() -> Vec<u8> {
        let content = b"q 50 0 0 50 10 10 cm /Im1 Do Q";
        let objects: Vec<Vec<u8>> = vec![
            b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_vec(),
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] /Resources << /XObject << /Im1 4 0 R >> >> /Contents 5 0 R >>".to_vec(),
            [&b"<< /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray /BitsPerComponent 8 /Length 4 >>\nstream\n"[..], &[0, 255, 255, 0], b"\nendstream"].concat(),
            [format!("<< /Length {} >>\nstream\n", content.len()).as_bytes(), content, b"\nendstream"].concat(),
        ];
        crate::parse::pdf_of(&objects)
    }

    #[test]
    fn embedded_images_come_out_of_pdfs() {
        let bytes = pdf_with_an_image();
        let req = ParseRequest {
            disable_ocr: true,
            embedded_images: true,
            ..ParseRequest::default()
        };
        let parsed = crate::parse::parse(&bytes, "image.pdf", &req).expect("parsed");
        let images = collect(&parsed, &bytes, &req).expect("extracted");
        assert_eq!(
            images.iter().map(|i| i.0.as_str()).collect::<Vec<_>>(),
            ["embedded-p001-000.png"]
        );
        assert!(images[0].1.starts_with(b"\x89PNG"));
        // Across the process boundary by name, and only by a name the child could make.
        let dir = tempfile::tempdir().unwrap();
        let names = leave(dir.path(), images).unwrap();
        assert_eq!(take(dir.path(), &names).unwrap().len(), 1);
        assert!(take(dir.path(), &["../secret".into()]).unwrap().is_empty());
    }
}
