//! Sending deliveries: signed, bounded, retried with backoff for days, never followed.
//!
//! Due deliveries sit in `P:webhook:due` scored by their next attempt time. A replica takes a
//! few at a time by pushing their score past a lease (one script, so two replicas never send
//! the same attempt), sends them concurrently, and records the outcome. A dispatcher that dies
//! mid-send leaves the score at "lease expired", so the delivery is simply due again later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use redis::AsyncCommands;
use sha2::Sha256;
use tokio::sync::{watch, Semaphore};

use super::guard::{ForbiddenTarget, TargetPolicy};
use super::outbox::endpoints;
use super::subscription::{Endpoint, OutputFormat};
use crate::state::AppState;

/// Takes up to ARGV[2] due deliveries and leases them until ARGV[3]. KEYS: due. ARGV: now.
/// Takes up to `free` due deliveries, shared between the projects that have some: each project
/// due gets an equal share, oldest first, so one project's backlog cannot hold back another's
/// deliveries. A project served is scored `now` at the earliest, behind those still waiting.
/// KEYS: the projects index. ARGV: now, free, lease_until, the per-project key prefix.
const TAKE_DUE: &str = r"
local now, free, lease = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local projects = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, free)
local taken = {}
if #projects == 0 then return taken end
local share = math.max(1, math.floor(free / #projects))
for _, p in ipairs(projects) do
  if #taken >= free then break end
  local due = ARGV[4] .. p
  local ids = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, math.min(share, free - #taken))
  for _, id in ipairs(ids) do
    redis.call('ZADD', due, lease, id)
    taken[#taken + 1] = id
  end
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', KEYS[1], p)
  else
    redis.call('ZADD', KEYS[1], math.max(tonumber(first[2]), now), p)
  end
end
return taken";

/// Schedules delivery `id` of `project` for `at` (ms): in the project's queue, and the project
/// in the index no later than that. A delivery taken off its project's queue leaves the index
/// as it is; the sender drops a project it finds with nothing left.
pub fn schedule(
    pipe: &mut redis::Pipeline,
    keys: &docfleet_shared::keys::Keys,
    project: &str,
    id: &str,
    at: i64,
) {
    pipe.zadd(keys.project_webhook_due(project), id, at)
        .ignore()
        .cmd("ZADD")
        .arg(keys.webhook_due())
        .arg("LT")
        .arg(at)
        .arg(project)
        .ignore();
}

type HmacSha256 = Hmac<Sha256>;

/// What one attempt came to.
#[derive(Debug)]
enum Attempt {
    Delivered(u16),
    /// Try again; `after` overrides the backoff (Retry-After).
    Retry {
        code: Option<u16>,
        error: String,
        after: Option<Duration>,
    },
    Permanent {
        code: Option<u16>,
        error: String,
    },
}

/// Signature headers for `body`: LlamaCloud's `LC-Signature` and the Standard Webhooks trio.
pub fn signature_headers(
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(4);
    if let Ok(mut mac) = HmacSha256::new_from_slice(secret.as_bytes()) {
        mac.update(body);
        out.push((
            "LC-Signature",
            format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
        ));
    }
    // Standard Webhooks keys are base64 behind `whsec_` (checked when subscribed); any other
    // secret is used as raw bytes (a verifier then takes `whsec_` + base64(secret)).
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec());
    if let Ok(mut mac) = HmacSha256::new_from_slice(&key) {
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        out.push(("webhook-signature", format!("v1,{sig}")));
    }
    out.push(("webhook-id", id.to_owned()));
    out.push(("webhook-timestamp", timestamp.to_string()));
    out
}

/// Sends deliveries for one replica.
pub struct Sender {
    st: AppState,
    client: reqwest::Client,
    policy: TargetPolicy,
    slots: Arc<Semaphore>,
    per_host: Mutex<HashMap<String, usize>>,
    /// Endpoints per batch; they never change after create.
    endpoints: Mutex<HashMap<String, Arc<Vec<Endpoint>>>>,
}

impl Sender {
    /// A sender with the configured policy and limits.
    pub fn new(st: AppState) -> Result<Self, reqwest::Error> {
        let w = &st.settings.webhook;
        let policy = TargetPolicy::new(w.allow_cidrs.clone());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(w.request_timeout_ms))
            .connect_timeout(Duration::from_millis(w.request_timeout_ms.min(5_000)))
            .dns_resolver(Arc::new(policy.clone()))
            .user_agent(concat!("docfleet-webhooks/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .build()?;
        Ok(Self {
            slots: Arc::new(Semaphore::new(w.concurrency)),
            st,
            client,
            policy,
            per_host: Mutex::default(),
            endpoints: Mutex::default(),
        })
    }

    /// Sends due deliveries until `stop`; in-flight requests finish before it returns.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let script = redis::Script::new(TAKE_DUE);
        let lease_ms = lease(&self.st.settings.webhook).as_millis() as i64;
        let mut tasks = tokio::task::JoinSet::new();
        while !*stop.borrow() {
            while tasks.try_join_next().is_some() {}
            let free = self.slots.available_permits();
            let mut taken: Vec<String> = Vec::new();
            if free > 0 {
                let mut con = self.st.background.clone();
                let now = docfleet_shared::now_millis();
                match script
                    .key(self.st.keys.webhook_due())
                    .arg(now)
                    .arg(free)
                    .arg(now + lease_ms)
                    .arg(self.st.keys.project_webhook_due(""))
                    .invoke_async::<Vec<String>>(&mut con)
                    .await
                {
                    Ok(ids) => taken = ids,
                    Err(error) => tracing::warn!(%error, "Could not read due webhook deliveries."),
                }
            }
            let busy = !taken.is_empty();
            let taken = match self.admit(taken).await {
                Ok(t) => t,
                Err(error) => {
                    tracing::warn!(%error, "Could not read webhook deliveries.");
                    Vec::new()
                }
            };
            for (id, host) in taken {
                let Ok(permit) = self.slots.clone().acquire_owned().await else {
                    break;
                };
                let me = self.clone();
                tasks.spawn(async move {
                    if let Err(error) = me.attempt(&id).await {
                        tracing::warn!(%error, delivery_id = %id, "Webhook bookkeeping failed; it will be retried.");
                    }
                    me.release_host(&host);
                    drop(permit);
                });
            }
            if !busy {
                tokio::select! {
                    _ = self.st.webhook_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Keeps the deliveries whose target host has a free slot and puts the others back
    /// for a moment, so one slow or dead endpoint cannot occupy every slot.
    async fn admit(&self, ids: Vec<String>) -> redis::RedisResult<Vec<(String, String)>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut con = self.st.background.clone();
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.cmd("HMGET")
                .arg(self.st.keys.delivery(id))
                .arg("url")
                .arg("project");
        }
        let found: Vec<(Option<String>, Option<String>)> = pipe.query_async(&mut con).await?;
        let limit = self.st.settings.webhook.per_host_concurrency;
        let mut admitted = Vec::with_capacity(ids.len());
        let mut deferred = Vec::new();
        {
            let mut hosts = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
            for (id, (url, project)) in ids.into_iter().zip(found) {
                let host = url
                    .and_then(|u| reqwest::Url::parse(&u).ok())
                    .and_then(|u| u.host_str().map(str::to_owned))
                    .unwrap_or_default();
                let n = hosts.entry(host.clone()).or_default();
                if *n < limit {
                    *n += 1;
                    admitted.push((id, host));
                } else {
                    deferred.push((id, project.unwrap_or_default()));
                }
            }
        }
        if !deferred.is_empty() {
            let at = docfleet_shared::now_millis() + 50;
            let mut pipe = redis::pipe();
            for (id, project) in &deferred {
                schedule(&mut pipe, &self.st.keys, project, id, at);
            }
            pipe.query_async::<()>(&mut con).await?;
        }
        Ok(admitted)
    }

    fn release_host(&self, host: &str) {
        let mut hosts = self.per_host.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = hosts.get_mut(host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                hosts.remove(host);
            }
        }
    }

    async fn attempt(&self, id: &str) -> redis::RedisResult<()> {
        let mut con = self.st.background.clone();
        let key = self.st.keys.delivery(id);
        let d: HashMap<String, String> = con.hgetall(&key).await?;
        let get = |k: &str| d.get(k).cloned().unwrap_or_default();
        if get("status") != "pending" {
            let due = self.st.keys.project_webhook_due(&get("project"));
            let _: () = con.zrem(due, id).await?;
            return Ok(());
        }
        let batch_id = get("batch_id");
        let cached = self
            .endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&batch_id)
            .cloned();
        let eps = match cached {
            Some(e) => e,
            None => {
                let e = endpoints(&self.st, &batch_id).await?;
                let mut cache = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() > 10_000 {
                    cache.clear();
                }
                cache.insert(batch_id.clone(), e.clone());
                e
            }
        };
        let Some(ep) = get("endpoint")
            .parse::<usize>()
            .ok()
            .and_then(|i| eps.get(i))
        else {
            return self
                .record(
                    id,
                    &d,
                    Attempt::Permanent {
                        code: None,
                        error: "endpoint no longer configured".into(),
                    },
                )
                .await;
        };
        let started = std::time::Instant::now();
        let outcome = self
            .send(ep, &get("event_id"), get("body").as_bytes())
            .await;
        self.st.metrics.webhook_attempt(
            match &outcome {
                Attempt::Delivered(_) => "delivered",
                Attempt::Retry { .. } => "retry",
                Attempt::Permanent { .. } => "failed",
            },
            started.elapsed().as_secs_f64(),
        );
        tracing::debug!(delivery_id = %id, batch_id = %batch_id, event = %get("event_type"),
            outcome = ?outcome, ms = started.elapsed().as_millis() as u64, "Webhook attempt.");
        self.record(id, &d, outcome).await
    }

    async fn send(&self, ep: &Endpoint, event_id: &str, payload: &[u8]) -> Attempt {
        let body: Vec<u8> = match ep.format {
            OutputFormat::Json => payload.to_vec(),
            OutputFormat::String => {
                serde_json::to_vec(&String::from_utf8_lossy(payload)).unwrap_or_default()
            }
        };
        if let Ok(url) = reqwest::Url::parse(&ep.url) {
            if let Some(url::Host::Ipv4(ip)) = url.host() {
                if let Err(e) = self.policy.check_ip(ip.into()) {
                    return Attempt::Permanent {
                        code: None,
                        error: e.to_string(),
                    };
                }
            }
            if let Some(url::Host::Ipv6(ip)) = url.host() {
                if let Err(e) = self.policy.check_ip(ip.into()) {
                    return Attempt::Permanent {
                        code: None,
                        error: e.to_string(),
                    };
                }
            }
        }
        let mut req = self
            .client
            .post(&ep.url)
            .header("content-type", "application/json");
        for (k, v) in &ep.headers {
            req = req.header(k, v);
        }
        if let Some(secret) = &ep.secret {
            for (k, v) in signature_headers(secret, event_id, chrono::Utc::now().timestamp(), &body)
            {
                req = req.header(k, v);
            }
        } else {
            req = req.header("webhook-id", event_id).header(
                "webhook-timestamp",
                chrono::Utc::now().timestamp().to_string(),
            );
        }
        let resp = match req.body(body).send().await {
            Ok(r) => r,
            Err(e) => {
                let forbidden =
                    std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
                        .any(|e| e.downcast_ref::<ForbiddenTarget>().is_some());
                let error = error_chain(&e);
                return if forbidden {
                    Attempt::Permanent { code: None, error }
                } else {
                    Attempt::Retry {
                        code: None,
                        error,
                        after: None,
                    }
                };
            }
        };
        let code = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // Read a bounded amount, so a huge or endless response cannot hold memory or a slot.
        let mut resp = resp;
        let mut read = 0usize;
        while read < self.st.settings.webhook.max_response_bytes {
            match resp.chunk().await {
                Ok(Some(c)) => read += c.len(),
                _ => break,
            }
        }
        match code {
            200..=299 => Attempt::Delivered(code),
            408 | 429 | 500..=599 => Attempt::Retry {
                code: Some(code),
                error: format!("HTTP {code}"),
                after: retry_after,
            },
            _ => Attempt::Permanent {
                code: Some(code),
                error: format!("HTTP {code}"),
            },
        }
    }

    async fn record(
        &self,
        id: &str,
        d: &HashMap<String, String>,
        outcome: Attempt,
    ) -> redis::RedisResult<()> {
        let w = &self.st.settings.webhook;
        let now = docfleet_shared::now_millis();
        let attempts: u32 = d.get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0) + 1;
        let created: i64 = d
            .get("created_at")
            .and_then(|a| a.parse().ok())
            .unwrap_or(now);
        let key = self.st.keys.delivery(id);
        let project = d.get("project").map(String::as_str).unwrap_or_default();
        let due = self.st.keys.project_webhook_due(project);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(&key, "attempts", attempts)
            .hset(&key, "last_attempt_at", now);
        let (code, error) = match &outcome {
            Attempt::Delivered(c) => (Some(*c), String::new()),
            Attempt::Retry { code, error, .. } | Attempt::Permanent { code, error } => {
                (*code, error.clone())
            }
        };
        pipe.hset(
            &key,
            "last_status_code",
            code.map(|c| c.to_string()).unwrap_or_default(),
        )
        .hset(&key, "last_error", &error);
        match outcome {
            Attempt::Delivered(_) => {
                pipe.hset(&key, "status", "delivered")
                    .hset(&key, "delivered_at", now)
                    .hset(&key, "next_attempt_at", "")
                    .zrem(&due, id);
            }
            Attempt::Permanent { .. } => {
                pipe.hset(&key, "status", "failed")
                    .hset(&key, "next_attempt_at", "")
                    .zrem(&due, id);
            }
            Attempt::Retry { after, .. } => {
                let cap = Duration::from_secs(w.max_retry_interval_secs);
                let backoff = Duration::from_millis(w.first_retry_ms)
                    .saturating_mul(1u32 << attempts.saturating_sub(1).min(20))
                    .min(cap);
                // Full jitter on the upper half, so retries of many deliveries spread out.
                let jittered = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                // A receiver's Retry-After is honoured, but never below our own backoff: `0`
                // would turn a struggling receiver's answer into a tight retry loop.
                let wait = after.map_or(jittered, |a| a.clamp(jittered, cap.max(jittered)));
                let next = now + wait.as_millis() as i64;
                if next - created > (w.give_up_after_secs as i64) * 1000 {
                    pipe.hset(&key, "status", "failed")
                        .hset(
                            &key,
                            "last_error",
                            format!("gave up after {attempts} attempts: {error}"),
                        )
                        .hset(&key, "next_attempt_at", "")
                        .zrem(&due, id);
                } else {
                    pipe.hset(&key, "next_attempt_at", next);
                    schedule(&mut pipe, &self.st.keys, project, id, next);
                }
            }
        }
        let mut con = self.st.background.clone();
        pipe.query_async::<()>(&mut con).await
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// How long a taken delivery stays leased: its request timeout and a margin. A dispatcher
/// that dies mid-send leaves it due again only when this runs out.
pub fn lease(w: &docfleet_shared::settings::WebhookSettings) -> Duration {
    Duration::from_millis(w.request_timeout_ms) + Duration::from_secs(30)
}
