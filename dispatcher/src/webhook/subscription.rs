//! What a batch subscribes to.
//!
//! Accepted from `job_config.parameters.webhook_configurations`, `job_config.parameters.webhook_url`,
//! `job_config.webhook_url` (parse), and a top-level `webhook_configurations` on create (our
//! extension, for classify batches too; the SDK passes it with `extra_body`).

use std::collections::BTreeMap;

use docfleet_shared::model::WEBHOOK_EVENTS;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

/// Headers a subscription may not set: they belong to the transport or to our signatures.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-type",
    "lc-signature",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// How the body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// The payload as a JSON string literal (the SDK's default).
    #[default]
    String,
    /// The payload as a JSON object.
    Json,
}

/// One endpoint of a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Endpoint {
    /// Where to POST.
    pub url: String,
    /// Subscribed events; `None` = all.
    pub events: Option<Vec<String>>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// Body format.
    pub format: OutputFormat,
    /// HMAC secret.
    pub secret: Option<String>,
}

impl Endpoint {
    /// The endpoint as a `WebhookConfiguration` object again.
    pub fn to_config(&self) -> Value {
        serde_json::json!({
            "webhook_url": self.url,
            "webhook_events": self.events,
            "webhook_headers": self.headers,
            "webhook_output_format": match self.format { OutputFormat::Json => "json", OutputFormat::String => "string" },
            "webhook_signing_secret": self.secret,
        })
    }

    /// Whether this endpoint wants `event`.
    pub fn wants(&self, event: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|e| e.iter().any(|x| x == event))
    }
}

/// The event types a batch's endpoints want, in the form the Lua `emit` matches: `*` when any
/// endpoint takes every event, else the types between spaces; `None` without endpoints, in
/// which case no event is written at all (the outbox exists only to feed webhooks).
pub fn wanted_events(endpoints: &[Endpoint]) -> Option<String> {
    if endpoints.is_empty() {
        return None;
    }
    if endpoints.iter().any(|e| e.events.is_none()) {
        return Some("*".into());
    }
    let mut types: Vec<&str> = endpoints
        .iter()
        .flat_map(|e| e.events.iter().flatten().map(String::as_str))
        .collect();
    types.sort_unstable();
    types.dedup();
    Some(format!(" {} ", types.join(" ")))
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    webhook_url: Option<String>,
    #[serde(default)]
    webhook_events: Option<Vec<String>>,
    #[serde(default)]
    webhook_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    webhook_output_format: Option<String>,
    #[serde(default)]
    webhook_signing_secret: Option<String>,
}

fn check_url(field: &str, url: &str) -> Result<(), ApiError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::field(field, format!("not a valid URL ({e}): {url:?}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ApiError::field(
            field,
            format!(
                "must be an http or https URL, got scheme {:?}",
                parsed.scheme()
            ),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ApiError::field(field, "URL has no host"));
    }
    Ok(())
}

/// One `WebhookConfiguration` object, validated; errors name fields under `field`.
pub fn endpoint(field: &str, raw: &Value) -> Result<Endpoint, ApiError> {
    let cfg: RawConfig =
        serde_json::from_value(raw.clone()).map_err(|e| ApiError::field(field, e))?;
    let url = cfg
        .webhook_url
        .ok_or_else(|| ApiError::field(&format!("{field}.webhook_url"), "is required"))?;
    check_url(&format!("{field}.webhook_url"), &url)?;
    if let Some(events) = &cfg.webhook_events {
        for (i, e) in events.iter().enumerate() {
            if !WEBHOOK_EVENTS.contains(&e.as_str()) {
                return Err(ApiError::field(
                    &format!("{field}.webhook_events[{i}]"),
                    format!("unknown event {e:?}"),
                ));
            }
        }
    }
    let headers = cfg.webhook_headers.unwrap_or_default();
    for (name, value) in &headers {
        let f = format!("{field}.webhook_headers.{name}");
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(ApiError::field(
                &f,
                "this header is set by docfleet and cannot be overridden",
            ));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(ApiError::field(&f, "not a valid HTTP header"));
        }
    }
    let format = match cfg.webhook_output_format.as_deref() {
        None | Some("string") => OutputFormat::String,
        Some("json") => OutputFormat::Json,
        Some(other) => {
            return Err(ApiError::field(
                &format!("{field}.webhook_output_format"),
                format!("must be \"string\" or \"json\", got {other:?}"),
            ))
        }
    };
    if let Some(b64) = cfg
        .webhook_signing_secret
        .as_deref()
        .and_then(|s| s.strip_prefix("whsec_"))
    {
        use base64::Engine;
        if base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_or(true, |k| k.is_empty())
        {
            return Err(ApiError::field(
                &format!("{field}.webhook_signing_secret"),
                "a secret beginning whsec_ must be base64 after it (a Standard Webhooks key)",
            ));
        }
    }
    Ok(Endpoint {
        url,
        events: cfg.webhook_events,
        headers,
        format,
        secret: cfg.webhook_signing_secret.filter(|s| !s.is_empty()),
    })
}

fn list(field: &str, v: Option<&Value>, out: &mut Vec<Endpoint>) -> Result<(), ApiError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            for (i, raw) in items.iter().enumerate() {
                out.push(endpoint(&format!("{field}[{i}]"), raw)?);
            }
            Ok(())
        }
        Some(_) => Err(ApiError::field(
            field,
            "must be an array of webhook configurations",
        )),
    }
}

fn single(field: &str, v: Option<&Value>, out: &mut Vec<Endpoint>) -> Result<(), ApiError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(url)) => {
            check_url(field, url)?;
            if !out.iter().any(|e| &e.url == url) {
                out.push(Endpoint {
                    url: url.clone(),
                    events: None,
                    headers: BTreeMap::new(),
                    format: OutputFormat::String,
                    secret: None,
                });
            }
            Ok(())
        }
        Some(_) => Err(ApiError::field(field, "must be a URL string")),
    }
}

/// Takes the signing secrets and headers (which carry credentials) out of a job config
/// before it is echoed back: they are write-only.
pub fn redact(job_config: &mut Value) {
    if let Some(list) = job_config
        .get_mut("parameters")
        .and_then(|p| p.get_mut("webhook_configurations"))
    {
        redact_list(list);
    }
    if let Some(list) = job_config.get_mut("webhook_configurations") {
        redact_list(list);
    }
}

/// Secrets become `(redacted)`; header names stay, their values go.
fn redact_list(list: &mut Value) {
    for cfg in list.as_array_mut().into_iter().flatten() {
        if let Some(secret) = cfg
            .get_mut("webhook_signing_secret")
            .filter(|v| !v.is_null())
        {
            *secret = Value::String("(redacted)".into());
        }
        if let Some(headers) = cfg
            .get_mut("webhook_headers")
            .and_then(Value::as_object_mut)
        {
            for v in headers.values_mut() {
                *v = Value::String("(redacted)".into());
            }
        }
    }
}

/// Every endpoint a create request subscribes, validated.
pub fn from_request(
    job_config: &Value,
    top_level: Option<&Value>,
) -> Result<Vec<Endpoint>, ApiError> {
    let mut out = Vec::new();
    list("webhook_configurations", top_level, &mut out)?;
    let params = job_config.get("parameters");
    list(
        "job_config.parameters.webhook_configurations",
        params.and_then(|p| p.get("webhook_configurations")),
        &mut out,
    )?;
    single(
        "job_config.parameters.webhook_url",
        params.and_then(|p| p.get("webhook_url")),
        &mut out,
    )?;
    single(
        "job_config.webhook_url",
        job_config.get("webhook_url"),
        &mut out,
    )?;
    if out.len() > 20 {
        return Err(ApiError::field(
            "webhook_configurations",
            "at most 20 endpoints per batch",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn detail(r: Result<Vec<Endpoint>, ApiError>) -> String {
        r.err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn validates_every_field() {
        let ok = from_request(
            &json!({ "parameters": { "webhook_url": "https://a.example/x",
                "webhook_configurations": [{ "webhook_url": "http://b.example", "webhook_events": ["parse.success", "extract.error"],
                    "webhook_headers": { "X-Token": "t" }, "webhook_output_format": "json" }] } }),
            Some(&json!([{ "webhook_url": "https://c.example" }])),
        )
        .unwrap();
        assert_eq!(ok.len(), 3);
        assert!(ok[1].wants("parse.success") && !ok[1].wants("parse.error"));
        assert!(ok[0].wants("anything"));
        assert!(detail(from_request(
            &json!({}),
            Some(&json!([{ "webhook_url": "ftp://x" }]))
        ))
        .contains("webhook_configurations[0].webhook_url"));
        assert!(detail(from_request(
            &json!({}),
            Some(&json!([{ "webhook_url": "http://x", "webhook_events": ["parse.done"] }]))
        ))
        .contains("webhook_events[0]"));
        assert!(detail(from_request(&json!({}), Some(&json!([{ "webhook_url": "http://x", "webhook_headers": { "Content-Length": "1" } }])))).contains("Content-Length"));
        assert!(detail(from_request(
            &json!({}),
            Some(&json!([{ "webhook_url": "http://x", "webhook_output_format": "xml" }]))
        ))
        .contains("webhook_output_format"));
        assert!(detail(from_request(
            &json!({ "webhook_url": "file:///etc/passwd" }),
            None
        ))
        .contains("job_config.webhook_url"));
        assert!(detail(from_request(
            &json!({}),
            Some(&json!([{ "webhook_url": "http://x", "webhook_signing_secret": "whsec_not base64!" }]))
        ))
        .contains("webhook_configurations[0].webhook_signing_secret"));
    }
}
