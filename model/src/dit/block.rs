//! One denoiser block: window self-attention, cross-attention to the text and an MLP, each a
//! residual branch modulated and gated by adaLN-Zero.

use super::window::{Extent, Partition};
use super::{TextCondition, zero_linear};
use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::{Int, Tensor, TensorData};

/// How the weights of the attention and MLP projections are drawn (DiT: Xavier uniform).
const WEIGHT_INIT: Initializer = Initializer::XavierUniform { gain: 1.0 };

/// A linear layer with [`WEIGHT_INIT`] weights and zero biases.
fn linear<B: Backend>(d_input: usize, d_output: usize, bias: bool, device: &B::Device) -> Linear<B> {
    let mut layer = LinearConfig::new(d_input, d_output).with_bias(bias).with_initializer(WEIGHT_INIT).init(device);
    layer.bias = layer.bias.map(|b| b.map(|b| b.zeros_like()));
    layer
}

/// LayerNorm over the last axis without a learned scale and shift (adaLN supplies them).
pub fn layer_norm<B: Backend, const D: usize>(x: Tensor<B, D>, eps: f64) -> Tensor<B, D> {
    let mean = x.clone().mean_dim(D - 1);
    let x = x - mean;
    let var = x.clone().square().mean_dim(D - 1);
    x / var.add_scalar(eps).sqrt()
}

/// adaLN's modulation `x·(1 + scale) + shift`, one shift and scale per sample.
///
/// # Shapes
/// - `x`: `[b, n, d]`
/// - `shift`, `scale`: `[b, d]`
/// - returns: `[b, n, d]`
///
/// Shift and scale go through [`per_token`].
pub fn modulate<B: Backend>(x: Tensor<B, 3>, shift: Tensor<B, 2>, scale: Tensor<B, 2>) -> Tensor<B, 3> {
    let n = x.dims()[1];
    x * per_token(scale.add_scalar(1.0), n) + per_token(shift, n)
}

/// A per-sample vector `[b, d]` as `[b, n, d]`, to combine with `n` tokens, repeated when
/// `b > 1`. The CPU backend (flex) walks a `[b, 1, d]` operand broadcast over `[b, n, d]`
/// element by element (adaLN's modulation and gates took 12 % of a 128² chunk's time in a
/// profile); a copy and a contiguous SIMD pass cost far less. One sample's `[1, 1, d]` is
/// flex's shared-row fast path as it is.
pub fn per_token<B: Backend>(p: Tensor<B, 2>, n: usize) -> Tensor<B, 3> {
    let p = p.unsqueeze_dim::<3>(1);
    if p.dims()[0] == 1 { p } else { p.repeat_dim(1, n) }
}

/// One block of the denoiser.
#[derive(Config, Debug)]
pub struct DitBlockConfig {
    /// Width of the tokens.
    pub hidden_size: usize,
    /// Attention heads; divides `hidden_size`.
    pub num_heads: usize,
    /// Width of the MLP as a multiple of `hidden_size`.
    #[config(default = 4)]
    pub mlp_ratio: usize,
    /// Frames of a self-attention window (1: spatial attention within each frame).
    pub window_frames: usize,
    /// Side of a self-attention window in tokens; `None`: the whole frame.
    #[config(default = "None")]
    pub window_side: Option<usize>,
    /// The largest token grid the block will see (latent frames × rows × columns of patches);
    /// sizes the relative position bias table.
    pub max_grid: [usize; 3],
    /// Width of the text states cross-attention reads; `None`: no cross-attention.
    #[config(default = "None")]
    pub text_dim: Option<usize>,
    /// Rank of the block's own AdaLN-LoRA term; `None`: a full per-block adaLN regression.
    #[config(default = "None")]
    pub ada_ln_lora_rank: Option<usize>,
    /// Epsilon of the parameter-free LayerNorms.
    #[config(default = 1e-6)]
    pub norm_eps: f64,
}

impl DitBlockConfig {
    /// Shift, scale and gate for each residual branch: attention, MLP, and cross-attention
    /// when there is one.
    pub fn num_modulations(&self) -> usize {
        if self.text_dim.is_some() { 9 } else { 6 }
    }

    /// The box of relative offsets the bias table covers: the largest window.
    pub fn relative_table(&self) -> Extent {
        let [frames, height, width] = self.max_grid;
        let side = |n: usize| self.window_side.map_or(n, |s| s.min(n));
        Extent::new(self.window_frames.clamp(1, frames), side(height), side(width))
    }

    /// Parameters of the block, as [`Module::num_params`] counts them.
    pub fn num_params(&self) -> usize {
        let d = self.hidden_size;
        let n_mod = self.num_modulations() * d;
        let attention = d * 3 * d + 3 * d + d * d + d + self.relative_table().relative_offsets() * self.num_heads;
        let cross = self.text_dim.map_or(0, |dt| d * d + d + dt * 2 * d + 2 * d + d * d + d);
        let mlp = 2 * d * self.mlp_ratio * d + self.mlp_ratio * d + d;
        let modulation = match self.ada_ln_lora_rank {
            Some(r) => d * r + r * n_mod,
            None => d * n_mod + n_mod,
        };
        attention + cross + mlp + modulation
    }

    /// A block that is the identity at init (its adaLN regression is zero).
    ///
    /// # Panics
    /// If `num_heads` does not divide `hidden_size`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DitBlock<B> {
        let d = self.hidden_size;
        assert!(
            self.num_heads > 0 && d.is_multiple_of(self.num_heads),
            "{} heads do not divide the hidden size {d}",
            self.num_heads
        );
        let table = self.relative_table();
        let n_mod = self.num_modulations() * d;
        DitBlock {
            attention: WindowAttention {
                qkv: linear(d, 3 * d, true, device),
                output: linear(d, d, true, device),
                relative_bias: Initializer::Normal { mean: 0.0, std: 0.02 }
                    .init([table.relative_offsets(), self.num_heads], device),
                num_heads: self.num_heads,
                window_frames: self.window_frames,
                window_side: self.window_side,
                table,
            },
            cross_attention: self.text_dim.map(|dt| CrossAttention {
                query: linear(d, d, true, device),
                key_value: linear(dt, 2 * d, true, device),
                output: linear(d, d, true, device),
                num_heads: self.num_heads,
            }),
            mlp_in: linear(d, self.mlp_ratio * d, true, device),
            mlp_out: linear(self.mlp_ratio * d, d, true, device),
            modulation: match self.ada_ln_lora_rank {
                None => Modulation::Full(zero_linear(d, n_mod, true, device)),
                Some(r) => Modulation::LowRank(LowRank {
                    down: linear(d, r, false, device),
                    up: zero_linear(r, n_mod, false, device),
                }),
            },
            norm_eps: self.norm_eps,
        }
    }
}

/// The regression from the conditioning vector to a block's shifts, scales and gates.
// One per block: the size of the larger variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum Modulation<B: Backend> {
    /// adaLN-Zero: a linear map of its own, zero-initialised.
    Full(Linear<B>),
    /// AdaLN-LoRA: the low-rank term added to the shared projection.
    LowRank(LowRank<B>),
}

/// The per-block term `up(down(c))` of AdaLN-LoRA; `up` is zero-initialised.
#[derive(Module, Debug)]
pub struct LowRank<B: Backend> {
    pub down: Linear<B>,
    pub up: Linear<B>,
}

/// A block of the denoiser; see [`DitBlockConfig`].
#[derive(Module, Debug)]
pub struct DitBlock<B: Backend> {
    pub attention: WindowAttention<B>,
    pub cross_attention: Option<CrossAttention<B>>,
    pub mlp_in: Linear<B>,
    pub mlp_out: Linear<B>,
    pub modulation: Modulation<B>,
    #[module(skip)]
    pub norm_eps: f64,
}

impl<B: Backend> DitBlock<B> {
    /// `x + gate·branch(modulate(norm(x), shift, scale))` for self-attention, cross-attention
    /// and the MLP in turn.
    ///
    /// # Shapes
    /// - `x`: `[b, t*h*w, d]`, tokens of a `grid` of `t × h × w` patches
    /// - `c`: `[b, d]`, the conditioning vector after SiLU
    /// - `shared`: `[b, k*d]`, the shared AdaLN-LoRA projection of `c` (`k` = 9 with
    ///   cross-attention, 6 without); only for a block built with `ada_ln_lora_rank`
    /// - `text`: `[b, n, d_text]` states; only for a block with cross-attention
    /// - returns: `[b, t*h*w, d]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        grid: Extent,
        c: Tensor<B, 2>,
        shared: Option<Tensor<B, 2>>,
        text: Option<&TextCondition<B>>,
    ) -> Tensor<B, 3> {
        let params = match (&self.modulation, shared) {
            (Modulation::Full(linear), None) => linear.forward(c),
            (Modulation::LowRank(lora), Some(shared)) => shared + lora.up.forward(lora.down.forward(c)),
            (Modulation::Full(_), Some(_)) => panic!("a block with its own adaLN regression was given a shared one"),
            (Modulation::LowRank(_), None) => panic!("an AdaLN-LoRA block needs the shared projection"),
        };
        let k = if self.cross_attention.is_some() { 9 } else { 6 };
        // Per branch (self-attention, [cross-attention,] MLP): shift, scale, gate, each [b, d].
        let mut m = params.chunk(k, 1).into_iter();
        let mut next = || m.next().expect("the regression has k·d outputs");
        let eps = self.norm_eps;
        let residual = |x: Tensor<B, 3>,
                        [shift, scale, gate]: [Tensor<B, 2>; 3],
                        branch: &dyn Fn(Tensor<B, 3>) -> Tensor<B, 3>| {
            let n = x.dims()[1];
            x.clone() + branch(modulate(layer_norm(x, eps), shift, scale)) * per_token(gate, n)
        };

        let x = residual(x, [next(), next(), next()], &|h| self.attention.forward(h, grid));
        let x = match (&self.cross_attention, text) {
            (Some(cross), Some(text)) => residual(x, [next(), next(), next()], &|h| cross.forward(h, text)),
            (None, None) => x,
            (Some(_), None) => panic!("a block with cross-attention needs the text states"),
            (None, Some(_)) => panic!("a block without cross-attention was given text states"),
        };
        residual(x, [next(), next(), next()], &|h| self.mlp_out.forward(crate::cpu::gelu(self.mlp_in.forward(h))))
    }
}

/// Multi-head self-attention within non-overlapping windows, with a learned relative position
/// bias per head.
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    /// Queries, keys and values, in that order along the output.
    pub qkv: Linear<B>,
    pub output: Linear<B>,
    /// `[(2·tw−1)(2·wh−1)(2·ww−1), heads]`: one bias per relative offset (dt, dy, dx) over
    /// the largest window and head.
    pub relative_bias: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub num_heads: usize,
    #[module(skip)]
    pub window_frames: usize,
    #[module(skip)]
    pub window_side: Option<usize>,
    /// The box `relative_bias` covers.
    #[module(skip)]
    pub table: Extent,
}

impl<B: Backend> WindowAttention<B> {
    /// # Shapes
    /// - `x`: `[b, t*h*w, d]`, tokens of a `grid` of `t × h × w` patches
    /// - returns: `[b, t*h*w, d]`
    pub fn forward(&self, x: Tensor<B, 3>, grid: Extent) -> Tensor<B, 3> {
        let device = x.device();
        let partition = Partition::new(grid, self.window_frames, self.window_side);
        let windows = partition.partition(x); // [b*nwin, l, d]
        let [bw, l, d] = windows.dims();
        let h = self.num_heads;
        let qkv = self.qkv.forward(windows);
        let (q, k, v) = if crate::cpu::on_cpu::<B>() {
            // [3, b*nwin, h, l, d/h] in one copy of whole rows: q, k and v each contiguous.
            let qkv = crate::cpu::permute_rows(qkv.reshape([bw, l, 3, h, d / h]), [2, 0, 3, 1, 4]);
            let part = |i| qkv.clone().narrow(0, i, 1).reshape([bw, h, l, d / h]);
            (part(0), part(1), part(2))
        } else {
            let qkv = qkv.reshape([bw, l, 3 * h, d / h]).swap_dims(1, 2); // [b*nwin, 3h, l, d/h]
            (qkv.clone().narrow(1, 0, h), qkv.clone().narrow(1, h, h), qkv.narrow(1, 2 * h, h))
        };

        let index = partition.relative_index(self.table);
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [l * l]), &device);
        let bias = self.relative_bias.val().select(0, index).reshape([l, l, h]).permute([2, 0, 1]); // [h, l, l]
        // Repeated, not expanded: a stride-0 (and permuted) bias is added element by element on
        // the CPU backend.
        let bias = bias.unsqueeze_dim::<4>(0).repeat_dim(0, bw);
        let mask = partition.key_padding_mask::<B>(&device).map(|mask| {
            let nwin = partition.num_windows();
            let mask = mask.reshape([1, nwin, 1, 1, l]).expand([bw / nwin, nwin, h, l, l]); // [b, nwin, h, l, l]
            mask.reshape([bw, h, l, l])
        });

        let context = attention(q, k, v, mask, Some(bias), AttentionModuleOptions::default()); // [b*nwin, h, l, d/h]
        let context = crate::cpu::permute_rows(context, [0, 2, 1, 3]).reshape([bw, l, d]);
        partition.merge(self.output.forward(context))
    }
}

/// Multi-head cross-attention from the video tokens to the text tokens.
#[derive(Module, Debug)]
pub struct CrossAttention<B: Backend> {
    pub query: Linear<B>,
    /// Keys and values, in that order along the output.
    pub key_value: Linear<B>,
    pub output: Linear<B>,
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> CrossAttention<B> {
    /// Padded text tokens are masked as keys.
    ///
    /// # Shapes
    /// - `x`: `[b, n, d]`
    /// - `text.tokens`: `[b, m, d_text]`, `text.padding_mask`: `[b, m]`
    /// - returns: `[b, n, d]`
    pub fn forward(&self, x: Tensor<B, 3>, text: &TextCondition<B>) -> Tensor<B, 3> {
        let [b, n, d] = x.dims();
        let m = text.tokens.dims()[1];
        let h = self.num_heads;
        let q = crate::cpu::permute_rows(self.query.forward(x).reshape([b, n, h, d / h]), [0, 2, 1, 3]); // [b, h, n, d/h]
        let kv = self.key_value.forward(text.tokens.clone()).reshape([b, m, 2 * h, d / h]).swap_dims(1, 2); // [b, 2h, m, d/h]
        let (k, v) = (kv.clone().narrow(1, 0, h), kv.narrow(1, h, h));
        let mask = text.padding_mask.clone().reshape([b, 1, 1, m]).expand([b, h, n, m]);
        let context = attention(q, k, v, Some(mask), None, AttentionModuleOptions::default()); // [b, h, n, d/h]
        self.output.forward(crate::cpu::permute_rows(context, [0, 2, 1, 3]).reshape([b, n, d]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    #[test]
    fn modulate_is_the_broadcast_formula_for_one_and_several_samples() {
        let device = Default::default();
        for b in [1, 3] {
            let x = Tensor::<Flex, 3>::random([b, 7, 6], Distribution::Normal(0.0, 1.0), &device);
            let shift = Tensor::<Flex, 2>::random([b, 6], Distribution::Normal(0.0, 1.0), &device);
            let scale = Tensor::<Flex, 2>::random([b, 6], Distribution::Normal(0.0, 1.0), &device);
            let expected =
                x.clone() * scale.clone().unsqueeze_dim::<3>(1).add_scalar(1.0) + shift.clone().unsqueeze_dim(1);
            let d = (modulate(x, shift, scale) - expected).abs().max().into_scalar();
            assert!(d < 1e-6, "batch {b}: modulate differs by {d}");
        }
    }
}
