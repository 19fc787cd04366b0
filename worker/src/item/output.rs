//! Where an item's output goes: onto its result in Redis (small, no images) or into the
//! file store.

use docfleet_shared::store::FileStore;
use serde_json::{json, Value};

use super::engine::{EngineOutput, PageCounts, Stored};
use super::{Done, Failure};

/// The output placed on the item record if it fits there, else handed back for a file with
/// its JSON when already encoded (outputs with images are encoded after the images are
/// stored).
fn place_inline(
    output: EngineOutput,
    inline_max: usize,
) -> Result<Result<Output, ForFile>, Failure> {
    if !output.images.is_empty() {
        return Ok(Err(ForFile { output, body: None }));
    }
    let body = serde_json::to_string(&output.stored)
        .map_err(|e| Failure::Fail(format!("result not serialisable: {e}")))?;
    if body.len() > inline_max {
        return Ok(Err(ForFile {
            output,
            body: Some(body),
        }));
    }
    Ok(Ok(Output::Inline {
        body,
        summary: output.summary.is_some(),
        pages: output.pages,
    }))
}

/// An output bound for a file.
struct ForFile {
    output: EngineOutput,
    body: Option<String>,
}

/// Where an output went: onto the item record (small, no images) or into the file store.
pub(super) enum Output {
    /// The output's JSON, recorded on the item by the outcome's own script.
    Inline {
        body: String,
        /// The body is the classify answer itself rather than a parse output.
        summary: bool,
        pages: PageCounts,
    },
    /// Written under the output key; durable only after the store's `sync_blocking`, which
    /// the caller awaits before recording the outcome.
    File {
        summary: Option<Value>,
        pages: PageCounts,
    },
}

/// Keeps a small output for the item record, or writes it (and any images beside it) under
/// `key`; blocking.
pub(super) fn place_output(
    store: &FileStore,
    key: &str,
    output: EngineOutput,
    inline_max: usize,
) -> Result<Output, Failure> {
    match place_inline(output, inline_max)? {
        Ok(placed) => Ok(placed),
        Err(unplaced) => write_output(store, key, unplaced),
    }
}

/// Writes an output (and any images beside it) under `key`, reusing its JSON when already
/// encoded; blocking.
fn write_output(store: &FileStore, key: &str, unplaced: ForFile) -> Result<Output, Failure> {
    let ForFile { mut output, body } = unplaced;
    if !output.images.is_empty() {
        let mut names = Vec::new();
        for (name, png) in &output.images {
            let image_key = format!("{}.{name}", key.trim_end_matches(".json"));
            store.write_blocking(&image_key, png)?;
            names.push(json!({ "name": name, "key": image_key, "uri": store.uri(&image_key) }));
        }
        if let Stored::Parse(parse) = &mut output.stored {
            parse.metadata.images = Some(json!(names));
        }
    }
    let body = match body {
        Some(body) => body,
        None => serde_json::to_string(&output.stored)
            .map_err(|e| Failure::Fail(format!("result not serialisable: {e}")))?,
    };
    store.write_blocking(key, body.as_bytes())?;
    Ok(Output::File {
        summary: output.summary,
        pages: output.pages,
    })
}

/// The item's result, from where its output went. A file's processing results are
/// read from its items by the dispatcher, so nothing more is written per file.
pub(super) fn done(
    placed: Output,
    exported: Option<String>,
    output_key: &str,
    began: std::time::Instant,
) -> Done {
    // Where the user's own copy went, when the job asked for one.
    let exported = exported
        .map(|uri| format!(",\"exported_to\":{}", Value::String(uri)))
        .unwrap_or_default();
    let (result, pages) = match placed {
        // Classify keeps its answer on the item whichever way the output went.
        Output::File {
            summary: Some(s),
            pages,
        } => (s.to_string(), pages),
        Output::File {
            summary: None,
            pages,
        } => (
            format!(
                "{{\"output_key\":{},\"pages\":{}{exported}}}",
                Value::String(output_key.to_owned()),
                pages.read
            ),
            pages,
        ),
        Output::Inline {
            body,
            summary: true,
            pages,
        } => (body, pages),
        // The body is already JSON: splice it in rather than parse and encode it again.
        Output::Inline {
            body,
            summary: false,
            pages,
        } => (
            format!("{{\"pages\":{}{exported},\"output\":{body}}}", pages.read),
            pages,
        ),
    };
    Done {
        result,
        pages,
        seconds: began.elapsed().as_secs_f64(),
    }
}
