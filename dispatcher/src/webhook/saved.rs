//! Saved webhook configurations (`client.webhook_configs`): endpoints kept by id, which a v2
//! batch names in `webhook_configuration_ids`. A batch takes a copy when it is created, so a
//! later change or delete does not touch batches already running. The signing secret is
//! write-only: responses say only whether one is set.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use docfleet_shared::{now_millis, now_rfc3339};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::auth::Project;
use crate::catalog::{Owned, WEBHOOK_CONFIGURATION};
use crate::error::ApiError;
use crate::http::{Cursor, JsonBody, QueryParams};
use crate::state::AppState;

/// A saved endpoint: the `WebhookConfiguration` object as validated, and who owns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    /// `whc-<uuid>`.
    pub id: String,
    /// Owner.
    pub project_id: String,
    /// The configuration, secret included.
    pub config: Map<String, Value>,
    /// Created.
    pub created_at: String,
    /// Last changed.
    pub updated_at: String,
}

impl Owned for Saved {
    fn id(&self) -> &str {
        &self.id
    }
    fn project(&self) -> &str {
        &self.project_id
    }
}

impl Saved {
    /// The SDK's `WebhookConfigResponse` shape.
    fn to_api(&self) -> Value {
        let get = |k: &str| self.config.get(k).cloned().unwrap_or(Value::Null);
        json!({
            "id": self.id,
            "has_secret": self.config.get("webhook_signing_secret").is_some_and(|s| s.as_str().is_some_and(|s| !s.is_empty())),
            "tenant_id": self.project_id,
            "tenant_type": "project",
            "webhook_url": get("webhook_url"),
            "webhook_events": get("webhook_events"),
            // Header values carry the receiver's credentials: the names only.
            "webhook_headers": get("webhook_headers").as_object().map(|h| {
                h.keys()
                    .map(|k| (k.clone(), Value::String("(redacted)".into())))
                    .collect::<Map<String, Value>>()
            }),
            "webhook_output_format": get("webhook_output_format"),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// Checks a configuration as the create route would; an empty event list is refused, as the
/// SDK documents.
fn validate(config: &Map<String, Value>) -> Result<(), ApiError> {
    if config
        .get("webhook_events")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        return Err(ApiError::field(
            "webhook_events",
            "an empty list subscribes to nothing; omit it (or send null) for every event",
        ));
    }
    crate::webhook::subscription::endpoint("body", &Value::Object(config.clone()))
        .map_err(|e| ApiError::Unprocessable(e.to_string().replacen("body.", "", 1)))?;
    Ok(())
}

/// The fields a body may set.
const FIELDS: &[&str] = &[
    "webhook_url",
    "webhook_events",
    "webhook_headers",
    "webhook_output_format",
    "webhook_signing_secret",
];

fn fields(body: Map<String, Value>) -> Map<String, Value> {
    body.into_iter()
        .filter(|(k, _)| FIELDS.contains(&k.as_str()))
        .collect()
}

/// `webhook_configs.create`.
pub async fn create(
    State(st): State<AppState>,
    Project(project): Project,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let config = fields(body);
    validate(&config)?;
    let now = now_rfc3339();
    let rec = Saved {
        id: WEBHOOK_CONFIGURATION.new_id(),
        project_id: project,
        config: sealed(&st, config),
        created_at: now.clone(),
        updated_at: now,
    };
    WEBHOOK_CONFIGURATION.put(&st, &rec, now_millis()).await?;
    Ok(Json(rec.to_api()))
}

/// `webhook_configs.update`: the fields sent replace the saved ones.
pub async fn update(
    State(st): State<AppState>,
    Project(project): Project,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Map<String, Value>>,
) -> Result<Json<Value>, ApiError> {
    let mut rec: Saved = WEBHOOK_CONFIGURATION.load(&st, &project, &id).await?;
    let mut config = opened(&st, rec.config)?;
    config.extend(fields(body));
    validate(&config)?;
    rec.config = sealed(&st, config);
    rec.updated_at = now_rfc3339();
    WEBHOOK_CONFIGURATION.put(&st, &rec, now_millis()).await?;
    Ok(Json(rec.to_api()))
}

/// `webhook_configs.retrieve`.
pub async fn get(
    State(st): State<AppState>,
    Project(project): Project,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec: Saved = WEBHOOK_CONFIGURATION.load(&st, &project, &id).await?;
    Ok(Json(rec.to_api()))
}

/// `webhook_configs.list`: every one, as a plain array.
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
) -> Result<Json<Value>, ApiError> {
    let all: Vec<Saved> = WEBHOOK_CONFIGURATION.all(&st, &project).await?;
    Ok(Json(Value::Array(all.iter().map(Saved::to_api).collect())))
}

/// `webhook_configs.list_paginated` (`/api/v2/webhook-configs`): a cursor page.
pub async fn list_paginated(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let cursor = Cursor::from_query(&q)?;
    q.flag("include_total")?; // the total costs nothing extra here: always sent
    let all: Vec<Saved> = WEBHOOK_CONFIGURATION.all(&st, &project).await?;
    Ok(Json(cursor.page(all.iter().map(Saved::to_api).collect())))
}

/// `webhook_configs.delete`: 204. Batches that named it keep their copy.
pub async fn delete(
    State(st): State<AppState>,
    Project(project): Project,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let _: Saved = WEBHOOK_CONFIGURATION.load(&st, &project, &id).await?;
    WEBHOOK_CONFIGURATION.remove(&st, &project, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The configurations `ids` name, secrets included, for a batch to copy; an unknown id is a
/// 422 naming its place in `field`.
pub async fn resolve(
    st: &AppState,
    project: &str,
    ids: &[String],
    field: &str,
) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let rec: Saved =
            WEBHOOK_CONFIGURATION
                .load(st, project, id)
                .await
                .map_err(|e| match e {
                    ApiError::NotFound(m) => ApiError::field(&format!("{field}[{i}]"), m),
                    other => other,
                })?;
        out.push(Value::Object(opened(st, rec.config)?));
    }
    Ok(out)
}

fn sealed(st: &AppState, config: Map<String, Value>) -> Map<String, Value> {
    let mut v = Value::Object(config);
    st.seal.seal_config(&mut v);
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn opened(st: &AppState, config: Map<String, Value>) -> Result<Map<String, Value>, ApiError> {
    let mut v = Value::Object(config);
    st.seal
        .open_config(&mut v)
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => Ok(Map::new()),
    }
}
