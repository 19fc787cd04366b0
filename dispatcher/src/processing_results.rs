//! A directory file's processing results, across batches:
//! `GET …/batch-processing/items/{item_id}/processing-results`.
//!
//! A run is a completed item of the file. Expansion lists every batch that registers files of
//! a directory in `P:dir:<id>:batches`, so the file's runs are read from its items in those
//! batches: the batch's config and type, the item's record and its result. Workers write
//! nothing per file.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use docfleet_shared::model::JobType;
use redis::AsyncCommands;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::auth::Project;
use crate::error::ApiError;
use crate::http::QueryParams;
use crate::records::DirectoryFile;
use crate::state::AppState;

/// Batches read per round trip.
const BATCH_CHUNK: usize = 100;

/// Every processing run of one item (directory file), across batches, oldest first.
pub async fn processing_results(
    State(st): State<AppState>,
    Project(project): Project,
    Path(item_id): Path<String>,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let job_type = q.get("job_type");
    if let Some(t) = job_type {
        if !matches!(t, "parse" | "extract" | "classify") {
            return Err(ApiError::field(
                "job_type",
                format!("must be parse, extract or classify; got {t:?}"),
            ));
        }
    }
    let mut con = st.redis.clone();
    let raw: Option<String> = con.get(st.keys.dfile(&item_id)).await?;
    let file: DirectoryFile = match raw {
        Some(r) => serde_json::from_str(&r)?,
        None => return Err(ApiError::not_found("item", &item_id)),
    };
    if file.project_id != project {
        return Err(ApiError::not_found("item", &item_id));
    }
    let batches: Vec<String> = con
        .zrange(st.keys.dir_batches(&file.directory_id), 0, -1)
        .await?;
    let mut runs = Vec::with_capacity(batches.len());
    for chunk in batches.chunks(BATCH_CHUNK) {
        for found in read_items(&st, &mut con, chunk, &item_id).await? {
            if let Some(run) = run_record(&st, &project, &item_id, found).await? {
                runs.push(run);
            }
        }
    }
    runs.retain(|v| job_type.is_none_or(|t| v.get("job_type").and_then(Value::as_str) == Some(t)));
    Ok(Json(json!({
        "item_id": item_id,
        "item_name": file.display_name,
        "processing_results": runs,
    })))
}

/// What one batch holds of the item.
struct Found {
    batch_id: String,
    project: Option<String>,
    job_type: Option<String>,
    config: Option<String>,
    item: HashMap<String, String>,
    result: Option<String>,
    order: Option<f64>,
}

/// The item in each of `batches`, one round trip for all.
async fn read_items(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    batches: &[String],
    item_id: &str,
) -> Result<Vec<Found>, ApiError> {
    let mut pipe = redis::pipe();
    for b in batches {
        pipe.hmget(st.keys.batch(b), &["project_id", "job_type"])
            .get(st.keys.batch_config(b))
            .hgetall(st.keys.item(b, item_id))
            .hget(st.keys.batch_results(b), item_id)
            .zscore(st.keys.batch_items(b), item_id);
    }
    let replies: Vec<redis::Value> = pipe.query_async(con).await?;
    let mut replies = replies.into_iter();
    let mut next = || replies.next().unwrap_or(redis::Value::Nil);
    let mut found = Vec::with_capacity(batches.len());
    for b in batches {
        let (project, job_type) = decode(next())?;
        found.push(Found {
            batch_id: b.clone(),
            project,
            job_type,
            config: decode(next())?,
            item: decode(next())?,
            result: decode(next())?,
            order: decode(next())?,
        });
    }
    Ok(found)
}

fn decode<T: redis::FromRedisValue>(v: redis::Value) -> redis::RedisResult<T> {
    Ok(redis::from_redis_value(v)?)
}

/// The run of a completed item, in the `ProcessingResult` shape; `None` for an item that is
/// not (yet) completed, or a batch of another project (a directory lists only its own
/// project's batches; this keeps it so).
async fn run_record(
    st: &AppState,
    project: &str,
    item_id: &str,
    f: Found,
) -> Result<Option<Value>, ApiError> {
    let get = |k: &str| f.item.get(k).map(String::as_str).filter(|v| !v.is_empty());
    if f.project.as_deref() != Some(project) || get("status") != Some("completed") {
        return Ok(None);
    }
    let (Some(kind), Some(config)) = (
        f.job_type.as_deref().and_then(JobType::parse),
        f.config.as_deref(),
    ) else {
        return Ok(None);
    };
    let Some(order) = f.order else {
        return Ok(None);
    };
    let job_id = kind.job_id(&f.batch_id, order as i64);
    let result: Value = f
        .result
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or(Value::Null);
    // Where the output is: a parse output in a file names its key; a classify answer is kept
    // on the item either way, its full output in the store only when it did not fit inline.
    let stored = match result.get("output_key").and_then(Value::as_str) {
        Some(key) => Some(key.to_owned()),
        None if kind == JobType::Classify => {
            let key = docfleet_shared::store::result_key(project, &f.batch_id, &job_id);
            st.store.size(&key).await.is_ok().then_some(key)
        }
        None => None,
    };
    // A job that wrote its outputs to the user's bucket names its copy there.
    let exported = result.get("exported_to").and_then(Value::as_str);
    let output_path = match (exported, stored) {
        (Some(uri), _) => uri.to_owned(),
        (None, Some(key)) => st.store.uri(&key),
        (None, None) => format!("/api/v2/{}/{job_id}", kind.as_str()),
    };
    let pages = get("pages")
        .and_then(|p| p.parse::<u64>().ok())
        .or_else(|| result.get("pages").and_then(Value::as_u64));
    let mut job_config: Value = serde_json::from_str(config)?;
    crate::webhook::subscription::redact(&mut job_config);
    Ok(Some(json!({
        "item_id": item_id,
        "job_config": job_config,
        "job_type": kind.as_str(),
        "parameters_hash": hex::encode(Sha256::digest(config.as_bytes())),
        "output_s3_path": output_path,
        "processed_at": get("completed_at"),
        "result_id": job_id,
        "output_metadata": { "pages": pages },
    })))
}
