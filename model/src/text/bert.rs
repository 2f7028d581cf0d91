//! A BERT encoder (post-norm, absolute positions, GELU with erf), as in Hugging Face's
//! `BertModel` without the pooler; the defaults of [`BertConfig`] are all-MiniLM-L6-v2's.
//! Weights are loaded by [`super::weights`].

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::tensor::activation::gelu;
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Bool, Int, Tensor};

/// The shape of a BERT encoder. The defaults are all-MiniLM-L6-v2 (config.json of the model).
#[derive(Config, Debug, PartialEq)]
pub struct BertConfig {
    /// Rows of the token embedding table.
    #[config(default = 30522)]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[config(default = 384)]
    pub hidden_size: usize,
    /// Transformer layers.
    #[config(default = 6)]
    pub num_layers: usize,
    /// Attention heads per layer; divides `hidden_size`.
    #[config(default = 12)]
    pub num_heads: usize,
    /// Width of the feed-forward block.
    #[config(default = 1536)]
    pub intermediate_size: usize,
    /// The longest sequence the position table covers.
    #[config(default = 512)]
    pub max_position_embeddings: usize,
    /// Rows of the token type (segment) table.
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon: BERT's 1e-12, not burn's default 1e-5.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// How freshly initialised weights are drawn (BERT: N(0, 0.02)). Loading pretrained
    /// weights replaces them before they are ever materialised.
    #[config(default = "Initializer::Normal { mean: 0.0, std: 0.02 }")]
    pub initializer: Initializer,
}

impl BertConfig {
    /// An encoder with freshly initialised weights.
    ///
    /// # Panics
    /// If `num_heads` does not divide `hidden_size`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Bert<B> {
        assert!(
            self.num_heads > 0 && self.hidden_size.is_multiple_of(self.num_heads),
            "{} heads do not divide the hidden size {}",
            self.num_heads,
            self.hidden_size
        );
        let layer = BertLayerConfig {
            hidden_size: self.hidden_size,
            num_heads: self.num_heads,
            intermediate_size: self.intermediate_size,
            layer_norm_eps: self.layer_norm_eps,
            initializer: self.initializer.clone(),
        };
        Bert {
            embeddings: BertEmbeddingsConfig {
                vocab_size: self.vocab_size,
                hidden_size: self.hidden_size,
                max_position_embeddings: self.max_position_embeddings,
                type_vocab_size: self.type_vocab_size,
                layer_norm_eps: self.layer_norm_eps,
                initializer: self.initializer.clone(),
            }
            .init(device),
            layers: (0..self.num_layers).map(|_| layer.init(device)).collect(),
        }
    }
}

/// The BERT encoder: embeddings, then `num_layers` transformer layers.
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    pub embeddings: BertEmbeddings<B>,
    pub layers: Vec<BertLayer<B>>,
}

impl<B: Backend> Bert<B> {
    /// Hidden states of every token. Padded positions do not influence the others: a prompt
    /// gives the same states alone or in a batch of longer ones (the states *at* padded
    /// positions are meaningless).
    ///
    /// # Shapes
    /// - `ids`: `[b, n]` token ids, `n` at most `max_position_embeddings`
    /// - `padding_mask`: `[b, n]`, true at padded positions
    /// - returns: `[b, n, hidden_size]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>, padding_mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let mut x = self.embeddings.forward(ids);
        for layer in &self.layers {
            x = layer.forward(x, padding_mask.clone());
        }
        x
    }
}

/// Mean of the hidden states over the tokens that are not padding, scaled to unit length: the
/// sentence embedding of sentence-transformers (mean pooling, then `Normalize`).
///
/// # Shapes
/// - `hidden`: `[b, n, d]`
/// - `padding_mask`: `[b, n]`, true at padded positions
/// - returns: `[b, d]`
pub fn mean_pool_normalized<B: Backend>(hidden: Tensor<B, 3>, padding_mask: Tensor<B, 2, Bool>) -> Tensor<B, 2> {
    let keep = padding_mask.bool_not().float().unsqueeze_dim::<3>(2); // [b, n, 1]
    let sum: Tensor<B, 2> = (hidden * keep.clone()).sum_dim(1).squeeze_dim(1); // [b, d]
    let count: Tensor<B, 2> = keep.sum_dim(1).squeeze_dim(1).clamp_min(1e-9); // [b, 1]
    let mean = sum / count;
    let norm = mean.clone().square().sum_dim(1).sqrt().clamp_min(1e-12); // [b, 1]
    mean / norm
}

/// The token, position and token type embeddings, summed and normalised.
#[derive(Config, Debug)]
pub struct BertEmbeddingsConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub initializer: Initializer,
}

impl BertEmbeddingsConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> BertEmbeddings<B> {
        let table = |rows: usize| {
            EmbeddingConfig::new(rows, self.hidden_size).with_initializer(self.initializer.clone()).init(device)
        };
        BertEmbeddings {
            word: table(self.vocab_size),
            position: table(self.max_position_embeddings),
            token_type: table(self.type_vocab_size),
            norm: LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    pub word: Embedding<B>,
    pub position: Embedding<B>,
    pub token_type: Embedding<B>,
    pub norm: LayerNorm<B>,
}

impl<B: Backend> BertEmbeddings<B> {
    /// Positions count from 0; every token has token type 0 (single sentences).
    ///
    /// # Shapes
    /// - `ids`: `[b, n]`, `n` at most `max_position_embeddings`
    /// - returns: `[b, n, hidden_size]`
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let n = ids.dims()[1];
        let [positions, d] = self.position.weight.dims();
        assert!(n <= positions, "a sequence of {n} tokens is longer than the {positions} positions");
        let position = self.position.weight.val().narrow(0, 0, n).reshape([1, n, d]);
        let token_type = self.token_type.weight.val().narrow(0, 0, 1).reshape([1, 1, d]);
        self.norm.forward(self.word.forward(ids) + position + token_type)
    }
}

/// One post-norm transformer layer: self-attention, then the feed-forward block.
#[derive(Config, Debug)]
pub struct BertLayerConfig {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub layer_norm_eps: f64,
    pub initializer: Initializer,
}

impl BertLayerConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> BertLayer<B> {
        let linear = |d_input: usize, d_output: usize| {
            LinearConfig::new(d_input, d_output).with_initializer(self.initializer.clone()).init(device)
        };
        BertLayer {
            attention: BertAttentionConfig {
                hidden_size: self.hidden_size,
                num_heads: self.num_heads,
                layer_norm_eps: self.layer_norm_eps,
                initializer: self.initializer.clone(),
            }
            .init(device),
            intermediate: linear(self.hidden_size, self.intermediate_size),
            output: linear(self.intermediate_size, self.hidden_size),
            norm: LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub attention: BertAttention<B>,
    pub intermediate: Linear<B>,
    pub output: Linear<B>,
    pub norm: LayerNorm<B>,
}

impl<B: Backend> BertLayer<B> {
    /// # Shapes
    /// - `x`: `[b, n, hidden_size]`
    /// - `padding_mask`: `[b, n]`, true at padded positions
    /// - returns: `[b, n, hidden_size]`
    pub fn forward(&self, x: Tensor<B, 3>, padding_mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let x = self.attention.forward(x, padding_mask);
        let h = gelu(self.intermediate.forward(x.clone()));
        self.norm.forward(self.output.forward(h) + x)
    }
}

/// Multi-head self-attention with its output projection, residual and LayerNorm.
#[derive(Config, Debug)]
pub struct BertAttentionConfig {
    pub hidden_size: usize,
    pub num_heads: usize,
    pub layer_norm_eps: f64,
    pub initializer: Initializer,
}

impl BertAttentionConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> BertAttention<B> {
        let linear = || {
            LinearConfig::new(self.hidden_size, self.hidden_size)
                .with_initializer(self.initializer.clone())
                .init(device)
        };
        BertAttention {
            query: linear(),
            key: linear(),
            value: linear(),
            output: linear(),
            norm: LayerNormConfig::new(self.hidden_size).with_epsilon(self.layer_norm_eps).init(device),
            num_heads: self.num_heads,
        }
    }
}

#[derive(Module, Debug)]
pub struct BertAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub output: Linear<B>,
    pub norm: LayerNorm<B>,
    pub num_heads: usize,
}

impl<B: Backend> BertAttention<B> {
    /// Scaled dot-product attention over the tokens that are not padding (burn's attention
    /// op, scale 1/√head_dim), then `norm(output(context) + x)`.
    ///
    /// # Shapes
    /// - `x`: `[b, n, hidden_size]`
    /// - `padding_mask`: `[b, n]`, true at padded positions (masked as keys)
    /// - returns: `[b, n, hidden_size]`
    pub fn forward(&self, x: Tensor<B, 3>, padding_mask: Tensor<B, 2, Bool>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let h = self.num_heads;
        let heads = |t: Tensor<B, 3>| t.reshape([b, n, h, d / h]).swap_dims(1, 2); // [b, h, n, d/h]
        let q = heads(self.query.forward(x.clone()));
        let k = heads(self.key.forward(x.clone()));
        let v = heads(self.value.forward(x.clone()));
        let mask = padding_mask.reshape([b, 1, 1, n]).expand([b, h, n, n]);
        let context = attention(q, k, v, Some(mask), None, AttentionModuleOptions::default());
        let context = context.swap_dims(1, 2).reshape([b, n, d]);
        self.norm.forward(self.output.forward(context) + x)
    }
}
