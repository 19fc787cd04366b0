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

/// Creates a new API key for `project` and returns it, valid for `ttl_secs` if given.
pub async fn create_key(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    project: &str,
    ttl_secs: Option<u64>,
) -> redis::RedisResult<String> {
    let key = format!("dfk_{}", uuid::Uuid::new_v4().simple());
    let d = digest(&key);
    let mut pipe = redis::pipe();
    pipe.atomic();
    match ttl_secs {
        Some(ttl) => pipe.set_ex(keys.api_key(&d), project, ttl.max(1)),
        None => pipe.set(keys.api_key(&d), project),
    };
    pipe.zadd(
        keys.project_keys(project),
        &d,
        docfleet_shared::now_millis(),
    )
    .query_async::<()>(con)
    .await?;
    Ok(key)
}

/// A project's keys, one line each: digest prefix, created (ms), and `expires in <s>` or
/// `no expiry`. An expired key's entry is dropped on the way.
pub async fn list_keys(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    project: &str,
) -> redis::RedisResult<Vec<String>> {
    let digests: Vec<(String, i64)> = con
        .zrange_withscores(keys.project_keys(project), 0, -1)
        .await?;
    let mut out = Vec::new();
    for (d, created) in digests {
        let ttl: i64 = con.ttl(keys.api_key(&d)).await?;
        match ttl {
            -2 => {
                let _: () = con.zrem(keys.project_keys(project), &d).await?;
            }
            -1 => out.push(format!("{} created {created} no expiry", &d[..12])),
            t => out.push(format!("{} created {created} expires in {t}s", &d[..12])),
        }
    }
    Ok(out)
}

/// Revokes the keys of `project` that `key` names (the key itself, or a digest prefix of at
/// least 12 characters); how many.
pub async fn revoke_key(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    project: &str,
    key: &str,
) -> redis::RedisResult<usize> {
    let digests: Vec<String> = con.zrange(keys.project_keys(project), 0, -1).await?;
    let wanted = digest(key);
    let matching: Vec<String> = digests
        .into_iter()
        .filter(|d| *d == wanted || (key.len() >= 12 && d.starts_with(key)))
        .collect();
    for d in &matching {
        redis::pipe()
            .atomic()
            .del(keys.api_key(d))
            .ignore()
            .zrem(keys.project_keys(project), d)
            .ignore()
            .query_async::<()>(con)
            .await?;
    }
    Ok(matching.len())
}
