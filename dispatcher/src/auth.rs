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
        let d = digest(key);
        if let Some(p) = state.key_cache.get(&d) {
            return Ok(Project(p));
        }
        let mut con = state.redis.clone();
        let project: Option<String> = con.get(state.keys.api_key(&d)).await?;
        let project = project.ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))?;
        state.key_cache.put(d, project.clone());
        Ok(Project(project))
    }
}

/// Known keys for a short while, so a status poll costs one Redis round trip, not two.
/// A key deleted from Redis keeps working here for at most [`KeyCache::TTL`].
#[derive(Default)]
pub struct KeyCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl KeyCache {
    /// How long a looked-up key is trusted without asking Redis again.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(30);
    const MAX: usize = 10_000;

    fn get(&self, digest: &str) -> Option<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < Self::TTL)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, digest: String, project: String) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= Self::MAX {
            entries.clear();
        }
        entries.insert(digest, (project, std::time::Instant::now()));
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
