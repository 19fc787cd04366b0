//! The v2 batches API (`client.batches`, llama-cloud ≥ 2.14): a second view of the same
//! batches. Create names a saved configuration or a preset, which becomes the job config a
//! legacy batch would carry, and the batch is stored, expanded, counted and announced exactly
//! as one; a batch created by either API is read by the other where its shape fits (a parse
//! batch over a directory).

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use docfleet_shared::model::JobType;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Project;
use crate::batch::{self, CreateBatch};
use crate::error::ApiError;
use crate::http::{Cursor, JsonBody, QueryParams};
use crate::records::BatchRecord;
use crate::state::AppState;

/// `POST /api/v2/batches` body.
#[derive(Debug, Deserialize)]
pub struct Create {
    config: Config,
    source_directory_id: String,
    #[serde(default)]
    webhook_configurations: Option<Vec<Value>>,
    #[serde(default)]
    webhook_configuration_ids: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct Config {
    job: Job,
}

#[derive(Debug, Deserialize)]
struct Job {
    #[serde(rename = "type")]
    kind: String,
    configuration_id: String,
}

/// `batches.create`.
pub async fn create(
    State(st): State<AppState>,
    Project(project): Project,
    JsonBody(body): JsonBody<Create>,
) -> Result<Json<Value>, ApiError> {
    match body.config.job.kind.as_str() {
        "parse_v2" => {}
        "extract_v2" => {
            return Err(ApiError::field(
                "config.job.type",
                "extract_v2 needs a language model, which this deployment does not run; \
                 docfleet runs parse_v2",
            ))
        }
        other => {
            return Err(ApiError::field(
                "config.job.type",
                format!("must be parse_v2 or extract_v2, got {other:?}"),
            ))
        }
    }
    let cfg_field = "config.job.configuration_id";
    let cfg_id = &body.config.job.configuration_id;
    let cfg = crate::configurations::load(&st, &project, cfg_id, cfg_field)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(m) => ApiError::field(cfg_field, m),
            other => other,
        })?;
    if cfg.product_type != "parse_v2" {
        return Err(ApiError::field(
            cfg_field,
            format!(
                "{cfg_id:?} is a {} configuration; a parse_v2 job needs a parse_v2 one",
                cfg.product_type
            ),
        ));
    }
    let job_config = crate::configurations::parse_job_config(&cfg.parameters, cfg_field)?;
    crate::directories::load(&st, &project, &body.source_directory_id)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(m) => ApiError::field("source_directory_id", m),
            other => other,
        })?;
    let mut webhooks = body.webhook_configurations.unwrap_or_default();
    let ids = body.webhook_configuration_ids.unwrap_or_default();
    webhooks.extend(
        crate::webhook::saved::resolve(&st, &project, &ids, "webhook_configuration_ids").await?,
    );
    // A configuration may name saved endpoints of its own.
    let own: Vec<String> = cfg
        .parameters
        .get("webhook_configuration_ids")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    webhooks.extend(crate::webhook::saved::resolve(&st, &project, &own, cfg_field).await?);
    let request = CreateBatch::over_directory(
        job_config,
        body.source_directory_id,
        webhooks,
        vec![("api", "v2".into()), ("configuration_id", cfg.id)],
    );
    let rec = batch::create_batch(&st, &project, request).await?;
    Ok(Json(view(&rec)?))
}

/// The v2 shape of `rec`, or a 404 that says where a batch of another shape is read.
fn view(rec: &BatchRecord) -> Result<Value, ApiError> {
    let id = rec.get("id").unwrap_or_default();
    rec.to_v2().ok_or_else(|| {
        ApiError::NotFound(format!(
            "batch {id:?} has no v2 view (it is not a parse batch over a directory); read it at \
             /api/v1/beta/batch-processing/{id}"
        ))
    })
}

/// `batches.get`; with `expand=results`, every registered file's job and error.
pub async fn get(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let rec = batch::load(&st, &project, &batch_id).await?;
    let mut v = view(&rec)?;
    for e in q.all("expand") {
        if e != "results" {
            return Err(ApiError::field(
                "expand",
                format!("only \"results\" can be expanded, got {e:?}"),
            ));
        }
        v["results"] = Value::Array(results(&st, &batch_id).await?);
    }
    Ok(Json(v))
}

/// Each item of a batch as a v2 result: the file, its parse job, and why it failed or was
/// skipped. A page of items per round trip.
async fn results(st: &AppState, batch_id: &str) -> Result<Vec<Value>, ApiError> {
    const PAGE: isize = 1000;
    let mut con = st.redis.clone();
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let ids: Vec<(String, f64)> = con
            .zrange_withscores(st.keys.batch_items(batch_id), start, start + PAGE - 1)
            .await?;
        if ids.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for (id, _) in &ids {
            pipe.cmd("HMGET")
                .arg(st.keys.item(batch_id, id))
                .arg("error_message")
                .arg("skip_reason");
        }
        let errors: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut con).await?;
        for ((id, order), (error, skip)) in ids.iter().zip(errors) {
            out.push(json!({
                "source_directory_file_id": id,
                "job_reference": {
                    "id": JobType::Parse.job_id(batch_id, *order as i64),
                    "type": "parse_v2",
                },
                "error_message": error.or(skip).filter(|e| !e.is_empty()),
            }));
        }
        start += PAGE;
    }
}

/// A datetime filter: RFC 3339, or without an offset as UTC (how Python's `isoformat` writes
/// a naive one); as Unix milliseconds.
fn instant(q: &QueryParams, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(v) = q.get(name) else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|t| t.and_utc().timestamp_millis())
        })
        .map(Some)
        .map_err(|_| ApiError::field(name, format!("not an ISO-8601 datetime: {v:?}")))
}

/// `batches.list`: newest first, by status, directory and creation time.
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let cursor = Cursor::from_query(&q)?;
    let status = match q.get("status") {
        None => None,
        Some(s @ ("PENDING" | "THROTTLED" | "RUNNING" | "COMPLETED" | "FAILED" | "CANCELLED")) => {
            Some(s)
        }
        Some(s) => {
            return Err(ApiError::field(
                "status",
                format!("must be one of PENDING, THROTTLED, RUNNING, COMPLETED, FAILED, CANCELLED; got {s:?}"),
            ))
        }
    };
    let dir = q.get("source_directory_id");
    let after = instant(&q, "created_at_on_or_after")?;
    let before = instant(&q, "created_at_on_or_before")?;
    let mut con = st.redis.clone();
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(st.keys.project_batches(&project))
        .arg(before.map_or("+inf".into(), |b| b.to_string()))
        .arg(after.map_or("-inf".into(), |a| a.to_string()))
        .arg("BYSCORE")
        .arg("REV")
        .query_async(&mut con)
        .await?;
    let mut found = Vec::new();
    for chunk in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.hgetall(st.keys.batch(id));
        }
        let recs: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
        found.extend(
            recs.into_iter()
                .map(BatchRecord)
                .filter(|r| dir.is_none_or(|d| r.get("directory_id") == Some(d)))
                .filter_map(|r| r.to_v2())
                .filter(|v| status.is_none_or(|s| v["status"] == s)),
        );
    }
    Ok(Json(cursor.page(found)))
}

/// `batches.cancel`: the batch, now `CANCELLED`; items already finished keep their results.
pub async fn cancel(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = batch::load(&st, &project, &batch_id).await?;
    view(&rec)?;
    let (_, rec) = batch::cancel_batch(&st, &project, &batch_id, "").await?;
    Ok(Json(view(&rec)?))
}
