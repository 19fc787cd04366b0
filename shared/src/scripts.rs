//! The Lua scripts that move items and batches between states.
//!
//! Each transition is one script, so it happens once, together with its counter updates and
//! its outbox event, whatever runs concurrently. Every script starts from the prelude
//! (`lua/prelude.lua`), which holds the shared moves: settle an item, finish a batch, emit.

use redis::aio::ConnectionLike;
use redis::Script;

use crate::keys::Keys;

macro_rules! batch_script {
    ($file:literal) => {
        concat!(include_str!("lua/prelude.lua"), "\n", include_str!($file))
    };
}

/// What [`Scripts::claim`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Process it.
    Run(Run),
    /// Already terminal: a duplicate or redelivered message.
    Done,
    /// The batch was cancelled; the item is now cancelled.
    Cancelled,
    /// No such batch or item.
    Missing,
}

/// A claimed item: what the worker needs to process it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Delivery attempt, 1-based.
    pub attempt: u32,
    /// The item's place in its batch, which its job id derives from (`JobType::job_id`).
    pub order: i64,
    /// The item's directory-file record (JSON), when it exists.
    pub file: Option<String>,
}

/// An item's outcome as recorded by [`Scripts::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Counted now.
    Recorded,
    /// It was already terminal; nothing counted.
    Duplicate,
    /// No such batch or item.
    Missing,
}

/// What [`Scripts::cancel`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancelled now.
    Cancelled,
    /// Already terminal in this status.
    Terminal(String),
    /// No such batch.
    Missing,
}

/// The terminal outcome of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Processed.
    Completed,
    /// Processing failed.
    Failed,
    /// Not processed on purpose.
    Skipped,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

/// One item to register.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// Directory-file id.
    pub item_id: String,
    /// Position in the batch's input; the item's job id derives from it.
    pub order: i64,
    /// Why the item cannot run (its file is unknown): it is registered straight as `failed`
    /// with this message, and no message is published for it.
    pub refusal: Option<String>,
}

/// The fields of an outcome.
#[derive(Debug, Clone, Default)]
pub struct OutcomeFields<'a> {
    /// Why it failed.
    pub error_message: &'a str,
    /// Why it was skipped.
    pub skip_reason: &'a str,
    /// The result summary stored on the item (JSON).
    pub result: &'a str,
    /// How many pages the output has ('' if none): the file's processing results report it.
    pub pages: &'a str,
    /// How many of them OCR read ('' if none): counted into the batch's `pages_ocr`.
    pub pages_ocr: &'a str,
}

/// One item's outcome, for [`Scripts::finish`].
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    /// The item.
    pub item_id: &'a str,
    /// What happened.
    pub outcome: Outcome,
    /// Its details.
    pub fields: OutcomeFields<'a>,
}

/// Pending items cancelled by one sweep call.
const SWEEP_PAGE: usize = 1000;

/// Items registered by one script call.
const REGISTER_CHUNK: usize = 25;

/// The most items a worker claims or finishes in one script call: like a register chunk, a
/// group holds every other client for its run (20–30 µs per item in the slowlog).
pub const GROUP_MAX: usize = 32;

/// The loaded scripts, bound to a key layout.
#[derive(Debug, Clone)]
pub struct Scripts {
    keys: Keys,
    register: Script,
    claim: Script,
    finish: Script,
    expanded: Script,
    cancel: Script,
    sweep: Script,
    recount: Script,
    set_counts: Script,
}

/// The `created` script's source: it runs inside the create transaction, where a script not
/// yet loaded cannot be loaded, so it goes as `EVAL` (Redis caches it by its digest).
const CREATED: &str = batch_script!("lua/created.lua");

impl Scripts {
    /// Scripts for keys under `keys`.
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            register: Script::new(batch_script!("lua/register.lua")),
            claim: Script::new(batch_script!("lua/claim.lua")),
            finish: Script::new(batch_script!("lua/finish.lua")),
            expanded: Script::new(batch_script!("lua/expanded.lua")),
            cancel: Script::new(batch_script!("lua/cancel.lua")),
            sweep: Script::new(batch_script!("lua/sweep.lua")),
            recount: Script::new(batch_script!("lua/recount.lua")),
            set_counts: Script::new(batch_script!("lua/set_counts.lua")),
        }
    }

    /// The key layout.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Adds to `pipe` (the create transaction, after the batch's fields) the batch's first
    /// event, `batch.pending`, emitted like every other event: by a script, for the
    /// endpoints that want it.
    pub fn created(&self, pipe: &mut redis::Pipeline, batch_id: &str) {
        let base = self.keys.batch(batch_id);
        pipe.cmd("EVAL")
            .arg(CREATED)
            .arg(2)
            .arg(&base)
            .arg(self.keys.events())
            .arg(&base)
            .arg(crate::now_rfc3339())
            .arg(batch_id)
            .ignore();
    }

    fn invocation<'s>(&self, script: &'s Script, batch_id: &str) -> redis::ScriptInvocation<'s> {
        let mut inv = script.prepare_invoke();
        let base = self.keys.batch(batch_id);
        inv.key(&base)
            .key(self.keys.events())
            .arg(&base)
            .arg(crate::now_rfc3339())
            .arg(batch_id);
        inv
    }

    /// Registers items as pending once each; returns how many were new, or `None` when the
    /// batch is missing or already terminal (nothing registered).
    pub async fn register<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
        items: &[NewItem],
    ) -> redis::RedisResult<Option<u64>> {
        // Redis runs one script at a time: a page of 1,000 items in one script held every
        // other client (status reads among them) for about 20 ms, and 100 items for 2.3 ms
        // under load (slowlog). Chunks of 25 keep it near 0.6 ms; registering is idempotent
        // per item, so a page cut short is simply registered again.
        //
        // One chunk per round trip. Pipelined, the chunks did not let other clients in
        // between: Redis runs every command it has read from a client (up to 16 KiB, about
        // five chunks) before it turns to the next, so a status read waited for all of them.
        // Sent one at a time, the p99 of the benchmark's `status` scenario fell from 13.8 to
        // 11.9 ms (medians of 3 interleaved runs) and expansion was no slower: the round
        // trips overlap the publishing of the page before.
        let mut chunks: Vec<&[NewItem]> = items.chunks(REGISTER_CHUNK).collect();
        if chunks.is_empty() {
            // Still asks the script, which answers whether the batch is gone or terminal.
            chunks.push(&[]);
        }
        let mut registered = 0;
        for chunk in chunks {
            let mut inv = self.invocation(&self.register, batch_id);
            for it in chunk {
                inv.arg(&it.item_id)
                    .arg(it.order)
                    .arg(it.refusal.as_deref().unwrap_or(""));
            }
            let n: i64 = inv.invoke_async(con).await?;
            match u64::try_from(n) {
                Ok(n) => registered += n,
                Err(_) => return Ok(None),
            }
        }
        Ok(Some(registered))
    }

    /// Starts items of one batch, or says why not, per item in the order given. Any number
    /// of items is one script run, so callers keep groups small (the worker's are at most
    /// [`GROUP_MAX`]): Redis serves no one else meanwhile.
    pub async fn claim<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
        item_ids: &[&str],
    ) -> redis::RedisResult<Vec<Claim>> {
        let mut inv = self.invocation(&self.claim, batch_id);
        for id in item_ids {
            inv.key(self.keys.dfile(id)).arg(*id);
        }
        let replies: Vec<Vec<redis::Value>> = inv.invoke_async(con).await?;
        replies.iter().map(|r| claim_reply(r)).collect()
    }

    /// Records the outcomes of items of one batch, each counted only if it was not terminal
    /// yet; says what happened per item, in the order given.
    pub async fn finish<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
        items: &[Finished<'_>],
    ) -> redis::RedisResult<Vec<Recorded>> {
        let mut inv = self.invocation(&self.finish, batch_id);
        for it in items {
            inv.arg(it.item_id)
                .arg(it.outcome.as_str())
                .arg(it.fields.error_message)
                .arg(it.fields.skip_reason)
                .arg(it.fields.result)
                .arg(it.fields.pages)
                .arg(it.fields.pages_ocr);
        }
        let tags: Vec<String> = inv.invoke_async(con).await?;
        Ok(tags
            .iter()
            .map(|t| match t.as_str() {
                "recorded" => Recorded::Recorded,
                "duplicate" => Recorded::Duplicate,
                _ => Recorded::Missing,
            })
            .collect())
    }

    /// Marks expansion finished; returns the batch status afterwards (empty if missing).
    pub async fn expanded<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
    ) -> redis::RedisResult<String> {
        self.invocation(&self.expanded, batch_id)
            .invoke_async(con)
            .await
    }

    /// Cancels a batch unless it is terminal.
    pub async fn cancel<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
        reason: &str,
    ) -> redis::RedisResult<CancelOutcome> {
        let mut inv = self.invocation(&self.cancel, batch_id);
        inv.arg(reason);
        let reply: Vec<String> = inv.invoke_async(con).await?;
        Ok(match reply.first().map(String::as_str) {
            Some("cancelled") => CancelOutcome::Cancelled,
            Some("terminal") => CancelOutcome::Terminal(reply.get(1).cloned().unwrap_or_default()),
            _ => CancelOutcome::Missing,
        })
    }

    /// Cancels every pending item of a cancelled batch, `SWEEP_PAGE` per script run so that
    /// no run holds Redis long; returns how many.
    pub async fn sweep_all<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
    ) -> redis::RedisResult<u64> {
        let mut swept = 0;
        loop {
            match self.sweep(con, batch_id, SWEEP_PAGE).await? {
                0 => return Ok(swept),
                n => swept += n,
            }
        }
    }

    /// Cancels up to `limit` pending items of a cancelled batch; returns how many.
    pub async fn sweep<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
        limit: usize,
    ) -> redis::RedisResult<u64> {
        let mut inv = self.invocation(&self.sweep, batch_id);
        inv.arg(limit);
        inv.invoke_async(con).await
    }

    /// Rebuilds a batch's status sets from its item hashes, then its counters from the sets,
    /// e.g. after a Redis failover lost writes. Correct while outcomes keep landing: see
    /// `recount.lua`. Returns the tally in [`crate::model::ItemStatus::ALL`] order.
    pub async fn recount<C: ConnectionLike + Send>(
        &self,
        con: &mut C,
        batch_id: &str,
    ) -> redis::RedisResult<[u64; 6]> {
        let mut offset = 0isize;
        loop {
            let ids: Vec<String> = redis::cmd("ZRANGE")
                .arg(self.keys.batch_items(batch_id))
                .arg(offset)
                .arg(offset + 999)
                .query_async(con)
                .await?;
            if ids.is_empty() {
                break;
            }
            offset += ids.len() as isize;
            let mut inv = self.invocation(&self.recount, batch_id);
            for id in &ids {
                inv.arg(id);
            }
            let _: i64 = inv.invoke_async(con).await?;
        }
        let sizes: Vec<u64> = self
            .invocation(&self.set_counts, batch_id)
            .invoke_async(con)
            .await?;
        let mut tally = [0u64; 6];
        for (t, n) in tally.iter_mut().zip(sizes) {
            *t = n;
        }
        Ok(tally)
    }
}

fn claim_reply(reply: &[redis::Value]) -> redis::RedisResult<Claim> {
    let tag: String = match reply.first() {
        Some(v) => redis::from_redis_value(v.clone())?,
        None => return Ok(Claim::Missing),
    };
    Ok(match tag.as_str() {
        "run" => {
            let text = |i: usize| -> redis::RedisResult<Option<String>> {
                Ok(match reply.get(i) {
                    Some(v) => Some(redis::from_redis_value::<String>(v.clone())?)
                        .filter(|s| !s.is_empty()),
                    None => None,
                })
            };
            Claim::Run(Run {
                attempt: match reply.get(1) {
                    Some(v) => redis::from_redis_value(v.clone())?,
                    None => 1,
                },
                order: match reply.get(2) {
                    Some(v) => redis::from_redis_value(v.clone())?,
                    None => 0,
                },
                file: text(3)?,
            })
        }
        "done" => Claim::Done,
        "cancelled" => Claim::Cancelled,
        _ => Claim::Missing,
    })
}
