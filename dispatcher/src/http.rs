//! Request extractors that answer bad input with a JSON `detail` naming the field.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::{Deserialize, DeserializeOwned};

use crate::error::ApiError;

/// A JSON body; a malformed one is a 422 whose detail gives the path of the bad field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        parse_json(RawBody::json(&bytes)).map(JsonBody)
    }
}

/// A body kept as bytes, for a handler whose JSON borrows from it (a long id list parses
/// without an allocation per id).
pub struct RawBody(pub Bytes);

/// When a request's body had been read in full, for `Server-Timing`: receiving a large body
/// is the client's upload, paced by its network, and is reported apart from docfleet's own
/// work on the request.
#[derive(Clone, Default)]
pub struct BodyReceived(pub Arc<OnceLock<Instant>>);

impl RawBody {
    /// The JSON to parse: an empty body reads as `{}`, so the missing fields are named.
    pub fn json(bytes: &[u8]) -> &[u8] {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            bytes
        }
    }
}

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let received = req.extensions().get::<BodyReceived>().cloned();
        let body = Bytes::from_request(req, state).await;
        if let Some(BodyReceived(at)) = received {
            let _ = at.set(Instant::now());
        }
        body.map(RawBody).map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge("body: request body too large".into())
            } else {
                ApiError::BadRequest(format!("body: {e}"))
            }
        })
    }
}

/// Deserialises JSON, naming the field that failed.
pub fn parse_json<'de, T: Deserialize<'de>>(body: &'de [u8]) -> Result<T, ApiError> {
    // Tracking the path costs on every value (felt in a 100,000-id create), and only a
    // failure needs it: parse plainly, and again with the path only to explain an error.
    if let Ok(parsed) = serde_json::from_slice(body) {
        return Ok(parsed);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadRequest(format!("body: not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::Unprocessable(format!("body: {inner}"))
        } else {
            ApiError::field(&path, inner)
        }
    })
}

/// Query parameters, repeated keys kept (`expand=a&expand=b`).
#[derive(Debug, Default)]
pub struct QueryParams(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        Ok(Self(
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

impl QueryParams {
    /// The last non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// An integer in `min..=max`, or `default` when absent.
    pub fn int(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::field(
                    name,
                    format!("must be an integer from {min} to {max}, got {v:?}"),
                )),
            },
        }
    }

    /// A boolean, or `false` when absent.
    pub fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(false),
            Some("true" | "1") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(ApiError::field(
                name,
                format!("must be true or false, got {v:?}"),
            )),
        }
    }
}

/// Cursor paging (`page_size`, `page_token`): the token is the offset of the next page, which
/// is enough for lists kept in creation order.
#[derive(Debug, Clone, Copy)]
pub struct Cursor {
    /// Where the page starts.
    pub offset: usize,
    /// How many it holds at most.
    pub size: usize,
}

impl Cursor {
    /// The page asked for; `page_size` defaults to 50, at most 1,000.
    pub fn from_query(q: &QueryParams) -> Result<Self, ApiError> {
        let size = q.int("page_size", 50, 1, 1000)? as usize;
        let offset = match q.get("page_token") {
            None => 0,
            Some(t) => t
                .parse::<usize>()
                .map_err(|_| ApiError::field("page_token", "not a token this server issued"))?,
        };
        Ok(Self { offset, size })
    }

    /// The token of the page after one of `got` entries: none after a short page.
    pub fn next_token(&self, got: usize) -> Option<String> {
        (got == self.size).then(|| (self.offset + self.size).to_string())
    }

    /// This page of `all`, as the SDK's cursor page: `items`, `next_page_token`, `total_size`.
    pub fn page(&self, all: Vec<serde_json::Value>) -> serde_json::Value {
        let total = all.len();
        let items: Vec<serde_json::Value> =
            all.into_iter().skip(self.offset).take(self.size).collect();
        let token = self
            .next_token(items.len())
            .filter(|_| self.offset + self.size < total);
        serde_json::json!({ "items": items, "next_page_token": token, "total_size": total })
    }
}
