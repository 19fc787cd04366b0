//! Claims and outcomes go to Redis in groups.
//!
//! Every item costs two script runs (claim, finish). Run one at a time, each paid for a script
//! invocation and wrote the batch's status sets and counters again for its single item. The
//! ledger is one task per worker process: it takes the
//! first request waiting, everything else already waiting behind it (up to
//! [`GROUP_MAX`] per batch and kind), and sends each batch's claims and each batch's outcomes
//! as one script run, all on one round trip. The requests that arrive while a round is in
//! flight form the next one, so groups grow with the load and nothing waits for company.
//!
//! Exactly-once accounting is the scripts' and stays per item: a group is one script run,
//! which Redis runs atomically, and each item in it is checked and counted as it was alone.
//! A caller learns its own item's answer only after the whole script returned, so a delivery
//! is still acked only after its outcome is recorded. If the call fails, every item of the
//! group gets the error and is retried like any other transient failure.
//!
//! With `redis.wait_aof`, a round's outcomes are answered only after one `WAITAOF` says Redis
//! has them in its AOF on disk, so an ack never runs ahead of what a host crash would keep.

use std::collections::HashMap;
use std::sync::Arc;

use docfleet_shared::metrics::Metrics;
use docfleet_shared::scripts::{
    Claim, Finished, Outcome, OutcomeFields, Recorded, Scripts, GROUP_MAX,
};
use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot};

/// Why the ledger could not answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LedgerError {
    /// The script call failed.
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    /// The ledger task is gone (the worker is shutting down).
    #[error("the ledger stopped")]
    Stopped,
}

/// An item's outcome, owned: it waits in the queue for its group.
#[derive(Debug, Clone)]
pub struct ItemOutcome {
    /// What happened.
    pub outcome: Outcome,
    /// Why it failed.
    pub error_message: String,
    /// Why it was skipped.
    pub skip_reason: String,
    /// The result stored on the item.
    pub result: String,
    /// How many pages the output has, in decimal ('' for none).
    pub pages: String,
    /// How many of them OCR read, in decimal ('' for none).
    pub pages_ocr: String,
}

impl ItemOutcome {
    /// This outcome with no details.
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            error_message: String::new(),
            skip_reason: String::new(),
            result: String::new(),
            pages: String::new(),
            pages_ocr: String::new(),
        }
    }

    /// With the result, its page count and how many of those pages OCR read.
    pub fn with_result(mut self, result: String, pages: usize, pages_ocr: usize) -> Self {
        self.result = result;
        self.pages = pages.to_string();
        self.pages_ocr = pages_ocr.to_string();
        self
    }

    /// With why it was skipped.
    pub fn with_skip_reason(mut self, reason: String) -> Self {
        self.skip_reason = reason;
        self
    }

    /// With why it failed.
    pub fn with_error(mut self, error: String) -> Self {
        self.error_message = error;
        self
    }
}

enum Request {
    Claim {
        batch_id: String,
        item_id: String,
        reply: oneshot::Sender<Result<Claim, LedgerError>>,
    },
    Finish {
        batch_id: String,
        item_id: String,
        outcome: ItemOutcome,
        reply: oneshot::Sender<Result<Recorded, LedgerError>>,
    },
}

/// The handle items use; cheap to share.
#[derive(Debug)]
pub struct Ledger {
    tx: mpsc::UnboundedSender<Request>,
}

impl Ledger {
    /// Starts the ledger task on the current Tokio runtime; it ends when the last handle is
    /// dropped.
    pub fn start(
        scripts: Scripts,
        redis: redis::aio::ConnectionManager,
        metrics: Arc<Metrics>,
        wait_aof: bool,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, scripts, redis, metrics, wait_aof));
        Self { tx }
    }

    /// Claims an item (see [`Scripts::claim`]).
    pub async fn claim(&self, batch_id: &str, item_id: &str) -> Result<Claim, LedgerError> {
        self.ask(|reply| Request::Claim {
            batch_id: batch_id.to_owned(),
            item_id: item_id.to_owned(),
            reply,
        })
        .await
    }

    /// Records an item's outcome (see [`Scripts::finish`]).
    pub async fn finish(
        &self,
        batch_id: &str,
        item_id: &str,
        outcome: ItemOutcome,
    ) -> Result<Recorded, LedgerError> {
        self.ask(|reply| Request::Finish {
            batch_id: batch_id.to_owned(),
            item_id: item_id.to_owned(),
            outcome,
            reply,
        })
        .await
    }

    /// Queues a request and waits for its own answer.
    async fn ask<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, LedgerError>>) -> Request,
    ) -> Result<T, LedgerError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(request(reply))
            .map_err(|_| LedgerError::Stopped)?;
        rx.await.map_err(|_| LedgerError::Stopped)?
    }
}

/// Requests taken per round: a few groups' worth, so one round stays one short round trip.
const ROUND_MAX: usize = 4 * GROUP_MAX;

type ClaimGroup = Vec<(String, oneshot::Sender<Result<Claim, LedgerError>>)>;
type FinishGroup = Vec<(
    String,
    ItemOutcome,
    oneshot::Sender<Result<Recorded, LedgerError>>,
)>;

async fn run(
    mut rx: mpsc::UnboundedReceiver<Request>,
    scripts: Scripts,
    redis: redis::aio::ConnectionManager,
    metrics: Arc<Metrics>,
    wait_aof: bool,
) {
    let mut round = Vec::with_capacity(ROUND_MAX);
    while rx.recv_many(&mut round, ROUND_MAX).await > 0 {
        let mut claims: HashMap<String, Vec<ClaimGroup>> = HashMap::new();
        let mut finishes: HashMap<String, Vec<FinishGroup>> = HashMap::new();
        for request in round.drain(..) {
            match request {
                Request::Claim {
                    batch_id,
                    item_id,
                    reply,
                } => push_grouped(claims.entry(batch_id).or_default(), (item_id, reply)),
                Request::Finish {
                    batch_id,
                    item_id,
                    outcome,
                    reply,
                } => push_grouped(
                    finishes.entry(batch_id).or_default(),
                    (item_id, outcome, reply),
                ),
            }
        }
        let sizes = claims.values().flatten().map(Vec::len);
        for n in sizes.chain(finishes.values().flatten().map(Vec::len)) {
            metrics.ledger_group_items.observe(n as f64);
        }
        // The calls go out together on the multiplexed connection: one round trip.
        let claim_calls =
            each_group(claims).map(|(batch, group)| send_claims(&scripts, &redis, batch, group));
        let finish_calls = each_group(finishes)
            .map(|(batch, group)| send_finishes(&scripts, &redis, batch, group));
        let (_, recorded) = tokio::join!(join_all(claim_calls), join_all(finish_calls));
        let on_disk = if wait_aof && !recorded.is_empty() {
            docfleet_shared::services::wait_aof(&mut redis.clone()).await
        } else {
            Ok(())
        };
        for (replies, answer) in recorded {
            let answer = match &on_disk {
                Ok(()) => answer,
                // Recorded but perhaps not on disk: the caller retries, which the scripts
                // make harmless (the redelivery finds the item settled).
                Err(e) => Err(e.clone()),
            };
            answer_each(replies.into_iter(), answer);
        }
    }
}

/// Every group, with its batch.
fn each_group<G>(by_batch: HashMap<String, Vec<G>>) -> impl Iterator<Item = (String, G)> {
    by_batch
        .into_iter()
        .flat_map(|(batch, groups)| groups.into_iter().map(move |g| (batch.clone(), g)))
}

async fn send_claims(
    scripts: &Scripts,
    redis: &redis::aio::ConnectionManager,
    batch_id: String,
    group: ClaimGroup,
) {
    let ids: Vec<&str> = group.iter().map(|(id, _)| id.as_str()).collect();
    let answer = scripts.claim(&mut redis.clone(), &batch_id, &ids).await;
    answer_each(group.into_iter().map(|(_, r)| r), answer);
}

/// A group's callers and the script's answer for them, held until the round is on disk.
type FinishAnswer = (
    Vec<oneshot::Sender<Result<Recorded, LedgerError>>>,
    redis::RedisResult<Vec<Recorded>>,
);

async fn send_finishes(
    scripts: &Scripts,
    redis: &redis::aio::ConnectionManager,
    batch_id: String,
    group: FinishGroup,
) -> FinishAnswer {
    let items: Vec<Finished> = group
        .iter()
        .map(|(id, o, _)| Finished {
            item_id: id,
            outcome: o.outcome,
            fields: OutcomeFields {
                error_message: &o.error_message,
                skip_reason: &o.skip_reason,
                result: &o.result,
                pages: &o.pages,
                pages_ocr: &o.pages_ocr,
            },
        })
        .collect();
    let answer = scripts.finish(&mut redis.clone(), &batch_id, &items).await;
    drop(items);
    (group.into_iter().map(|(_, _, r)| r).collect(), answer)
}

/// Appends to the last group, or starts a new one when it is full.
fn push_grouped<T>(groups: &mut Vec<Vec<T>>, item: T) {
    match groups.last_mut() {
        Some(g) if g.len() < GROUP_MAX => g.push(item),
        _ => groups.push(vec![item]),
    }
}

/// Hands each caller its own answer, or the group's error.
fn answer_each<T>(
    replies: impl Iterator<Item = oneshot::Sender<Result<T, LedgerError>>>,
    answer: redis::RedisResult<Vec<T>>,
) {
    match answer {
        Ok(answers) => {
            let mut answers = answers.into_iter();
            for reply in replies {
                // A reply shorter than the group would be a script bug; the caller then
                // retries, which the scripts make harmless.
                let a = answers.next().ok_or_else(|| {
                    LedgerError::Redis(redis::RedisError::from((
                        redis::ErrorKind::UnexpectedReturnType,
                        "script answered fewer items than it was given",
                    )))
                });
                let _ = reply.send(a);
            }
        }
        Err(e) => {
            let e = LedgerError::Redis(e);
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
