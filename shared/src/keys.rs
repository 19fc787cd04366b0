//! The Redis key layout, in one place.
//!
//! Everything a batch owns hangs off `P:batch:{<batch_id>}` (a hash tag, so a batch's keys share
//! a cluster slot and its scripts touch one slot). `P` is `redis.key_prefix`.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P:apikey:<sha256(key)>` | string | project id of an API key (a TTL if it expires) |
//! | `P:proj:<project>:keys` | zset | the project's key digests, by creation (ms) |
//! | `P:dir:<dir_id>` | string | directory record (JSON) |
//! | `P:dir:<dir_id>:files` | zset | directory-file ids, scored by insertion sequence |
//! | `P:dir:<dir_id>:seq` | string | last insertion sequence |
//! | `P:dfile:<file_id>` | string | directory-file record (JSON) |
//! | `P:file:<file_id>` | string | file record (JSON): name, purpose, where its bytes are |
//! | `P:cfg:<config_id>` | string | saved product configuration (JSON) |
//! | `P:whcfg:<config_id>` | string | saved webhook configuration (JSON, secret included) |
//! | `P:proj:<project>:files` / `:cfgs` / `:whcfgs` | zset | ids by creation time (ms) |
//! | `P:proj:<project>:jobs:<parse\|classify>` | zset | batches of single-file jobs, by creation (ms) |
//! | `P:url-key` | string | the key that signs download URLs, drawn once, shared by replicas |
//! | `P:dir:<dir_id>:batches` | zset | batches that registered files of the directory, by first registration (ms): where a file's processing results are found |
//! | `P:proj:<project>:dirs` / `:batches` | zset | ids by creation time |
//! | `P:batch:{<id>}` | hash | batch record and counters |
//! | `P:batch:{<id>}:config` | string | the job config as sent (JSON) |
//! | `P:batch:{<id>}:input` | string | distinct ids of an `item_ids` batch, in order, each ended by `\n` |
//! | `P:batch:{<id>}:items` | zset | every item id, scored by input order |
//! | `P:batch:{<id>}:st:<status>` | zset | item ids in that status, same scores |
//! | `P:batch:{<id>}:item:<item_id>` | hash | item state from its claim on: status, order, attempts, times, error |
//! | `P:batch:{<id>}:results` | hash | item id → its result (JSON): inline output or where the output is stored |
//! | `P:batch:{<id>}:lease` | string | which dispatcher expands the batch, with a TTL |
//! | `P:batch:{<id>}:dirs` | set | directories whose files the batch registered |
//! | `P:expansion` | zset | batches whose expansion has not finished |
//! | `P:active` | zset | batches not known to be terminal, by creation (ms): the reconciler's round |
//! | `P:finished` | zset | terminal batches, by when the reconciler found them so (ms): retention |
//! | `P:reconciler` | string | which dispatcher runs the reconciler, with a TTL |
//! | `P:events` | stream | outbox of status events, written by the same scripts as the transitions |
//! | `P:whd:<delivery_id>` | hash | one webhook delivery: endpoint, body, attempts, status |
//! | `P:webhook:due` | zset | pending deliveries by next attempt time (ms) |
//! | `P:batch:{<id>}:deliveries` | zset | a batch's deliveries, by creation |

use crate::model::ItemStatus;

/// Builds every key from the configured prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself (`P`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// API key digest → project id.
    pub fn api_key(&self, digest_hex: &str) -> String {
        format!("{}:apikey:{digest_hex}", self.prefix)
    }

    /// Directory record.
    pub fn dir(&self, dir_id: &str) -> String {
        format!("{}:dir:{dir_id}", self.prefix)
    }

    /// Files of a directory, by insertion sequence.
    pub fn dir_files(&self, dir_id: &str) -> String {
        format!("{}:dir:{dir_id}:files", self.prefix)
    }

    /// Insertion sequence of a directory.
    pub fn dir_seq(&self, dir_id: &str) -> String {
        format!("{}:dir:{dir_id}:seq", self.prefix)
    }

    /// Directory-file record.
    pub fn dfile(&self, file_id: &str) -> String {
        format!("{}:dfile:{file_id}", self.prefix)
    }

    /// Batches that registered files of a directory: a file's runs are its items in them.
    pub fn dir_batches(&self, dir_id: &str) -> String {
        format!("{}:dir:{dir_id}:batches", self.prefix)
    }

    /// Directories of a project.
    pub fn project_dirs(&self, project: &str) -> String {
        format!("{}:proj:{project}:dirs", self.prefix)
    }

    /// Batches of a project.
    pub fn project_batches(&self, project: &str) -> String {
        format!("{}:proj:{project}:batches", self.prefix)
    }

    /// The base every batch key hangs off; scripts derive item keys from it.
    pub fn batch(&self, batch_id: &str) -> String {
        format!("{}:batch:{{{batch_id}}}", self.prefix)
    }

    /// The job config of a batch.
    pub fn batch_config(&self, batch_id: &str) -> String {
        format!("{}:config", self.batch(batch_id))
    }

    /// Input item ids of an `item_ids` batch.
    pub fn batch_input(&self, batch_id: &str) -> String {
        format!("{}:input", self.batch(batch_id))
    }

    /// Every item of a batch, in input order.
    pub fn batch_items(&self, batch_id: &str) -> String {
        format!("{}:items", self.batch(batch_id))
    }

    /// Items of a batch in one status.
    pub fn batch_status_set(&self, batch_id: &str, status: ItemStatus) -> String {
        format!("{}:st:{}", self.batch(batch_id), status.as_str())
    }

    /// Item id → result of a batch's settled items. Kept apart from the item records so
    /// those stay small listpacks: a value over `hash-max-listpack-value` (64 bytes) turns
    /// the whole record into a hash table.
    pub fn batch_results(&self, batch_id: &str) -> String {
        format!("{}:results", self.batch(batch_id))
    }

    /// One item of a batch.
    pub fn item(&self, batch_id: &str, item_id: &str) -> String {
        format!("{}:item:{item_id}", self.batch(batch_id))
    }

    /// Directories whose files a batch registered: which `dir_batches` list it.
    pub fn batch_dirs(&self, batch_id: &str) -> String {
        format!("{}:dirs", self.batch(batch_id))
    }

    /// Expansion lease of a batch.
    pub fn batch_lease(&self, batch_id: &str) -> String {
        format!("{}:lease", self.batch(batch_id))
    }

    /// Batches not known to be terminal, by creation time: the reconciler's round. Create adds
    /// a batch; the reconciler drops it once it finds it terminal.
    pub fn active(&self) -> String {
        format!("{}:active", self.prefix)
    }

    /// Terminal batches by when the reconciler found them so (ms): what retention forgets.
    pub fn finished(&self) -> String {
        format!("{}:finished", self.prefix)
    }

    /// The reconciler's lease: which dispatcher replica runs it.
    pub fn reconciler_lease(&self) -> String {
        format!("{}:reconciler", self.prefix)
    }

    /// Batches awaiting expansion.
    pub fn expansion(&self) -> String {
        format!("{}:expansion", self.prefix)
    }

    /// The event outbox stream.
    pub fn events(&self) -> String {
        format!("{}:events", self.prefix)
    }

    /// One webhook delivery.
    pub fn delivery(&self, delivery_id: &str) -> String {
        format!("{}:whd:{delivery_id}", self.prefix)
    }

    /// Projects with deliveries due, each scored no later than its earliest next attempt:
    /// the sender takes from them in turn.
    pub fn webhook_due(&self) -> String {
        format!("{}:webhook:due", self.prefix)
    }

    /// A project's deliveries due, by next attempt time.
    pub fn project_webhook_due(&self, project: &str) -> String {
        format!("{}:webhook:due:{project}", self.prefix)
    }

    /// A batch's deliveries.
    pub fn batch_deliveries(&self, batch_id: &str) -> String {
        format!("{}:deliveries", self.batch(batch_id))
    }

    /// A file record.
    pub fn file(&self, file_id: &str) -> String {
        format!("{}:file:{file_id}", self.prefix)
    }

    /// The record of a file (`fil-…`) or of a file of a directory (`dfl-…`, what an upload
    /// into a directory answers): a classify rule's example may name either.
    pub fn file_or_dfile(&self, id: &str) -> String {
        if id.starts_with("dfl-") {
            self.dfile(id)
        } else {
            self.file(id)
        }
    }

    /// A saved product configuration.
    pub fn configuration(&self, config_id: &str) -> String {
        format!("{}:cfg:{config_id}", self.prefix)
    }

    /// A saved webhook configuration.
    pub fn webhook_configuration(&self, config_id: &str) -> String {
        format!("{}:whcfg:{config_id}", self.prefix)
    }

    /// Files of a project.
    pub fn project_files(&self, project: &str) -> String {
        format!("{}:proj:{project}:files", self.prefix)
    }

    /// Saved configurations of a project.
    pub fn project_configurations(&self, project: &str) -> String {
        format!("{}:proj:{project}:cfgs", self.prefix)
    }

    /// Saved webhook configurations of a project.
    pub fn project_webhook_configurations(&self, project: &str) -> String {
        format!("{}:proj:{project}:whcfgs", self.prefix)
    }

    /// The key signing download URLs.
    pub fn url_key(&self) -> String {
        format!("{}:url-key", self.prefix)
    }

    /// Key digests of a project, by creation time (ms).
    pub fn project_keys(&self, project: &str) -> String {
        format!("{}:proj:{project}:keys", self.prefix)
    }

    /// Single-file jobs of a project (their batches), of one job type.
    pub fn project_jobs(&self, project: &str, job_type: &str) -> String {
        format!("{}:proj:{project}:jobs:{job_type}", self.prefix)
    }
}
