//! Signed links: URLs that fetch one thing without an API key until they expire (a file's
//! bytes, a parse result, a kept image). The signature is an HMAC of what the link names and
//! its expiry under the deployment's URL key, drawn once and kept in Redis so every replica
//! signs and checks alike.

use axum::http::HeaderMap;
use docfleet_shared::now_millis;
use hmac::{Hmac, Mac};
use redis::AsyncCommands;
use sha2::Sha256;

use crate::error::ApiError;
use crate::http::QueryParams;
use crate::state::AppState;

/// The longest a link may live: a week.
pub const MAX_SECS: u64 = 7 * 24 * 3600;

/// A link's expiry (seconds since the epoch) and signature for `subject`, valid `secs` from now.
pub async fn sign(st: &AppState, subject: &str, secs: u64) -> Result<(i64, String), ApiError> {
    let expires = now_millis() / 1000 + secs.min(MAX_SECS) as i64;
    let mac = mac(st, subject, expires).await?;
    Ok((expires, hex::encode(mac.finalize().into_bytes())))
}

/// `expires=…&signature=…` for `subject`, valid `secs` from now.
pub async fn query(st: &AppState, subject: &str, secs: u64) -> Result<String, ApiError> {
    let (expires, signature) = sign(st, subject, secs).await?;
    Ok(format!("expires={expires}&signature={signature}"))
}

/// Checks a link's `expires` and `signature` for `subject`: any fault is the same 404, so a
/// link tells nothing about what it might have named.
pub async fn verify(st: &AppState, subject: &str, q: &QueryParams) -> Result<(), ApiError> {
    let expires: i64 = q
        .get("expires")
        .and_then(|e| e.parse().ok())
        .ok_or_else(refused)?;
    let given = q.get("signature").ok_or_else(refused)?;
    if expires < now_millis() / 1000 {
        return Err(refused());
    }
    let given = hex::decode(given).map_err(|_| refused())?;
    mac(st, subject, expires)
        .await?
        .verify_slice(&given)
        .map_err(|_| refused())
}

/// The answer to a link that is not valid.
pub fn refused() -> ApiError {
    ApiError::NotFound("this download link is not valid or has expired".into())
}

/// Where clients reach this server, as the request says (a proxy's `X-Forwarded-*` first).
pub fn public_base(headers: &HeaderMap) -> String {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    let host = h("x-forwarded-host")
        .or_else(|| h("host"))
        .unwrap_or("localhost");
    let scheme = h("x-forwarded-proto").unwrap_or("http");
    format!("{scheme}://{host}")
}

async fn mac(st: &AppState, subject: &str, expires: i64) -> Result<Hmac<Sha256>, ApiError> {
    let mut con = st.redis.clone();
    let drawn = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let _: bool = con.set_nx(st.keys.url_key(), &drawn).await?;
    let key: String = con.get(st.keys.url_key()).await?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
        .map_err(|e| ApiError::Unavailable(format!("url key: {e}")))?;
    mac.update(format!("{subject}\n{expires}").as_bytes());
    Ok(mac)
}
