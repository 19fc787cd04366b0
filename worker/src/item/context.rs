//! What a worker knows about one batch: loaded once per batch, not per file.

use std::sync::Arc;

use docfleet_shared::model::JobSpec;
use serde_json::Value;

use super::{whole, Failure, Processor, BATCH_CACHE};
use crate::classify::Classifier;
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
        match &self.isolation {
            Some(i) => i.parse(&self.project_id, input, name, req, timeout),
            None => parse::parse_with_images(&whole(input)?, name, req),
        }
        .map_err(|e| Failure::Fail(e.to_string()))
    }
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
                let slot = self.model.clone();
                let dir = self.settings.classify_model_dir.clone();
                let server = self.settings.classify.clone();
                // Loading the model and embedding the rules are CPU work (or a server's
                // round trip): off the runtime.
                let classifier = tokio::task::spawn_blocking(move || {
                    Classifier::new(&rules, Self::model(&slot, dir.as_deref(), &server))
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
