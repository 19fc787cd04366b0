//! API keys: `Authorization: Bearer <key>`, each key bound to one project.
//!
//! Only a SHA-256 digest of a key is stored, so a Redis dump does not leak usable keys.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::state::AppState;

/// The project the caller's key belongs to.
#[derive(Debug, Clone)]
pub struct Project(pub String);

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

impl FromRequestParts<AppState> for Project {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::Unauthorized("missing API key: send Authorization: Bearer <key>".into())
            })?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ApiError::Unauthorized("Authorization must be Bearer <key>".into()))?;
        let mut con = state.redis.clone();
        let project: Option<String> = con.get(state.keys.api_key(&digest(key))).await?;
        project
            .map(Project)
            .ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))
    }
}

/// Whether `project` is a usable project id (it appears in keys and store paths).
pub fn valid_project_id(project: &str) -> bool {
    !project.is_empty()
        && project.len() <= 64
        && project
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Creates a new API key for `project` and returns it; the operator's one command.
pub async fn create_key(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    project: &str,
) -> redis::RedisResult<String> {
    let key = format!("dfk_{}", uuid::Uuid::new_v4().simple());
    let _: () = con.set(keys.api_key(&digest(&key)), project).await?;
    Ok(key)
}
