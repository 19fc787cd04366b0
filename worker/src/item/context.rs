//! What a worker knows about one batch: loaded once per batch, not per file.

use std::sync::Arc;

use docfleet_shared::model::JobSpec;
use serde_json::Value;

use super::{whole, Failure, Processor, BATCH_CACHE};
use crate::classify::{Classifier, Example};
use crate::embedding::{Embedder, Server};
use crate::input::Input;
use crate::isolation::Isolation;
use crate::parse::{self, ParseRequest};
use crate::vision::VisionClient;
use docfleet_shared::settings::ClassifySettings;

/// What a worker knows about one batch; loaded once per batch, not per file.
pub(super) struct BatchContext {
    pub(super) project_id: String,
    pub(super) spec: JobSpec,
    pub(super) classifier: Option<Classifier>,
    /// The vision endpoint, for MULTIMODAL classify batches.
    pub(super) vision: Option<VisionClient>,
    /// The parse memory bound; in-process when `None`.
    pub(super) isolation: Option<Isolation>,
    /// The user's bucket the outputs are written to as well, if the job names one.
    pub(super) outputs: Option<docfleet_shared::buckets::Place>,
}

impl BatchContext {
    pub(super) fn parse(
        &self,
        input: &Input,
        name: &str,
        req: &ParseRequest,
        timeout: std::time::Duration,
    ) -> Result<(parse::Parsed, Vec<crate::images::Image>), Failure> {
        parse_in(
            self.isolation.as_ref(),
            &self.project_id,
            input,
            name,
            req,
            timeout,
        )
    }
}

/// Parses in the bounded child when there is one, else in this process.
fn parse_in(
    isolation: Option<&Isolation>,
    project: &str,
    input: &Input,
    name: &str,
    req: &ParseRequest,
    timeout: std::time::Duration,
) -> Result<(parse::Parsed, Vec<crate::images::Image>), Failure> {
    match isolation {
        Some(i) => i.parse(project, input, name, req, timeout),
        None => parse::parse_with_images(&whole(input)?, name, req),
    }
    .map_err(|e| Failure::Fail(e.to_string()))
}

/// A rule's example file, as its record names it.
struct ExampleFile {
    name: String,
    storage_key: String,
    /// Where it lives in a user's bucket, for an imported file.
    source: Option<(docfleet_shared::buckets::Place, String)>,
}

impl Processor {
    /// The embeddings, loading the model on first use (blocking), or the server when
    /// `classify.embeddings_url` names one.
    fn model(
        slot: &std::sync::OnceLock<Result<Arc<Embedder>, String>>,
        dir: Option<&std::path::Path>,
        server: &ClassifySettings,
    ) -> Result<Arc<Embedder>, String> {
        slot.get_or_init(|| {
            match Server::new(server) {
                Ok(Some(server)) => return Ok(Arc::new(Embedder::Remote(server))),
                Ok(None) => {}
                Err(e) => return Err(format!("embeddings client: {e}")),
            }
            let Some(dir) = dir else {
                return Err("classify_model_dir (DOCFLEET__CLASSIFY_MODEL_DIR) is not set".into());
            };
            let started = std::time::Instant::now();
            match Embedder::load(dir) {
                Ok(m) => {
                    tracing::info!(dir = %dir.display(), ms = started.elapsed().as_millis() as u64, "embedding model loaded");
                    Ok(Arc::new(m))
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "embedding model unavailable; classify uses lexical evidence only");
                    Err(format!("model not loaded from {}: {e}", dir.display()))
                }
            }
        })
        .clone()
    }

    /// Each rule's example documents (`ClassifyRule::examples`), parsed as the batch's own
    /// files are (the first pages, in the bounded child), once per batch. An example deleted
    /// since the batch was created fails the item: the rule would silently mean less.
    async fn examples(
        &self,
        project: &str,
        rules: &[docfleet_shared::model::ClassifyRule],
    ) -> Result<Vec<Vec<Example>>, Failure> {
        if rules.iter().all(|r| r.examples.is_empty()) {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = rules
            .iter()
            .flat_map(|r| r.examples.iter().map(|id| self.keys.file_or_dfile(id)))
            .collect();
        let mut records =
            redis::AsyncCommands::mget::<_, Vec<Option<String>>>(&mut self.redis.clone(), keys)
                .await?
                .into_iter();
        let mut files: Vec<Vec<ExampleFile>> = Vec::new();
        for rule in rules {
            let mut mine = Vec::new();
            for id in &rule.examples {
                let rec: Value = records
                    .next()
                    .flatten()
                    .and_then(|r| serde_json::from_str(&r).ok())
                    .unwrap_or(Value::Null);
                if rec["project_id"].as_str() != Some(project) || !rec["deleted_at"].is_null() {
                    return Err(Failure::Fail(format!(
                        "rule {:?}: example file {id:?} no longer exists",
                        rule.kind
                    )));
                }
                let storage_key = rec["storage_key"].as_str().unwrap_or_default().to_owned();
                mine.push(ExampleFile {
                    name: rec["display_name"]
                        .as_str()
                        .or(rec["name"].as_str())
                        .unwrap_or_default()
                        .to_owned(),
                    source: self.source(project, &storage_key)?,
                    storage_key,
                });
            }
            files.push(mine);
        }
        let (store, buckets) = (self.store.clone(), self.buckets.clone());
        let isolation = self.isolation.clone();
        let project = project.to_owned();
        let timeout = std::time::Duration::from_secs(self.settings.item_deadline_secs);
        let req = ParseRequest {
            max_pages: Some(5),
            tool_bound_secs: timeout.as_secs(),
            ..ParseRequest::default()
        };
        tokio::task::spawn_blocking(move || {
            files
                .iter()
                .map(|rule| {
                    rule.iter()
                        .map(|f| {
                            let input = super::open_stored(
                                &store,
                                buckets.as_deref(),
                                f.source.as_ref(),
                                &f.storage_key,
                            )?;
                            let (parsed, _) = parse_in(
                                isolation.as_ref(),
                                &project,
                                &input,
                                &f.name,
                                &req,
                                timeout,
                            )
                            .map_err(|e| match e {
                                Failure::Fail(why) => {
                                    Failure::Fail(format!("example {:?}: {why}", f.name))
                                }
                                other => other,
                            })?;
                            Ok(Example {
                                text: parsed.full_text("\n"),
                                format: parsed.format,
                                page_count: parsed.page_count,
                                title: parsed.title.clone(),
                            })
                        })
                        .collect::<Result<Vec<_>, Failure>>()
                })
                .collect::<Result<Vec<_>, Failure>>()
        })
        .await
        .map_err(|e| Failure::Retry(format!("reading the rules' examples: {e}")))?
    }

    pub(super) async fn context(&self, batch_id: &str) -> Result<Arc<BatchContext>, Failure> {
        let cell = {
            // A poisoned lock only means a panic elsewhere mid-insert; the map is still whole.
            let mut cache = self.batches.lock().unwrap_or_else(|p| p.into_inner());
            if cache.len() >= BATCH_CACHE && !cache.contains_key(batch_id) {
                cache.clear();
            }
            cache.entry(batch_id.to_owned()).or_default().clone()
        };
        // A failed load leaves the cell empty, so the next item tries again.
        cell.get_or_try_init(|| self.load_context(batch_id))
            .await
            .cloned()
    }

    async fn load_context(&self, batch_id: &str) -> Result<Arc<BatchContext>, Failure> {
        let mut con = self.redis.clone();
        let (project, raw): (Option<String>, Option<String>) = redis::pipe()
            .hget(self.keys.batch(batch_id), "project_id")
            .get(self.keys.batch_config(batch_id))
            .query_async(&mut con)
            .await?;
        let (Some(project_id), Some(raw)) = (project, raw) else {
            return Err(Failure::Fail("batch record or job config missing".into()));
        };
        let raw_config: Value = serde_json::from_str(&raw)
            .map_err(|e| Failure::Fail(format!("stored job config unreadable: {e}")))?;
        let spec = JobSpec::from_json(&raw_config)
            .map_err(|e| Failure::Fail(format!("stored job config invalid: {e}")))?;
        let classifier = match &spec {
            JobSpec::Classify(c) => {
                let rules = c.rules.clone();
                let examples = self.examples(&project_id, &rules).await?;
                let slot = self.model.clone();
                let dir = self.settings.classify_model_dir.clone();
                let server = self.settings.classify.clone();
                // Loading the model and embedding the rules are CPU work (or a server's
                // round trip): off the runtime.
                let classifier = tokio::task::spawn_blocking(move || {
                    Classifier::new(
                        &rules,
                        &examples,
                        Self::model(&slot, dir.as_deref(), &server),
                    )
                })
                .await
                .map_err(|e| Failure::Retry(format!("classifier set-up: {e}")))?
                .map_err(|e| Failure::Retry(e.to_string()))?;
                Some(classifier)
            }
            JobSpec::Parse(_) => None,
        };
        // Checked again here: a project's allow-list may have narrowed since the batch was
        // created.
        let outputs = match &spec {
            JobSpec::Parse(_) => {
                use docfleet_shared::buckets::{Access, Place, Refused};
                let refused =
                    |r: Refused| Failure::Fail(format!("parameters.{}: {}", r.field, r.message));
                let dest = Place::from_params(&raw_config["parameters"]).map_err(refused)?;
                if let Some(dest) = &dest {
                    dest.allowed(
                        &project_id,
                        Access::Write,
                        &self.settings.buckets,
                        "output_s3_path_prefix",
                    )
                    .map_err(refused)?;
                }
                dest
            }
            JobSpec::Classify(_) => None,
        };
        let ctx = Arc::new(BatchContext {
            project_id,
            spec,
            classifier,
            vision: self.vision.clone(),
            isolation: self.isolation.clone(),
            outputs,
        });
        Ok(ctx)
    }
}
