//! The API's error type: every error is a JSON object with a `detail`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is well-formed but not acceptable as a whole.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no or unknown API key.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the key may not use this route.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such resource for this project.
    #[error("{0}")]
    NotFound(String),
    /// 408: the request took longer than allowed.
    #[error("{0}")]
    Timeout(String),
    /// 413: the upload is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// 422: a field has a wrong type or value; the message names the field.
    #[error("{0}")]
    Unprocessable(String),
    /// 429: the project has reached a limit; the client may retry after `retry_after` seconds.
    #[error("{detail}")]
    TooMany {
        /// What limit, and what to do.
        detail: String,
        /// For `Retry-After`.
        retry_after: u32,
    },
    /// 503: Redis, RabbitMQ or the file store failed; the client may retry.
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// 404 for a resource kind and id.
    pub fn not_found(kind: &str, id: &str) -> Self {
        Self::NotFound(format!("{kind} {id:?} not found"))
    }

    /// 422 naming `field`.
    pub fn field(field: &str, msg: impl std::fmt::Display) -> Self {
        Self::Unprocessable(format!("{field}: {msg}"))
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry = match &self {
            Self::Unavailable(_) => Some(1),
            Self::TooMany { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        if status.is_server_error() {
            tracing::warn!(error = %self, "Request failed on a dependency.");
        }
        let body = axum::Json(serde_json::json!({ "detail": self.to_string() }));
        let mut resp = (status, body).into_response();
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from(secs));
        }
        resp
    }
}

impl From<redis::RedisError> for ApiError {
    fn from(e: redis::RedisError) -> Self {
        // Redis at `maxmemory` under `noeviction` refuses writes; a script or transaction
        // refused so wrote nothing, and one that started writing was let finish.
        // The refusal is the error's code, or in a transaction the reply of each queued
        // command, so it is looked for in the whole text.
        if e.to_string().contains("OOM") {
            return Self::Unavailable(
                "state store is full (Redis maxmemory reached): nothing was written; retry once it has room"
                    .into(),
            );
        }
        // What Redis said stays in the log: it can name keys and internals.
        tracing::warn!(error = %e, "Redis request failed.");
        Self::Unavailable("state store unavailable; retry in a moment".into())
    }
}

impl From<docfleet_shared::store::StoreError> for ApiError {
    fn from(e: docfleet_shared::store::StoreError) -> Self {
        tracing::warn!(error = %e, "File store request failed.");
        Self::Unavailable("file store unavailable; retry in a moment".into())
    }
}

impl From<serde_json::Error> for ApiError {
    fn from(e: serde_json::Error) -> Self {
        tracing::warn!(error = %e, "A stored record could not be read.");
        Self::Unavailable("a stored record could not be read".into())
    }
}
