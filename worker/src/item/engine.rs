//! Parse or classify one file's bytes: CPU-bound, on an engine thread.

use std::time::Duration;

use docfleet_shared::model::{parse_page_selection, JobSpec};
use serde::Serialize;
use serde_json::Value;

use super::context::BatchContext;
use super::{whole, Failure};
use crate::classify::Document;
use crate::input::Input;
use crate::parse::{self, ParseRequest};
use crate::vision::VisionError;

/// MULTIMODAL: the first pages' images and text to the configured vision model. Runs on the
/// engine's blocking thread, so it waits on the runtime for the HTTP call.
fn classify_with_vision(
    ctx: &BatchContext,
    rules: &[docfleet_shared::model::ClassifyRule],
    parsed: &parse::Parsed,
    text: &str,
    input: &Input,
    bound: Duration,
) -> Result<crate::classify::Classification, Failure> {
    let client = ctx.vision.as_ref().ok_or_else(|| {
        Failure::Fail("MULTIMODAL batch, but this worker has no vision.url configured".into())
    })?;
    let mut images: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let bytes = whole(input)?;
    match parsed.format {
        "pdf" => {
            let numbers: Vec<u32> = parsed
                .pages
                .iter()
                .take(client.max_images)
                .map(|p| p.page_number)
                .collect();
            for (_, png) in
                crate::ocr::render_pdf_pages(&bytes, &numbers, 100, bound).unwrap_or_default()
            {
                images.push(("image/png", png));
            }
        }
        "png" => images.push(("image/png", bytes)),
        "jpeg" => images.push(("image/jpeg", bytes)),
        _ => {}
    }
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|e| Failure::Retry(format!("no runtime for the vision call: {e}")))?;
    runtime
        .block_on(client.classify(rules, text, &images))
        .map_err(|e| match e {
            VisionError::Transient(_) => Failure::Retry(e.to_string()),
            VisionError::Permanent(_) => Failure::Fail(e.to_string()),
        })
}

/// Runs an engine call, turning a panic into the item's failure.
pub(super) fn guarded<T>(f: impl FnOnce() -> Result<T, Failure>) -> Result<T, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        Failure::Fail(format!(
            "parser crashed: {}",
            crate::isolation::panic_message(panic.as_ref())
        ))
    })?
}

/// What the engine produced.
pub(super) struct EngineOutput {
    /// Files to store beside the result: (name, bytes), e.g. page screenshots.
    pub(super) images: Vec<(String, Vec<u8>)>,
    /// Written to the file store.
    pub(super) stored: Stored,
    /// Stored on the item itself (classify); parse items point at the file instead.
    pub(super) summary: Option<Value>,
    pub(super) pages: PageCounts,
}

/// An output's page counts: recorded on its item, and summed on its batch.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageCounts {
    /// Pages in the output.
    pub(super) read: usize,
    /// Of them, pages whose text came from OCR.
    pub(super) ocr: usize,
}

impl PageCounts {
    fn of(parsed: &parse::Parsed) -> Self {
        Self {
            read: parsed.pages.len(),
            ocr: parsed.ocr_pages.len(),
        }
    }
}

/// An item's output as stored: encoded straight from the parse, never copied into a JSON
/// value first (for a million-cell sheet that copy was the worker's largest allocation).
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Stored {
    Parse(Box<ParseOutput>),
    Classify(Value),
}

#[derive(Serialize)]
pub(super) struct ParseOutput {
    pages: Vec<parse::Page>,
    pub(super) text_full: String,
    pub(super) markdown_full: String,
    pub(super) metadata: ParseMetadata,
}

#[derive(Serialize)]
pub(super) struct ParseMetadata {
    pages: Vec<PageNumber>,
    format: &'static str,
    page_count: usize,
    pages_parsed: usize,
    title: Option<String>,
    ocr_pages: Vec<u32>,
    ocr_skipped_pages: Vec<u32>,
    reread_pages: Vec<u32>,
    language: Option<&'static str>,
    custom_metadata: Option<Value>,
    /// Where the images stored beside the output are, once they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) images: Option<Value>,
}

#[derive(Serialize)]
struct PageNumber {
    page_number: u32,
}

/// `replace_failed_page_mode` and `page_error_tolerance`: what a page that could not be read
/// becomes, and how many such pages fail the whole file.
fn apply_failed_pages(
    parsed: &mut parse::Parsed,
    params: &docfleet_shared::model::ParseParameters,
) -> Result<(), Failure> {
    use docfleet_shared::model::FailPageMode;
    let failed = parsed.pages.iter().filter(|p| !p.success).count();
    if failed == 0 {
        return Ok(());
    }
    if let Some(tolerance) = params.page_error_tolerance {
        let share = failed as f64 / parsed.pages.len().max(1) as f64;
        if share > tolerance {
            return Err(Failure::Fail(format!(
                "{failed} of {} pages could not be read, over page_error_tolerance {tolerance}",
                parsed.pages.len()
            )));
        }
    }
    let mode = params
        .replace_failed_page_mode
        .unwrap_or(FailPageMode::RawText);
    for page in parsed.pages.iter_mut().filter(|p| !p.success) {
        let error = page.error.clone().unwrap_or_default();
        match mode {
            FailPageMode::RawText => {}
            FailPageMode::BlankPage => {
                page.text.clear();
                page.md.clear();
                page.items.clear();
            }
            FailPageMode::ErrorMessage => {
                let text = format!(
                    "{}{error}{}",
                    params
                        .replace_failed_page_with_error_message_prefix
                        .as_deref()
                        .unwrap_or(""),
                    params
                        .replace_failed_page_with_error_message_suffix
                        .as_deref()
                        .unwrap_or("")
                );
                page.text = text.clone();
                page.md = text;
                page.items.clear();
            }
        }
    }
    Ok(())
}

/// Runs parse or classify on one file; CPU-bound, called on a blocking thread.
/// `deadline` is the item's: the parser child and every tool it starts are killed a little
/// before it, so the thread returns on time and its CPU slot is free again.
pub(super) fn run_engine(
    ctx: &BatchContext,
    input: &Input,
    name: &str,
    deadline: Duration,
    max_ocr_pages: Option<u32>,
) -> Result<EngineOutput, Failure> {
    let bound = deadline
        .saturating_sub(Duration::from_secs(1))
        .max(Duration::from_secs(1));
    #[cfg(feature = "fault-injection")]
    {
        let bytes = input.head();
        if bytes.starts_with(b"DOCFLEET-FAULT:PANIC") {
            panic!("injected parser panic");
        }
        if bytes.starts_with(b"DOCFLEET-FAULT:HANG") {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
        // A document that takes its time, then parses as the text it is.
        if bytes.starts_with(b"DOCFLEET-FAULT:SLOW") {
            std::thread::sleep(std::time::Duration::from_millis(600));
        }
    }
    match &ctx.spec {
        JobSpec::Parse(cfg) => {
            let params = cfg.parameters.clone().unwrap_or_default();
            let target_pages = match params.target_pages.as_deref() {
                Some(t) => Some(parse_page_selection(t).map_err(Failure::Fail)?),
                None => None,
            };
            let mut languages = params.languages.clone().unwrap_or_default();
            if let Some(l) = &params.lang {
                languages.insert(0, l.clone());
            }
            let wants = |kind| {
                params
                    .images_to_save
                    .as_ref()
                    .is_some_and(|k| k.contains(&kind))
            };
            let req = ParseRequest {
                target_pages,
                max_pages: params.max_pages,
                disable_ocr: params.disable_ocr.unwrap_or(false),
                languages,
                max_ocr_pages,
                tool_bound_secs: bound.as_secs(),
                screenshots: wants(docfleet_shared::model::ImageKind::Screenshot),
                embedded_images: wants(docfleet_shared::model::ImageKind::Embedded),
            };
            let (mut parsed, images) = ctx.parse(input, name, &req, bound)?;
            apply_failed_pages(&mut parsed, &params)?;
            parsed.hide(
                params.hide_headers.unwrap_or(false),
                params.hide_footers.unwrap_or(false),
            );
            let separator = params
                .page_separator
                .clone()
                .unwrap_or_else(|| "\n\n".into());
            let wrap = |s: &str, n: u32| {
                let pre = params
                    .page_prefix
                    .as_deref()
                    .unwrap_or("")
                    .replace("{pageNumber}", &n.to_string());
                let suf = params
                    .page_suffix
                    .as_deref()
                    .unwrap_or("")
                    .replace("{pageNumber}", &n.to_string());
                format!("{pre}{s}{suf}")
            };
            let text_full = parsed
                .pages
                .iter()
                .map(|p| wrap(&p.text, p.page_number))
                .collect::<Vec<_>>()
                .join(&separator);
            let markdown_full = parsed
                .pages
                .iter()
                .map(|p| wrap(&p.md, p.page_number))
                .collect::<Vec<_>>()
                .join(&separator);
            let pages = PageCounts::of(&parsed);
            let metadata = ParseMetadata {
                pages: parsed
                    .pages
                    .iter()
                    .map(|p| PageNumber {
                        page_number: p.page_number,
                    })
                    .collect(),
                format: parsed.format,
                page_count: parsed.page_count,
                pages_parsed: parsed.pages.len(),
                language: parsed.language(),
                title: parsed.title,
                ocr_pages: parsed.ocr_pages,
                ocr_skipped_pages: parsed.ocr_skipped,
                reread_pages: parsed.reread_pages,
                custom_metadata: params.custom_metadata,
                images: None,
            };
            Ok(EngineOutput {
                pages,
                stored: Stored::Parse(Box::new(ParseOutput {
                    pages: parsed.pages,
                    text_full,
                    markdown_full,
                    metadata,
                })),
                summary: None,
                images,
            })
        }
        JobSpec::Classify(cfg) => {
            let pc = cfg.parsing_configuration.clone().unwrap_or_default();
            let req = ParseRequest {
                target_pages: pc.target_pages.clone(),
                max_pages: Some(pc.max_pages.unwrap_or(5)),
                disable_ocr: false,
                languages: pc.lang.clone().into_iter().collect(),
                max_ocr_pages,
                tool_bound_secs: bound.as_secs(),
                ..ParseRequest::default()
            };
            let (parsed, _) = ctx.parse(input, name, &req, bound)?;
            let text = parsed.full_text("\n");
            let c = if cfg.mode == Some(docfleet_shared::model::ClassifyMode::Multimodal) {
                classify_with_vision(ctx, &cfg.rules, &parsed, &text, input, bound)?
            } else {
                let classifier = ctx
                    .classifier
                    .as_ref()
                    .ok_or_else(|| Failure::Fail("classifier missing".into()))?;
                classifier
                    .classify(&Document {
                        text: &text,
                        format: parsed.format,
                        page_count: parsed.page_count,
                        title: parsed.title.as_deref(),
                    })
                    .map_err(|e| Failure::Retry(e.to_string()))?
            };
            let summary = serde_json::to_value(&c)
                .map_err(|e| Failure::Fail(format!("result not serialisable: {e}")))?;
            Ok(EngineOutput {
                pages: PageCounts::of(&parsed),
                stored: Stored::Classify(summary.clone()),
                summary: Some(summary),
                images: Vec::new(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use docfleet_shared::model::{FailPageMode, ParseParameters};

    fn doc() -> parse::Parsed {
        let page = |n: u32, ok: bool| parse::Page {
            page_number: n,
            text: format!("raw {n}"),
            md: format!("raw {n}"),
            items: Vec::new(),
            width: 0.0,
            height: 0.0,
            success: ok,
            error: (!ok).then(|| "could not render".to_owned()),
        };
        parse::Parsed {
            pages: vec![page(1, true), page(2, false), page(3, true), page(4, true)],
            format: "pdf",
            page_count: 4,
            title: None,
            ocr_pages: Vec::new(),
            ocr_skipped: Vec::new(),
            reread_pages: Vec::new(),
        }
    }

    #[test]
    fn failed_pages_follow_the_mode_and_the_tolerance() {
        let mut p = doc();
        let params = ParseParameters {
            replace_failed_page_mode: Some(FailPageMode::ErrorMessage),
            replace_failed_page_with_error_message_prefix: Some("[".into()),
            replace_failed_page_with_error_message_suffix: Some("]".into()),
            ..Default::default()
        };
        apply_failed_pages(&mut p, &params).unwrap();
        assert_eq!(p.pages[1].text, "[could not render]");
        assert_eq!(p.pages[0].text, "raw 1");
        let mut p = doc();
        let blank = ParseParameters {
            replace_failed_page_mode: Some(FailPageMode::BlankPage),
            ..Default::default()
        };
        apply_failed_pages(&mut p, &blank).unwrap();
        assert!(p.pages[1].text.is_empty());
        let mut p = doc();
        let strict = ParseParameters {
            page_error_tolerance: Some(0.2),
            ..Default::default()
        };
        assert!(matches!(
            apply_failed_pages(&mut p, &strict),
            Err(Failure::Fail(_))
        ));
        let mut p = doc();
        let lenient = ParseParameters {
            page_error_tolerance: Some(0.25),
            ..Default::default()
        };
        apply_failed_pages(&mut p, &lenient).unwrap();
        assert_eq!(p.pages[1].text, "raw 2");
    }
}
