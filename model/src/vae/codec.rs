//! The encoder and the decoder. Both are causal in time: an output frame depends only on input
//! frames at or before it.

use burn::module::{Module, Param};
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;

use super::VaeConfig;
use super::layers::{
    CausalConv, CausalConvConfig, Extent, Input, ResBlock, ResBlockConfig, StreamState, Upsample, UpsampleConfig,
    maybe_norm,
};
use crate::grown_param;

impl VaeConfig {
    fn res_block<B: Backend>(&self, c_in: usize, c_out: usize, norm_groups: usize, device: &B::Device) -> ResBlock<B> {
        ResBlockConfig { channels: [c_in, c_out], norm_groups, temporal_kernel: self.temporal_kernel }.init(device)
    }

    /// The `n` residual blocks of one resolution level, from `c_in` to `c_out` channels.
    fn level_blocks<B: Backend>(
        &self,
        c_in: usize,
        c_out: usize,
        n: usize,
        norm_groups: usize,
        device: &B::Device,
    ) -> Vec<ResBlock<B>> {
        (0..n).map(|i| self.res_block(if i == 0 { c_in } else { c_out }, c_out, norm_groups, device)).collect()
    }

    fn conv<B: Backend>(&self, c_in: usize, c_out: usize, device: &B::Device) -> CausalConv<B> {
        CausalConvConfig::new([c_in, c_out]).with_temporal_kernel(self.temporal_kernel).init(device)
    }

    /// Whether the step from level `i` to level `i + 1` also halves time: the last
    /// `temporal_downsamples` steps do, where the activations are smallest.
    fn halves_time(&self, i: usize) -> bool {
        i + 1 + self.temporal_downsamples >= self.channels.len()
    }

    pub(super) fn init_encoder<B: Backend>(&self, device: &B::Device) -> Encoder<B> {
        let c = &self.channels;
        let last = c[c.len() - 1];
        let levels = (0..c.len())
            .map(|i| EncoderLevel {
                blocks: self.level_blocks(
                    if i == 0 { c[0] } else { c[i - 1] },
                    c[i],
                    self.blocks_per_level,
                    self.norm_groups,
                    device,
                ),
                down: (i + 1 < c.len()).then(|| {
                    CausalConvConfig::new([c[i], c[i]])
                        .with_temporal_kernel(self.temporal_kernel)
                        .with_stride(2)
                        .with_temporal_stride(if self.halves_time(i) { 2 } else { 1 })
                        .init(device)
                }),
            })
            .collect();
        Encoder {
            conv_in: self.conv(self.image_channels, c[0], device),
            levels,
            mid: self.res_block(last, last, self.norm_groups, device),
            norm_out: (self.norm_groups > 0).then(|| GroupNormConfig::new(self.norm_groups, last).init(device)),
            conv_out: self.moments_conv(last, device),
        }
    }

    /// The encoder's last convolution, to the posterior's mean and log-variance. The
    /// log-variance starts at [`LOGVAR_INIT`]: with the usual 0 the decoder's input starts as
    /// noise of std 1 over a mean near 0, and with a KL weight of 1e-6 nothing pushes the
    /// variance down fast: a 950-step run decoded every clip to the same grey video.
    fn moments_conv<B: Backend>(&self, c_in: usize, device: &B::Device) -> CausalConv<B> {
        let mut conv = self.conv(c_in, 2 * self.latent_channels, device);
        let last = conv.temporal.as_mut().unwrap_or(&mut conv.spatial);
        if let Some(bias) = last.bias.take() {
            let c = self.latent_channels;
            let mean = bias.val().narrow(0, 0, c);
            let logvar = Tensor::full([c], LOGVAR_INIT, device);
            last.bias = Some(Param::from_tensor(Tensor::cat(vec![mean, logvar], 0).detach()));
        }
        conv
    }

    pub(super) fn init_decoder<B: Backend>(&self, device: &B::Device) -> Decoder<B> {
        let c = self.decoder_widths();
        let last = c[c.len() - 1];
        let groups = self.decoder_groups();
        let counts = self.decoder_block_counts();
        let levels = (0..c.len())
            .rev()
            .map(|i| DecoderLevel {
                blocks: self.level_blocks(c[i], c[i], counts[i], groups, device),
                up: (i > 0).then(|| {
                    UpsampleConfig {
                        channels: [c[i], c[i - 1]],
                        temporal: self.halves_time(i - 1),
                        temporal_kernel: self.temporal_kernel,
                        depth_to_time: self.depth_to_time.unwrap_or(false),
                    }
                    .init(device)
                }),
            })
            .collect();
        Decoder {
            conv_in: self.conv(self.latent_channels, last, device),
            mid: self.res_block(last, last, groups, device),
            levels,
            norm_out: (groups > 0).then(|| GroupNormConfig::new(groups, c[0]).init(device)),
            conv_out: self.conv(c[0], self.image_channels, device),
        }
    }
}

/// The initial log-variance of the posterior (std ≈ 0.05).
pub const LOGVAR_INIT: f32 = -6.0;

/// One resolution level of the encoder: residual blocks, then a strided causal conv to the next.
#[derive(Module, Debug)]
pub struct EncoderLevel<B: Backend> {
    pub blocks: Vec<ResBlock<B>>,
    /// Halves height and width (and time, on the last levels); absent on the last level.
    pub down: Option<CausalConv<B>>,
}

/// Video to the moments of the latent Gaussian, concatenated along channels.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub conv_in: CausalConv<B>,
    pub levels: Vec<EncoderLevel<B>>,
    pub mid: ResBlock<B>,
    /// Absent in an encoder without normalisation (`norm_groups` 0).
    pub norm_out: Option<GroupNorm<B>>,
    pub conv_out: CausalConv<B>,
}

impl<B: Backend> Encoder<B> {
    /// # Shapes
    /// - `x`: `[b, t, c_image, h, w]`, `t = 1 + 4k` with the default factors
    /// - returns: `[b, 1 + k, 2·c_latent, h / 8, w / 8]` (mean, then log-variance)
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let mut x = self.conv_in.forward(x);
        for level in &self.levels {
            for block in &level.blocks {
                x = block.forward(x);
            }
            if let Some(down) = &level.down {
                x = down.forward(x);
            }
        }
        let x = self.mid.forward(x);
        self.conv_out.forward_input(maybe_norm(self.norm_out.as_ref(), x), Input::Silu, None)
    }

    /// FLOPs of the convolutions for one video of `input`, and the latent's extent.
    pub fn flops(&self, input: Extent) -> (f64, Extent) {
        let (mut flops, mut e) = self.conv_in.flops(input);
        for level in &self.levels {
            flops += level.blocks.iter().map(|b| b.flops(e)).sum::<f64>();
            if let Some(down) = &level.down {
                let (f, next) = down.flops(e);
                flops += f;
                e = next;
            }
        }
        flops += self.mid.flops(e);
        let (f, e) = self.conv_out.flops(e);
        (flops + f, e)
    }

    /// This encoder with `latents` latent channels in place of `config`'s, its present latents
    /// kept bit for bit: the new means are read by freshly initialised weights (drawn from the
    /// backend's generator) from the features the old ones see, their log-variances start at
    /// [`LOGVAR_INIT`], and no old moment sees a new feature. With
    /// [`Decoder::with_latent_channels`], a trained VAE grows its latent without changing what
    /// it reconstructs.
    ///
    /// # Panics
    /// If `latents` is fewer than `config`'s latent channels.
    pub fn with_latent_channels(mut self, config: &VaeConfig, latents: usize, device: &B::Device) -> Self {
        let (c, n) = (config.latent_channels, latents);
        assert!(n >= c, "a latent grows: {n} channels < {c}");
        if n == c {
            return self;
        }
        let c_in = self.conv_out.spatial.weight.dims()[1];
        let fresh = VaeConfig { latent_channels: n, ..config.clone() }.moments_conv::<B>(c_in, device);
        let d = n - c;
        // The moments' rows: [old means, new means, old log-variances, new log-variances].
        let moments = |old: Tensor<B, 4>, new_means: Tensor<B, 4>| {
            let new_logvars = new_means.zeros_like();
            Tensor::cat(vec![old.clone().narrow(0, 0, c), new_means, old.narrow(0, c, c), new_logvars], 0)
        };
        let moment_bias = |old: Tensor<B, 1>, new_means: Tensor<B, 1>| {
            let new_logvars = Tensor::full([d], LOGVAR_INIT, device);
            Tensor::cat(vec![old.clone().narrow(0, 0, c), new_means, old.narrow(0, c, c), new_logvars], 0)
        };
        let conv = &mut self.conv_out;
        match (&mut conv.temporal, &fresh.temporal) {
            (Some(temporal), Some(fresh_temporal)) => {
                // The spatial convolution's new outputs go after its old ones, in every frame
                // the temporal one stacks; the old moments weigh them by zero.
                let spatial = &mut conv.spatial;
                let w = spatial.weight.val();
                spatial.weight = grown_param(Tensor::cat(vec![w, fresh.spatial.weight.val().narrow(0, 0, 2 * d)], 0));
                spatial.bias = spatial.bias.take().map(|b| {
                    let new = fresh.spatial.bias.as_ref().expect("a fresh bias").val().narrow(0, 0, 2 * d);
                    grown_param(Tensor::cat(vec![b.val(), new], 0))
                });
                let k = conv.temporal_kernel;
                let w = temporal.weight.val().reshape([2 * c, k, 2 * c]);
                let w = Tensor::cat(vec![w.clone(), Tensor::zeros([2 * c, k, 2 * d], device)], 2);
                let w = w.reshape([2 * c, k * 2 * n, 1, 1]);
                let fresh_w = fresh_temporal.weight.val().narrow(0, c, d);
                temporal.weight = grown_param(moments(w, fresh_w));
                temporal.bias = temporal.bias.take().map(|b| {
                    let fresh_b = fresh_temporal.bias.as_ref().expect("a fresh bias").val().narrow(0, c, d);
                    grown_param(moment_bias(b.val(), fresh_b))
                });
            }
            (None, None) => {
                let spatial = &mut conv.spatial;
                let fresh_w = fresh.spatial.weight.val().narrow(0, c, d);
                spatial.weight = grown_param(moments(spatial.weight.val(), fresh_w));
                spatial.bias = spatial.bias.take().map(|b| {
                    let fresh_b = fresh.spatial.bias.as_ref().expect("a fresh bias").val().narrow(0, c, d);
                    grown_param(moment_bias(b.val(), fresh_b))
                });
            }
            _ => unreachable!("the fresh moments convolution has the same temporal kernel"),
        }
        self
    }
}

/// One resolution level of the decoder: residual blocks, then up-sampling to the next.
#[derive(Module, Debug)]
pub struct DecoderLevel<B: Backend> {
    pub blocks: Vec<ResBlock<B>>,
    /// Doubles height and width (and time, on the first levels) and narrows to the next level's
    /// width; absent on the last level.
    pub up: Option<Upsample<B>>,
}

/// A stage of [`Decoder::forward_stream_observed`], in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecoderStage {
    ConvIn,
    Mid,
    /// Residual block `block` of `level` (0: the coarsest).
    Block {
        level: usize,
        block: usize,
    },
    /// The up-sampling after `level`.
    Up {
        level: usize,
    },
    /// The output norm, SiLU and convolution.
    Out,
}

impl std::fmt::Display for DecoderStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecoderStage::ConvIn => write!(f, "conv in"),
            DecoderStage::Mid => write!(f, "mid block"),
            DecoderStage::Block { level, block } => write!(f, "level {level} block {block}"),
            DecoderStage::Up { level } => write!(f, "level {level} up"),
            DecoderStage::Out => write!(f, "conv out"),
        }
    }
}

/// Latent sample to video.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: CausalConv<B>,
    pub mid: ResBlock<B>,
    pub levels: Vec<DecoderLevel<B>>,
    /// Absent in a decoder without normalisation ([`VaeConfig::decoder_norm_groups`]).
    pub norm_out: Option<GroupNorm<B>>,
    pub conv_out: CausalConv<B>,
}

impl<B: Backend> Decoder<B> {
    /// This decoder with depth to time in every temporal up-sampling, starting from the output
    /// it gives now ([`Upsample::with_depth_to_time`]).
    pub fn with_depth_to_time(mut self, device: &B::Device) -> Self {
        for level in &mut self.levels {
            level.up = level.up.take().map(|up| up.with_depth_to_time(device));
        }
        self
    }

    /// This decoder with `config`'s block counts ([`VaeConfig::decoder_blocks`]), starting from
    /// the output it gives now: each new block goes after a level's blocks with its residual
    /// branch at zero ([`ResBlock::with_zero_branch`]), so it starts as the identity.
    ///
    /// # Panics
    /// If `config` has fewer blocks on a level than this decoder, or another shape.
    pub fn with_blocks(mut self, config: &VaeConfig, device: &B::Device) -> Self {
        let (widths, counts) = (config.decoder_widths(), config.decoder_block_counts());
        assert_eq!(counts.len(), self.levels.len(), "the block counts name every level");
        // `levels` runs coarsest first; the config's lists run full resolution first.
        for (level, (&c, &n)) in self.levels.iter_mut().zip(widths.iter().zip(&counts).rev()) {
            assert!(n >= level.blocks.len(), "a decoder grows: {n} blocks < {}", level.blocks.len());
            while level.blocks.len() < n {
                level.blocks.push(config.res_block(c, c, config.decoder_groups(), device).with_zero_branch());
            }
        }
        self
    }

    /// This decoder reading `latents` latent channels, the new ones weighed by zero, so that
    /// it decodes what it did until training moves them ([`Encoder::with_latent_channels`]).
    pub fn with_latent_channels(mut self, latents: usize, device: &B::Device) -> Self {
        let spatial = &mut self.conv_in.spatial;
        let [c_out, c, k, kw] = spatial.weight.dims();
        assert!(latents >= c, "a latent grows: {latents} channels < {c}");
        let zeros = Tensor::zeros([c_out, latents - c, k, kw], device);
        spatial.weight = grown_param(Tensor::cat(vec![spatial.weight.val(), zeros], 1));
        self
    }

    /// # Shapes
    /// - `z`: `[b, t', c_latent, h', w']`
    /// - returns: `[b, 1 + 4(t' − 1), c_image, 8h', 8w']` with the default factors
    pub fn forward(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_stream(z, None)
    }

    /// [`Decoder::forward`] of one chunk of a stream: the causal past of every temporal
    /// convolution comes from `state` and goes back into it. Returns `4t'` frames for every
    /// chunk after the first.
    pub fn forward_stream(&self, z: Tensor<B, 5>, state: Option<&mut StreamState<B>>) -> Tensor<B, 5> {
        self.forward_stream_observed(z, state, |_, _| {})
    }

    /// [`Decoder::forward_stream`], calling `after` with each stage and its output as the stage
    /// ends (to time the stages: `endless-model decode-bench`).
    pub fn forward_stream_observed(
        &self,
        z: Tensor<B, 5>,
        mut state: Option<&mut StreamState<B>>,
        mut after: impl FnMut(DecoderStage, &Tensor<B, 5>),
    ) -> Tensor<B, 5> {
        if let Some(s) = state.as_deref_mut() {
            s.begin_chunk();
        }
        let x = self.conv_in.forward_stream(z, state.as_deref_mut());
        after(DecoderStage::ConvIn, &x);
        let mut x = self.mid.forward_stream(x, state.as_deref_mut());
        after(DecoderStage::Mid, &x);
        for (level, stages) in self.levels.iter().enumerate() {
            for (block, b) in stages.blocks.iter().enumerate() {
                x = b.forward_stream(x, state.as_deref_mut());
                after(DecoderStage::Block { level, block }, &x);
            }
            if let Some(up) = &stages.up {
                x = up.forward_stream(x, state.as_deref_mut());
                after(DecoderStage::Up { level }, &x);
            }
        }
        let x = self.conv_out.forward_input(maybe_norm(self.norm_out.as_ref(), x), Input::Silu, state.as_deref_mut());
        after(DecoderStage::Out, &x);
        if let Some(s) = state {
            s.end_chunk();
        }
        x
    }

    /// FLOPs of the convolutions for one latent of extent `input`, and the video's extent.
    pub fn flops(&self, input: Extent) -> (f64, Extent) {
        let (mut flops, mut e) = self.conv_in.flops(input);
        flops += self.mid.flops(e);
        for level in &self.levels {
            flops += level.blocks.iter().map(|b| b.flops(e)).sum::<f64>();
            if let Some(up) = &level.up {
                let (f, next) = up.flops(e);
                flops += f;
                e = next;
            }
        }
        let (f, e) = self.conv_out.flops(e);
        (flops + f, e)
    }
}
