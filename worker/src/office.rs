//! Office Open XML (DOCX, PPTX) read with `zip` + `quick-xml`, and spreadsheets with `calamine`.
//!
//! DOCX has no pages: the whole body is one page (page breaks in the file split it), with
//! headings from paragraph styles, lists, tables as rows, and headers/footers as their own
//! items. PPTX is one page per slide (title as heading, speaker notes after the body). XLSX is
//! one page per sheet, its cells (cached formula values) as a markdown table.

use std::io::{Cursor, Read};

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde_json::{json, Value};

use crate::parse::{table_item, Page, ParseError, Parsed};

type Zip = zip::ZipArchive<Cursor<Vec<u8>>>;

fn open(bytes: &[u8], format: &'static str) -> Result<Zip, ParseError> {
    zip::ZipArchive::new(Cursor::new(bytes.to_vec())).map_err(|e| ParseError::Corrupt {
        format,
        reason: format!("not a readable zip container: {e}"),
    })
}

/// Most bytes one XML part of a document may decompress to: a part past it is a zip bomb,
/// not a document.
const MAX_PART_BYTES: u64 = 256 << 20;
/// Most a large part may claim to inflate, per compressed byte: XML compresses 5 to 100 times,
/// deflate at most about 1,000;
/// a part declaring more than this (and past [`RATIO_FROM_BYTES`]) is a bomb.
const MAX_RATIO: u64 = 500;
const RATIO_FROM_BYTES: u64 = 16 << 20;

/// The archive's entry names that are readable text (a name that is not is no part we read).
fn names(z: &Zip) -> Vec<String> {
    z.file_names()
        .filter_map(Result::ok)
        .map(std::borrow::Cow::into_owned)
        .collect()
}

/// The media of an Office file: at most `limit` files of at most `max_bytes` each, and at
/// most `max_total` bytes in all.
pub fn media(bytes: &[u8], limit: usize, max_bytes: u64, max_total: u64) -> Vec<(String, Vec<u8>)> {
    let Ok(mut z) = open(bytes, "zip") else {
        return Vec::new();
    };
    let names: Vec<String> = names(&z)
        .into_iter()
        .filter(|n| {
            let mut parts = n.split('/');
            matches!(parts.next(), Some("word" | "ppt" | "xl"))
                && parts.next() == Some("media")
                && parts.next().is_some_and(|f| !f.is_empty())
                && parts.next().is_none()
        })
        .collect();
    let mut out = Vec::new();
    let mut total = 0u64;
    for name in names {
        if out.len() >= limit {
            break;
        }
        let Ok(f) = z.by_name(&name) else { continue };
        if f.size() > max_bytes || total + f.size() > max_total {
            continue;
        }
        total += f.size();
        let mut data = Vec::new();
        if f.take(max_bytes).read_to_end(&mut data).is_ok() {
            let file = name.rsplit('/').next().unwrap_or(&name).to_owned();
            out.push((file, data));
        }
    }
    out
}

/// A part of the document as text; `None` when it is missing or unreadable, an error when it
/// decompresses past [`MAX_PART_BYTES`] (what the archive declares, or what it really gives).
fn entry(z: &mut Zip, name: &str, format: &'static str) -> Result<Option<String>, ParseError> {
    let Ok(f) = z.by_name(name) else {
        return Ok(None);
    };
    let bomb = || ParseError::Corrupt {
        format,
        reason: format!(
            "{name} decompresses to more than {} MiB, or more than {MAX_RATIO} times its \
             compressed size: a zip bomb, not a document",
            MAX_PART_BYTES >> 20
        ),
    };
    let inflates = f.size() > RATIO_FROM_BYTES && f.size() / f.compressed_size().max(1) > MAX_RATIO;
    if f.size() > MAX_PART_BYTES || inflates {
        return Err(bomb());
    }
    let mut s = String::new();
    match f.take(MAX_PART_BYTES + 1).read_to_string(&mut s) {
        Ok(read) if read as u64 > MAX_PART_BYTES => Err(bomb()),
        Ok(_) => Ok(Some(s)),
        Err(_) => Ok(None),
    }
}

/// A block of a DOCX body.
enum Block {
    Para {
        text: String,
        heading: Option<u8>,
        list: bool,
    },
    Table(Vec<Vec<String>>),
    PageBreak,
}

/// Walks WordprocessingML: paragraphs, their style, tables, page breaks.
fn docx_blocks(xml: &str) -> Vec<Block> {
    let mut r = Reader::from_str(xml);
    let mut out = Vec::new();
    let (mut text, mut heading, mut list) = (String::new(), None::<u8>, false);
    let mut in_text = false;
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut row: Vec<String> = Vec::new();
    let mut cell = String::new();
    let mut depth_tbl = 0usize;
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                b"t" => in_text = true,
                b"tab" => text.push('\t'),
                b"br" => {
                    let page = e.attributes().flatten().any(|a| {
                        a.key.local_name().as_ref() == b"type" && a.value.as_ref() == b"page"
                    });
                    if page && depth_tbl == 0 {
                        flush(&mut out, &mut text, &mut heading, &mut list);
                        out.push(Block::PageBreak);
                    } else {
                        text.push('\n');
                    }
                }
                b"pStyle" => {
                    for a in e.attributes().flatten() {
                        if a.key.local_name().as_ref() == b"val" {
                            let v = String::from_utf8_lossy(&a.value).to_ascii_lowercase();
                            if v == "title" {
                                heading = Some(1);
                            } else if let Some(n) = v.strip_prefix("heading") {
                                heading = n.trim().parse::<u8>().ok().map(|n| n.clamp(1, 6));
                            } else if v.contains("list") {
                                list = true;
                            }
                        }
                    }
                }
                b"numPr" => list = true,
                b"tbl" => depth_tbl += 1,
                _ => {}
            },
            Ok(Event::Text(t)) if in_text => {
                if let Ok(s) = t.unescape() {
                    text.push_str(&s);
                }
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                b"t" => in_text = false,
                b"p" => {
                    if depth_tbl > 0 {
                        if !cell.is_empty() && !text.is_empty() {
                            cell.push(' ');
                        }
                        cell.push_str(text.trim());
                        text.clear();
                        heading = None;
                        list = false;
                    } else {
                        flush(&mut out, &mut text, &mut heading, &mut list);
                    }
                }
                b"tc" => row.push(std::mem::take(&mut cell)),
                b"tr" => table.push(std::mem::take(&mut row)),
                b"tbl" => {
                    depth_tbl = depth_tbl.saturating_sub(1);
                    if depth_tbl == 0 && !table.is_empty() {
                        out.push(Block::Table(std::mem::take(&mut table)));
                    }
                }
                _ => {}
            },
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    flush(&mut out, &mut text, &mut heading, &mut list);
    out
}

fn flush(out: &mut Vec<Block>, text: &mut String, heading: &mut Option<u8>, list: &mut bool) {
    let t = text.trim();
    if !t.is_empty() {
        out.push(Block::Para {
            text: t.to_owned(),
            heading: *heading,
            list: *list,
        });
    }
    text.clear();
    *heading = None;
    *list = false;
}

fn page_from(number: u32, items: Vec<Value>, md: Vec<String>, text: Vec<String>) -> Page {
    Page {
        page_number: number,
        text: text.join("\n"),
        md: md.join("\n\n"),
        items,
        width: 0.0,
        height: 0.0,
        success: true,
        error: None,
    }
}

/// Parses a DOCX.
pub fn docx(bytes: &[u8]) -> Result<Parsed, ParseError> {
    let mut z = open(bytes, "docx")?;
    let body = entry(&mut z, "word/document.xml", "docx")?.ok_or_else(|| ParseError::Corrupt {
        format: "docx",
        reason: "no word/document.xml (encrypted or not a Word document)".into(),
    })?;
    let mut extra: Vec<(&str, String)> = Vec::new();
    let names = names(&z);
    for n in &names {
        if n.starts_with("word/header") && n.ends_with(".xml") {
            if let Some(x) = entry(&mut z, n, "docx")? {
                extra.push(("header", x));
            }
        } else if n.starts_with("word/footer") && n.ends_with(".xml") {
            if let Some(x) = entry(&mut z, n, "docx")? {
                extra.push(("footer", x));
            }
        }
    }
    let mut pages = Vec::new();
    let (mut items, mut md, mut text) = (Vec::new(), Vec::new(), Vec::new());
    let mut title = None;
    for b in docx_blocks(&body) {
        match b {
            Block::Para {
                text: t,
                heading: Some(l),
                ..
            } => {
                title.get_or_insert_with(|| t.clone());
                let m = format!("{} {t}", "#".repeat(l as usize));
                items.push(json!({ "type": "heading", "level": l, "value": t, "md": m }));
                md.push(m);
                text.push(t);
            }
            Block::Para {
                text: t,
                list: true,
                ..
            } => {
                let m = format!("- {t}");
                items.push(json!({ "type": "text", "value": t, "md": m }));
                md.push(m);
                text.push(t);
            }
            Block::Para { text: t, .. } => {
                items.push(json!({ "type": "text", "value": t, "md": t }));
                md.push(t.clone());
                text.push(t);
            }
            Block::Table(rows) => {
                let item = table_item(&rows);
                md.push(item["md"].as_str().unwrap_or_default().to_owned());
                text.extend(rows.iter().map(|r| r.join("\t")));
                items.push(item);
            }
            Block::PageBreak => {
                let n = pages.len() as u32 + 1;
                pages.push(page_from(
                    n,
                    std::mem::take(&mut items),
                    std::mem::take(&mut md),
                    std::mem::take(&mut text),
                ));
            }
        }
    }
    for (kind, xml) in extra {
        let t: Vec<String> = docx_blocks(&xml)
            .into_iter()
            .filter_map(|b| match b {
                Block::Para { text, .. } => Some(text),
                _ => None,
            })
            .collect();
        if !t.is_empty() {
            let joined = t.join(" ");
            items.push(json!({ "type": kind, "value": joined, "md": joined }));
            text.push(joined);
        }
    }
    let n = pages.len() as u32 + 1;
    pages.push(page_from(n, items, md, text));
    Ok(Parsed {
        page_count: pages.len(),
        pages,
        format: "docx",
        title,
        ocr_pages: Vec::new(),
        ocr_skipped: Vec::new(),
        reread_pages: Vec::new(),
    })
}

/// Text paragraphs of DrawingML (`a:p` / `a:t`), each with whether it sits in a title placeholder.
fn slide_paragraphs(xml: &str) -> Vec<(String, bool)> {
    let mut r = Reader::from_str(xml);
    let mut out = Vec::new();
    let (mut cur, mut in_t, mut title_shape, mut depth_sp) = (String::new(), false, false, 0usize);
    loop {
        match r.read_event() {
            Ok(Event::Start(e)) => match e.local_name().as_ref() {
                b"t" => in_t = true,
                b"sp" => {
                    depth_sp += 1;
                    title_shape = false;
                }
                _ => {}
            },
            Ok(Event::Empty(e)) => match e.local_name().as_ref() {
                b"ph" => {
                    title_shape = e.attributes().flatten().any(|a| {
                        a.key.local_name().as_ref() == b"type"
                            && matches!(a.value.as_ref(), b"title" | b"ctrTitle")
                    })
                }
                b"br" => cur.push('\n'),
                _ => {}
            },
            Ok(Event::Text(t)) if in_t => {
                if let Ok(s) = t.unescape() {
                    cur.push_str(&s);
                }
            }
            Ok(Event::End(e)) => match e.local_name().as_ref() {
                b"t" => in_t = false,
                b"p" => {
                    let t = cur.trim().to_owned();
                    if !t.is_empty() {
                        out.push((t, title_shape));
                    }
                    cur.clear();
                }
                b"sp" => depth_sp = depth_sp.saturating_sub(1),
                _ => {}
            },
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
    }
    out
}

fn numbered(names: &[String], prefix: &str) -> Vec<(u32, String)> {
    let mut v: Vec<(u32, String)> = names
        .iter()
        .filter_map(|n| {
            let num = n.strip_prefix(prefix)?.strip_suffix(".xml")?.parse().ok()?;
            Some((num, n.clone()))
        })
        .collect();
    v.sort();
    v
}

/// Parses a PPTX: one page per slide.
pub fn pptx(bytes: &[u8]) -> Result<Parsed, ParseError> {
    let mut z = open(bytes, "pptx")?;
    let names = names(&z);
    let slides = numbered(&names, "ppt/slides/slide");
    if slides.is_empty() {
        return Err(ParseError::Corrupt {
            format: "pptx",
            reason: "no slides".into(),
        });
    }
    let notes: std::collections::HashMap<u32, String> =
        numbered(&names, "ppt/notesSlides/notesSlide")
            .into_iter()
            .collect();
    let mut pages = Vec::new();
    let mut title = None;
    for (i, (num, name)) in slides.iter().enumerate() {
        let xml = entry(&mut z, name, "pptx")?.unwrap_or_default();
        let (mut items, mut md, mut text) = (Vec::new(), Vec::new(), Vec::new());
        for (t, is_title) in slide_paragraphs(&xml) {
            if is_title {
                title.get_or_insert_with(|| t.clone());
                let m = format!("# {t}");
                items.push(json!({ "type": "heading", "level": 1, "value": t, "md": m }));
                md.push(m);
            } else {
                items.push(json!({ "type": "text", "value": t, "md": t }));
                md.push(t.clone());
            }
            text.push(t);
        }
        let note = match notes.get(num) {
            Some(n) => entry(&mut z, n, "pptx")?,
            None => None,
        };
        if let Some(nx) = note {
            let n: Vec<String> = slide_paragraphs(&nx)
                .into_iter()
                .map(|(t, _)| t)
                .filter(|t| t.parse::<u32>().is_err()) // the slide-number placeholder
                .collect();
            if !n.is_empty() {
                let joined = n.join("\n");
                md.push(format!("**Notes:** {joined}"));
                items.push(json!({ "type": "text", "value": joined, "md": format!("**Notes:** {joined}") }));
                text.push(joined);
            }
        }
        pages.push(page_from(i as u32 + 1, items, md, text));
    }
    Ok(Parsed {
        page_count: pages.len(),
        pages,
        format: "pptx",
        title,
        ocr_pages: Vec::new(),
        ocr_skipped: Vec::new(),
        reread_pages: Vec::new(),
    })
}

/// Parses a spreadsheet (xlsx, xls, ods): one page per sheet.
pub fn spreadsheet(bytes: &[u8]) -> Result<Parsed, ParseError> {
    use calamine::Reader as _;
    // Only zip containers (XLSX, XLSB, ODS). Legacy binary workbooks are refused before
    // calamine's compound-file reader sees them: fuzzing showed it panics on damaged ones.
    if !bytes.starts_with(b"PK\x03\x04") {
        return Err(ParseError::Unsupported(
            "not a zip-based spreadsheet (XLSX, XLSB or ODS)".into(),
        ));
    }
    let mut wb =
        calamine::open_workbook_auto_from_rs(Cursor::new(bytes.to_vec())).map_err(|e| {
            ParseError::Corrupt {
                format: "xlsx",
                reason: e.to_string(),
            }
        })?;
    let mut pages = Vec::new();
    for (i, name) in wb.sheet_names().to_vec().into_iter().enumerate() {
        let Ok(range) = wb.worksheet_range(&name) else {
            continue;
        };
        let rows: Vec<Vec<String>> = range
            .rows()
            .map(|r| r.iter().map(|c| c.to_string()).collect::<Vec<_>>())
            .filter(|r: &Vec<String>| r.iter().any(|c| !c.trim().is_empty()))
            .collect();
        let mut items = vec![
            json!({ "type": "heading", "level": 2, "value": name, "md": format!("## {name}") }),
        ];
        let mut md = vec![format!("## {name}")];
        let mut text = vec![name.clone()];
        if !rows.is_empty() {
            let t = table_item(&rows);
            md.push(t["md"].as_str().unwrap_or_default().to_owned());
            text.extend(rows.iter().map(|r| r.join("\t")));
            items.push(t);
        }
        pages.push(page_from(i as u32 + 1, items, md, text));
    }
    if pages.is_empty() {
        return Err(ParseError::Corrupt {
            format: "xlsx",
            reason: "no readable sheets".into(),
        });
    }
    Ok(Parsed {
        page_count: pages.len(),
        pages,
        format: "xlsx",
        title: None,
        ocr_pages: Vec::new(),
        ocr_skipped: Vec::new(),
        reread_pages: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_that_inflates_like_a_bomb_is_refused_naming_the_limit() {
        use std::io::Write;
        let mut buf = Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            w.start_file(
                "word/document.xml",
                zip::write::SimpleFileOptions::default(),
            )
            .expect("start");
            w.write_all(b"<w:document><w:body>").expect("write");
            w.write_all(&vec![b' '; 20 << 20]).expect("write");
            w.write_all(b"</w:body></w:document>").expect("write");
            w.finish().expect("finish");
        }
        assert!(
            buf.get_ref().len() < 1 << 20,
            "the test's bomb did not compress"
        );
        let e = docx(buf.get_ref()).unwrap_err().to_string();
        assert!(
            e.contains("zip bomb") && e.contains("times its compressed size"),
            "{e}"
        );
    }

    #[test]
    fn media_parts_are_the_embedded_images() {
        use std::io::Write;
        let mut buf = Cursor::new(Vec::new());
        {
            let mut w = zip::ZipWriter::new(&mut buf);
            let opts = zip::write::SimpleFileOptions::default();
            for (name, data) in [
                ("word/document.xml", &b"<w:document/>"[..]),
                ("word/media/image1.png", &b"\x89PNG one"[..]),
                ("word/media/image2.jpeg", &b"\xFF\xD8\xFF two"[..]),
                ("word/media/nested/x.png", &b"not a media part"[..]),
            ] {
                w.start_file(name, opts).expect("start");
                w.write_all(data).expect("write");
            }
            w.finish().expect("finish");
        }
        let got = media(buf.get_ref(), 10, 1 << 20, 1 << 20);
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["image1.png", "image2.jpeg"]);
        assert_eq!(got[0].1, b"\x89PNG one");
        assert_eq!(media(buf.get_ref(), 1, 1 << 20, 1 << 20).len(), 1, "limit");
        // A total cap of 12 bytes keeps the 9-byte image and not the second.
        assert_eq!(media(buf.get_ref(), 10, 1 << 20, 12).len(), 1, "total");
        assert!(media(b"not a zip", 10, 1 << 20, 1 << 20).is_empty());
    }

    #[test]
    fn legacy_binary_workbooks_never_reach_the_compound_file_reader() {
        // The head of a damaged compound file that made calamine panic under fuzzing.
        let mut cfb = b"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1".to_vec();
        cfb.resize(4096, 0);
        let err = spreadsheet(&cfb).expect_err("refused");
        assert!(
            err.to_string().contains("not a zip-based spreadsheet"),
            "{err}"
        );
    }
}
