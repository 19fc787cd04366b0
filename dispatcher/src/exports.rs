//! A whole batch's results as one download (ours): `GET …/batch-processing/{job_id}/results`,
//! JSON Lines, one line per item in input order: the item as `job_items.list` shows it, plus
//! its `result` once completed (a parse job's whole output, a classify job's answer). It is
//! streamed a page of items at a time, so a 100,000-item batch costs the dispatcher one page
//! of memory, not the batch.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use docfleet_shared::model::JobType;
use serde_json::Value;

use crate::auth::Project;
use crate::error::ApiError;
use crate::records::{fill_items, job_item, BatchRecord};
use crate::state::AppState;

/// Items read and written per step.
const PAGE: isize = 200;

/// The download itself.
pub async fn results(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
) -> Result<Response, ApiError> {
    let batch = crate::batch::load(&st, &project, &batch_id).await?;
    let name = format!("attachment; filename=\"{}.jsonl\"", export_name(&batch_id));
    let export = Export {
        st,
        batch,
        batch_id,
    };
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
        let (st, batch_id) = (&self.st, &self.batch_id);
        let mut con = st.redis.clone();
        let ids: Vec<(String, f64)> = redis::AsyncCommands::zrange_withscores(
            &mut con,
            st.keys.batch_items(batch_id),
            offset,
            offset + PAGE - 1,
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
        let more = ids.len() as isize == PAGE;
        let mut rows: Vec<_> = ids
            .into_iter()
            .zip(hashes)
            .map(|((id, order), h)| (id, order, h))
            .collect();
        fill_items(&mut con, &st.keys, batch_id, &self.batch, &mut rows).await?;
        let kind = self
            .batch
            .get("job_type")
            .and_then(JobType::parse)
            .unwrap_or(JobType::Parse);
        let mut lines = Vec::new();
        for ((id, _, h), result) in rows.iter().zip(results) {
            let mut line = job_item(id, h);
            if h.get("status").map(String::as_str) == Some("completed") {
                line["result"] = self.result(kind, result.as_deref()).await?;
            }
            serde_json::to_writer(&mut lines, &line)?;
            lines.push(b'\n');
        }
        Ok((lines, more))
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
