//! Stored records and their API shapes.

use std::collections::HashMap;

use docfleet_shared::model::{BatchStatus, JobType};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// A directory, stored as JSON and served as is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Directory {
    /// `dir-<uuid>`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Owner.
    pub project_id: String,
    /// `user` or `ephemeral`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Free text.
    pub description: Option<String>,
    /// Free-form metadata.
    pub system_metadata: Option<Value>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Never set: directories are not deleted yet.
    pub deleted_at: Option<String>,
}

/// A file in a directory; the id is the item id of batches.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DirectoryFile {
    /// `dfl-<uuid>`.
    pub id: String,
    /// Its directory.
    pub directory_id: String,
    /// Shown name; just a name, never a path.
    pub display_name: String,
    /// Owner.
    pub project_id: String,
    /// The caller's unique id, or the display name.
    pub unique_id: String,
    /// The underlying file id.
    pub file_id: String,
    /// Whether the file was made by an upload into the directory, and goes with it.
    pub owns_file: bool,
    /// Caller metadata.
    pub metadata: Option<Value>,
    /// The caller's external id.
    pub external_file_id: Option<String>,
    /// Creation time.
    pub created_at: String,
    /// Last change.
    pub updated_at: String,
    /// Never set yet.
    pub deleted_at: Option<String>,
    /// Where the bytes are (internal).
    pub storage_key: String,
    /// How many bytes (internal).
    pub size_bytes: u64,
}

impl DirectoryFile {
    /// The API shape: the record without internal fields.
    pub fn to_api(&self) -> Value {
        json!({
            "id": self.id,
            "directory_id": self.directory_id,
            "display_name": self.display_name,
            "project_id": self.project_id,
            "unique_id": self.unique_id,
            "file_id": self.file_id,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "deleted_at": self.deleted_at,
        })
    }
}

/// A batch hash as read from Redis.
#[derive(Debug, Clone)]
pub struct BatchRecord(pub HashMap<String, String>);

impl BatchRecord {
    /// A field, if set and non-empty.
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn int(&self, k: &str) -> u64 {
        self.get(k).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The status.
    pub fn status(&self) -> BatchStatus {
        self.get("status")
            .and_then(BatchStatus::parse)
            .unwrap_or(BatchStatus::Pending)
    }

    /// The owner.
    pub fn project(&self) -> &str {
        self.get("project_id").unwrap_or("")
    }

    /// `total_items`.
    pub fn total(&self) -> u64 {
        self.int("total")
    }

    /// `processed_items`.
    pub fn processed(&self) -> u64 {
        self.int("processed")
    }

    /// Progress in percent; 100 for an empty batch only once it is terminal, so it never
    /// goes down while an empty-looking batch is still being expanded.
    pub fn progress(&self) -> f64 {
        let total = self.total();
        if total == 0 {
            return if self.status().is_terminal() {
                100.0
            } else {
                0.0
            };
        }
        (100.0 * self.processed() as f64 / total as f64).min(100.0)
    }

    /// The `BatchJob` shape.
    pub fn to_api(&self) -> Value {
        json!({
            "id": self.get("id"),
            "job_type": self.get("job_type"),
            "project_id": self.get("project_id"),
            "status": self.status().as_str(),
            "total_items": self.total(),
            "processed_items": self.processed(),
            "failed_items": self.int("failed"),
            "skipped_items": self.int("skipped"),
            // Ours: pages in the outputs of the batch's finished items, and how many of them
            // OCR read (what OCR cost the batch).
            "pages_processed": self.int("pages"),
            "pages_ocr": self.int("pages_ocr"),
            "directory_id": self.get("directory_id"),
            "error_message": self.get("error_message"),
            "job_record_id": Value::Null,
            "workflow_id": self.get("id"),
            "created_at": self.get("created_at"),
            "updated_at": self.get("updated_at"),
            "started_at": self.get("started_at"),
            "completed_at": self.get("completed_at"),
            "effective_at": self.get("created_at"),
        })
    }
}

/// A legacy batch status as the v2 API spells it: `dispatched` is running there.
pub fn v2_status(status: &str) -> &'static str {
    match BatchStatus::parse(status) {
        Some(BatchStatus::Pending) | None => "PENDING",
        Some(BatchStatus::Dispatched | BatchStatus::Running) => "RUNNING",
        Some(BatchStatus::Completed) => "COMPLETED",
        Some(BatchStatus::Failed) => "FAILED",
        Some(BatchStatus::Cancelled) => "CANCELLED",
    }
}

impl BatchRecord {
    /// Whether the v2 API created it: its webhooks then carry the v2 shape.
    pub fn is_v2(&self) -> bool {
        self.get("api") == Some("v2")
    }

    /// The v2 `Batch` shape, where the batch fits it: a parse batch over a directory. One
    /// created by the legacy API runs its job config as sent, named `inline`.
    pub fn to_v2(&self) -> Option<Value> {
        let directory = self.get("directory_id")?;
        if self.get("job_type") != Some(JobType::Parse.as_str()) {
            return None;
        }
        Some(json!({
            "id": self.get("id"),
            "config": { "job": {
                "type": "parse_v2",
                "configuration_id": self.get("configuration_id").unwrap_or("inline"),
            } },
            "project_id": self.get("project_id"),
            "source_directory_id": directory,
            "status": v2_status(self.status().as_str()),
            "created_at": self.get("created_at"),
            "updated_at": self.get("updated_at"),
            "results": Value::Null,
        }))
    }
}

/// An item hash as read from Redis, in the `JobItem` shape.
pub fn job_item(item_id: &str, h: &HashMap<String, String>) -> Value {
    let get = |k: &str| h.get(k).map(String::as_str).filter(|v| !v.is_empty());
    json!({
        "item_id": item_id,
        "item_name": get("name").unwrap_or(item_id),
        "status": get("status").unwrap_or("pending"),
        "job_id": get("job_id"),
        "error_message": get("error_message"),
        "skip_reason": get("skip_reason"),
        "job_record_id": Value::Null,
        "started_at": get("started_at"),
        "completed_at": get("completed_at"),
        "effective_at": get("created_at"),
    })
}

/// What an item's record leaves out, filled in from its batch and its file, for items of
/// `batch` given as (id, order, record). Register writes no record (a pending item has
/// none), and the scripts write only state: the name is the file's, read here only if its
/// project is the batch's (an id refused at expansion shows itself, never another
/// project's name); the job id derives from the order; the item took effect with its batch;
/// an item without a hash is pending.
pub async fn fill_items(
    con: &mut redis::aio::ConnectionManager,
    keys: &docfleet_shared::keys::Keys,
    batch_id: &str,
    batch: &BatchRecord,
    items: &mut [(String, f64, HashMap<String, String>)],
) -> redis::RedisResult<()> {
    let kind = batch
        .get("job_type")
        .and_then(JobType::parse)
        .unwrap_or(JobType::Parse);
    let unnamed: Vec<usize> = (0..items.len())
        .filter(|&i| !items[i].2.contains_key("name"))
        .collect();
    let files: Vec<Option<String>> = if unnamed.is_empty() {
        Vec::new()
    } else {
        redis::cmd("MGET")
            .arg(
                unnamed
                    .iter()
                    .map(|&i| keys.dfile(&items[i].0))
                    .collect::<Vec<_>>(),
            )
            .query_async(con)
            .await?
    };
    for (&i, file) in unnamed.iter().zip(files) {
        let (id, _, h) = &mut items[i];
        let name = file
            .and_then(|f| serde_json::from_str::<NameFacts>(&f).ok())
            .filter(|f| f.project_id == batch.project())
            .map(|f| f.display_name)
            .unwrap_or_else(|| id.clone());
        h.insert("name".into(), name);
    }
    for (_, order, h) in items.iter_mut() {
        h.insert("job_id".into(), kind.job_id(batch_id, *order as i64));
        h.entry("status".into()).or_insert_with(|| "pending".into());
        if let Some(created) = batch.get("created_at") {
            h.entry("created_at".into())
                .or_insert_with(|| created.to_owned());
        }
    }
    Ok(())
}

/// What [`fill_items`] reads of a directory-file record.
#[derive(Deserialize)]
struct NameFacts {
    project_id: String,
    display_name: String,
}
