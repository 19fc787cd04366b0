//! API keys: `Authorization: Bearer <key>`. A project key reaches its project's records
//! through the API; an operator key reaches the operator routes (re-runs, redeliveries, key
//! management) and nothing else.
//!
//! Only a SHA-256 digest of a key is stored, so a Redis dump does not leak usable keys.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::http::{JsonBody, QueryParams};
use crate::state::AppState;

/// The project the caller's key belongs to.
#[derive(Debug, Clone)]
pub struct Project(pub String);

/// A caller with an operator key.
#[derive(Debug, Clone)]
pub struct Operator;

/// What an operator key is stored as: not a project id, so it names no project.
const OPERATOR: &str = "@operator";

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The owner of the request's key: a project id, or [`OPERATOR`].
async fn owner(parts: &Parts, state: &AppState) -> Result<String, ApiError> {
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
        return Ok(p);
    }
    let mut con = state.redis.clone();
    let owner: Option<String> = con.get(state.keys.api_key(&d)).await?;
    let owner = owner.ok_or_else(|| ApiError::Unauthorized("invalid API key".into()))?;
    state.key_cache.put(d, owner.clone());
    Ok(owner)
}

impl FromRequestParts<AppState> for Project {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match owner(parts, state).await? {
            o if o == OPERATOR => Err(ApiError::Forbidden(
                "an operator key reaches only the operator routes; use a project key".into(),
            )),
            project => {
                state.request_rate.admit(&project)?;
                Ok(Project(project))
            }
        }
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if owner(parts, state).await? == OPERATOR {
            Ok(Operator)
        } else {
            Err(ApiError::Forbidden(
                "this route needs an operator key (create-key --operator)".into(),
            ))
        }
    }
}

/// Known keys for a short while, so a burst of polls costs one key lookup, not one each.
/// A revoked or expired key keeps working here for at most [`KeyCache::TTL`].
#[derive(Default)]
pub struct KeyCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

impl KeyCache {
    /// How long a looked-up key is trusted without asking Redis again.
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(1);
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

/// Creates a new operator key and returns it, valid for `ttl_secs` if given. Operator keys
/// are listed and revoked as those of the project `@operator`.
pub async fn create_operator_key(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    ttl_secs: Option<u64>,
) -> redis::RedisResult<String> {
    create_key(con, keys, OPERATOR, ttl_secs).await
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
    let matching = matching_digests(con, keys, project, key).await?;
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

/// The digests of `project`'s keys that `key` names: the key itself, or a digest prefix of at
/// least 12 characters.
async fn matching_digests(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    project: &str,
    key: &str,
) -> redis::RedisResult<Vec<String>> {
    let digests: Vec<String> = con.zrange(keys.project_keys(project), 0, -1).await?;
    let wanted = digest(key);
    Ok(digests
        .into_iter()
        .filter(|d| *d == wanted || (key.len() >= 12 && d.starts_with(key)))
        .collect())
}

/// What rotating a key gave: its successor, and how long the old key still works.
#[derive(Debug)]
pub struct Rotated {
    pub key: String,
    pub old_expires_in_secs: u64,
}

/// Rotates the one key of `project` that `key` names: a successor (valid `ttl_secs` if given)
/// and the old key cut to `overlap_secs` more (never lengthened), so clients can move over
/// before it stops. `None` if `key` names no key or more than one.
pub async fn rotate_key(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    project: &str,
    key: &str,
    overlap_secs: u64,
    ttl_secs: Option<u64>,
) -> redis::RedisResult<Option<Rotated>> {
    let matching = matching_digests(con, keys, project, key).await?;
    let [old] = matching.as_slice() else {
        return Ok(None);
    };
    let left: i64 = con.ttl(keys.api_key(old)).await?;
    let overlap = match u64::try_from(left) {
        Ok(t) => t.min(overlap_secs),
        Err(_) if left == -1 => overlap_secs,
        Err(_) => return Ok(None), // gone meanwhile
    };
    let successor = create_key(con, keys, project, ttl_secs).await?;
    let _: () = con.expire(keys.api_key(old), overlap.max(1) as i64).await?;
    Ok(Some(Rotated {
        key: successor,
        old_expires_in_secs: overlap.max(1),
    }))
}

/// `POST /api/v1/admin/keys/{prefix}/rotate` body.
#[derive(Debug, Default, Deserialize)]
pub struct Rotation {
    /// How long the old key keeps working, in seconds (default a day).
    #[serde(default)]
    overlap_secs: Option<u64>,
    #[serde(default)]
    expires_in_days: Option<u64>,
}

/// Operator route: rotates a project's key named by its digest prefix (`?project=`): the
/// successor, shown this once, and how long the old key still works.
pub async fn rotate_route(
    State(st): State<AppState>,
    _: Operator,
    Path(prefix): Path<String>,
    q: QueryParams,
    JsonBody(body): JsonBody<Rotation>,
) -> Result<Json<Value>, ApiError> {
    let project = q.get("project").unwrap_or_default();
    checked_project(project)?;
    let overlap = body.overlap_secs.unwrap_or(86_400);
    let ttl = body.expires_in_days.map(|d| d.saturating_mul(86_400));
    let mut con = st.redis.clone();
    match rotate_key(&mut con, &st.keys, project, &prefix, overlap, ttl).await? {
        Some(r) => Ok(Json(json!({
            "key": r.key,
            "project": project,
            "old_expires_in_secs": r.old_expires_in_secs,
        }))),
        None => Err(ApiError::NotFound(format!(
            "no single key of project {project} has a digest starting {prefix:?}"
        ))),
    }
}

/// `POST /api/v1/admin/keys` body.
#[derive(Debug, Deserialize)]
pub struct NewKey {
    project: String,
    #[serde(default)]
    expires_in_days: Option<u64>,
}

fn checked_project(project: &str) -> Result<(), ApiError> {
    if valid_project_id(project) {
        Ok(())
    } else {
        Err(ApiError::field(
            "project",
            "must be 1-64 characters of [A-Za-z0-9_-]",
        ))
    }
}

/// Operator route: a new key for a project, shown this once.
pub async fn create_route(
    State(st): State<AppState>,
    _: Operator,
    JsonBody(body): JsonBody<NewKey>,
) -> Result<Json<Value>, ApiError> {
    checked_project(&body.project)?;
    let mut con = st.redis.clone();
    let ttl = body.expires_in_days.map(|d| d.saturating_mul(86_400));
    let key = create_key(&mut con, &st.keys, &body.project, ttl).await?;
    Ok(Json(json!({ "key": key, "project": body.project })))
}

/// Operator route: a project's keys, as digest prefixes (`?project=`).
pub async fn list_route(
    State(st): State<AppState>,
    _: Operator,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let project = q.get("project").unwrap_or_default();
    checked_project(project)?;
    let mut con = st.redis.clone();
    Ok(Json(
        json!({ "items": list_keys(&mut con, &st.keys, project).await? }),
    ))
}

/// Operator route: revokes a project's key by its digest prefix (`?project=`); 204.
pub async fn revoke_route(
    State(st): State<AppState>,
    _: Operator,
    Path(prefix): Path<String>,
    q: QueryParams,
) -> Result<StatusCode, ApiError> {
    let project = q.get("project").unwrap_or_default();
    checked_project(project)?;
    let mut con = st.redis.clone();
    match revoke_key(&mut con, &st.keys, project, &prefix).await? {
        0 => Err(ApiError::NotFound(format!(
            "no key of project {project} has a digest starting {prefix:?}"
        ))),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

/// Requests per second per project on this replica (`max_requests_per_second_per_project`),
/// by governor's keyed GCRA limiter: a burst of one second's worth, then the steady rate.
pub struct RequestRate(Option<governor::DefaultKeyedRateLimiter<String>>);

impl RequestRate {
    /// The limiter for `per_second` (0: none).
    pub fn new(per_second: u32) -> Self {
        Self(
            std::num::NonZeroU32::new(per_second)
                .map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n))),
        )
    }

    /// Counts a request of `project`, or says when to come back.
    pub fn admit(&self, project: &str) -> Result<(), ApiError> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        // Keys of projects idle for a while are dropped, so the map stays as small as the
        // set of busy projects.
        if limiter.len() > 10_000 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&project.to_owned())
            .map_err(|_| ApiError::TooMany {
                detail: format!(
                    "project {project} sends more requests per second than this deployment \
                     allows (max_requests_per_second_per_project); slow down"
                ),
                retry_after: 1,
            })
    }
}
