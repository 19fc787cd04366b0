//! Status vocabularies and the job configurations a batch carries.
//!
//! Wire names follow the legacy LlamaCloud batch API (`../shared/spec/batch-api.md` in the
//! reference material): statuses are lowercase, job types are `parse` / `classify`.

use serde::{Deserialize, Serialize};

/// Lifecycle of a batch: `pending → dispatched → running → completed|failed`, or `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchStatus {
    /// Accepted; messages are being published.
    Pending,
    /// Every message is published and no item has started yet.
    Dispatched,
    /// At least one item has started.
    Running,
    /// Every item reached a terminal state and at least one did not fail.
    Completed,
    /// Every item failed.
    Failed,
    /// Cancelled by the user.
    Cancelled,
}

impl BatchStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "dispatched" => Self::Dispatched,
            "running" => Self::Running,
            "completed" => Self::Completed,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            _ => return None,
        })
    }

    /// Whether the batch will never change status again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// Lifecycle of one item (one file) in a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ItemStatus {
    /// Registered, waiting for a worker.
    Pending,
    /// A worker claimed it.
    Processing,
    /// Processed; its result is stored.
    Completed,
    /// Processing failed; `error_message` says why.
    Failed,
    /// Not processed on purpose; `skip_reason` says why.
    Skipped,
    /// The batch was cancelled before the item started.
    Cancelled,
}

impl ItemStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [ItemStatus; 6] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Skipped,
        Self::Cancelled,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// What a batch runs on each file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobType {
    /// Per-page text and markdown.
    Parse,
    /// One type out of the user's rules.
    Classify,
}

impl JobType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Parse => "parse",
            Self::Classify => "classify",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "parse" => Some(Self::Parse),
            "classify" => Some(Self::Classify),
            _ => None,
        }
    }

    /// Prefix of the per-file job ids of this type.
    pub fn job_id_prefix(self) -> &'static str {
        match self {
            Self::Parse => "pjb",
            Self::Classify => "cjb",
        }
    }

    /// The per-file job id of the item at `order` of a batch: `<prefix>-<batch uuid>.<order,
    /// hex>`. It is derived rather than drawn, so nothing maps it back: [`parse_job_id`] reads
    /// the batch and the order out of it, and the batch's item set, scored by order, names the
    /// item. That saves a Redis key per item (about 200 bytes, and a write at registration).
    /// Orders are unique within a batch, so ids are unique. The hex order ends the id, so
    /// result files spread over the store's 256 fan-out folders (`store::sharded_key`).
    ///
    /// The Lua prelude's `derived_job_id` builds the same id for an item without a record;
    /// `spine::an_unclaimed_outcome_is_recorded_only_for_a_pending_item` holds the two equal.
    pub fn job_id(self, batch_id: &str, order: i64) -> String {
        let batch = batch_id.strip_prefix(BATCH_ID_PREFIX).unwrap_or(batch_id);
        format!("{}-{batch}.{order:x}", self.job_id_prefix())
    }
}

/// Prefix of every batch id.
pub const BATCH_ID_PREFIX: &str = "bjb-";

/// A per-file job id made by [`JobType::job_id`], read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedJobId {
    /// The job type its prefix names.
    pub job_type: JobType,
    /// The batch.
    pub batch_id: String,
    /// The item's order within the batch.
    pub order: i64,
}

/// Reads a job id made by [`JobType::job_id`]; `None` for any other string.
pub fn parse_job_id(job_id: &str) -> Option<DerivedJobId> {
    let (prefix, rest) = job_id.split_once('-')?;
    let job_type = [JobType::Parse, JobType::Classify]
        .into_iter()
        .find(|t| t.job_id_prefix() == prefix)?;
    let (batch, order) = rest.rsplit_once('.')?;
    if batch.is_empty() || order.is_empty() || !order.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(DerivedJobId {
        job_type,
        batch_id: format!("{BATCH_ID_PREFIX}{batch}"),
        order: i64::from_str_radix(order, 16).ok()?,
    })
}

/// `parameters.priority`, mapped onto RabbitMQ message priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Behind everything else.
    Low,
    /// The default.
    #[default]
    Medium,
    /// Ahead of medium.
    High,
    /// Ahead of everything.
    Critical,
}

impl Priority {
    /// The AMQP message priority (the shared queue is declared with `x-max-priority` = 4);
    /// also how a batch record stores it.
    pub fn amqp(self) -> u8 {
        match self {
            Self::Low => 1,
            Self::Medium => 2,
            Self::High => 3,
            Self::Critical => 4,
        }
    }

    /// The priority of an AMQP priority: 0 and 1 are low, 4 and above critical.
    pub fn from_amqp(p: u8) -> Self {
        match p {
            0 | 1 => Self::Low,
            2 => Self::Medium,
            3 => Self::High,
            _ => Self::Critical,
        }
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "low" => Some(Self::Low),
            "medium" => Some(Self::Medium),
            "high" => Some(Self::High),
            "critical" => Some(Self::Critical),
            _ => None,
        }
    }
}

/// `parameters.parse_mode`: the eight modes of the SDK's `ParsingMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParsingMode {
    /// Text extraction, no model: what docfleet runs.
    ParsePageWithoutLlm,
    /// Needs a language model.
    ParsePageWithLlm,
    /// Needs a vision model.
    ParsePageWithLvm,
    /// Needs an agent.
    ParsePageWithAgent,
    /// Needs an agent.
    ParsePageWithLayoutAgent,
    /// Needs a language model.
    ParseDocumentWithLlm,
    /// Needs a vision model.
    ParseDocumentWithLvm,
    /// Needs an agent.
    ParseDocumentWithAgent,
}

impl ParsingMode {
    /// Whether the mode needs a model endpoint docfleet does not run by itself.
    pub fn needs_model(self) -> bool {
        self != Self::ParsePageWithoutLlm
    }
}

/// `parameters.replace_failed_page_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailPageMode {
    /// The raw text that could be read.
    RawText,
    /// An empty page.
    BlankPage,
    /// The error message in place of the page.
    ErrorMessage,
}

/// `parameters.images_to_save` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageKind {
    /// A rendered image of each page.
    Screenshot,
    /// Images embedded in the document.
    Embedded,
    /// Layout crops.
    Layout,
}

/// The parse parameters docfleet acts on; every other SDK field is accepted and kept verbatim
/// in the stored job config.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ParseParameters {
    /// Must be `parse` when sent.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Which engine; only `parse_page_without_llm` runs without a model endpoint.
    pub parse_mode: Option<ParsingMode>,
    /// Message priority of the whole batch.
    pub priority: Option<Priority>,
    /// Cap on pages parsed per file.
    pub max_pages: Option<u32>,
    /// Pages to parse: 0-based, comma-separated indexes and ranges (`0,2-4`).
    pub target_pages: Option<String>,
    /// Text between pages in whole-document output.
    pub page_separator: Option<String>,
    /// Text before each page in whole-document output.
    pub page_prefix: Option<String>,
    /// Text after each page in whole-document output.
    pub page_suffix: Option<String>,
    /// What a failed page becomes.
    pub replace_failed_page_mode: Option<FailPageMode>,
    /// Share of pages allowed to fail before the file fails.
    pub page_error_tolerance: Option<f64>,
    /// Text before the error message of a failed page (`error_message` mode).
    pub replace_failed_page_with_error_message_prefix: Option<String>,
    /// Text after the error message of a failed page (`error_message` mode).
    pub replace_failed_page_with_error_message_suffix: Option<String>,
    /// Skip OCR.
    pub disable_ocr: Option<bool>,
    /// Leave page headers out of text and markdown, where the format marks them.
    pub hide_headers: Option<bool>,
    /// Leave page footers out of text and markdown, where the format marks them.
    pub hide_footers: Option<bool>,
    /// One language code.
    pub lang: Option<String>,
    /// Language codes.
    pub languages: Option<Vec<String>>,
    /// Images to keep.
    pub images_to_save: Option<Vec<ImageKind>>,
    /// Echoed into the result.
    pub custom_metadata: Option<serde_json::Value>,
    /// Per-file deadline requested by the user, in seconds.
    pub job_timeout_in_seconds: Option<f64>,
    /// Callback for the whole batch.
    pub webhook_url: Option<String>,
    /// Webhook endpoints.
    pub webhook_configurations: Option<Vec<serde_json::Value>>,
}

/// The parse variant of a batch's `job_config`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ParseJobConfig {
    /// Fixed literal `parse_raw_file_job` when sent.
    pub job_name: Option<String>,
    /// The parse settings.
    pub parameters: Option<ParseParameters>,
    /// Tracking id that follows the batch into logs.
    pub correlation_id: Option<String>,
    /// Upstream request id.
    pub session_id: Option<String>,
    /// Callback URL.
    pub webhook_url: Option<String>,
}

/// One classification rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyRule {
    /// The label assigned when the rule wins.
    #[serde(rename = "type")]
    pub kind: String,
    /// What documents of this type look like, in plain language.
    pub description: String,
    /// (ours) Ids of the project's files that are documents of this type: FAST classify
    /// reads them once per batch and joins their embeddings to the description's, so a few
    /// examples fix a type the description alone misses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

/// `mode` of a classify job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClassifyMode {
    /// Local, text-based.
    #[serde(rename = "FAST")]
    Fast,
    /// Needs a vision model endpoint.
    #[serde(rename = "MULTIMODAL")]
    Multimodal,
}

/// `parsing_configuration` of a classify job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClassifyParsing {
    /// Language code.
    pub lang: Option<String>,
    /// Pages read per document.
    pub max_pages: Option<u32>,
    /// 0-based page indexes to read.
    pub target_pages: Option<Vec<u32>>,
}

/// The classify variant of a batch's `job_config`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassifyJobConfig {
    /// At least one rule.
    pub rules: Vec<ClassifyRule>,
    /// `FAST` unless given.
    #[serde(default)]
    pub mode: Option<ClassifyMode>,
    /// How documents are read before scoring.
    #[serde(default)]
    pub parsing_configuration: Option<ClassifyParsing>,
}

/// A batch's job, as the worker needs it.
#[derive(Debug, Clone)]
pub enum JobSpec {
    /// Parse each file.
    Parse(Box<ParseJobConfig>),
    /// Classify each file.
    Classify(ClassifyJobConfig),
}

impl JobSpec {
    /// The job type.
    pub fn job_type(&self) -> JobType {
        match self {
            Self::Parse(_) => JobType::Parse,
            Self::Classify(_) => JobType::Classify,
        }
    }

    /// The per-file deadline: the job's own `job_timeout_in_seconds` when it asks for less
    /// than the operator's `limit`. It never lengthens it: the broker's consumer timeout and
    /// the reconciler's stall bound are set from the operator's.
    pub fn deadline(&self, limit: std::time::Duration) -> std::time::Duration {
        let asked = match self {
            Self::Parse(p) => p.parameters.as_ref().and_then(|p| p.job_timeout_in_seconds),
            Self::Classify(_) => None,
        };
        asked
            .filter(|s| s.is_finite() && *s >= 1.0)
            .map(std::time::Duration::from_secs_f64)
            .map_or(limit, |a| a.min(limit))
    }

    /// Reads a stored `job_config` JSON; a config with a `rules` key is classify.
    pub fn from_json(raw: &serde_json::Value) -> Result<Self, serde_json::Error> {
        if raw.get("rules").is_some() {
            Ok(Self::Classify(serde_json::from_value(raw.clone())?))
        } else {
            Ok(Self::Parse(Box::new(serde_json::from_value(raw.clone())?)))
        }
    }
}

/// Every webhook event name any SDK version knows (the 38-value superset of 2.19.0).
pub const WEBHOOK_EVENTS: [&str; 38] = [
    "extract.pending",
    "extract.success",
    "extract.error",
    "extract.partial_success",
    "extract.cancelled",
    "parse.pending",
    "parse.running",
    "parse.success",
    "parse.error",
    "parse.partial_success",
    "parse.cancelled",
    "classify.pending",
    "classify.running",
    "classify.success",
    "classify.error",
    "classify.partial_success",
    "classify.cancelled",
    "unmapped_event",
    "sheets.pending",
    "sheets.success",
    "sheets.error",
    "sheets.partial_success",
    "sheets.cancelled",
    "split.pending",
    "split.processing",
    "split.success",
    "split.error",
    "split.cancelled",
    "batch.pending",
    "batch.running",
    "batch.success",
    "batch.error",
    "batch.cancelled",
    "verify.pending",
    "verify.running",
    "verify.success",
    "verify.error",
    "verify.cancelled",
];

/// Most parts (indexes or ranges) a page selection may have.
pub const MAX_PAGE_PARTS: usize = 1_000;
/// Most pages a page selection may name, counted before duplicates go: a request of a few
/// hundred bytes must not make a list of millions.
pub const MAX_SELECTED_PAGES: u32 = 100_000;

/// Parses a 0-based page selection such as `0,2-4` into a sorted, de-duplicated list.
pub fn parse_page_selection(spec: &str) -> Result<Vec<u32>, String> {
    let mut pages = Vec::new();
    let mut named: u32 = 0;
    for (i, part) in spec
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
    {
        if i == MAX_PAGE_PARTS {
            return Err(format!("more than {MAX_PAGE_PARTS} indexes or ranges"));
        }
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u32 = lo
            .parse()
            .map_err(|_| format!("{part:?} is not a page index or range"))?;
        let hi: u32 = hi
            .parse()
            .map_err(|_| format!("{part:?} is not a page index or range"))?;
        if hi < lo {
            return Err(format!("{part:?} is a descending range"));
        }
        named = named.saturating_add(hi - lo + 1);
        if named > MAX_SELECTED_PAGES {
            return Err(format!("selects more than {MAX_SELECTED_PAGES} pages"));
        }
        pages.extend(lo..=hi);
    }
    if pages.is_empty() {
        return Err("no pages selected".into());
    }
    pages.sort_unstable();
    pages.dedup();
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_priority_reads_back_as_itself() {
        for p in [
            Priority::Low,
            Priority::Medium,
            Priority::High,
            Priority::Critical,
        ] {
            assert_eq!(Priority::from_amqp(p.amqp()), p);
        }
        assert_eq!(Priority::from_amqp(0), Priority::Low);
        assert_eq!(Priority::from_amqp(9), Priority::Critical);
    }

    #[test]
    fn job_ids_name_their_batch_and_order() {
        let batch = "bjb-346822f9-4244-40c4-b564-93173857445e";
        let id = JobType::Classify.job_id(batch, 140_999);
        assert_eq!(id, "cjb-346822f9-4244-40c4-b564-93173857445e.226c7");
        assert_eq!(
            parse_job_id(&id),
            Some(DerivedJobId {
                job_type: JobType::Classify,
                batch_id: batch.into(),
                order: 140_999,
            })
        );
        assert_eq!(
            parse_job_id(&JobType::Parse.job_id(batch, 0))
                .unwrap()
                .order,
            0
        );
        // Random ids from before, and strings that only look alike, are not derived ids.
        for other in [
            "pjb-5d11cb67-7b28-42ff-a122-8611bf5e5d06",
            "xjb-346822f9.1f",
            "pjb-.1f",
            "pjb-346822f9.",
            "pjb-346822f9.zz",
            "pjb-346822f9.-1",
            "pjb-346822f9.ffffffffffffffffff",
            "",
        ] {
            assert_eq!(parse_job_id(other), None, "{other}");
        }
    }

    #[test]
    fn page_selection_accepts_ranges_and_rejects_garbage() {
        assert_eq!(parse_page_selection("0, 2-4,3").unwrap(), vec![0, 2, 3, 4]);
        assert!(parse_page_selection("4-2").is_err());
        assert!(parse_page_selection("a").is_err());
        assert!(parse_page_selection("").is_err());
        // 300 copies of a 100,001-page range would be 30 million entries.
        let hostile = vec!["0-100000"; 300].join(",");
        assert!(parse_page_selection(&hostile)
            .unwrap_err()
            .contains("more than 100000 pages"));
        let many = (0..1001)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_page_selection(&many)
            .unwrap_err()
            .contains("more than 1000"));
    }

    #[test]
    fn job_spec_discriminates_on_rules() {
        let c = serde_json::json!({"rules": [{"type": "a", "description": "b"}], "id": "x"});
        assert_eq!(
            JobSpec::from_json(&c).unwrap().job_type(),
            JobType::Classify
        );
        let p = serde_json::json!({"job_name": "parse_raw_file_job", "parameters": {"lang": "en"}});
        assert_eq!(JobSpec::from_json(&p).unwrap().job_type(), JobType::Parse);
    }
}
