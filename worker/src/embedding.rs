//! Sentence embeddings for FAST classify: all-MiniLM-L6-v2 run in-process with candle.
//!
//! The model is a 6-layer BERT; a sentence's embedding is the mean of its token states
//! (special tokens included, as sentence-transformers does), L2-normalised, so a dot product
//! is a cosine similarity. Texts are encoded one at a time: no padding, so no masking needed.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
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
}

/// A loaded sentence-embedding model; load once per process and share.
pub struct Embedder {
    model: BertModel,
    tokenizer: Tokenizer,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Embedder")
    }
}

/// The files a model folder must hold.
pub const MODEL_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, EmbeddingError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|source| EmbeddingError::File {
        path: path.display().to_string(),
        source,
    })
}

impl Embedder {
    /// Loads the model from `dir` (see [`MODEL_FILES`]).
    pub fn load(dir: &Path) -> Result<Self, EmbeddingError> {
        let config: Config = serde_json::from_slice(&read(dir, "config.json")?)?;
        let mut tokenizer = Tokenizer::from_bytes(read(dir, "tokenizer.json")?)
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        // The shipped tokenizer pads every text to 128 tokens; padding would be averaged into
        // the embedding, and costs time.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: 256,
                ..Default::default()
            }))
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let weights = read(dir, "model.safetensors")?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)?;
        let model = BertModel::load(vb, &config)?;
        Ok(Self { model, tokenizer })
    }

    /// The unit-length embedding of `text`, reading at most `max_tokens` of it. Cost grows
    /// with the token count (about 0.5 ms of CPU per token here), so callers bound it.
    pub fn embed(&self, text: &str, max_tokens: usize) -> Result<Vec<f32>, EmbeddingError> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > max_tokens.max(2) {
            // Keep [CLS] … and the closing [SEP].
            let sep = ids[ids.len() - 1];
            ids.truncate(max_tokens.max(2) - 1);
            ids.push(sep);
        }
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
        let types = ids.zeros_like()?;
        let mask = ids.ones_like()?;
        let states = self.model.forward(&ids, &types, Some(&mask))?;
        let pooled = states.mean(1)?.squeeze(0)?;
        let norm = pooled.sqr()?.sum_all()?.sqrt()?;
        Ok(pooled.broadcast_div(&norm)?.to_vec1()?)
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
