//! Single-file jobs (`client.parsing.create`, `client.classify.create`, llama-cloud ≥ 2.14):
//! each one is a batch of one item, queued at high priority so it stays interactive behind a
//! large batch, and read through the per-file results routes (`job_results`), which is what
//! the SDK's create-and-wait helpers poll.

use std::collections::HashMap;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::Json;
use docfleet_shared::model::{parse_job_id, JobType, Priority};
use docfleet_shared::{now_millis, now_rfc3339};
use redis::AsyncCommands;
use serde_json::{json, Map, Value};

use crate::auth::Project;
use crate::batch::{self, CreateBatch};
use crate::catalog::FILE;
use crate::error::ApiError;
use crate::files::{self, FileRecord};
use crate::http::{parse_json, Cursor, JsonBody, QueryParams};
use crate::records::DirectoryFile;
use crate::state::AppState;

/// Fields of a parse request that are not parse parameters.
const NOT_PARAMETERS: &[&str] = &[
    "file_id",
    "source_url",
    "http_proxy",
    "configuration_id",
    "user_metadata",
    "webhook_configuration_ids",
    "client_name",
];

/// What a job is run on.
struct Input {
    file: DirectoryFile,
    /// As the caller named it: a file id or a parse job id.
    given: String,
    kind: &'static str,
}

/// `parsing.create` with a `file_id`.
pub async fn create_parse(
    State(st): State<AppState>,
    Project(project): Project,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let file_id = body.get("file_id").and_then(Value::as_str);
    let file = match (file_id, body.get("source_url").filter(|v| !v.is_null())) {
        (_, Some(_)) => {
            return Err(ApiError::field(
                "source_url",
                "docfleet parses files it holds and fetches nothing: upload the file \
                 (upload_file) or create it with files.create and pass file_id",
            ))
        }
        (None, None) => return Err(ApiError::field("file_id", "is required (or upload_file)")),
        (Some(id), None) => load_file(&st, &project, id, "file_id").await?,
    };
    parse_job(&st, &project, body, file).await
}

/// `parsing.create` with `upload_file`: the parts `file` and `configuration` (the other
/// parameters, as a JSON string).
pub async fn upload_parse(
    State(st): State<AppState>,
    Project(project): Project,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = FILE.new_id();
    let key = docfleet_shared::store::file_key(&project, &id);
    let form = files::receive(&st, multipart, "file", &["configuration"], &key).await?;
    let body: Map<String, Value> = match form.text("configuration") {
        None => Map::new(),
        Some(c) => match parse_json(c.as_bytes()) {
            Ok(b) => b,
            Err(e) => {
                form.staged.abort().await;
                return Err(ApiError::field("configuration", e));
            }
        },
    };
    let name = form.file_name.clone().unwrap_or_else(|| id.clone());
    let mut rec = FileRecord::new(&project, id, name, None);
    rec.purpose = Some("parse".into());
    let file = files::save(&st, rec, form.staged).await?;
    parse_job(&st, &project, body, file).await
}

async fn load_file(
    st: &AppState,
    project: &str,
    id: &str,
    field: &str,
) -> Result<FileRecord, ApiError> {
    FILE.load(st, project, id).await.map_err(|e| match e {
        ApiError::NotFound(m) => ApiError::field(field, m),
        other => other,
    })
}

async fn parse_job(
    st: &AppState,
    project: &str,
    body: Map<String, Value>,
    file: FileRecord,
) -> Result<Json<Value>, ApiError> {
    let mut params = Map::new();
    let cfg_id = body.get("configuration_id").and_then(Value::as_str);
    if let Some(id) = cfg_id {
        let cfg = crate::configurations::load(st, project, id, "configuration_id").await?;
        if cfg.product_type != "parse_v2" {
            return Err(ApiError::field(
                "configuration_id",
                format!("{id:?} is a {} configuration", cfg.product_type),
            ));
        }
        params.extend(cfg.parameters.as_object().cloned().unwrap_or_default());
    }
    params.extend(
        body.iter()
            .filter(|(k, v)| !NOT_PARAMETERS.contains(&k.as_str()) && !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    let job_config = crate::configurations::parse_job_config(&Value::Object(params), "")?;
    let webhooks = webhooks(st, project, &body).await?;
    let input = Input {
        given: file.id.clone(),
        file: unplaced(project, &file),
        kind: "file_id",
    };
    let mut view = vec![("tier", "fast".to_owned())];
    if let Some(m) = body.get("user_metadata").filter(|m| m.is_object()) {
        view.push(("user_metadata", m.to_string()));
    }
    let (job_id, created) = run(
        st,
        project,
        JobType::Parse,
        job_config,
        input,
        webhooks,
        view,
    )
    .await?;
    Ok(Json(json!({
        "id": job_id,
        "project_id": project,
        "status": "PENDING",
        "name": file.name,
        "tier": "fast",
        "created_at": created,
        "updated_at": created,
        "error_message": Value::Null,
        "user_metadata": body.get("user_metadata").filter(|m| m.is_object()),
    })))
}

/// `classify.create`: rules from `configuration` or a saved `classify_v2` configuration, on
/// `file_input` (a file id, or the id of a parse job whose file is classified).
pub async fn create_classify(
    State(st): State<AppState>,
    Project(project): Project,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let (cfg, cfg_id) = match (
        body.get("configuration").filter(|v| !v.is_null()),
        body.get("configuration_id").and_then(Value::as_str),
    ) {
        (Some(c), _) => (
            crate::configurations::classify_job_config(c, "configuration")?,
            None,
        ),
        (None, Some(id)) => {
            let saved = crate::configurations::load(&st, &project, id, "configuration_id").await?;
            if saved.product_type != "classify_v2" {
                return Err(ApiError::field(
                    "configuration_id",
                    format!("{id:?} is a {} configuration", saved.product_type),
                ));
            }
            (
                crate::configurations::classify_job_config(&saved.parameters, "configuration_id")?,
                Some(saved.id),
            )
        }
        (None, None) => {
            return Err(ApiError::field(
                "configuration",
                "configuration or configuration_id is required",
            ))
        }
    };
    let given = ["file_input", "file_id", "parse_job_id"]
        .iter()
        .find_map(|k| {
            body.get(*k)
                .and_then(Value::as_str)
                .map(|v| (*k, v.to_owned()))
        });
    let input = match given {
        None => return Err(ApiError::field("file_input", "is required")),
        Some((field, id)) if parse_job_id(&id).is_some() => Input {
            file: parsed_file(&st, &project, &id, field).await?,
            given: id,
            kind: "parse_job_id",
        },
        Some((field, id)) => Input {
            file: unplaced(&project, &load_file(&st, &project, &id, field).await?),
            given: id,
            kind: "file_id",
        },
    };
    let webhooks = webhooks(&st, &project, &body).await?;
    let mut view = vec![
        ("file_input", input.given.clone()),
        ("document_input_type", input.kind.to_owned()),
    ];
    if let Some(id) = &cfg_id {
        view.push(("configuration_id", id.clone()));
    }
    let (given, kind) = (input.given.clone(), input.kind);
    let (job_id, created) = run(
        &st,
        &project,
        JobType::Classify,
        cfg.clone(),
        input,
        webhooks,
        view,
    )
    .await?;
    Ok(Json(json!({
        "id": job_id,
        "configuration": crate::job_results::classify_configuration(&serde_json::from_value(cfg)?),
        "document_input_type": kind,
        "file_input": given,
        "parse_job_id": (kind == "parse_job_id").then_some(&given),
        "configuration_id": cfg_id,
        "project_id": project,
        "user_id": project,
        "status": "PENDING",
        "result": Value::Null,
        "error_message": Value::Null,
        "created_at": created,
        "updated_at": created,
    })))
}

/// The file a parse job of `project` read, for classifying it.
async fn parsed_file(
    st: &AppState,
    project: &str,
    job_id: &str,
    field: &str,
) -> Result<DirectoryFile, ApiError> {
    let not_found = || ApiError::field(field, format!("no parse job {job_id:?}"));
    let item = crate::job_results::item_of(st, project, job_id, JobType::Parse)
        .await
        .map_err(|_| not_found())?;
    let mut con = st.redis.clone();
    let raw: Option<String> = con.get(st.keys.dfile(&item)).await?;
    let original: DirectoryFile = serde_json::from_str(&raw.ok_or_else(not_found)?)?;
    let mut copy = original.clone();
    copy.id = format!("dfl-{}", uuid::Uuid::new_v4());
    copy.directory_id = String::new();
    copy.owns_file = false;
    Ok(copy)
}

/// A directory file in no directory, naming `file`: what a batch of one item runs on.
fn unplaced(project: &str, file: &FileRecord) -> DirectoryFile {
    let now = now_rfc3339();
    DirectoryFile {
        id: format!("dfl-{}", uuid::Uuid::new_v4()),
        directory_id: String::new(),
        display_name: file.name.clone(),
        project_id: project.to_owned(),
        unique_id: file.name.clone(),
        file_id: file.id.clone(),
        owns_file: false,
        metadata: None,
        external_file_id: file.external_file_id.clone(),
        created_at: now.clone(),
        updated_at: now,
        deleted_at: None,
        storage_key: file.storage_key.clone(),
        size_bytes: file.size_bytes,
    }
}

async fn webhooks(
    st: &AppState,
    project: &str,
    body: &Map<String, Value>,
) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = match body.get("webhook_configurations") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a.clone(),
        Some(_) => {
            return Err(ApiError::field(
                "webhook_configurations",
                "must be an array of webhook configurations",
            ))
        }
    };
    let ids: Vec<String> = match body.get("webhook_configuration_ids") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|_| ApiError::field("webhook_configuration_ids", "must be an array of ids"))?,
    };
    out.extend(
        crate::webhook::saved::resolve(st, project, &ids, "webhook_configuration_ids").await?,
    );
    Ok(out)
}

/// Creates the batch of one; its job id and creation time.
async fn run(
    st: &AppState,
    project: &str,
    kind: JobType,
    job_config: Value,
    input: Input,
    webhooks: Vec<Value>,
    mut view: Vec<(&'static str, String)>,
) -> Result<(String, String), ApiError> {
    let mut con = st.redis.clone();
    let _: () = con
        .set(
            st.keys.dfile(&input.file.id),
            serde_json::to_string(&input.file)?,
        )
        .await?;
    view.push(("api", "job".into()));
    view.push(("item", input.file.id.clone()));
    let request = CreateBatch::over_items(
        job_config,
        vec![input.file.id],
        webhooks,
        view,
        Priority::High,
    );
    let rec = batch::create_batch(st, project, request).await?;
    let batch_id = rec.get("id").unwrap_or_default().to_owned();
    let _: () = con
        .zadd(
            st.keys.project_jobs(project, kind.as_str()),
            &batch_id,
            now_millis(),
        )
        .await?;
    // An `item_ids` batch numbers its items by their offset in the input: the one item is 0.
    Ok((
        kind.job_id(&batch_id, 0),
        rec.get("created_at").unwrap_or_default().to_owned(),
    ))
}

/// `parsing.list` / `classify.list`: newest first, by status, ids and creation time.
async fn list(
    st: &AppState,
    project: &str,
    kind: JobType,
    q: &QueryParams,
) -> Result<Value, ApiError> {
    let cursor = Cursor::from_query(q)?;
    let status = q.get("status");
    let ids = q.all("job_ids");
    let cfg = q.get("configuration_id");
    let mut con = st.redis.clone();
    let batches: Vec<String> = con
        .zrevrange(st.keys.project_jobs(project, kind.as_str()), 0, -1)
        .await?;
    let mut out = Vec::new();
    for chunk in batches.chunks(200) {
        let mut pipe = redis::pipe();
        for b in chunk {
            pipe.hgetall(st.keys.batch(b));
        }
        let recs: Vec<HashMap<String, String>> = pipe.query_async(&mut con).await?;
        for (b, rec) in chunk.iter().zip(recs) {
            let job_id = kind.job_id(b, 0);
            if rec.is_empty() || (!ids.is_empty() && !ids.contains(&job_id.as_str())) {
                continue;
            }
            if cfg.is_some_and(|c| rec.get("configuration_id").map(String::as_str) != Some(c)) {
                continue;
            }
            out.push((job_id, rec));
        }
    }
    let mut rows = Vec::with_capacity(out.len());
    for (job_id, _) in out {
        let v = match kind {
            JobType::Parse => crate::job_results::parse_summary(st, project, &job_id).await?,
            JobType::Classify => crate::job_results::classify_view(st, project, &job_id).await?,
        };
        if status.is_none_or(|s| v["status"] == s) {
            rows.push(v);
        }
    }
    Ok(cursor.page(rows))
}

/// `parsing.list`.
pub async fn list_parse(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(list(&st, &project, JobType::Parse, &q).await?))
}

/// `classify.list`.
pub async fn list_classify(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(list(&st, &project, JobType::Classify, &q).await?))
}

/// Cancels a single-file job: its batch of one. A job of a larger batch is cancelled with
/// its batch (a 400 says which).
async fn cancel(st: &AppState, project: &str, job_id: &str, kind: JobType) -> Result<(), ApiError> {
    let derived = parse_job_id(job_id)
        .filter(|d| d.job_type == kind)
        .ok_or_else(|| ApiError::not_found("job", job_id))?;
    let rec = batch::load(st, project, &derived.batch_id)
        .await
        .map_err(|_| ApiError::not_found("job", job_id))?;
    if rec.get("api") != Some("job") {
        return Err(ApiError::BadRequest(format!(
            "job {job_id} is a file of batch {}; cancel the batch",
            derived.batch_id
        )));
    }
    batch::cancel_batch(st, project, &derived.batch_id, "").await?;
    Ok(())
}

/// `parsing.cancel`: the job as `parsing.get` shows it after.
pub async fn cancel_parse(
    State(st): State<AppState>,
    Project(project): Project,
    Path(job_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    cancel(&st, &project, &job_id, JobType::Parse).await?;
    Ok(Json(
        crate::job_results::parse_summary(&st, &project, &job_id).await?,
    ))
}

/// `classify.cancel`.
pub async fn cancel_classify(
    State(st): State<AppState>,
    Project(project): Project,
    Path(job_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    cancel(&st, &project, &job_id, JobType::Classify).await?;
    Ok(Json(
        crate::job_results::classify_view(&st, &project, &job_id).await?,
    ))
}
