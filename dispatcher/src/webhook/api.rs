//! The delivery log of a batch and redelivery (our extension to the legacy API).
//!
//! `GET  /api/v1/beta/batch-processing/{id}/webhook-deliveries?limit=&offset=&status=`
//! `POST /api/v1/beta/batch-processing/{id}/webhook-deliveries/{delivery_id}/redeliver`

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::Json;
use redis::AsyncCommands;
use serde_json::{json, Value};

use crate::auth::Project;
use crate::error::ApiError;
use crate::http::QueryParams;
use crate::state::AppState;

fn iso(ms: Option<&String>) -> Value {
    ms.and_then(|m| m.parse::<i64>().ok())
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| json!(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(Value::Null)
}

fn view(d: &HashMap<String, String>) -> Value {
    let get = |k: &str| d.get(k).filter(|v| !v.is_empty()).cloned();
    json!({
        "id": get("id"),
        "event_id": get("event_id"),
        "event_type": get("event_type"),
        "url": get("url"),
        "status": get("status"),
        "attempts": get("attempts").and_then(|a| a.parse::<u64>().ok()).unwrap_or(0),
        "last_status_code": get("last_status_code").and_then(|c| c.parse::<u16>().ok()),
        "last_error": get("last_error"),
        "created_at": iso(d.get("created_at")),
        "last_attempt_at": iso(d.get("last_attempt_at")),
        "next_attempt_at": iso(d.get("next_attempt_at")),
        "delivered_at": iso(d.get("delivered_at")),
    })
}

/// Lists a batch's deliveries, oldest first.
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
    Path(batch_id): Path<String>,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    crate::batch::load(&st, &project, &batch_id).await?;
    let limit = q.int("limit", 50, 1, 1000)? as usize;
    let offset = q.int("offset", 0, 0, u32::MAX as u64)? as usize;
    let status = q.get("status");
    if let Some(s) = status {
        if !matches!(s, "pending" | "delivered" | "failed") {
            return Err(ApiError::field(
                "status",
                format!("must be pending, delivered or failed; got {s:?}"),
            ));
        }
    }
    let mut con = st.redis.clone();
    let ids: Vec<String> = con
        .zrange(st.keys.batch_deliveries(&batch_id), 0, -1)
        .await?;
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.hgetall(st.keys.delivery(id));
    }
    let all: Vec<HashMap<String, String>> = if ids.is_empty() {
        Vec::new()
    } else {
        pipe.query_async(&mut con).await?
    };
    let matching: Vec<Value> = all
        .iter()
        .filter(|d| status.is_none_or(|s| d.get("status").map(String::as_str) == Some(s)))
        .map(view)
        .collect();
    let total = matching.len();
    let items: Vec<Value> = matching.into_iter().skip(offset).take(limit).collect();
    Ok(Json(json!({ "items": items, "total_size": total })))
}

/// Sends one delivery again, whatever its state, with the same event id and body (an
/// operator route).
pub async fn redeliver(
    State(st): State<AppState>,
    _: crate::auth::Operator,
    Path((batch_id, delivery_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    crate::batch::load_any(&st, &batch_id).await?;
    let mut con = st.redis.clone();
    let key = st.keys.delivery(&delivery_id);
    let (owner, project): (Option<String>, Option<String>) = redis::cmd("HMGET")
        .arg(&key)
        .arg("batch_id")
        .arg("project")
        .query_async(&mut con)
        .await?;
    if owner.as_deref() != Some(batch_id.as_str()) {
        return Err(ApiError::not_found("webhook delivery", &delivery_id));
    }
    let now = docfleet_shared::now_millis();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .hset(&key, "status", "pending")
        .ignore()
        .hset(&key, "next_attempt_at", now)
        .ignore();
    let project = project.unwrap_or_default();
    super::delivery::schedule(&mut pipe, &st.keys, &project, &delivery_id, now);
    let _: () = pipe.query_async(&mut con).await?;
    st.webhook_wake.notify_one();
    let d: HashMap<String, String> = con.hgetall(&key).await?;
    Ok(Json(view(&d)))
}
