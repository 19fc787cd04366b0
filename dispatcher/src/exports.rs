//! A whole batch's results as one download (ours): `GET …/batch-processing/{job_id}/results`.
//! - JSON Lines (the default): one line per item in input order: the item as `job_items.list`
//!   shows it, plus its `result` once completed (a parse job's whole output, a classify job's
//!   answer);
//! - `format=zip`: the outputs as files, a folder per completed item,
//!   `<item_id>/<name>.json` (the whole result), and for a parse job `<name>.md`, `<name>.txt`
//!   and its kept images.
//!
//! Both are streamed a page of items at a time, so a 100,000-item batch costs the dispatcher
//! one page of memory, not the batch; the zip is compressed off the async threads.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use docfleet_shared::model::JobType;
use serde_json::Value;

use crate::auth::Project;
use crate::error::ApiError;
use crate::http::QueryParams;
use crate::records::{fill_items, job_item, BatchRecord};
use crate::state::AppState;
use docfleet_shared::buckets::object_name;

/// Items read and written per step.
const PAGE: isize = 200;

/// Items per step of a zip: their outputs and images are held while they are compressed.
const ZIP_PAGE: isize = 50;

/// The download itself.
pub async fn results(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
    q: QueryParams,
) -> Result<Response, ApiError> {
    let zip = match q.get("format").unwrap_or("jsonl") {
        "jsonl" => false,
        "zip" => true,
        other => {
            return Err(ApiError::field(
                "format",
                format!("must be jsonl or zip, got {other:?}"),
            ))
        }
    };
    let batch = crate::batch::load(&st, &project, &batch_id).await?;
    let export = Export {
        st,
        batch,
        batch_id,
    };
    if zip {
        return Ok(zip_download(export));
    }
    let name = format!(
        "attachment; filename=\"{}.jsonl\"",
        export_name(&export.batch_id)
    );
    let pages =
        futures_util::stream::try_unfold((export, Some(0)), |(export, offset)| async move {
            let Some(offset) = offset else {
                return Ok(None);
            };
            let (lines, more) = export.page(offset).await.map_err(|e| {
            tracing::warn!(batch_id = %export.batch_id, error = %e, "results download cut short");
            std::io::Error::other(e.to_string())
        })?;
            let next = more.then_some(offset + PAGE);
            Ok::<_, std::io::Error>(Some((axum::body::Bytes::from(lines), (export, next))))
        });
    Ok((
        [
            (header::CONTENT_TYPE, "application/jsonl".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(pages),
    )
        .into_response())
}

fn export_name(batch_id: &str) -> String {
    batch_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        .collect()
}

struct Export {
    st: AppState,
    batch: BatchRecord,
    batch_id: String,
}

impl Export {
    /// The lines of the items from `offset`, and whether any may follow.
    async fn page(&self, offset: isize) -> Result<(Vec<u8>, bool), ApiError> {
        let (rows, more) = self.rows(offset, PAGE).await?;
        let mut lines = Vec::new();
        for (line, result) in rows {
            let mut line = line;
            if let Some(result) = result {
                line["result"] = result;
            }
            serde_json::to_writer(&mut lines, &line)?;
            lines.push(b'\n');
        }
        Ok((lines, more))
    }

    /// Up to `page` items from `offset` as `job_items.list` shows them, each with its result
    /// once completed, and whether any may follow.
    async fn rows(
        &self,
        offset: isize,
        page: isize,
    ) -> Result<(Vec<(Value, Option<Value>)>, bool), ApiError> {
        let (st, batch_id) = (&self.st, &self.batch_id);
        let mut con = st.redis.clone();
        let ids: Vec<(String, f64)> = redis::AsyncCommands::zrange_withscores(
            &mut con,
            st.keys.batch_items(batch_id),
            offset,
            offset + page - 1,
        )
        .await?;
        if ids.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.hgetall(st.keys.item(batch_id, id));
        }
        let hashes: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
        let results: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(st.keys.batch_results(batch_id))
            .arg(ids.iter().map(|(id, _)| id).collect::<Vec<_>>())
            .query_async(&mut con)
            .await?;
        let more = ids.len() as isize == page;
        let mut rows: Vec<_> = ids
            .into_iter()
            .zip(hashes)
            .map(|((id, order), h)| (id, order, h))
            .collect();
        fill_items(&mut con, &st.keys, batch_id, &self.batch, &mut rows).await?;
        let mut out = Vec::with_capacity(rows.len());
        for ((id, _, h), result) in rows.iter().zip(results) {
            let completed = h.get("status").map(String::as_str) == Some("completed");
            let result = match completed {
                true => Some(self.result(self.kind(), result.as_deref()).await?),
                false => None,
            };
            out.push((job_item(id, h), result));
        }
        Ok((out, more))
    }

    fn kind(&self) -> JobType {
        self.batch
            .get("job_type")
            .and_then(JobType::parse)
            .unwrap_or(JobType::Parse)
    }

    /// The files of the items from `offset` for the zip, and whether any may follow.
    async fn entries(&self, offset: isize) -> Result<(Vec<Entry>, bool), ApiError> {
        let (rows, more) = self.rows(offset, ZIP_PAGE).await?;
        let mut entries = Vec::new();
        for (item, result) in rows {
            let Some(result) = result.filter(|r| !r.is_null()) else {
                continue;
            };
            let folder = export_name(item["item_id"].as_str().unwrap_or_default());
            let name = object_name(item["item_name"].as_str().unwrap_or_default());
            let at = |file: &str| format!("{folder}/{file}");
            entries.push(Entry::packed(
                at(&format!("{name}.json")),
                serde_json::to_vec(&result)?,
            ));
            if self.kind() == JobType::Parse {
                for (ext, field) in [("md", "markdown_full"), ("txt", "text_full")] {
                    if let Some(text) = result[field].as_str() {
                        entries.push(Entry::packed(at(&format!("{name}.{ext}")), text.into()));
                    }
                }
                for image in result["metadata"]["images"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let (Some(image_name), Some(key)) =
                        (image["name"].as_str(), image["key"].as_str())
                    else {
                        continue;
                    };
                    let bytes = self.st.store.get(key).await?;
                    entries.push(Entry {
                        name: at(&object_name(image_name)),
                        bytes,
                        // Images are compressed already.
                        packed: false,
                    });
                }
            }
        }
        Ok((entries, more))
    }

    /// A completed item's result: a parse job's output (from the item's record or its file),
    /// a classify job's answer.
    async fn result(&self, kind: JobType, raw: Option<&str>) -> Result<Value, ApiError> {
        let Some(mut result) = raw.and_then(|r| serde_json::from_str::<Value>(r).ok()) else {
            return Ok(Value::Null);
        };
        if kind != JobType::Parse {
            return Ok(result);
        }
        if let Some(output) = result.get_mut("output").map(Value::take) {
            return Ok(output);
        }
        match result.get("output_key").and_then(Value::as_str) {
            Some(key) => Ok(serde_json::from_slice(&self.st.store.get(key).await?)?),
            None => Ok(Value::Null),
        }
    }
}

/// One file of the zip.
struct Entry {
    name: String,
    bytes: Vec<u8>,
    /// Whether to compress it.
    packed: bool,
}

impl Entry {
    fn packed(name: String, bytes: Vec<u8>) -> Self {
        Self {
            name,
            bytes,
            packed: true,
        }
    }
}

/// What the zip writer has written and the response has not yet sent.
#[derive(Clone, Default)]
struct Spool(Arc<Mutex<Vec<u8>>>);

impl Spool {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type Zip = zip::ZipWriter<zip::write::StreamWriter<Spool>>;

/// Writes `entries` (and the directory at the end, when `last`) on a blocking thread;
/// answers the writer, unless finished, and the bytes written.
async fn pack(
    mut zip: Zip,
    spool: Spool,
    entries: Vec<Entry>,
    last: bool,
) -> std::io::Result<(Option<Zip>, Vec<u8>)> {
    tokio::task::spawn_blocking(move || {
        use zip::write::SimpleFileOptions;
        use zip::CompressionMethod;
        for e in entries {
            let method = match e.packed {
                true => CompressionMethod::Deflated,
                false => CompressionMethod::Stored,
            };
            let options = SimpleFileOptions::default()
                .compression_method(method)
                .large_file(e.bytes.len() as u64 >= u32::MAX as u64);
            zip.start_file(e.name, options)
                .map_err(std::io::Error::other)?;
            zip.write_all(&e.bytes)?;
        }
        let zip = match last {
            true => {
                zip.finish().map_err(std::io::Error::other)?;
                None
            }
            false => Some(zip),
        };
        Ok((zip, spool.take()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The zip download: each step reads a page of items, compresses their files and sends what
/// was written.
fn zip_download(export: Export) -> Response {
    let name = format!(
        "attachment; filename=\"{}.zip\"",
        export_name(&export.batch_id)
    );
    let spool = Spool::default();
    let zip = zip::ZipWriter::new_stream(spool.clone());
    let steps = futures_util::stream::try_unfold(
        (export, spool, Some(zip), 0),
        |(export, spool, zip, offset)| async move {
            let Some(zip) = zip else {
                return Ok(None);
            };
            let (entries, more) = export.entries(offset).await.map_err(|e| {
                tracing::warn!(batch_id = %export.batch_id, error = %e, "results zip cut short");
                std::io::Error::other(e.to_string())
            })?;
            let (zip, bytes) = pack(zip, spool.clone(), entries, !more).await?;
            Ok::<_, std::io::Error>(Some((
                axum::body::Bytes::from(bytes),
                (export, spool, zip, offset + ZIP_PAGE),
            )))
        },
    );
    (
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(steps),
    )
        .into_response()
}
