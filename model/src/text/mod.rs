//! Text conditioning: prompts to sentence-encoder states, with all-MiniLM-L6-v2 in burn.
//!
//! Viewers type free text, so the video model is conditioned on a real sentence encoder: its
//! own words ("sundown over the sea") land near what training saw ("sunset over the ocean").
//! [`TextEncoder`] gives, for a batch of prompts, the hidden state of every token with a
//! padding mask (for cross-attention) and the sentence embedding, mean-pooled and
//! L2-normalised exactly as sentence-transformers computes it (for adaptive norms);
//! [`TextEncoder::embed`] does one prompt through a small LRU cache, so a prompt seen before
//! is free.
//!
//! The files (model.safetensors, vocab.txt, config.json) come from `scripts/fetch-minilm.sh`
//! into [`default_dir`]. Parity with sentence-transformers is tested in
//! model/tests/text_minilm.rs against values from `scripts/minilm_reference.py`.

mod bert;
mod cache;
mod tokenizer;
mod weights;

pub use bert::{
    Bert, BertAttention, BertAttentionConfig, BertConfig, BertEmbeddings, BertEmbeddingsConfig, BertLayer,
    BertLayerConfig, mean_pool_normalized,
};
pub use tokenizer::{MAX_TOKENS, Tokenizer, VocabError};
pub use weights::{load_safetensors, load_safetensors_bytes, pack_f16};

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use cache::Lru;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The environment variable that overrides [`default_dir`].
pub const DIR_ENV: &str = "ENDLESS_MINILM_DIR";

/// The files [`TextEncoder::load`] reads from its directory.
pub const FILES: [&str; 3] = ["model.safetensors", "vocab.txt", "config.json"];

/// Prompts [`TextEncoder::embed`] keeps unless told otherwise.
pub const DEFAULT_CACHE_CAPACITY: usize = 512;

/// Where `scripts/fetch-minilm.sh` keeps the model: `$ENDLESS_MINILM_DIR`, or
/// `$HOME/.cache/endless/minilm`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os(DIR_ENV) {
        Some(dir) if !dir.is_empty() => dir.into(),
        _ => std::env::home_dir().unwrap_or_default().join(".cache/endless/minilm"),
    }
}

/// Whether every file [`TextEncoder::load`] needs is in `dir` (not whether they are intact:
/// the fetch script checks that).
pub fn is_present(dir: &Path) -> bool {
    FILES.iter().all(|f| dir.join(f).is_file())
}

/// For tests that need the model: [`default_dir`] when the files are there; otherwise `None`
/// after saying so on stderr — or a panic when `ENDLESS_REQUIRE_MINILM` is set (as
/// `scripts/test.sh` does), so CI cannot pass by skipping.
pub fn dir_for_tests() -> Option<PathBuf> {
    use std::io::Write;
    let dir = default_dir();
    if is_present(&dir) {
        return Some(dir);
    }
    if std::env::var_os("ENDLESS_REQUIRE_MINILM").is_some() {
        panic!(
            "ENDLESS_REQUIRE_MINILM is set but all-MiniLM-L6-v2 is not in {}: run scripts/fetch-minilm.sh",
            dir.display()
        );
    }
    // Straight to stderr: the test harness captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: all-MiniLM-L6-v2 is not in {} (run scripts/fetch-minilm.sh; set ENDLESS_REQUIRE_MINILM=1 \
         to make this a failure)",
        dir.display()
    );
    None
}

/// What [`pack_for_texts`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct Packed {
    /// Rows of the word-embedding table kept (the others are zero).
    pub tokens_kept: usize,
    pub vocab_size: usize,
    /// Size of the packed model.safetensors (the original all-MiniLM-L6-v2's is 90.9 MB).
    pub bytes: u64,
}

/// Writes into `out` a copy of the encoder in `dir` for texts made of `pieces` alone: the
/// vocabulary and config as they are, and the weights in f16 with every word-embedding row that
/// no piece's tokens use set to zero ([`pack_f16`]). On any text whose tokens are all among the
/// pieces' (a caption of the world: `world::caption_pieces`) it computes what the original
/// does, to f16 precision; it loads as the original does.
pub fn pack_for_texts(dir: &Path, out: &Path, pieces: &[&str]) -> Result<Packed, TextError> {
    let tokenizer = Tokenizer::from_vocab_file(&dir.join("vocab.txt"))?;
    let mut keep: std::collections::BTreeSet<u32> = pieces.iter().flat_map(|p| tokenizer.encode(p)).collect();
    keep.extend(["[PAD]", "[UNK]", "[CLS]", "[SEP]"].iter().filter_map(|t| tokenizer.token_id(t)));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TextError::Io { path, source }
    };
    let weights = dir.join("model.safetensors");
    let packed = pack_f16(&std::fs::read(&weights).map_err(io(&weights))?, &keep, &weights)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    for file in ["vocab.txt", "config.json"] {
        std::fs::copy(dir.join(file), out.join(file)).map_err(io(&out.join(file)))?;
    }
    let target = out.join("model.safetensors");
    std::fs::write(&target, &packed).map_err(io(&target))?;
    Ok(Packed { tokens_kept: keep.len(), vocab_size: tokenizer.vocab_size(), bytes: packed.len() as u64 })
}

/// Why the text encoder could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    #[error("cannot read {path}: {source} (scripts/fetch-minilm.sh puts the model there)")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Vocab { path: PathBuf, source: VocabError },
    #[error("{path}: not a model config: {source}")]
    ConfigJson { path: PathBuf, source: serde_json::Error },
    #[error("{path}: {field} = {value:?} is not supported (expected {expected})")]
    UnsupportedConfig { path: PathBuf, field: &'static str, value: String, expected: &'static str },
    #[error("the vocabulary has {tokenizer} tokens but the model embeds only {model}")]
    VocabSize { tokenizer: usize, model: usize },
    #[error("{path}: not a safetensors file: {source}")]
    Safetensors { path: PathBuf, source: safetensors::SafeTensorError },
    #[error("{path}: tensor {key:?} is missing")]
    MissingTensor { path: PathBuf, key: String },
    #[error("{path}: tensor {key:?} is {dtype}, expected F32, F16 or BF16")]
    TensorDtype { path: PathBuf, key: String, dtype: String },
    #[error("{path}: tensor {key:?} has shape {found:?}, expected {expected:?}")]
    TensorShape { path: PathBuf, key: String, expected: Vec<usize>, found: Vec<usize> },
}

/// The fields of a Hugging Face BERT config.json that matter here.
#[derive(Deserialize)]
struct HfBertConfig {
    model_type: String,
    hidden_act: String,
    #[serde(default = "absolute")]
    position_embedding_type: String,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    type_vocab_size: usize,
    layer_norm_eps: f64,
}

fn absolute() -> String {
    "absolute".to_string()
}

/// The encoder's shape from a Hugging Face config.json; refuses what [`Bert`] does not
/// implement (another activation, relative positions, heads that do not divide the width).
pub fn read_bert_config(path: &Path) -> Result<BertConfig, TextError> {
    let text = std::fs::read_to_string(path).map_err(|source| TextError::Io { path: path.into(), source })?;
    bert_config_from_json(&text, path)
}

/// [`read_bert_config`] of the file's text; `path` only names the source in errors.
pub fn bert_config_from_json(text: &str, path: &Path) -> Result<BertConfig, TextError> {
    let hf: HfBertConfig =
        serde_json::from_str(text).map_err(|source| TextError::ConfigJson { path: path.into(), source })?;
    let unsupported =
        |field, value: String, expected| TextError::UnsupportedConfig { path: path.into(), field, value, expected };
    if hf.model_type != "bert" {
        return Err(unsupported("model_type", hf.model_type, "\"bert\""));
    }
    if hf.hidden_act != "gelu" {
        return Err(unsupported("hidden_act", hf.hidden_act, "\"gelu\" (erf)"));
    }
    if hf.position_embedding_type != "absolute" {
        return Err(unsupported("position_embedding_type", hf.position_embedding_type, "\"absolute\""));
    }
    if hf.num_attention_heads == 0 || !hf.hidden_size.is_multiple_of(hf.num_attention_heads) {
        return Err(unsupported("num_attention_heads", hf.num_attention_heads.to_string(), "a divisor of hidden_size"));
    }
    if hf.max_position_embeddings < MAX_TOKENS || hf.type_vocab_size == 0 {
        return Err(unsupported(
            "max_position_embeddings",
            hf.max_position_embeddings.to_string(),
            "at least 256, with type_vocab_size at least 1",
        ));
    }
    Ok(BertConfig::new()
        .with_vocab_size(hf.vocab_size)
        .with_hidden_size(hf.hidden_size)
        .with_num_layers(hf.num_hidden_layers)
        .with_num_heads(hf.num_attention_heads)
        .with_intermediate_size(hf.intermediate_size)
        .with_max_position_embeddings(hf.max_position_embeddings)
        .with_type_vocab_size(hf.type_vocab_size)
        .with_layer_norm_eps(hf.layer_norm_eps))
}

/// The encoder's output for one prompt, on the host: cheap to cache and to share between
/// threads and devices.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEmbedding {
    ids: Vec<u32>,
    hidden: Vec<f32>,
    pooled: Vec<f32>,
}

impl TextEmbedding {
    /// An embedding from its parts (a blend of two prompts, say).
    ///
    /// # Panics
    /// If `hidden` is not `ids.len()` rows of `pooled.len()` values.
    pub fn from_parts(ids: Vec<u32>, hidden: Vec<f32>, pooled: Vec<f32>) -> TextEmbedding {
        assert_eq!(hidden.len(), ids.len() * pooled.len(), "hidden states are [tokens, dim]");
        TextEmbedding { ids, hidden, pooled }
    }

    /// The token ids, `[CLS]` … `[SEP]`.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Tokens, `[CLS]` and `[SEP]` included (at least 2).
    pub fn num_tokens(&self) -> usize {
        self.ids.len()
    }

    /// Width of the states (384).
    pub fn dim(&self) -> usize {
        self.pooled.len()
    }

    /// The hidden state of every token, row by row: `[num_tokens, dim]`.
    pub fn hidden(&self) -> &[f32] {
        &self.hidden
    }

    /// The hidden state of token `i`.
    pub fn token(&self, i: usize) -> &[f32] {
        &self.hidden[i * self.dim()..(i + 1) * self.dim()]
    }

    /// The sentence embedding, of unit length: `[dim]`.
    pub fn pooled(&self) -> &[f32] {
        &self.pooled
    }

    /// Cosine similarity of two sentence embeddings (their dot product: both are unit length).
    pub fn similarity(&self, other: &TextEmbedding) -> f32 {
        self.pooled.iter().zip(&other.pooled).map(|(a, b)| a * b).sum()
    }
}

/// Encoder states of a batch of prompts, padded to the longest.
#[derive(Debug, Clone)]
pub struct TextBatch<B: Backend> {
    /// `[b, n, dim]`: the hidden state of every token; zeros at padded positions when built
    /// from embeddings, meaningless values there when straight from the encoder.
    pub hidden: Tensor<B, 3>,
    /// `[b, n]`: true at padded positions (burn's attention convention: true is masked out).
    pub padding_mask: Tensor<B, 2, Bool>,
    /// `[b, dim]`: the sentence embeddings, of unit length.
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> TextBatch<B> {
    /// A batch of (cached) embeddings, padded with zeros to the longest.
    ///
    /// # Panics
    /// If `embeddings` is empty or their widths differ.
    pub fn from_embeddings(embeddings: &[Arc<TextEmbedding>], device: &B::Device) -> TextBatch<B> {
        let b = embeddings.len();
        assert!(b > 0, "a batch of no prompts");
        let d = embeddings[0].dim();
        assert!(embeddings.iter().all(|e| e.dim() == d), "embeddings of different widths");
        let n = embeddings.iter().map(|e| e.num_tokens()).max().expect("the batch is not empty");
        let mut hidden = vec![0.0; b * n * d];
        let mut padding = vec![true; b * n];
        let mut pooled = Vec::with_capacity(b * d);
        for (k, e) in embeddings.iter().enumerate() {
            hidden[k * n * d..(k * n + e.num_tokens()) * d].copy_from_slice(e.hidden());
            padding[k * n..k * n + e.num_tokens()].fill(false);
            pooled.extend_from_slice(e.pooled());
        }
        TextBatch {
            hidden: Tensor::from_data(TensorData::new(hidden, [b, n, d]), device),
            padding_mask: Tensor::from_data(TensorData::new(padding, [b, n]), device),
            pooled: Tensor::from_data(TensorData::new(pooled, [b, d]), device),
        }
    }
}

/// How [`TextEncoder::embed`]'s cache has done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub len: usize,
    pub capacity: usize,
}

/// all-MiniLM-L6-v2: tokenizer, BERT encoder and an LRU cache of embeddings. Thread-safe:
/// everything takes `&self`; the cache is behind a mutex that is never held while encoding.
pub struct TextEncoder<B: Backend> {
    tokenizer: Tokenizer,
    bert: Bert<B>,
    device: B::Device,
    pad: u32,
    unused: Vec<String>,
    cache: Mutex<Lru<Arc<TextEmbedding>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<B: Backend> std::fmt::Debug for TextEncoder<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextEncoder").field("stats", &self.cache_stats()).finish_non_exhaustive()
    }
}

impl<B: Backend> TextEncoder<B> {
    /// Loads vocab.txt, config.json and model.safetensors from `dir` (see [`default_dir`])
    /// onto `device`, with a cache of [`DEFAULT_CACHE_CAPACITY`] prompts.
    pub fn load(dir: &Path, device: &B::Device) -> Result<TextEncoder<B>, TextError> {
        let started = Instant::now();
        let tokenizer = Tokenizer::from_vocab_file(&dir.join("vocab.txt"))?;
        let config = read_bert_config(&dir.join("config.json"))?;
        if tokenizer.vocab_size() > config.vocab_size {
            return Err(TextError::VocabSize { tokenizer: tokenizer.vocab_size(), model: config.vocab_size });
        }
        let (bert, unused) = load_safetensors(config.init::<B>(device), &dir.join("model.safetensors"))?;
        let pad = tokenizer.token_id("[PAD]").expect("Tokenizer refuses vocabularies without [PAD]");
        tracing::info!(
            dir = %dir.display(),
            ms = started.elapsed().as_millis() as u64,
            "loaded the text encoder (all-MiniLM-L6-v2)"
        );
        Ok(TextEncoder {
            tokenizer,
            bert: bert.no_grad(),
            device: device.clone(),
            pad,
            unused,
            cache: Mutex::new(Lru::new(DEFAULT_CACHE_CAPACITY)),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    /// The same encoder with an (empty) cache of `capacity` prompts; 0 turns caching off.
    pub fn with_cache_capacity(self, capacity: usize) -> TextEncoder<B> {
        TextEncoder { cache: Mutex::new(Lru::new(capacity)), ..self }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn bert(&self) -> &Bert<B> {
        &self.bert
    }

    pub fn device(&self) -> &B::Device {
        &self.device
    }

    /// Tensors of model.safetensors the encoder does not use, sorted (for all-MiniLM-L6-v2:
    /// `embeddings.position_ids` and the pooler's two).
    pub fn unused_tensors(&self) -> &[String] {
        &self.unused
    }

    /// Width of the states (384).
    pub fn dim(&self) -> usize {
        self.bert.embeddings.norm.gamma.dims()[0]
    }

    /// Encodes `prompts` in one batch, without the cache. Each prompt gives the same states
    /// as alone (padding is masked out of the attention and the pooling).
    ///
    /// # Panics
    /// If `prompts` is empty.
    ///
    /// # Shapes
    /// - returns: hidden `[b, n, 384]`, padding mask `[b, n]`, pooled `[b, 384]`, where `b` is
    ///   the number of prompts and `n` the most tokens of any (at most 256)
    pub fn encode(&self, prompts: &[&str]) -> TextBatch<B> {
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| self.tokenizer.encode(p)).collect();
        self.encode_ids(&ids)
    }

    fn encode_ids(&self, ids: &[Vec<u32>]) -> TextBatch<B> {
        let b = ids.len();
        assert!(b > 0, "a batch of no prompts");
        let n = ids.iter().map(Vec::len).max().expect("the batch is not empty");
        let mut flat = Vec::with_capacity(b * n);
        let mut padding = Vec::with_capacity(b * n);
        for seq in ids {
            flat.extend(seq.iter().map(|&id| id as i64));
            flat.extend(std::iter::repeat_n(self.pad as i64, n - seq.len()));
            padding.extend((0..n).map(|i| i >= seq.len()));
        }
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, n]), &self.device);
        let padding_mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(padding, [b, n]), &self.device);
        let hidden = self.bert.forward(ids, padding_mask.clone());
        let pooled = mean_pool_normalized(hidden.clone(), padding_mask.clone());
        TextBatch { hidden, padding_mask, pooled }
    }

    /// The encoder's output for `prompt`, from the cache when the prompt was seen recently.
    /// Two threads missing on the same prompt at once both encode it; the first to finish is
    /// cached and both get that one.
    pub fn embed(&self, prompt: &str) -> Arc<TextEmbedding> {
        self.embed_many(&[prompt]).remove(0)
    }

    /// [`TextEncoder::embed`] of several prompts, with the ones the cache misses encoded
    /// together in one batch: on a GPU one pass of the encoder costs about what one prompt
    /// alone does, and a training step draws a batch of captions at a time. A prompt gets the
    /// same embedding as alone (the padding is masked out).
    pub fn embed_many(&self, prompts: &[&str]) -> Vec<Arc<TextEmbedding>> {
        let mut found: Vec<Option<Arc<TextEmbedding>>> = {
            let mut cache = self.lock_cache();
            prompts.iter().map(|p| cache.get(p)).collect()
        };
        let mut missed: Vec<&str> = Vec::new();
        for (p, f) in prompts.iter().zip(&found) {
            if f.is_none() && !missed.contains(p) {
                missed.push(p);
            }
        }
        self.hits.fetch_add((prompts.len() - found.iter().filter(|f| f.is_none()).count()) as u64, Ordering::Relaxed);
        self.misses.fetch_add(missed.len() as u64, Ordering::Relaxed);
        if !missed.is_empty() {
            let ids: Vec<Vec<u32>> = missed.iter().map(|p| self.tokenizer.encode(p)).collect();
            let batch = self.encode_ids(&ids);
            let [b, n, d] = batch.hidden.dims();
            let host = |t: TensorData| t.convert::<f32>().into_vec::<f32>().expect("f32 data after convert");
            let hidden = host(batch.hidden.reshape([b * n * d]).into_data());
            let pooled = host(batch.pooled.reshape([b * d]).into_data());
            let mut cache = self.lock_cache();
            for (k, (prompt, ids)) in missed.iter().zip(ids).enumerate() {
                let hidden = hidden[k * n * d..(k * n + ids.len()) * d].to_vec();
                let pooled = pooled[k * d..(k + 1) * d].to_vec();
                let embedding = cache.get_or_insert(prompt, Arc::new(TextEmbedding { ids, hidden, pooled }));
                for (p, f) in prompts.iter().zip(found.iter_mut()) {
                    if p == prompt && f.is_none() {
                        *f = Some(embedding.clone());
                    }
                }
            }
        }
        found.into_iter().map(|f| f.expect("every prompt was found or encoded")).collect()
    }

    /// [`TextEncoder::embed_many`] of several prompts, as a batch of tensors on the encoder's
    /// device.
    pub fn embed_batch(&self, prompts: &[&str]) -> TextBatch<B> {
        TextBatch::from_embeddings(&self.embed_many(prompts), &self.device)
    }

    pub fn cache_stats(&self) -> CacheStats {
        let cache = self.lock_cache();
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            len: cache.len(),
            capacity: cache.capacity(),
        }
    }

    fn lock_cache(&self) -> MutexGuard<'_, Lru<Arc<TextEmbedding>>> {
        // A panic elsewhere cannot leave the map half-updated (its operations do not panic
        // midway), so a poisoned lock is still a good cache.
        self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// all-MiniLM-L6-v2's config.json.
    const MINILM_CONFIG: &str = r#"{
      "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
      "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": false, "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02,
      "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
      "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6, "pad_token_id": 0,
      "position_embedding_type": "absolute", "transformers_version": "4.8.2", "type_vocab_size": 2,
      "use_cache": true, "vocab_size": 30522
    }"#;

    #[test]
    fn the_minilm_config_gives_the_default_shape() {
        let config = bert_config_from_json(MINILM_CONFIG, Path::new("config.json")).expect("a BERT config");
        let default = BertConfig::new();
        assert_eq!(config.to_string(), default.to_string());
        assert_eq!(config.layer_norm_eps, 1e-12);
    }

    #[test]
    fn what_bert_does_not_implement_is_refused() {
        let path = Path::new("config.json");
        let refused = |from: &str, to: &str| {
            assert!(MINILM_CONFIG.contains(from));
            bert_config_from_json(&MINILM_CONFIG.replace(from, to), path).unwrap_err()
        };
        let err = refused(r#""hidden_act": "gelu""#, r#""hidden_act": "gelu_new""#);
        assert!(matches!(&err, TextError::UnsupportedConfig { field: "hidden_act", value, .. } if value == "gelu_new"));
        let err = refused(r#""position_embedding_type": "absolute""#, r#""position_embedding_type": "relative_key""#);
        assert!(matches!(err, TextError::UnsupportedConfig { field: "position_embedding_type", .. }));
        let err = refused(r#""num_attention_heads": 12"#, r#""num_attention_heads": 7"#);
        assert!(matches!(err, TextError::UnsupportedConfig { field: "num_attention_heads", .. }));
        let err = refused(r#""hidden_size": 384,"#, "");
        assert!(matches!(err, TextError::ConfigJson { .. }), "{err}");
    }
}
