//! A real HTTP webhook receiver on loopback that records what it gets and answers as told.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-cased header names.
    pub headers: HashMap<String, String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// When it arrived.
    pub at: Instant,
}

impl Received {
    /// The payload, whether sent as a JSON object or as a JSON string holding one.
    pub fn payload(&self) -> Value {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or(Value::Null);
        match v {
            Value::String(s) => serde_json::from_str(&s).unwrap_or(Value::Null),
            other => other,
        }
    }

    /// `event_type` of the payload.
    pub fn event(&self) -> String {
        self.payload()["event_type"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// How to answer the next request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// This status.
    Status(u16),
    /// 429 with `Retry-After: secs`.
    RetryAfter(u64),
    /// Wait this long, then 200.
    Slow(Duration),
    /// 200 with this JSON body (an API stand-in, such as a vision model's).
    Json(Value),
}

#[derive(Clone, Default)]
struct Shared {
    log: Arc<Mutex<Vec<Received>>>,
    plan: Arc<Mutex<VecDeque<Reply>>>,
}

/// A running receiver.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Shared,
    handle: tokio::task::JoinHandle<()>,
}

async fn receive(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let reply = s.plan.lock().expect("plan").pop_front();
    if let Some(Reply::Slow(d)) = &reply {
        tokio::time::sleep(*d).await;
    }
    s.log.lock().expect("log").push(Received {
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.to_vec(),
        at: Instant::now(),
    });
    match reply {
        Some(Reply::Status(c)) => StatusCode::from_u16(c)
            .unwrap_or(StatusCode::OK)
            .into_response(),
        Some(Reply::RetryAfter(secs)) => (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", secs.to_string())],
        )
            .into_response(),
        Some(Reply::Json(v)) => axum::Json(v).into_response(),
        _ => StatusCode::OK.into_response(),
    }
}

impl Receiver {
    /// Starts on a free loopback port.
    pub async fn start() -> Receiver {
        Self::start_on(0).await
    }

    /// Starts on `port` (0 = any).
    pub async fn start_on(port: u16) -> Receiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let shared = Shared::default();
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .route("/v1/chat/completions", axum::routing::post(receive))
            .with_state(shared.clone());
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            shared,
            handle,
        }
    }

    /// The URL to subscribe.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answers the next requests in this order (then 200).
    pub fn plan(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.plan.lock().expect("plan").extend(replies);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.log.lock().expect("log").clone()
    }

    /// Waits until `pred` holds over what was received, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if pred(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "receiver condition not met in time; got {:?}",
                got.iter().map(Received::event).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops listening.
    pub fn stop(&self) {
        self.handle.abort();
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
