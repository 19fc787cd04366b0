//! Batches: create, list, status, cancel, items.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;
use docfleet_shared::metrics::StatusReadLabels;
use docfleet_shared::model::{
    parse_page_selection, BatchStatus, ClassifyJobConfig, ClassifyMode, ItemStatus, JobType,
    ParseJobConfig, BATCH_ID_PREFIX, MAX_PAGE_PARTS,
};
use docfleet_shared::scripts::CancelOutcome;
use docfleet_shared::settings::VisionSettings;
use docfleet_shared::{now_millis, now_rfc3339};
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Project;
use crate::error::ApiError;
use crate::expansion;
use crate::http::{parse_json, JsonBody, QueryParams, RawBody};
use crate::records::{fill_items, job_item, BatchRecord};
use crate::state::AppState;

/// Most example files one classify rule may name.
const MAX_RULE_EXAMPLES: usize = 10;
/// Most rules one classify job may carry.
const MAX_RULES: usize = 100;
/// Longest rule description, in characters.
const MAX_RULE_DESCRIPTION: usize = 4000;

/// `POST /api/v1/beta/batch-processing` body. The ids borrow from the body: a list of
/// 100,000 parses without 100,000 allocations.
#[derive(Debug, Deserialize)]
pub struct CreateBatch<'a> {
    job_config: Value,
    #[serde(default)]
    directory_id: Option<String>,
    #[serde(default, borrow)]
    item_ids: Option<Vec<Cow<'a, str>>>,
    #[serde(default)]
    page_size: Option<i64>,
    #[serde(default)]
    #[allow(dead_code)]
    continue_as_new_threshold: Option<i64>,
    #[serde(default)]
    webhook_configurations: Option<Value>,
    /// Fields of the batch record beyond the request's: how another API view created it.
    #[serde(skip)]
    view: Vec<(&'static str, String)>,
    /// A message priority that overrides the job's.
    #[serde(skip)]
    priority: Option<docfleet_shared::model::Priority>,
}

impl CreateBatch<'static> {
    /// A batch over a directory's files, as a view other than this one creates it.
    pub fn over_directory(
        job_config: Value,
        directory_id: String,
        webhook_configurations: Vec<Value>,
        view: Vec<(&'static str, String)>,
    ) -> Self {
        Self {
            job_config,
            directory_id: Some(directory_id),
            item_ids: None,
            page_size: None,
            continue_as_new_threshold: None,
            webhook_configurations: Some(Value::Array(webhook_configurations)),
            view,
            priority: None,
        }
    }

    /// A batch of the directory files `ids`, at `priority`, as another view creates it.
    pub fn over_items(
        job_config: Value,
        ids: Vec<String>,
        webhook_configurations: Vec<Value>,
        view: Vec<(&'static str, String)>,
        priority: docfleet_shared::model::Priority,
    ) -> Self {
        Self {
            job_config,
            directory_id: None,
            item_ids: Some(ids.into_iter().map(Cow::Owned).collect()),
            page_size: None,
            continue_as_new_threshold: None,
            webhook_configurations: Some(Value::Array(webhook_configurations)),
            view,
            priority: Some(priority),
        }
    }
}

/// A validated job config.
struct ValidJob {
    job_type: JobType,
    priority: u8,
    correlation_id: Option<String>,
    session_id: Option<String>,
}

fn validate_job(raw: &Value, vision: &VisionSettings) -> Result<ValidJob, ApiError> {
    let obj = raw
        .as_object()
        .ok_or_else(|| ApiError::field("job_config", "must be an object"))?;
    let bytes = serde_json::to_vec(raw)?;
    // Re-parse through the typed view so errors name the path inside job_config.
    let prefix = |e: ApiError| match e {
        ApiError::Unprocessable(m) => ApiError::Unprocessable(format!("job_config.{m}")),
        other => other,
    };
    if obj.contains_key("rules") {
        let cfg: ClassifyJobConfig = parse_json(&bytes).map_err(prefix)?;
        return validate_classify(&cfg, vision);
    }
    let cfg: ParseJobConfig = parse_json(&bytes).map_err(prefix)?;
    validate_parse(&cfg)
}

/// A classify job's rules and settings.
fn validate_classify(
    cfg: &ClassifyJobConfig,
    vision: &VisionSettings,
) -> Result<ValidJob, ApiError> {
    if cfg.rules.is_empty() {
        return Err(ApiError::field(
            "job_config.rules",
            "at least one rule is required",
        ));
    }
    if cfg.rules.len() > MAX_RULES {
        return Err(ApiError::field(
            "job_config.rules",
            format!("at most {MAX_RULES} rules"),
        ));
    }
    let mut seen = HashSet::new();
    for (i, r) in cfg.rules.iter().enumerate() {
        let t = r.kind.trim();
        if t.is_empty() || t.len() > 200 {
            return Err(ApiError::field(
                &format!("job_config.rules[{i}].type"),
                "must be 1 to 200 characters",
            ));
        }
        if !seen.insert(t.to_owned()) {
            return Err(ApiError::field(
                &format!("job_config.rules[{i}].type"),
                format!("duplicate type {t:?}"),
            ));
        }
        let d = r.description.trim();
        if d.is_empty() || d.chars().count() > MAX_RULE_DESCRIPTION {
            return Err(ApiError::field(
                &format!("job_config.rules[{i}].description"),
                format!("must be 1 to {MAX_RULE_DESCRIPTION} characters"),
            ));
        }
    }
    if cfg.mode == Some(ClassifyMode::Multimodal) && !vision.configured() {
        return Err(ApiError::field(
            "job_config.mode",
            "MULTIMODAL needs a vision model endpoint, and none is configured: set vision.url \
             and vision.model (DOCFLEET__VISION__URL, DOCFLEET__VISION__MODEL, and \
             DOCFLEET__VISION__API_KEY if it needs one) on the dispatcher and the workers, \
             or use FAST",
        ));
    }
    if let Some(p) = &cfg.parsing_configuration {
        if p.target_pages
            .as_ref()
            .is_some_and(|t| t.len() > MAX_PAGE_PARTS)
        {
            return Err(ApiError::field(
                "job_config.parsing_configuration.target_pages",
                format!("at most {MAX_PAGE_PARTS} pages"),
            ));
        }
        if p.max_pages == Some(0) {
            return Err(ApiError::field(
                "job_config.parsing_configuration.max_pages",
                "must be at least 1",
            ));
        }
    }
    Ok(ValidJob {
        job_type: JobType::Classify,
        priority: docfleet_shared::model::Priority::Medium.amqp(),
        correlation_id: None,
        session_id: None,
    })
}

/// A rule's examples are files of the project, not deleted (at most [`MAX_RULE_EXAMPLES`]
/// per rule); one read for all of them.
async fn check_examples(st: &AppState, project: &str, job_config: &Value) -> Result<(), ApiError> {
    let cfg: ClassifyJobConfig = serde_json::from_value(job_config.clone())?;
    let mut named = Vec::new();
    for (i, rule) in cfg.rules.iter().enumerate() {
        if rule.examples.len() > MAX_RULE_EXAMPLES {
            return Err(ApiError::field(
                &format!("job_config.rules[{i}].examples"),
                format!("at most {MAX_RULE_EXAMPLES} examples per rule"),
            ));
        }
        named.extend(rule.examples.iter().enumerate().map(|(j, id)| (i, j, id)));
    }
    if named.is_empty() {
        return Ok(());
    }
    let keys: Vec<String> = named.iter().map(|n| st.keys.file_or_dfile(n.2)).collect();
    let records: Vec<Option<String>> = st.redis.clone().mget(keys).await?;
    for ((i, j, id), raw) in named.into_iter().zip(records) {
        let rec: Option<Value> = raw.and_then(|r| serde_json::from_str(&r).ok());
        let found = rec.is_some_and(|r| {
            r["project_id"].as_str() == Some(project) && r["deleted_at"].is_null()
        });
        if !found {
            return Err(ApiError::field(
                &format!("job_config.rules[{i}].examples[{j}]"),
                format!("no file {id:?} in this project"),
            ));
        }
    }
    Ok(())
}

/// A parse job's name, type and parameters.
fn validate_parse(cfg: &ParseJobConfig) -> Result<ValidJob, ApiError> {
    if let Some(n) = cfg.job_name.as_deref() {
        if n != "parse_raw_file_job" {
            return Err(ApiError::field(
                "job_config.job_name",
                format!("must be \"parse_raw_file_job\", got {n:?}"),
            ));
        }
    }
    let params = cfg.parameters.clone().unwrap_or_default();
    if let Some(k) = params.kind.as_deref() {
        if k != "parse" {
            return Err(ApiError::field(
                "job_config.parameters.type",
                format!("must be \"parse\", got {k:?}"),
            ));
        }
    }
    if let Some(mode) = params.parse_mode {
        // No model-based parsing exists yet, so these modes are refused whatever is configured:
        // running them as plain text extraction would be a silent downgrade.
        if mode.needs_model() {
            let name = serde_json::to_value(mode)?;
            return Err(ApiError::field(
                "job_config.parameters.parse_mode",
                format!(
                    "{} needs a language or vision model, which this deployment does not run; \
                     use parse_page_without_llm",
                    name.as_str().unwrap_or("this mode")
                ),
            ));
        }
    }
    if params.max_pages == Some(0) {
        return Err(ApiError::field(
            "job_config.parameters.max_pages",
            "must be at least 1",
        ));
    }
    if let Some(t) = params.target_pages.as_deref() {
        parse_page_selection(t)
            .map_err(|m| ApiError::field("job_config.parameters.target_pages", m))?;
    }
    if params.languages.as_ref().is_some_and(|l| l.len() > 100) {
        return Err(ApiError::field(
            "job_config.parameters.languages",
            "at most 100 languages",
        ));
    }
    if let Some(tol) = params.page_error_tolerance {
        if !(0.0..=1.0).contains(&tol) {
            return Err(ApiError::field(
                "job_config.parameters.page_error_tolerance",
                "must be between 0 and 1",
            ));
        }
    }
    Ok(ValidJob {
        job_type: JobType::Parse,
        priority: params.priority.unwrap_or_default().amqp(),
        correlation_id: cfg.correlation_id.clone(),
        session_id: cfg.session_id.clone(),
    })
}

/// A parse job that names a bucket of its own for its outputs names one its project may
/// write to (`buckets.write`).
fn check_outputs(
    job_config: &Value,
    project: &str,
    buckets: &docfleet_shared::settings::BucketSettings,
) -> Result<(), ApiError> {
    use docfleet_shared::buckets::{Access, Place, Refused};
    let refused =
        |r: Refused| ApiError::field(&format!("job_config.parameters.{}", r.field), r.message);
    match Place::from_params(&job_config["parameters"]).map_err(refused)? {
        Some(dest) => dest
            .allowed(project, Access::Write, buckets, "output_s3_path_prefix")
            .map_err(refused),
        None => Ok(()),
    }
}

/// Creates a batch: validates, persists it as `pending`, and returns; expansion is async.
pub async fn create(
    State(st): State<AppState>,
    Project(project): Project,
    RawBody(bytes): RawBody,
) -> Result<Json<Value>, ApiError> {
    let body: CreateBatch = parse_json(RawBody::json(&bytes))?;
    Ok(Json(create_batch(&st, &project, body).await?.to_api()))
}

/// Validates and stores a batch, and wakes expansion; the record written is returned.
pub async fn create_batch(
    st: &AppState,
    project: &str,
    body: CreateBatch<'_>,
) -> Result<BatchRecord, ApiError> {
    let mut job = validate_job(&body.job_config, &st.settings.vision)?;
    if job.job_type == JobType::Parse {
        check_outputs(&body.job_config, project, &st.settings.buckets)?;
    } else {
        check_examples(st, project, &body.job_config).await?;
    }
    if let Some(p) = body.priority {
        job.priority = p.amqp();
    }
    let webhooks = crate::webhook::subscription::from_request(
        &body.job_config,
        body.webhook_configurations.as_ref(),
    )?;
    let page_size = match body.page_size {
        None => 100,
        Some(n) if (1..=1000).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::field(
                "page_size",
                format!("must be from 1 to 1000, got {n}"),
            ))
        }
    };
    let mut con = st.redis.clone();
    let batch_id = format!("{BATCH_ID_PREFIX}{}", uuid::Uuid::new_v4());
    let now = now_rfc3339();
    let mut fields: Vec<(&'static str, String)> = vec![
        ("id", batch_id.clone()),
        ("project_id", project.to_owned()),
        ("job_type", job.job_type.as_str().into()),
        ("status", BatchStatus::Pending.as_str().into()),
        ("processed", "0".into()),
        ("failed", "0".into()),
        ("skipped", "0".into()),
        ("registered", "0".into()),
        ("expanded", "0".into()),
        ("cursor", "0".into()),
        ("page_size", page_size.to_string()),
        ("priority", job.priority.to_string()),
        ("created_at", now.clone()),
        ("updated_at", now),
    ];
    if let Some(c) = job.correlation_id {
        fields.push(("correlation_id", c));
    }
    if let Some(c) = job.session_id {
        fields.push(("session_id", c));
    }
    fields.extend(body.view.iter().cloned());
    let mut pipe = redis::pipe();
    pipe.atomic();
    add_source(
        st,
        &mut con,
        project,
        &body,
        &batch_id,
        &mut fields,
        &mut pipe,
    )
    .await?;
    let total = fields
        .iter()
        .find(|(k, _)| *k == "total")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or(0);
    check_quota(st, &mut con, project, total).await?;
    // The config is kept for the workers and for reading back; its webhook credentials are
    // not needed there, and live sealed with the endpoints.
    let mut kept_config = body.job_config.clone();
    crate::webhook::subscription::redact(&mut kept_config);
    pipe.hset_multiple(st.keys.batch(&batch_id), &fields)
        .set(
            st.keys.batch_config(&batch_id),
            serde_json::to_string(&kept_config)?,
        )
        .zadd(st.keys.project_batches(project), &batch_id, now_millis())
        .zadd(st.keys.expansion(), &batch_id, now_millis())
        .zadd(st.keys.active(), &batch_id, now_millis());
    let wanted = crate::webhook::subscription::wanted_events(&webhooks);
    if let Some(wanted) = &wanted {
        let sealed: Vec<_> = webhooks.iter().map(|e| st.seal.seal_endpoint(e)).collect();
        pipe.hset(
            st.keys.batch(&batch_id),
            "webhooks",
            serde_json::to_string(&sealed)?,
        )
        .hset(st.keys.batch(&batch_id), "hooks", wanted);
    }
    // The first event of the outbox, in the same transaction as the batch itself.
    st.scripts.created(&mut pipe, &batch_id);
    let _: () = pipe.query_async(&mut con).await?;
    // The answer is the record just written, not a read of it: a round trip less, and none
    // taken after expansion has woken and the workers are busy on the same cores.
    let created = BatchRecord(fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    st.expansion_wake.notify_one();
    tracing::info!(batch_id = %batch_id, project = %project, "Batch created.");
    Ok(created)
}

/// Refuses a batch of `adding` items that would take the project's queued or running items
/// past `max_queued_items_per_project`, or its unfinished batches past
/// `max_running_batches_per_project` (429), so one project cannot fill the fleet's queue and
/// Redis on its own; nothing of a refused batch is written. Read from the project's batches
/// in `P:active` at create, which is rare next to the items themselves; two creates at once
/// may both pass.
async fn check_quota(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    project: &str,
    adding: u64,
) -> Result<(), ApiError> {
    let limit = st.settings.max_queued_items_per_project;
    let max_batches = st.settings.max_running_batches_per_project;
    if limit == 0 && max_batches == 0 {
        return Ok(());
    }
    let mut running = 0u64;
    let ids: Vec<String> = con.zrange(st.keys.project_batches(project), 0, -1).await?;
    let mut queued = 0u64;
    for chunk in ids.chunks(1000) {
        let active: Vec<Option<f64>> = redis::cmd("ZMSCORE")
            .arg(st.keys.active())
            .arg(chunk)
            .query_async(con)
            .await?;
        if active.iter().all(Option::is_none) {
            continue;
        }
        let mut pipe = redis::pipe();
        for (id, _) in chunk.iter().zip(&active).filter(|(_, a)| a.is_some()) {
            pipe.cmd("HMGET")
                .arg(st.keys.batch(id))
                .arg("total")
                .arg("processed")
                .arg("status");
        }
        // `P:active` lags behind a batch's end by up to a reconciler round: the status says.
        let counts: Vec<(Option<u64>, Option<u64>, Option<String>)> = pipe.query_async(con).await?;
        for (total, processed, status) in counts {
            if status
                .as_deref()
                .and_then(BatchStatus::parse)
                .is_some_and(|s| !s.is_terminal())
            {
                running += 1;
                queued += total.unwrap_or(0).saturating_sub(processed.unwrap_or(0));
            }
        }
    }
    if max_batches > 0 && running >= max_batches {
        return Err(ApiError::TooMany {
            detail: format!(
                "project {project} has {running} unfinished batches; at most {max_batches} \
                 (max_running_batches_per_project): retry once one finishes"
            ),
            // A quota frees as the project's work finishes: not at once.
            retry_after: 30,
        });
    }
    if limit > 0 && queued + adding > limit {
        return Err(ApiError::TooMany {
            detail: format!(
                "project {project} has {queued} items queued or running and this batch adds \
                 {adding}; at most {limit} (max_queued_items_per_project): retry once some finish"
            ),
            retry_after: 30,
        });
    }
    Ok(())
}

/// What the batch covers, as its fields: a directory's files present now (a snapshot by
/// insertion sequence), or the distinct `item_ids`, stored as the batch's input by `pipe`.
async fn add_source(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    project: &str,
    body: &CreateBatch<'_>,
    batch_id: &str,
    fields: &mut Vec<(&'static str, String)>,
    pipe: &mut redis::Pipeline,
) -> Result<(), ApiError> {
    match (&body.directory_id, &body.item_ids) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "directory_id, item_ids: give exactly one of them, not both".into(),
            ))
        }
        (None, None) => {
            return Err(ApiError::BadRequest(
                "directory_id, item_ids: one of them is required".into(),
            ))
        }
        (Some(dir_id), None) => {
            let dir = crate::directories::load(st, project, dir_id)
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(_) => {
                        ApiError::field("directory_id", format!("no directory {dir_id:?}"))
                    }
                    other => other,
                })?;
            let snapshot: i64 = con
                .get::<_, Option<i64>>(st.keys.dir_seq(&dir.id))
                .await?
                .unwrap_or(0);
            let total: u64 = con
                .zcount(st.keys.dir_files(&dir.id), "-inf", snapshot)
                .await?;
            fields.push(("source", "directory".into()));
            fields.push(("directory_id", dir.id.clone()));
            fields.push(("snapshot", snapshot.to_string()));
            fields.push(("total", total.to_string()));
        }
        (None, Some(ids)) => {
            if ids.is_empty() {
                return Err(ApiError::field("item_ids", "must not be empty"));
            }
            if ids.len() > st.settings.max_item_ids {
                return Err(ApiError::field(
                    "item_ids",
                    format!("at most {} ids per batch", st.settings.max_item_ids),
                ));
            }
            let input = expansion::input_list(ids)?;
            fields.push(("source", "items".into()));
            fields.push(("total", input.count.to_string()));
            pipe.set(st.keys.batch_input(batch_id), input.bytes);
        }
    }
    Ok(())
}

/// Loads a batch of `project`, or 404.
pub async fn load(st: &AppState, project: &str, batch_id: &str) -> Result<BatchRecord, ApiError> {
    let rec = load_any(st, batch_id).await?;
    if rec.project() != project {
        return Err(ApiError::not_found("batch", batch_id));
    }
    Ok(rec)
}

/// Loads a batch of any project (for operator routes), or 404.
pub async fn load_any(st: &AppState, batch_id: &str) -> Result<BatchRecord, ApiError> {
    if !crate::catalog::well_formed(BATCH_ID_PREFIX, batch_id) {
        return Err(ApiError::not_found("batch", batch_id));
    }
    let mut con = st.redis.clone();
    let h: HashMap<String, String> = con.hgetall(st.keys.batch(batch_id)).await?;
    let rec = BatchRecord(h);
    if rec.get("id").is_none() {
        return Err(ApiError::not_found("batch", batch_id));
    }
    Ok(rec)
}

/// Lists the project's batches, newest first, with filters and offset paging.
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let limit = q.int("limit", 50, 1, 1000)? as usize;
    let offset = q.int("offset", 0, 0, u32::MAX as u64)? as usize;
    let status = match q.get("status") {
        None => None,
        Some(s) => Some(BatchStatus::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
            ApiError::field(
                "status",
                format!("must be one of pending, running, dispatched, completed, failed, cancelled; got {s:?}"),
            )
        })?),
    };
    let job_type = match q.get("job_type") {
        None => None,
        Some("extract") => Some("extract"),
        Some(s) => Some(
            JobType::parse(s)
                .ok_or_else(|| {
                    ApiError::field(
                        "job_type",
                        format!("must be parse, extract or classify; got {s:?}"),
                    )
                })?
                .as_str(),
        ),
    };
    let dir = q.get("directory_id");
    let mut con = st.redis.clone();
    let ids: Vec<String> = con
        .zrevrange(st.keys.project_batches(&project), 0, -1)
        .await?;
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.hgetall(st.keys.batch(id));
    }
    let recs: Vec<HashMap<String, String>> = if ids.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut con).await?
    };
    let matching: Vec<BatchRecord> = recs
        .into_iter()
        .map(BatchRecord)
        .filter(|r| r.get("id").is_some() && r.get("api") != Some("job"))
        .filter(|r| status.is_none_or(|s| r.status() == s))
        .filter(|r| job_type.is_none_or(|t| r.get("job_type") == Some(t)))
        .filter(|r| dir.is_none_or(|d| r.get("directory_id") == Some(d)))
        .collect();
    let total = matching.len();
    let items: Vec<Value> = matching
        .iter()
        .skip(offset)
        .take(limit)
        .map(BatchRecord::to_api)
        .collect();
    Ok(Json(json!({ "items": items, "total_size": total })))
}

/// `get_status`: the batch and its progress.
pub async fn status(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = match st.status_cache.get(&batch_id) {
        Some(rec) => {
            read_from(&st, "memory");
            if rec.project() != project {
                return Err(ApiError::not_found("batch", &batch_id));
            }
            rec
        }
        None => {
            read_from(&st, "redis");
            let asked_at = std::time::Instant::now();
            let rec = load(&st, &project, &batch_id).await?;
            st.status_cache.put(&batch_id, rec.clone(), asked_at);
            Arc::new(rec)
        }
    };
    Ok(Json(
        json!({ "job": rec.to_api(), "progress_percentage": rec.progress() }),
    ))
}

fn read_from(st: &AppState, source: &str) {
    st.metrics
        .status_reads
        .get_or_create(&StatusReadLabels {
            source: source.to_owned(),
        })
        .inc();
}

/// `POST .../cancel` body.
#[derive(Debug, Deserialize, Default)]
pub struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

/// Cancels a batch: pending items become `cancelled`, in-flight ones may finish.
pub async fn cancel(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
    JsonBody(body): JsonBody<CancelBody>,
) -> Result<Json<Value>, ApiError> {
    let reason = body.reason.unwrap_or_default();
    let (again, rec) = cancel_batch(&st, &project, &batch_id, &reason).await?;
    Ok(Json(json!({
        "job_id": batch_id,
        "message": match (again, reason.is_empty()) {
            (true, _) => "Batch was already cancelled; its pending items are cancelled.".to_owned(),
            (false, true) => "Batch cancelled.".to_owned(),
            (false, false) => format!("Batch cancelled: {reason}"),
        },
        "processed_items": rec.processed(),
        "status": rec.status().as_str(),
    })))
}

/// Cancels a batch of `project` and sweeps its pending items; whether it had been cancelled
/// already, and the record after. A batch that ended otherwise is a 400.
pub async fn cancel_batch(
    st: &AppState,
    project: &str,
    batch_id: &str,
    reason: &str,
) -> Result<(bool, BatchRecord), ApiError> {
    load(st, project, batch_id).await?;
    let mut con = st.redis.clone();
    let again = match st.scripts.cancel(&mut con, batch_id, reason).await? {
        CancelOutcome::Cancelled => false,
        // A cancel whose sweep was cut short (its dispatcher died) is finished by another.
        CancelOutcome::Terminal(s) if s == BatchStatus::Cancelled.as_str() => true,
        CancelOutcome::Terminal(s) => {
            // 400, not 409: the SDK retries 409.
            return Err(ApiError::BadRequest(format!(
                "batch {batch_id} is already {s} and cannot be cancelled"
            )));
        }
        CancelOutcome::Missing => return Err(ApiError::not_found("batch", batch_id)),
    };
    st.scripts.sweep_all(&mut con, batch_id).await?;
    st.status_cache.forget(batch_id);
    tracing::info!(batch_id = %batch_id, "Batch cancelled.");
    Ok((again, load(st, project, batch_id).await?))
}

/// The items of a batch, optionally by status, with offset paging.
pub async fn items(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let batch = load(&st, &project, &batch_id).await?;
    let limit = q.int("limit", 50, 1, 1000)? as isize;
    let offset = q.int("offset", 0, 0, u32::MAX as u64)? as isize;
    let set = match q.get("status") {
        None => st.keys.batch_items(&batch_id),
        Some(s) => {
            let status = ItemStatus::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
                ApiError::field(
                    "status",
                    format!("must be one of pending, processing, completed, failed, skipped, cancelled; got {s:?}"),
                )
            })?;
            st.keys.batch_status_set(&batch_id, status)
        }
    };
    let mut con = st.redis.clone();
    // Every set is scored by input order, which names the item's job id.
    let (ids, total): (Vec<(String, f64)>, u64) = redis::pipe()
        .zrange_withscores(&set, offset, offset + limit - 1)
        .zcard(&set)
        .query_async(&mut con)
        .await?;
    let mut pipe = redis::pipe();
    for (id, _) in &ids {
        pipe.hgetall(st.keys.item(&batch_id, id));
    }
    let hashes: Vec<HashMap<String, String>> = if ids.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut con).await?
    };
    let mut rows: Vec<(String, f64, HashMap<String, String>)> = ids
        .into_iter()
        .zip(hashes)
        .map(|((id, order), h)| (id, order, h))
        .collect();
    fill_items(&mut con, &st.keys, &batch_id, &batch, &mut rows).await?;
    let items: Vec<Value> = rows.iter().map(|(id, _, h)| job_item(id, h)).collect();
    Ok(Json(json!({ "items": items, "total_size": total })))
}

/// Runs the failed items of a finished batch again, as a new batch of its project with the
/// same job config (our extension, an operator route): `POST …/{job_id}/retry-failed`.
pub async fn retry_failed(
    State(st): State<AppState>,
    _: crate::auth::Operator,
    Path(batch_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec = load_any(&st, &batch_id).await?;
    let project = rec.project().to_owned();
    if !rec.status().is_terminal() {
        return Err(ApiError::BadRequest(format!(
            "batch {batch_id} is still {}; retry its failed items once it has finished",
            rec.status().as_str()
        )));
    }
    let mut con = st.redis.clone();
    let failed: Vec<String> = con
        .zrange(
            st.keys.batch_status_set(&batch_id, ItemStatus::Failed),
            0,
            -1,
        )
        .await?;
    if failed.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "batch {batch_id} has no failed items"
        )));
    }
    let (config, webhooks): (Option<String>, Option<String>) = redis::pipe()
        .get(st.keys.batch_config(&batch_id))
        .hget(st.keys.batch(&batch_id), "webhooks")
        .query_async(&mut con)
        .await?;
    let job_config: Value = serde_json::from_str(config.as_deref().unwrap_or("{}"))?;
    let mut body = json!({ "job_config": job_config, "item_ids": failed });
    // The new batch keeps the original's webhook endpoints.
    if let Some(w) = webhooks {
        let eps: Vec<crate::webhook::subscription::Endpoint> = serde_json::from_str(&w)?;
        let mut configs = Vec::with_capacity(eps.len());
        for e in &eps {
            let opened = st
                .seal
                .open_endpoint(e)
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            configs.push(opened.to_config());
        }
        body["webhook_configurations"] = Value::Array(configs);
        if let Some(params) = body["job_config"]["parameters"].as_object_mut() {
            params.remove("webhook_configurations");
            params.remove("webhook_url");
        }
        if let Some(cfg) = body["job_config"].as_object_mut() {
            cfg.remove("webhook_url");
        }
    }
    let bytes = serde_json::to_vec(&body)?;
    Ok(Json(
        create_batch(&st, &project, parse_json(&bytes)?)
            .await?
            .to_api(),
    ))
}
