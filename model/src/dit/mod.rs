//! The denoiser: a W.A.L.T-style window-attention latent transformer on a DiT backbone.
//!
//! Every latent frame is cut into `p × p` patches; learned spatial and temporal position
//! embeddings are added. Blocks alternate spatial-window self-attention (within a frame, or
//! `s × s` windows of it) and spatio-temporal-window self-attention (`t_w × s × s` windows),
//! each with a learned relative position bias, then cross-attend to the text tokens and run an
//! MLP; adaLN-Zero (or AdaLN-LoRA) modulates and gates every branch from the conditioning
//! vector `c = timestep embedding + projection of the pooled text`. The output is the
//! v-prediction for the noisy latents.
//!
//! **Long-range anchors** (Flexible Diffusion Models, Harvey et al. 2022): a window may start
//! with clean latent frames taken from much earlier in the stream. Such a frame's temporal
//! embedding comes from a second learned table indexed by its distance on a log scale
//! ([`anchor_bucket`]); the window's contiguous frames keep rows `0, 1, …` of the first
//! ([`FramePosition`], [`DenoiserInput::positions`]).
//!
//! The network sees only `(z_t, t, conditioning)`: [`DenoiserInput`]. Its input channels are
//! `[z_t, self-conditioning x̂, past-frame context, context mask]`, so
//! `in_channels = 3·latent_channels + 1`.
//!
//! **Null conditioning** for classifier-free guidance: text → [`TextCondition::null`] (one
//! all-zero token and a zero pooled embedding), or [`TextCondition::drop_where`] to null some
//! prompts of a batch; class labels → the extra label `num_classes`; past frames → no
//! [`FrameContext`] (or an all-false frame mask); self-conditioning → `None` (zeros).

mod block;
mod embed;
mod grow;
mod resize;
#[cfg(test)]
mod tests;
mod window;

pub use block::{CrossAttention, DitBlock, DitBlockConfig, LowRank, Modulation, WindowAttention, layer_norm, modulate};
pub use embed::{FinalLayer, TimestepEmbedding, patchify, timestep_features, unpatchify};
pub use window::{Extent, Partition};

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use crate::text::TextBatch;

/// Every zero-initialised layer of the denoiser is built here: the adaLN-Zero regressions of
/// the blocks (or the up-projections of AdaLN-LoRA and its shared projection) and the final
/// layer's modulation and projection. At init every block is therefore the identity and the
/// output is zero.
fn zero_linear<B: Backend>(d_input: usize, d_output: usize, bias: bool, device: &B::Device) -> Linear<B> {
    LinearConfig::new(d_input, d_output).with_bias(bias).with_initializer(Initializer::Zeros).init(device)
}

/// The text a clip is conditioned on, as [`crate::text::TextEncoder`] gives it.
#[derive(Clone, Debug)]
pub struct TextCondition<B: Backend> {
    /// `[b, n, d_text]`: the hidden state of every token.
    pub tokens: Tensor<B, 3>,
    /// `[b, n]`: true at padded tokens. Every prompt needs one token that is not padding.
    pub padding_mask: Tensor<B, 2, Bool>,
    /// `[b, d_text]`: the sentence embedding.
    pub pooled: Tensor<B, 2>,
}

impl<B: Backend> From<TextBatch<B>> for TextCondition<B> {
    fn from(batch: TextBatch<B>) -> TextCondition<B> {
        TextCondition { tokens: batch.hidden, padding_mask: batch.padding_mask, pooled: batch.pooled }
    }
}

impl<B: Backend> TextCondition<B> {
    /// The null prompt of classifier-free guidance: one all-zero token, zero pooled embedding.
    pub fn null(batch: usize, text_dim: usize, device: &B::Device) -> TextCondition<B> {
        TextCondition {
            tokens: Tensor::zeros([batch, 1, text_dim], device),
            padding_mask: Tensor::<B, 2, Int>::zeros([batch, 1], device).bool(),
            pooled: Tensor::zeros([batch, text_dim], device),
        }
    }

    /// Replaces the prompts where `drop` is true by the null prompt (its first token zero and
    /// unmasked, the rest masked): condition dropout for classifier-free guidance, or a
    /// conditional and an unconditional half in one batch. Equivalent to [`TextCondition::null`].
    ///
    /// # Shapes
    /// - `drop`: `[b]`
    pub fn drop_where(self, drop: Tensor<B, 1, Bool>) -> TextCondition<B> {
        let [b, n, d] = self.tokens.dims();
        let device = self.tokens.device();
        let tokens = self.tokens.mask_fill(drop.clone().reshape([b, 1, 1]).expand([b, n, d]), 0.0);
        let pooled = self.pooled.mask_fill(drop.clone().reshape([b, 1]).expand([b, d]), 0.0);
        let after_first: Vec<bool> = (0..n).map(|i| i > 0).collect();
        let after_first = Tensor::<B, 2, Bool>::from_data(TensorData::new(after_first, [1, n]), &device);
        let drop = drop.reshape([b, 1]).expand([b, n]);
        let padding_mask =
            self.padding_mask.bool_and(drop.clone().bool_not()).bool_or(drop.bool_and(after_first.expand([b, n])));
        TextCondition { tokens, padding_mask, pooled }
    }
}

/// What the clip is conditioned on besides its past frames.
#[derive(Clone, Debug)]
pub enum Condition<B: Backend> {
    /// A prompt, for a model with `num_classes: None`.
    Text(TextCondition<B>),
    /// `[b]` class labels in `0..=num_classes` (`num_classes` is the null label), for a
    /// class-conditional model.
    Class(Tensor<B, 1, Int>),
}

/// Clean latents of the frames given as context (past frames), W.A.L.T's frame prediction.
#[derive(Clone, Debug)]
pub struct FrameContext<B: Backend> {
    /// `[b, c_lat, t, h, w]`; frames outside `frame_mask` are ignored.
    pub latents: Tensor<B, 5>,
    /// `[b, t]`: true where the frame is given.
    pub frame_mask: Tensor<B, 2, Bool>,
}

/// Where a frame of a window sits in its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramePosition {
    /// The `i`-th frame of the window's contiguous run (recent context and frames to
    /// generate): row `i` of the temporal position table.
    Frame(usize),
    /// A long-range anchor `distance ≥ 1` latent frames before the contiguous run's first frame:
    /// row [`anchor_bucket`]`(distance)` of the anchor position table.
    Anchor { distance: usize },
}

/// The anchor table's row for an anchor `distance` latent frames before the contiguous run:
/// `⌊log₂ distance⌋`, the last row standing for everything further (`buckets` rows).
pub fn anchor_bucket(distance: usize, buckets: usize) -> usize {
    (distance.max(1).ilog2() as usize).min(buckets.saturating_sub(1))
}

impl FramePosition {
    /// The positions of a window of `anchors` (each `distance` frames before the run) followed
    /// by a contiguous run of `frames`.
    pub fn window(anchors: &[usize], frames: usize) -> Vec<FramePosition> {
        let anchors = anchors.iter().map(|&distance| FramePosition::Anchor { distance });
        anchors.chain((0..frames).map(FramePosition::Frame)).collect()
    }
}

/// Everything the denoiser sees.
#[derive(Clone, Debug)]
pub struct DenoiserInput<B: Backend> {
    /// `[b, c_lat, t, h, w]`: the noisy latents.
    pub z_t: Tensor<B, 5>,
    /// `[b]`: diffusion time in `[0, 1]`.
    pub t: Tensor<B, 1>,
    /// `[b, c_lat, t, h, w]`: the previous estimate of the clean latents (self-conditioning);
    /// `None` feeds zeros.
    pub self_cond: Option<Tensor<B, 5>>,
    /// Past frames given clean; `None` feeds zeros and an all-zero mask.
    pub context: Option<FrameContext<B>>,
    pub condition: Condition<B>,
    /// Where each of the `t` frames sits, per clip (`b` lists of `t`); `None`: a contiguous
    /// window, `Frame(0), …, Frame(t − 1)`.
    pub positions: Option<Vec<Vec<FramePosition>>>,
}

/// The denoiser. Presets: [`DenoiserConfig::tiny`], [`DenoiserConfig::small`],
/// [`DenoiserConfig::base`], and DiT-S/2 ([`DenoiserConfig::dit_s2`]) as a reference.
#[derive(Config, Debug)]
pub struct DenoiserConfig {
    /// Channels of the VAE latents (input and output).
    #[config(default = 4)]
    pub latent_channels: usize,
    /// Side of the square patches every latent frame is cut into.
    #[config(default = 2)]
    pub patch_size: usize,
    /// Width of the tokens.
    #[config(default = 192)]
    pub hidden_size: usize,
    /// Number of blocks; even blocks attend within frames, odd ones across frames.
    #[config(default = 4)]
    pub depth: usize,
    /// Attention heads; divides `hidden_size`.
    #[config(default = 3)]
    pub num_heads: usize,
    /// Width of the MLPs as a multiple of `hidden_size`.
    #[config(default = 4)]
    pub mlp_ratio: usize,
    /// The most latent frames of a clip: rows of the temporal position table.
    #[config(default = 16)]
    pub max_frames: usize,
    /// The largest latent height and width: the spatial position table covers
    /// `max_latent_size / patch_size` squared patches.
    #[config(default = 32)]
    pub max_latent_size: usize,
    /// Side in patches of the spatial blocks' windows; `None`: the whole frame.
    #[config(default = "None")]
    pub spatial_window: Option<usize>,
    /// Frames of the spatio-temporal blocks' windows (the last window of a clip whose length
    /// it does not divide is padded, the padding masked).
    #[config(default = 4)]
    pub temporal_window: usize,
    /// Side in patches of the spatio-temporal blocks' windows; `None`: the whole frame.
    #[config(default = "None")]
    pub spatiotemporal_window: Option<usize>,
    /// Width of the text encoder's states (all-MiniLM-L6-v2: 384).
    #[config(default = 384)]
    pub text_dim: usize,
    /// `Some(k)`: a class-conditional model with `k` classes (label `k` is the null class) and
    /// no text: the label embedding replaces the pooled text in `c` and there is no
    /// cross-attention.
    #[config(default = "None")]
    pub num_classes: Option<usize>,
    /// `Some(r)`: AdaLN-LoRA, one shared adaLN projection plus a rank-`r` term per block.
    #[config(default = "None")]
    pub ada_ln_lora_rank: Option<usize>,
    /// Sinusoidal features of the timestep embedding.
    #[config(default = 256)]
    pub frequency_dim: usize,
    /// Epsilon of the parameter-free LayerNorms.
    #[config(default = 1e-6)]
    pub norm_eps: f64,
    /// Rows of the long-range anchor position table (anchors up to `2^rows` latent frames
    /// apart are told apart); 0: no anchors.
    #[config(default = 8)]
    pub anchor_buckets: usize,
}

impl DenoiserConfig {
    /// Real time on 2 CPU cores at 128² (16 × 16 × 4 latents): 4 blocks, 192 wide, 3 heads,
    /// patch 2, spatio-temporal windows of 4 whole frames.
    pub fn tiny() -> DenoiserConfig {
        DenoiserConfig::new()
    }

    /// A GPU model, DiT-S-sized: 12 blocks, 384 wide, 6 heads, patch 2, latents up to 64²;
    /// spatial blocks attend within whole frames, spatio-temporal blocks within 5 × 8 × 8
    /// windows (W.A.L.T's), so latent sides must be multiples of 16 (or at most 16).
    pub fn small() -> DenoiserConfig {
        DenoiserConfig::new()
            .with_hidden_size(384)
            .with_depth(12)
            .with_num_heads(6)
            .with_max_latent_size(64)
            .with_temporal_window(5)
            .with_spatiotemporal_window(Some(8))
    }

    /// The shipped GPU tier at 256² (32 × 32 latents): [`DenoiserConfig::small`]'s windows at
    /// 256 wide, 4 heads and 8 blocks (14 M parameters), so that both tiers' weights fit the
    /// 48 MB the repository ships in f16.
    pub fn medium() -> DenoiserConfig {
        DenoiserConfig::small().with_hidden_size(256).with_num_heads(4).with_depth(8)
    }

    /// A GPU model, DiT-B-sized: 12 blocks, 768 wide, 12 heads, with AdaLN-LoRA of rank 2
    /// (W.A.L.T's); windows as [`DenoiserConfig::small`].
    pub fn base() -> DenoiserConfig {
        DenoiserConfig::small().with_hidden_size(768).with_num_heads(12).with_ada_ln_lora_rank(Some(2))
    }

    /// DiT-S/2 of the DiT paper, for reference: image-only (one frame), 32 × 32 × 4 latents,
    /// 12 blocks, 384 wide, 6 heads, patch 2, whole-frame attention, 1000 class labels.
    pub fn dit_s2() -> DenoiserConfig {
        DenoiserConfig::new()
            .with_hidden_size(384)
            .with_depth(12)
            .with_num_heads(6)
            .with_max_frames(1)
            .with_temporal_window(1)
            .with_num_classes(Some(1000))
            .with_anchor_buckets(0)
    }

    /// Channels of the input: noisy latents, self-conditioning, context and its mask.
    pub fn in_channels(&self) -> usize {
        3 * self.latent_channels + 1
    }

    fn max_grid(&self) -> [usize; 3] {
        let side = self.max_latent_size / self.patch_size;
        [self.max_frames, side, side]
    }

    /// The modulations (shift, scale, gate ×3 or ×2) of every block.
    fn num_modulations(&self) -> usize {
        if self.num_classes.is_some() { 6 } else { 9 }
    }

    /// Block `i`: spatial windows when `i` is even, spatio-temporal ones when odd.
    pub fn block(&self, i: usize) -> DitBlockConfig {
        let (window_frames, window_side) = if i.is_multiple_of(2) {
            (1, self.spatial_window)
        } else {
            (self.temporal_window, self.spatiotemporal_window)
        };
        DitBlockConfig::new(self.hidden_size, self.num_heads, window_frames, self.max_grid())
            .with_window_side(window_side)
            .with_text_dim(self.num_classes.is_none().then_some(self.text_dim))
            .with_mlp_ratio(self.mlp_ratio)
            .with_ada_ln_lora_rank(self.ada_ln_lora_rank)
            .with_norm_eps(self.norm_eps)
    }

    /// Parameters of the model, as [`Module::num_params`] counts them.
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let [frames, height, width] = self.max_grid();
        let patch = self.in_channels() * self.patch_size.pow(2) * d + d;
        let positions = (frames + height * width + self.anchor_buckets) * d;
        let time = self.frequency_dim * d + d + d * d + d;
        let condition = match self.num_classes {
            Some(k) => (k + 1) * d,
            None => self.text_dim * d + d,
        };
        let n_mod = self.num_modulations() * d;
        let shared = self.ada_ln_lora_rank.map_or(0, |_| d * n_mod + n_mod);
        let blocks: usize = (0..self.depth).map(|i| self.block(i).num_params()).sum();
        let out = self.latent_channels * self.patch_size.pow(2);
        let last = d * 2 * d + 2 * d + d * out + out;
        patch + positions + time + condition + shared + blocks + last
    }

    /// Floating-point operations (GFLOPs, 2 per multiply-add) of the matrix products of one
    /// forward pass of one clip of `frames × height × width` latents with `text_tokens` tokens
    /// of text; elementwise work is left out.
    pub fn gflops(&self, frames: usize, height: usize, width: usize, text_tokens: usize) -> f64 {
        let p = self.patch_size;
        let grid = Extent::new(frames, height / p, width / p);
        let (n, d) = (grid.volume() as f64, self.hidden_size as f64);
        let conditioning = (self.frequency_dim as f64 * d + d * d + self.text_dim as f64 * d)
            + self.ada_ln_lora_rank.map_or(0.0, |_| d * self.num_modulations() as f64 * d);
        let mut macs = n * (self.in_channels() * p * p) as f64 * d + conditioning;
        for i in 0..self.depth {
            let block = self.block(i);
            let partition = Partition::new(grid, block.window_frames, block.window_side);
            let l = partition.window.volume() as f64;
            let windows = (partition.num_windows() as f64) * l;
            let attention = n * 4.0 * d * d + windows * 2.0 * l * d;
            let cross = block.text_dim.map_or(0.0, |dt| {
                let m = text_tokens as f64;
                2.0 * n * d * d + m * dt as f64 * 2.0 * d + 2.0 * n * m * d
            });
            let mlp = 2.0 * n * d * (self.mlp_ratio as f64 * d);
            let modulation = match self.ada_ln_lora_rank {
                Some(r) => (d + (self.num_modulations() as f64) * d) * r as f64,
                None => d * self.num_modulations() as f64 * d,
            };
            macs += attention + cross + mlp + modulation;
        }
        macs += 2.0 * d * d + n * d * (self.latent_channels * p * p) as f64;
        2.0 * macs / 1e9
    }

    /// A denoiser that outputs zeros at init, every block the identity.
    ///
    /// # Panics
    /// If `num_heads` does not divide `hidden_size`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Denoiser<B> {
        let d = self.hidden_size;
        let [frames, height, width] = self.max_grid();
        let table = Initializer::Normal { mean: 0.0, std: 0.02 };
        let n_mod = self.num_modulations() * d;
        Denoiser {
            patch_embedding: LinearConfig::new(self.in_channels() * self.patch_size.pow(2), d)
                .with_initializer(Initializer::XavierUniform { gain: 1.0 })
                .init(device),
            spatial_position: table.init([height, width, d], device),
            temporal_position: table.init([frames, d], device),
            anchor_position: (self.anchor_buckets > 0).then(|| table.init([self.anchor_buckets, d], device)),
            time_embedding: TimestepEmbedding::new(self.frequency_dim, d, device),
            text_projection: self
                .num_classes
                .is_none()
                .then(|| LinearConfig::new(self.text_dim, d).with_initializer(table.clone()).init(device)),
            class_embedding: self
                .num_classes
                .map(|k| EmbeddingConfig::new(k + 1, d).with_initializer(table.clone()).init(device)),
            shared_modulation: self.ada_ln_lora_rank.map(|_| zero_linear(d, n_mod, true, device)),
            blocks: (0..self.depth).map(|i| self.block(i).init(device)).collect(),
            final_layer: FinalLayer::new(d, self.latent_channels * self.patch_size.pow(2), self.norm_eps, device),
            latent_channels: self.latent_channels,
            patch_size: self.patch_size,
        }
    }
}

/// The denoiser; see [`DenoiserConfig`] and the module documentation.
#[derive(Module, Debug)]
pub struct Denoiser<B: Backend> {
    /// Per-frame patchify: a linear map of each `p × p` patch of all input channels.
    pub patch_embedding: Linear<B>,
    /// `[max_h/p, max_w/p, d]`
    pub spatial_position: Param<Tensor<B, 3>>,
    /// `[max_frames, d]`
    pub temporal_position: Param<Tensor<B, 2>>,
    /// `[anchor_buckets, d]`: the temporal embedding of long-range anchors.
    pub anchor_position: Option<Param<Tensor<B, 2>>>,
    pub time_embedding: TimestepEmbedding<B>,
    /// Pooled text → `c` (text-conditional models).
    pub text_projection: Option<Linear<B>>,
    /// Class label → `c` (class-conditional models).
    pub class_embedding: Option<Embedding<B>>,
    /// The shared projection `W·c` of AdaLN-LoRA.
    pub shared_modulation: Option<Linear<B>>,
    pub blocks: Vec<DitBlock<B>>,
    pub final_layer: FinalLayer<B>,
    #[module(skip)]
    pub latent_channels: usize,
    #[module(skip)]
    pub patch_size: usize,
}

impl<B: Backend> DenoiserInput<B> {
    /// The batch cut into `n` equal consecutive parts, each a whole input.
    ///
    /// # Panics
    /// If the batch does not divide by `n`, or the condition is not a text.
    pub fn split(self, n: usize) -> Vec<DenoiserInput<B>> {
        let b = self.z_t.dims()[0];
        assert!(n > 0 && b.is_multiple_of(n), "a batch of {b} in {n} equal parts");
        let Condition::Text(text) = self.condition else { panic!("splitting a class-conditional batch") };
        let tokens = text.tokens.chunk(n, 0);
        let masks = text.padding_mask.chunk(n, 0);
        let pooled = text.pooled.chunk(n, 0);
        let z = self.z_t.chunk(n, 0);
        let t = self.t.chunk(n, 0);
        let mut self_cond = self.self_cond.map(|s| s.chunk(n, 0).into_iter());
        let mut context = self.context.map(|c| c.latents.chunk(n, 0).into_iter().zip(c.frame_mask.chunk(n, 0)));
        let mut positions = self.positions.map(|p| p.chunks(b / n).map(<[_]>::to_vec).collect::<Vec<_>>().into_iter());
        z.into_iter()
            .zip(t)
            .zip(tokens.into_iter().zip(masks).zip(pooled))
            .map(|((z_t, t), ((tokens, padding_mask), pooled))| DenoiserInput {
                z_t,
                t,
                self_cond: self_cond.as_mut().and_then(Iterator::next),
                context: context
                    .as_mut()
                    .and_then(Iterator::next)
                    .map(|(latents, frame_mask)| FrameContext { latents, frame_mask }),
                condition: Condition::Text(TextCondition { tokens, padding_mask, pooled }),
                positions: positions.as_mut().and_then(Iterator::next),
            })
            .collect()
    }
}

impl<B: Backend> Denoiser<B> {
    /// `[b, t, d]`: the temporal embedding of every frame of every clip.
    ///
    /// # Panics
    /// If a clip has not `t` positions, a frame index is out of the table, or the model has no
    /// anchor table and is given an anchor.
    fn temporal_embedding(&self, positions: &[Vec<FramePosition>], t: usize) -> Tensor<B, 3> {
        let [max_frames, d] = self.temporal_position.dims();
        let buckets = self.anchor_position.as_ref().map_or(0, |a| a.dims()[0]);
        let rows: Vec<i64> = positions
            .iter()
            .flat_map(|clip| {
                assert_eq!(clip.len(), t, "{} positions for a window of {t} frames", clip.len());
                clip.iter().map(|&position| match position {
                    FramePosition::Frame(i) => {
                        assert!(i < max_frames, "frame {i} is outside the {max_frames}-row position table");
                        i as i64
                    }
                    FramePosition::Anchor { distance } => {
                        assert!(buckets > 0, "this denoiser was built without anchors");
                        (max_frames + anchor_bucket(distance, buckets)) as i64
                    }
                })
            })
            .collect();
        let device = self.temporal_position.device();
        let table = match &self.anchor_position {
            Some(anchors) => Tensor::cat(vec![self.temporal_position.val(), anchors.val()], 0),
            None => self.temporal_position.val(),
        };
        let n = rows.len();
        table.select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [n]), &device)).reshape([n / t, t, d])
    }

    /// The v-prediction for the noisy latents.
    ///
    /// # Shapes
    /// - `input.z_t`, `input.self_cond`, `input.context.latents`: `[b, c_lat, t, h, w]`,
    ///   `t ≤ max_frames`, `h` and `w` multiples of `patch_size` up to `max_latent_size`
    /// - `input.t`: `[b]`; `input.context.frame_mask`: `[b, t]`
    /// - text: tokens `[b, n, d_text]`, padding mask `[b, n]`, pooled `[b, d_text]`;
    ///   class labels: `[b]`
    /// - returns: `[b, c_lat, t, h, w]`
    ///
    /// # Panics
    /// If a shape is out of the config's range, or the condition is of the wrong kind.
    pub fn forward(&self, input: DenoiserInput<B>) -> Tensor<B, 5> {
        let DenoiserInput { z_t, t: time, self_cond, context, condition, positions } = input;
        let [b, c, t, h, w] = z_t.dims();
        let device = z_t.device();
        let p = self.patch_size;
        let [max_frames, max_h, max_w, d] = {
            let [frames, d] = self.temporal_position.dims();
            let [gh, gw, _] = self.spatial_position.dims();
            [frames, gh, gw, d]
        };
        assert!(c == self.latent_channels, "latents of {c} channels, the model takes {}", self.latent_channels);
        assert!(
            t <= max_frames && h.is_multiple_of(p) && w.is_multiple_of(p) && h / p <= max_h && w / p <= max_w,
            "latents of {t} × {h} × {w} do not fit {max_frames} frames of {max_h} × {max_w} patches of {p}"
        );
        let grid = Extent::new(t, h / p, w / p);

        let zeros = || Tensor::<B, 5>::zeros([b, c, t, h, w], &device);
        let self_cond = self_cond.unwrap_or_else(zeros);
        let (context, mask) = match context {
            Some(FrameContext { latents, frame_mask }) => {
                let mask = frame_mask.float().reshape([b, 1, t, 1, 1]); // [b, 1, t, 1, 1]
                (latents * mask.clone(), mask.expand([b, 1, t, h, w]))
            }
            None => (zeros(), Tensor::zeros([b, 1, t, h, w], &device)),
        };
        let x = Tensor::cat(vec![z_t, self_cond, context, mask], 1); // [b, 3c+1, t, h, w]

        let x = self.patch_embedding.forward(patchify(x, p)); // [b, t*gh*gw, d]
        let spatial = self.spatial_position.val().narrow(0, 0, grid.height).narrow(1, 0, grid.width);
        let spatial = spatial.reshape([1, 1, grid.height * grid.width, d]); // [1, 1, gh*gw, d]
        let x = x.reshape([b, t, grid.height * grid.width, d]) + spatial; // [b, t, gh*gw, d]
        let x = match positions {
            None => x + self.temporal_position.val().narrow(0, 0, t).reshape([1, t, 1, d]),
            Some(positions) => x + self.temporal_embedding(&positions, t).reshape([b, t, 1, d]),
        };
        let mut x = x.reshape([b, grid.volume(), d]);

        let time = self.time_embedding.forward(time);
        let (c, text) = match (condition, &self.text_projection, &self.class_embedding) {
            (Condition::Text(text), Some(projection), None) => {
                (time + projection.forward(text.pooled.clone()), Some(text))
            }
            (Condition::Class(labels), None, Some(embedding)) => {
                (time + embedding.forward(labels.reshape([b, 1])).reshape([b, d]), None)
            }
            (Condition::Text(_), ..) => panic!("a class-conditional model was given text"),
            (Condition::Class(_), ..) => panic!("a text-conditional model was given class labels"),
        };
        let c = silu(c); // [b, d]
        let shared = self.shared_modulation.as_ref().map(|m| m.forward(c.clone()));
        for block in &self.blocks {
            x = block.forward(x, grid, c.clone(), shared.clone(), text.as_ref());
        }
        let x = self.final_layer.forward(x, c); // [b, t*gh*gw, c*p*p]
        unpatchify(x, p, [grid.frames, grid.height, grid.width])
    }
}
