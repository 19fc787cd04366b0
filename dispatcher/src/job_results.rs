//! Per-file results: `GET /api/v2/parse/{job_id}` and `GET /api/v2/classify/{job_id}`.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use docfleet_shared::model::{parse_job_id, ClassifyJobConfig, JobType};
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::auth::Project;
use crate::error::ApiError;
use crate::http::QueryParams;
use crate::links;
use crate::records::BatchRecord;
use crate::state::AppState;

/// A per-file job, resolved to its batch and item.
struct Job {
    batch: BatchRecord,
    item_id: String,
    item: HashMap<String, String>,
}

impl Job {
    fn field(&self, k: &str) -> Option<&str> {
        self.item
            .get(k)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// A job id names its batch and the item's order (`JobType::job_id`); the batch's item set,
/// scored by order, names the item.
async fn resolve(
    st: &AppState,
    project: &str,
    job_id: &str,
    kind: JobType,
) -> Result<Job, ApiError> {
    let mut con = st.redis.clone();
    let not_found = || ApiError::not_found("job", job_id);
    let derived = parse_job_id(job_id).ok_or_else(not_found)?;
    // `.00` reads as the order of `.0`, but names nothing.
    if derived.job_type != kind || kind.job_id(&derived.batch_id, derived.order) != job_id {
        return Err(not_found());
    }
    let batch_id = derived.batch_id;
    let at: Vec<String> = con
        .zrangebyscore_limit(
            st.keys.batch_items(&batch_id),
            derived.order,
            derived.order,
            0,
            1,
        )
        .await?;
    let batch = crate::batch::load(st, project, &batch_id)
        .await
        .map_err(|_| not_found())?;
    if batch.get("job_type") != Some(kind.as_str()) {
        return Err(not_found());
    }
    // A single-file job is polled from its create on, before expansion registers its item.
    let item_id = match at.into_iter().next() {
        Some(id) => id,
        None => batch
            .get("item")
            .filter(|_| derived.order == 0)
            .map(str::to_owned)
            .ok_or_else(not_found)?,
    };
    // One round trip for the record and the result.
    let (mut item, result): (HashMap<String, String>, Option<String>) = redis::pipe()
        .hgetall(st.keys.item(&batch_id, &item_id))
        .hget(st.keys.batch_results(&batch_id), &item_id)
        .query_async(&mut con)
        .await?;
    if let Some(result) = result {
        item.insert("result".into(), result);
    }
    // An item a cancel reached before expansion did has no record: it was never going to run.
    if !item.contains_key("status")
        && batch.status() == docfleet_shared::model::BatchStatus::Cancelled
    {
        item.insert("status".into(), "cancelled".into());
    }
    let mut rows = [(item_id, derived.order as f64, item)];
    crate::records::fill_items(&mut con, &st.keys, &batch_id, &batch, &mut rows).await?;
    let [(item_id, _, item)] = rows;
    Ok(Job {
        batch,
        item_id,
        item,
    })
}

/// The per-file status in the v2 vocabulary; 2.13.0 classify clients know no `CANCELLED`.
fn v2_status(item_status: &str, cancelled_allowed: bool) -> &'static str {
    match item_status {
        "pending" => "PENDING",
        "processing" => "RUNNING",
        "completed" => "COMPLETED",
        "cancelled" if cancelled_allowed => "CANCELLED",
        _ => "FAILED",
    }
}

fn error_message(job: &Job) -> Option<String> {
    match job.field("status") {
        Some("failed") => job.field("error_message").map(str::to_owned),
        Some("skipped") => Some(format!(
            "skipped: {}",
            job.field("skip_reason").unwrap_or("no reason recorded")
        )),
        Some("cancelled") => Some("cancelled with its batch".into()),
        _ => None,
    }
}

/// The `job` part of a parse result: what `parsing.create`, `list` and `cancel` answer.
fn parse_job(job: &Job, job_id: &str, project: &str) -> Value {
    let batch = |k: &str| job.batch.get(k);
    json!({
        "id": job_id,
        "project_id": project,
        "status": v2_status(job.field("status").unwrap_or("pending"), true),
        "created_at": job.field("created_at"),
        "updated_at": job.field("updated_at").or(job.field("completed_at")).or(job.field("created_at")),
        "error_message": error_message(job),
        "name": job.field("name"),
        "tier": "fast",
        "user_metadata": batch("user_metadata").and_then(|m| serde_json::from_str::<Value>(m).ok()).unwrap_or(json!({})),
    })
}

/// A parse job's summary, for lists and cancels.
pub async fn parse_summary(st: &AppState, project: &str, job_id: &str) -> Result<Value, ApiError> {
    let job = resolve(st, project, job_id, JobType::Parse).await?;
    Ok(parse_job(&job, job_id, project))
}

/// The item a per-file job of `project` ran on.
pub async fn item_of(
    st: &AppState,
    project: &str,
    job_id: &str,
    kind: JobType,
) -> Result<String, ApiError> {
    Ok(resolve(st, project, job_id, kind).await?.item_id)
}

/// The parse output of one file, with the `expand` sections asked for.
pub async fn parse(
    State(st): State<AppState>,
    Project(project): Project,
    Path(job_id): Path<String>,
    headers: HeaderMap,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let job = resolve(&st, &project, &job_id, JobType::Parse).await?;
    let mut expand: Vec<&str> = Vec::new();
    for e in q.all("expand") {
        expand.extend(e.split(',').map(str::trim).filter(|s| !s.is_empty()));
    }
    let status = job.field("status").unwrap_or("pending");
    let mut body = json!({ "job": parse_job(&job, &job_id, &project) });
    if status != "completed" || expand.is_empty() {
        return Ok(Json(body));
    }
    let (output, key) = output_of(&st, &job, &job_id).await?;
    let pages = output
        .get("pages")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let section =
        |f: &dyn Fn(&Value) -> Value| json!({ "pages": pages.iter().map(f).collect::<Vec<_>>() });
    for e in expand {
        let v = match e {
            "text" => section(&|p| json!({ "page_number": p["page_number"], "text": p["text"] })),
            "markdown" => section(&|p| {
                if p["success"] == Value::Bool(false) {
                    json!({ "page_number": p["page_number"], "success": false, "error": p["error"] })
                } else {
                    json!({ "page_number": p["page_number"], "success": true, "markdown": p["md"] })
                }
            }),
            "items" => section(&|p| {
                if p["success"] == Value::Bool(false) {
                    json!({ "page_number": p["page_number"], "success": false, "error": p["error"] })
                } else {
                    json!({
                        "page_number": p["page_number"], "success": true,
                        "page_width": p["width"], "page_height": p["height"], "items": p["items"],
                    })
                }
            }),
            "text_full" => output["text_full"].clone(),
            "markdown_full" => output["markdown_full"].clone(),
            "metadata" => output["metadata"].clone(),
            "job_metadata" => json!({ "batch_id": job.batch.get("id"), "item_id": job.item_id }),
            "images_content_metadata" => {
                let wanted: Vec<&str> = q
                    .get("image_filenames")
                    .map(|f| f.split(',').map(str::trim).collect())
                    .unwrap_or_default();
                let link = Link::new(&st, &headers, &project, &job_id);
                let mut images = Vec::new();
                for (index, image) in kept_images(&output).enumerate() {
                    if !wanted.is_empty() && !wanted.contains(&image.name) {
                        continue;
                    }
                    let category = if image.name.starts_with("page-") {
                        "screenshot"
                    } else {
                        "embedded"
                    };
                    images.push(json!({
                        "filename": image.name,
                        "index": index,
                        "category": category,
                        "content_type": "image/png",
                        "presigned_url": link.to(image.name, Some(image.key)).await?,
                    }));
                }
                json!({ "total_count": images.len(), "images": images })
            }
            "result_content_metadata" => {
                let link = Link::new(&st, &headers, &project, &job_id);
                let json_size = match &key {
                    Some(key) => st.store.size(key).await?,
                    None => serde_json::to_vec(&output)?.len() as u64,
                };
                let mut files = serde_json::Map::new();
                files.insert(
                    "json".into(),
                    json!({ "size_bytes": json_size, "exists": true,
                            "presigned_url": link.to("json", key.as_deref()).await? }),
                );
                for (name, field) in [("markdown", "markdown_full"), ("text", "text_full")] {
                    let size = output[field].as_str().map_or(0, str::len);
                    files.insert(
                        name.into(),
                        json!({ "size_bytes": size, "exists": true,
                                "presigned_url": link.to(name, None).await? }),
                    );
                }
                Value::Object(files)
            }
            _ => continue,
        };
        body[e] = v;
    }
    Ok(Json(body))
}

/// A completed parse job's output, and its store key when it is a file rather than on the
/// item's record.
async fn output_of(
    st: &AppState,
    job: &Job,
    job_id: &str,
) -> Result<(Value, Option<String>), ApiError> {
    let mut result = job
        .field("result")
        .and_then(|r| serde_json::from_str::<Value>(r).ok())
        .unwrap_or_default();
    // Small outputs ride on the item record; the rest are files in the store.
    if let Some(output) = result.get_mut("output").map(Value::take) {
        return Ok((output, None));
    }
    match result.get("output_key") {
        Some(Value::String(key)) => Ok((
            serde_json::from_slice(&st.store.get(key).await?)?,
            Some(key.clone()),
        )),
        _ => Err(ApiError::Unavailable(format!(
            "job {job_id} has no stored output"
        ))),
    }
}

/// An image kept beside a parse result (`images_to_save`).
struct KeptImage<'a> {
    name: &'a str,
    key: &'a str,
}

fn kept_images(output: &Value) -> impl Iterator<Item = KeptImage<'_>> {
    output["metadata"]["images"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            Some(KeptImage {
                name: i["name"].as_str()?,
                key: i["key"].as_str()?,
            })
        })
}

/// How long the links in a result's `*_content_metadata` work.
const LINK_SECS: u64 = 3600;

/// Makes the download links of one parse job's outputs: the bucket's own presigned URL for an
/// object in an S3 store, else a link to [`content`] signed by the dispatcher.
struct Link<'a> {
    st: &'a AppState,
    base: String,
    project: &'a str,
    job_id: &'a str,
}

impl<'a> Link<'a> {
    fn new(st: &'a AppState, headers: &HeaderMap, project: &'a str, job_id: &'a str) -> Self {
        Self {
            st,
            base: links::public_base(headers),
            project,
            job_id,
        }
    }

    async fn to(&self, name: &str, key: Option<&str>) -> Result<String, ApiError> {
        if let Some(key) = key {
            let presigned = self
                .st
                .store
                .presigned_url(key, std::time::Duration::from_secs(LINK_SECS))
                .await?;
            if let Some(url) = presigned {
                return Ok(url);
            }
        }
        let subject = content_subject(self.project, self.job_id, name);
        let signed = links::query(self.st, &subject, LINK_SECS).await?;
        Ok(format!(
            "{}/api/v2/parse/{}/content/{name}?project={}&{signed}",
            self.base,
            self.job_id,
            form_urlencoded::byte_serialize(self.project.as_bytes()).collect::<String>()
        ))
    }
}

fn content_subject(project: &str, job_id: &str, name: &str) -> String {
    format!("parse/{project}/{job_id}/{name}")
}

/// A signed link to one output of a parse job (no key: the signature is the permission):
/// `json` (the whole result), `markdown`, `text`, or a kept image by its file name.
pub async fn content(
    State(st): State<AppState>,
    Path((job_id, name)): Path<(String, String)>,
    q: QueryParams,
) -> Result<Response, ApiError> {
    let project = q.get("project").ok_or_else(links::refused)?.to_owned();
    links::verify(&st, &content_subject(&project, &job_id, &name), &q).await?;
    let job = resolve(&st, &project, &job_id, JobType::Parse).await?;
    let (output, key) = output_of(&st, &job, &job_id).await?;
    let (content_type, body) = match name.as_str() {
        "json" => match key {
            Some(key) => (
                "application/json",
                Body::from_stream(st.store.read_stream(&key).await?),
            ),
            None => ("application/json", Body::from(serde_json::to_vec(&output)?)),
        },
        "markdown" | "text" => {
            let field = if name == "markdown" {
                "markdown_full"
            } else {
                "text_full"
            };
            let text = output[field].as_str().unwrap_or_default().to_owned();
            let kind = if name == "markdown" {
                "text/markdown; charset=utf-8"
            } else {
                "text/plain; charset=utf-8"
            };
            (kind, Body::from(text))
        }
        image => {
            let kept = kept_images(&output)
                .find(|i| i.name == image)
                .ok_or_else(links::refused)?;
            (
                "image/png",
                Body::from_stream(st.store.read_stream(kept.key).await?),
            )
        }
    };
    Ok(([(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// The `configuration` of a classify result. The legacy request carries 0-based integer
/// pages; this response types them as a 1-based string.
pub fn classify_configuration(cfg: &ClassifyJobConfig) -> Value {
    let parsing = cfg.parsing_configuration.as_ref().map(|p| {
        let pages = p.target_pages.as_ref().map(|t| {
            t.iter()
                .map(|n| (n + 1).to_string())
                .collect::<Vec<_>>()
                .join(",")
        });
        json!({
            "lang": p.lang.clone().unwrap_or_else(|| "en".into()),
            "max_pages": p.max_pages,
            "target_pages": pages,
        })
    });
    json!({ "rules": cfg.rules, "mode": "FAST", "parsing_configuration": parsing })
}

/// The classification of one file.
pub async fn classify(
    State(st): State<AppState>,
    Project(project): Project,
    Path(job_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(classify_view(&st, &project, &job_id).await?))
}

/// A classify job as `classify.get` answers it.
pub async fn classify_view(st: &AppState, project: &str, job_id: &str) -> Result<Value, ApiError> {
    let job = resolve(st, project, job_id, JobType::Classify).await?;
    let batch_id = job.batch.get("id").unwrap_or_default().to_owned();
    let mut con = st.redis.clone();
    let raw: Option<String> = con.get(st.keys.batch_config(&batch_id)).await?;
    let cfg: ClassifyJobConfig = serde_json::from_str(raw.as_deref().unwrap_or("{}"))?;
    let status = job.field("status").unwrap_or("pending");
    let result = if status == "completed" {
        job.field("result")
            .and_then(|r| serde_json::from_str::<Value>(r).ok())
    } else {
        None
    };
    // A single-file job names its input as the caller did; a batch's item is a file.
    let kind = job.batch.get("document_input_type").unwrap_or("file_id");
    let input = job.batch.get("file_input").unwrap_or(&job.item_id);
    Ok(json!({
        "id": job_id,
        "configuration": classify_configuration(&cfg),
        "document_input_type": kind,
        "file_input": input,
        "project_id": project,
        "user_id": project,
        // 2.13.0 knows no CANCELLED; single-file jobs exist only for clients that do.
        "status": v2_status(status, job.batch.get("api") == Some("job")),
        "result": result,
        "error_message": error_message(&job),
        "parse_job_id": (kind == "parse_job_id").then_some(input),
        "configuration_id": job.batch.get("configuration_id"),
        "transaction_id": Value::Null,
        "created_at": job.field("created_at"),
        "updated_at": job.field("updated_at").or(job.field("completed_at")).or(job.field("created_at")),
    }))
}
