//! Saved product configurations (`client.configurations`) and the built-in presets, and what
//! a `parse_v2` configuration means to the engine: a v2 batch names one by
//! `configuration_id`, and runs it as the job config it maps onto.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use docfleet_shared::model::parse_page_selection;
use docfleet_shared::{now_millis, now_rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::auth::Project;
use crate::catalog::{Owned, CONFIGURATION};
use crate::error::ApiError;
use crate::http::{Cursor, JsonBody, QueryParams};
use crate::state::AppState;

/// The preset every parse runs on: rule-based text extraction, docfleet's engine.
pub const PARSE_FAST: &str = "cfg-PARSE_FAST";

/// Presets of tiers that need a language or vision model: named so the refusal is clear.
const MODEL_PRESETS: &[(&str, &str)] = &[
    ("cfg-PARSE_COST_EFFECTIVE", "cost_effective"),
    ("cfg-PARSE_AGENTIC", "agentic"),
    ("cfg-PARSE_AGENTIC_PLUS", "agentic_plus"),
];

/// Product types docfleet runs; the SDK knows more.
const RUNNABLE: &[&str] = &["parse_v2", "classify_v2"];

/// A saved configuration, stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Configuration {
    /// `cfg-<uuid>`, or a preset's id.
    pub id: String,
    /// Its name, unique per product type within the project.
    pub name: String,
    /// Owner (empty for a preset).
    pub project_id: String,
    /// `parse_v2` or `classify_v2`.
    pub product_type: String,
    /// As sent, with `product_type` inside (the SDK's discriminator).
    pub parameters: Value,
    /// When this version was saved (the SDK's `version` is a datetime string).
    pub version: String,
    /// First saved.
    pub created_at: String,
    /// Last saved.
    pub updated_at: String,
}

impl Owned for Configuration {
    fn id(&self) -> &str {
        &self.id
    }
    fn project(&self) -> &str {
        &self.project_id
    }
}

impl Configuration {
    /// The SDK's `ConfigurationResponse` shape.
    pub fn to_api(&self) -> Value {
        let mut parameters = self.parameters.clone();
        crate::webhook::subscription::redact(&mut parameters);
        json!({
            "id": self.id,
            "name": self.name,
            "parameters": parameters,
            "product_type": self.product_type,
            "version": self.version,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    fn preset(id: &str, project: &str) -> Option<Self> {
        (id == PARSE_FAST).then(|| Self {
            id: id.to_owned(),
            name: "PARSE_FAST".into(),
            project_id: project.to_owned(),
            product_type: "parse_v2".into(),
            parameters: json!({ "product_type": "parse_v2", "tier": "fast", "version": "latest" }),
            version: "2026-06-15T00:00:00Z".into(),
            created_at: "2026-06-15T00:00:00Z".into(),
            updated_at: "2026-06-15T00:00:00Z".into(),
        })
    }
}

/// The configuration `id` of `project`, a preset included; a preset of a model tier is a
/// 422 naming `field`.
pub async fn load(
    st: &AppState,
    project: &str,
    id: &str,
    field: &str,
) -> Result<Configuration, ApiError> {
    if let Some(p) = Configuration::preset(id, project) {
        return Ok(p);
    }
    if let Some((_, tier)) = MODEL_PRESETS.iter().find(|(p, _)| *p == id) {
        return Err(ApiError::field(field, needs_model(tier)));
    }
    let mut cfg: Configuration = CONFIGURATION.load(st, project, id).await?;
    if let Some(hooks) = cfg.parameters.get_mut("webhook_configurations") {
        st.seal
            .open_config(hooks)
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    }
    Ok(cfg)
}

/// `parameters` with the credentials of their webhooks sealed, for storing.
fn sealed(st: &AppState, mut parameters: Value) -> Value {
    if let Some(hooks) = parameters.get_mut("webhook_configurations") {
        st.seal.seal_config(hooks);
    }
    parameters
}

fn needs_model(tier: &str) -> String {
    format!(
        "the {tier:?} tier needs a language or vision model, which this deployment does not \
         run; use the \"fast\" tier (preset {PARSE_FAST})"
    )
}

/// Checks `parameters` and returns their product type.
fn validate(parameters: &Value) -> Result<String, ApiError> {
    let obj = parameters
        .as_object()
        .ok_or_else(|| ApiError::field("parameters", "must be an object"))?;
    let kind = obj
        .get("product_type")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::field("parameters.product_type", "is required"))?;
    match kind {
        "parse_v2" => {
            parse_job_config(parameters, "parameters")?;
        }
        "classify_v2" => {
            let rules = obj.get("rules").and_then(Value::as_array);
            if rules.is_none_or(|r| r.is_empty()) {
                return Err(ApiError::field(
                    "parameters.rules",
                    "at least one rule is required",
                ));
            }
        }
        other => {
            return Err(ApiError::field(
                "parameters.product_type",
                format!(
                    "docfleet runs {} configurations; {other:?} is not one of them",
                    RUNNABLE.join(" and ")
                ),
            ))
        }
    }
    Ok(kind.to_owned())
}

/// The engine's job config for `parse_v2` parameters: page ranges, OCR, image and timeout
/// options, the allowed share of failed pages, and webhooks. Every other option is kept with
/// the configuration and has no effect; options that need a model are refused. Errors name
/// the field under `at`.
pub fn parse_job_config(p: &Value, at: &str) -> Result<Value, ApiError> {
    let f = |path: &str| {
        if at.is_empty() {
            path.to_owned()
        } else {
            format!("{at}.{path}")
        }
    };
    let get = |path: &str| {
        path.split('.')
            .try_fold(p, |v, k| v.get(k))
            .filter(|v| !v.is_null())
    };
    let tier = get("tier")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::field(&f("tier"), "is required"))?;
    match tier {
        "fast" => {}
        "cost_effective" | "agentic" | "agentic_plus" => {
            return Err(ApiError::field(&f("tier"), needs_model(tier)))
        }
        other => {
            return Err(ApiError::field(
                &f("tier"),
                format!("must be fast, cost_effective, agentic or agentic_plus; got {other:?}"),
            ))
        }
    }
    for model_only in [
        "agentic_options",
        "processing_options.auto_mode_configuration",
        "processing_options.specialized_chart_parsing",
    ] {
        if get(model_only).is_some_and(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
            return Err(ApiError::field(
                &f(model_only),
                "needs a language or vision model, which this deployment does not run",
            ));
        }
    }
    let mut out = Map::new();
    out.insert("type".into(), json!("parse"));
    out.insert("parse_mode".into(), json!("parse_page_without_llm"));
    let int = |path: &str, max: u64| -> Result<Option<u64>, ApiError> {
        match get(path) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::field(
                    &f(path),
                    format!("must be an integer from 1 to {max}"),
                )),
            },
        }
    };
    if let Some(n) = int("page_ranges.max_pages", u64::from(u32::MAX))? {
        out.insert("max_pages".into(), json!(n));
    }
    if let Some(t) = get("page_ranges.target_pages") {
        let t = t
            .as_str()
            .ok_or_else(|| ApiError::field(&f("page_ranges.target_pages"), "must be a string"))?;
        out.insert(
            "target_pages".into(),
            json!(zero_based(t).map_err(|m| ApiError::field(&f("page_ranges.target_pages"), m))?),
        );
    }
    if let Some(r) = get("processing_control.job_failure_conditions.allowed_page_failure_ratio") {
        match r.as_f64() {
            Some(r) if (0.0..=1.0).contains(&r) => {
                out.insert("page_error_tolerance".into(), json!(r));
            }
            _ => {
                return Err(ApiError::field(
                    &f("processing_control.job_failure_conditions.allowed_page_failure_ratio"),
                    "must be between 0 and 1",
                ))
            }
        }
    }
    if let Some(base) = int("processing_control.timeouts.base_in_seconds", 7200)? {
        // The page count is not known before the file is read: the extra time per page
        // counts for the pages the range allows at most, if it is bounded.
        let extra = int(
            "processing_control.timeouts.extra_time_per_page_in_seconds",
            300,
        )?
        .unwrap_or(0);
        let pages = out.get("max_pages").and_then(Value::as_u64).unwrap_or(0);
        out.insert("job_timeout_in_seconds".into(), json!(base + extra * pages));
    }
    if let Some(kinds) = get("output_options.images_to_save") {
        out.insert("images_to_save".into(), kinds.clone());
    }
    if let Some(langs) = get("processing_options.ocr_parameters.languages") {
        out.insert("languages".into(), langs.clone());
    }
    if get("processing_options.ignore.ignore_text_in_image") == Some(&json!(true)) {
        out.insert("disable_ocr".into(), json!(true));
    }
    if let Some(w) = get("webhook_configurations") {
        out.insert("webhook_configurations".into(), w.clone());
    }
    let config = json!({ "job_name": "parse_raw_file_job", "parameters": out });
    // The engine's own checks, on what the mapping made of the request.
    serde_json::from_value::<docfleet_shared::model::ParseJobConfig>(config.clone())
        .map_err(|e| ApiError::field(if at.is_empty() { "body" } else { at }, e))?;
    Ok(config)
}

/// The engine's job config for a `classify_v2` configuration (`rules`, `mode`,
/// `parsing_configuration` with 1-based `target_pages`); errors name fields under `at`.
pub fn classify_job_config(c: &Value, at: &str) -> Result<Value, ApiError> {
    let f = |path: &str| {
        if at.is_empty() {
            path.to_owned()
        } else {
            format!("{at}.{path}")
        }
    };
    let mut out = json!({ "rules": c.get("rules").cloned().unwrap_or(Value::Null) });
    match c.get("mode").and_then(Value::as_str) {
        None | Some("FAST") => out["mode"] = json!("FAST"),
        Some(other) => {
            return Err(ApiError::field(
                &f("mode"),
                format!("must be FAST, got {other:?}"),
            ))
        }
    }
    if let Some(p) = c.get("parsing_configuration").filter(|p| !p.is_null()) {
        let mut parsing = json!({ "lang": p.get("lang"), "max_pages": p.get("max_pages") });
        if let Some(t) = p.get("target_pages").and_then(Value::as_str) {
            let zero = zero_based(t)
                .map_err(|m| ApiError::field(&f("parsing_configuration.target_pages"), m))?;
            let pages = parse_page_selection(&zero)
                .map_err(|m| ApiError::field(&f("parsing_configuration.target_pages"), m))?;
            parsing["target_pages"] = json!(pages);
        }
        out["parsing_configuration"] = parsing;
    }
    Ok(out)
}

/// A 1-based page selection (`1,3,5-8`) as the engine's 0-based one.
fn zero_based(pages: &str) -> Result<String, String> {
    let list = parse_page_selection(pages)?;
    if list.first() == Some(&0) {
        return Err("pages are numbered from 1".into());
    }
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for p in list.into_iter().map(|p| p - 1) {
        match runs.last_mut() {
            Some((_, hi)) if *hi + 1 == p => *hi = p,
            _ => runs.push((p, p)),
        }
    }
    Ok(runs
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(","))
}

/// `configurations.create` body.
#[derive(Debug, Deserialize)]
pub struct Create {
    name: String,
    parameters: Value,
}

/// `configurations.create`: saves a configuration, or a new version of the one with the same
/// name and product type.
pub async fn create(
    State(st): State<AppState>,
    Project(project): Project,
    JsonBody(body): JsonBody<Create>,
) -> Result<Json<Value>, ApiError> {
    let name = checked_name(&body.name)?;
    let product_type = validate(&body.parameters)?;
    let now = now_rfc3339();
    let existing: Vec<Configuration> = CONFIGURATION.all(&st, &project).await?;
    let rec = match existing
        .into_iter()
        .find(|c| c.name == name && c.product_type == product_type)
    {
        Some(mut c) => {
            c.parameters = sealed(&st, body.parameters);
            c.version = now.clone();
            c.updated_at = now;
            c
        }
        None => Configuration {
            id: CONFIGURATION.new_id(),
            name,
            project_id: project.clone(),
            product_type,
            parameters: sealed(&st, body.parameters),
            version: now.clone(),
            created_at: now.clone(),
            updated_at: now,
        },
    };
    CONFIGURATION.put(&st, &rec, now_millis()).await?;
    Ok(Json(rec.to_api()))
}

fn checked_name(name: &str) -> Result<String, ApiError> {
    let n = name.trim();
    if n.is_empty() || n.chars().count() > 200 {
        return Err(ApiError::field("name", "must be 1 to 200 characters"));
    }
    Ok(n.to_owned())
}

/// `configurations.retrieve`, presets included.
pub async fn get(
    State(st): State<AppState>,
    Project(project): Project,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(load(&st, &project, &id, "config_id").await?.to_api()))
}

/// `configurations.update` body.
#[derive(Debug, Deserialize)]
pub struct Update {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    parameters: Option<Value>,
}

/// `configurations.update`: a new version, under the same id.
pub async fn update(
    State(st): State<AppState>,
    Project(project): Project,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Update>,
) -> Result<Json<Value>, ApiError> {
    let mut rec: Configuration = CONFIGURATION.load(&st, &project, &id).await?;
    if let Some(n) = &body.name {
        rec.name = checked_name(n)?;
    }
    if let Some(p) = body.parameters {
        rec.product_type = validate(&p)?;
        rec.parameters = sealed(&st, p);
    }
    let now = now_rfc3339();
    rec.version = now.clone();
    rec.updated_at = now;
    CONFIGURATION.put(&st, &rec, now_millis()).await?;
    Ok(Json(rec.to_api()))
}

/// `configurations.list`: by name and product types (repeated), oldest first.
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let cursor = Cursor::from_query(&q)?;
    q.flag("latest_only")?; // one version is kept per configuration: always the latest
    let name = q.get("name");
    let types = q.all("product_type");
    let mut all: Vec<Configuration> = CONFIGURATION.all(&st, &project).await?;
    all.retain(|c| {
        name.is_none_or(|n| n == c.name)
            && (types.is_empty() || types.contains(&c.product_type.as_str()))
    });
    Ok(Json(
        cursor.page(all.iter().map(Configuration::to_api).collect()),
    ))
}

/// `configurations.delete`: 204. Batches created from it keep the job config they were
/// created with.
pub async fn delete(
    State(st): State<AppState>,
    Project(project): Project,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _: Configuration = CONFIGURATION.load(&st, &project, &id).await?;
    CONFIGURATION.remove(&st, &project, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_parse_v2_onto_the_engine() {
        let cfg = parse_job_config(
            &json!({ "product_type": "parse_v2", "tier": "fast", "version": "latest",
                "page_ranges": { "max_pages": 3, "target_pages": "1,3-5,4" },
                "processing_control": { "timeouts": { "base_in_seconds": 60, "extra_time_per_page_in_seconds": 10 },
                    "job_failure_conditions": { "allowed_page_failure_ratio": 0.5 } },
                "output_options": { "images_to_save": ["screenshot"], "markdown": { "inline_images": true } } }),
            "parameters",
        )
        .unwrap();
        let p = &cfg["parameters"];
        assert_eq!(p["target_pages"], "0,2-4");
        assert_eq!(p["max_pages"], 3);
        assert_eq!(p["job_timeout_in_seconds"], 90);
        assert_eq!(p["page_error_tolerance"], 0.5);
        assert_eq!(p["images_to_save"], json!(["screenshot"]));
        let err = |v: Value| parse_job_config(&v, "parameters").unwrap_err().to_string();
        assert!(
            err(json!({ "tier": "agentic", "version": "latest" })).starts_with("parameters.tier:")
        );
        assert!(
            err(json!({ "tier": "fast", "page_ranges": { "target_pages": "0-2" } }))
                .starts_with("parameters.page_ranges.target_pages:")
        );
        assert!(
            err(json!({ "tier": "fast", "agentic_options": { "custom_prompt": "x" } }))
                .starts_with("parameters.agentic_options:")
        );
        assert!(
            err(json!({ "tier": "fast", "output_options": { "images_to_save": ["photo"] } }))
                .starts_with("parameters:")
        );
    }
}
