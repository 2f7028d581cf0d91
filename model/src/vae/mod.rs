//! The causal video VAE (MAGVIT-v2 style): videos to a continuous latent 8× smaller in space and
//! 4× in time after the first frame (`1 + 4k` frames → `1 + k` latent frames), and back.
//!
//! - **Causal in time.** Every temporal convolution pads `k_t − 1` copies of the first frame in
//!   front and nothing after, and normalisation is per frame (group norm over `c, h, w` of one
//!   frame: statistics over time would leak the future). So frame `t`'s latent depends only on
//!   frames `≤ t`, the first frame is encoded alone and an image is a 1-frame video. Padding with
//!   copies of the first frame rather than zeros makes the start of a clip look like a still
//!   scene to every layer, not like a cut from black.
//! - **Time down and up keeping the first frame alone.** Down: a causal temporal conv of stride 2
//!   takes `1 + 2m` frames to `1 + m`, output `j` seeing frames `≤ 2j`; twice, on the two coarsest
//!   steps. Up (decoder, mirrored): every frame becomes two, by repeat or by depth to time
//!   ([`VaeConfig::depth_to_time`]), and the first copy is dropped (`1 + m` → `1 + 2m`), then a
//!   causal conv. Latent frame 0 → video frame 0, latent frame `j ≥ 1` → frames
//!   `4j − 3 ..= 4j`.
//! - **Factorised (2+1)-D convolutions** everywhere: a `3×3` conv2d on every frame (reshaped to
//!   `[b·t, c, h, w]`), then a causal temporal conv of 3 frames, done as a 1×1 conv2d over the
//!   3 frames each output sees stacked along channels. A full `3×3×3` kernel costs
//!   27·c_in·c_out per position, the factorised pair 9·c_in·c_out + 3·c_out² — 2.25× less at
//!   equal width — and all of it is conv2d on `[b·t, c, h, w]`, with no transpose of the
//!   activations (the stacked 1×1 form beat a `[3, 1]` conv2d over `[b, c, t, h·w]`: tiny at
//!   128²×17 encoded in 1.3 s instead of 1.7 s and decoded in 1.7 s instead of 2.4 s on the
//!   shared 2 cores). The tiny preset has to decode in real time on 2 CPU cores. The temporal
//!   receptive field still grows with depth.
//! - Activations are frame-major, `[b, t, c, h, w]`; the public API takes and returns
//!   `[b, c, t, h, w]` like [`crate::data::video_tensor`].
//! - **Continuous latent**: the encoder gives the mean and log-variance of a diagonal Gaussian;
//!   training decodes a reparameterised sample and adds `kl_weight ·` KL to N(0, I).
//!
//! **Streaming decode.** [`Vae::decode_stream`] decodes a stream chunk by chunk with a
//! [`StreamState`] that keeps the last `k_t − 1` frames every temporal convolution saw: the
//! frames equal one decode of the whole stream, with no overlap recomputed and no seam.

mod codec;
pub mod direct;
pub(crate) mod layers;
#[cfg(test)]
mod tests;

pub use codec::{Decoder, DecoderLevel, DecoderStage, Encoder, EncoderLevel};
pub use layers::{
    CausalConv, CausalConvConfig, Extent, Input, ResBlock, ResBlockConfig, StreamState, Upsample, UpsampleConfig,
    frame_norm, maybe_norm,
};

use std::fmt;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

/// How the reconstruction is compared with the input.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ReconLoss {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    Mse,
}

/// The shape of a [`Vae`] and the weights of its loss.
#[derive(Config, Debug, PartialEq)]
pub struct VaeConfig {
    /// Channels of the video (RGB).
    #[config(default = 3)]
    pub image_channels: usize,
    /// Channels of the latent.
    #[config(default = 8)]
    pub latent_channels: usize,
    /// Width of each resolution level, full resolution first; every step between levels halves
    /// height and width, so 4 levels compress space 8×. Each divisible by `norm_groups`.
    #[config(default = "vec![16, 32, 64, 128]")]
    pub channels: Vec<usize>,
    /// Residual blocks per level, in the encoder and in the decoder.
    #[config(default = 1)]
    pub blocks_per_level: usize,
    /// How many of the last steps between levels also halve time (after the first frame):
    /// 2 compresses time 4×.
    #[config(default = 2)]
    pub temporal_downsamples: usize,
    /// Frames seen by every causal temporal convolution.
    #[config(default = 3)]
    pub temporal_kernel: usize,
    /// Groups of the per-frame group normalisations; 0: none (the decoder follows unless
    /// `decoder_norm_groups` says otherwise).
    #[config(default = 8)]
    pub norm_groups: usize,
    /// Reconstruction term of the loss.
    #[config(default = "ReconLoss::L1")]
    pub recon_loss: ReconLoss,
    /// Weight of the KL term (both terms are means over elements); small, so the latent stays
    /// informative and only its scale is kept in check.
    #[config(default = 1e-6)]
    pub kl_weight: f64,
    /// Weight of the motion term: the mean absolute change of the reconstruction error from
    /// one frame to the next, which is the error of the frame differences (`Δx̂ − Δx`). A
    /// decoder that holds each latent's frames still and jumps at the next latent scores well
    /// on the reconstruction term and badly on this one. `None` (as in checkpoints from before
    /// the term): 0, none.
    #[config(default = "None")]
    pub motion_weight: Option<f64>,
    /// Widths of the decoder's levels, full resolution first, when they differ from the
    /// encoder's (`channels`); as many levels.
    #[config(default = "None")]
    pub decoder_channels: Option<Vec<usize>>,
    /// Groups of the decoder's normalisations (default: `norm_groups`); `Some(0)`: a decoder
    /// without normalisation, as TAESD's. Tried on the cpu VAE's encoder (a per-frame norm
    /// takes each frame's mean away, and the reconstructions' colours were off): a fresh
    /// norm-free decoder (before the Fixup initialisation of norm-free blocks) reached 18.2 dB
    /// after 200 steps where one with norms reached 23.2.
    #[config(default = "None")]
    pub decoder_norm_groups: Option<usize>,
    /// Whether the decoder up-samples time by depth to time (each of a latent frame's output
    /// frames has channels of its own, as in MAGVIT-v2) rather than by repeating frames (see
    /// [`UpsampleConfig`]). `None` (as in checkpoints from before): repeat.
    #[config(default = "None")]
    pub depth_to_time: Option<bool>,
    /// Residual blocks of each decoder level, full resolution first, when they differ from
    /// `blocks_per_level`; as many levels. A trained decoder grows to more of them from the
    /// output it gives ([`Decoder::with_blocks`]). `None` (as in checkpoints from before):
    /// `blocks_per_level` everywhere.
    #[config(default = "None")]
    pub decoder_blocks: Option<Vec<usize>>,
}

impl VaeConfig {
    /// For real time on 2 CPU cores at 128²: widths 16/32/64/128, one block per level, 8 latent
    /// channels.
    pub fn tiny() -> Self {
        Self::new()
    }

    /// The CPU streaming tier: half of [`VaeConfig::tiny`]'s widths (8/16/32/64), a quarter of
    /// its FLOPs, so that decoding leaves most of 2 CPU cores to the denoiser at 128² and 8 fps.
    /// No norms, with every residual branch starting at zero (Fixup): per-frame group norms take
    /// each frame's mean away, and with 2 groups the VAE plateaued at 23.4 dB held-out PSNR
    /// after 2,600 steps; without them it reached 24.9 dB in 1,200 steps, and a training step
    /// costs a quarter less CPU (`docs/MODEL_CARD.md`). (With 8 groups the 8-channel level
    /// normalised every channel alone, and training stalled at the grey video.)
    pub fn cpu() -> Self {
        Self::new().with_channels(vec![8, 16, 32, 64]).with_norm_groups(0)
    }

    /// The GPU tier: widths 64/128/256/256, two blocks per level, 8 latent channels.
    pub fn small() -> Self {
        Self::new().with_channels(vec![64, 128, 256, 256]).with_blocks_per_level(2).with_norm_groups(32)
    }

    /// Widths of the decoder's levels, full resolution first.
    pub fn decoder_widths(&self) -> &[usize] {
        self.decoder_channels.as_deref().unwrap_or(&self.channels)
    }

    /// Residual blocks of each decoder level, full resolution first.
    pub fn decoder_block_counts(&self) -> Vec<usize> {
        self.decoder_blocks.clone().unwrap_or_else(|| vec![self.blocks_per_level; self.channels.len()])
    }

    /// Groups of the decoder's normalisations; 0: none.
    pub fn decoder_groups(&self) -> usize {
        self.decoder_norm_groups.unwrap_or(self.norm_groups)
    }

    /// How much smaller the latent is than the video in height and width.
    pub fn spatial_factor(&self) -> usize {
        1 << (self.channels.len() - 1)
    }

    /// How many video frames each latent frame after the first stands for.
    pub fn temporal_factor(&self) -> usize {
        1 << self.temporal_downsamples
    }

    /// A VAE with freshly initialised weights.
    ///
    /// # Panics
    /// If `channels` is empty, has fewer steps than `temporal_downsamples`, or a width is not
    /// divisible by `norm_groups`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vae<B> {
        assert!(!self.channels.is_empty(), "a VAE needs at least one level");
        assert!(
            self.temporal_downsamples < self.channels.len(),
            "{} temporal downsamples need more than {} levels",
            self.temporal_downsamples,
            self.channels.len()
        );
        assert_eq!(self.decoder_widths().len(), self.channels.len(), "the decoder has as many levels as the encoder");
        assert_eq!(
            self.decoder_block_counts().len(),
            self.channels.len(),
            "the decoder's block counts name every level"
        );
        for (widths, groups) in [(&self.channels[..], self.norm_groups), (self.decoder_widths(), self.decoder_groups())]
        {
            for &c in widths.iter().filter(|_| groups > 0) {
                assert!(c.is_multiple_of(groups), "{groups} groups do not divide the width {c}");
            }
        }
        Vae {
            encoder: self.init_encoder(device),
            decoder: self.init_decoder(device),
            spatial_factor: self.spatial_factor(),
            temporal_factor: self.temporal_factor(),
            recon_loss: self.recon_loss,
            kl_weight: self.kl_weight,
            motion_weight: self.motion_weight.unwrap_or(0.0),
        }
    }
}

/// The causal video VAE.
#[derive(Module, Debug)]
pub struct Vae<B: Backend> {
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    #[module(skip)]
    pub spatial_factor: usize,
    #[module(skip)]
    pub temporal_factor: usize,
    #[module(skip)]
    pub recon_loss: ReconLoss,
    #[module(skip)]
    pub kl_weight: f64,
    #[module(skip)]
    pub motion_weight: f64,
}

/// What [`Vae::forward`] gives for training.
#[derive(Debug, Clone)]
pub struct VaeOutput<B: Backend> {
    /// `[b, 3, t, h, w]`, decoded from a sample of the posterior.
    pub reconstruction: Tensor<B, 5>,
    /// `[b, c_lat, t', h', w']`
    pub mean: Tensor<B, 5>,
    /// `[b, c_lat, t', h', w']`
    pub logvar: Tensor<B, 5>,
    /// `[1]`: KL(posterior ‖ N(0, I)), the mean over latent elements.
    pub kl: Tensor<B, 1>,
}

/// The terms of [`Vae::loss`].
#[derive(Debug, Clone)]
pub struct VaeLoss<B: Backend> {
    /// `[1]`: `recon + kl_weight · kl`, to differentiate.
    pub total: Tensor<B, 1>,
    /// `[1]`: the reconstruction error (mean over elements).
    pub recon: Tensor<B, 1>,
    /// `[1]`: the KL term before weighting.
    pub kl: Tensor<B, 1>,
}

impl<B: Backend> Vae<B> {
    /// The posterior of a video: mean and log-variance (clamped to [-30, 20]).
    ///
    /// # Shapes
    /// - `video`: `[b, 3, t, h, w]`, values in [-1, 1], `t = 1 + 4k`, `h` and `w` multiples of 8
    /// - returns: mean and log-variance, each `[b, c_lat, 1 + k, h / 8, w / 8]`
    ///
    /// # Panics
    /// If `t` or the size do not fit the compression factors.
    pub fn encode(&self, video: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let [_, _, t, h, w] = video.dims();
        let (s, f) = (self.spatial_factor, self.temporal_factor);
        assert!(t >= 1 && (t - 1).is_multiple_of(f), "{t} frames are not 1 + {f}k");
        assert!(h.is_multiple_of(s) && w.is_multiple_of(s), "{h}×{w} is not a multiple of {s}");
        let moments = self.encoder.forward(video.swap_dims(1, 2)).swap_dims(1, 2); // [b, 2·c_lat, t', h', w']
        let [mean, logvar] = moments.chunk(2, 1).try_into().expect("chunk of an even channel count gives 2 parts");
        (mean, logvar.clamp(-30.0, 20.0))
    }

    /// A video from a latent (a posterior sample, or its mean).
    ///
    /// # Shapes
    /// - `latent`: `[b, c_lat, t', h', w']`
    /// - returns: `[b, 3, 1 + 4(t' − 1), 8h', 8w']`
    pub fn decode(&self, latent: Tensor<B, 5>) -> Tensor<B, 5> {
        self.decoder.forward(latent.swap_dims(1, 2)).swap_dims(1, 2) // [b, t, 3, h, w] → [b, 3, t, h, w]
    }

    /// The frames of the next latents of a stream: `[b, 3, 1 + 4(t' − 1), H, W]` for its
    /// first chunk, `[b, 3, 4t', H, W]` after; together, the frames of [`Vae::decode`] of the
    /// whole stream. `state` starts as `StreamState::default()` and belongs to one stream.
    pub fn decode_stream(&self, latent: Tensor<B, 5>, state: &mut StreamState<B>) -> Tensor<B, 5> {
        self.decoder.forward_stream(latent.swap_dims(1, 2), Some(state)).swap_dims(1, 2)
    }

    /// Encodes, draws a reparameterised sample of the posterior and decodes it.
    ///
    /// # Shapes
    /// - `video`: `[b, 3, t, h, w]`, as for [`Vae::encode`]
    /// - returns: reconstruction `[b, 3, t, h, w]`, mean and log-variance `[b, c_lat, t', h', w']`
    pub fn forward(&self, video: Tensor<B, 5>) -> VaeOutput<B> {
        let (mean, logvar) = self.encode(video);
        self.decode_posterior(mean, logvar)
    }

    /// Draws a reparameterised sample of the posterior `(mean, logvar)` and decodes it:
    /// [`Vae::forward`] after the encoder, or with the moments of a frozen encoder.
    pub fn decode_posterior(&self, mean: Tensor<B, 5>, logvar: Tensor<B, 5>) -> VaeOutput<B> {
        let std = logvar.clone().mul_scalar(0.5).exp();
        let noise = Tensor::random(mean.shape(), Distribution::Normal(0.0, 1.0), &mean.device());
        self.decode_given(mean.clone() + std * noise, mean, logvar)
    }

    /// Decodes `latent` (drawn from the posterior `(mean, logvar)`, or made from it in another
    /// way, e.g. by a denoiser) into an output whose KL is the posterior's.
    pub fn decode_given(&self, latent: Tensor<B, 5>, mean: Tensor<B, 5>, logvar: Tensor<B, 5>) -> VaeOutput<B> {
        let reconstruction = self.decode(latent);
        let kl = (mean.clone().square() + logvar.clone().exp() - logvar.clone() - 1.0).mean().mul_scalar(0.5);
        VaeOutput { reconstruction, mean, logvar, kl }
    }

    /// The training loss of one batch: reconstruction error plus `kl_weight ·` KL.
    ///
    /// # Shapes
    /// - `video`: `[b, 3, t, h, w]`, as for [`Vae::encode`]
    /// - returns: scalars `[1]`
    pub fn loss(&self, video: Tensor<B, 5>) -> VaeLoss<B> {
        let out = self.forward(video.clone());
        self.loss_of(out, video)
    }

    /// The loss of `out`, a reconstruction of `video`: [`Vae::loss`] after the forward pass.
    pub fn loss_of(&self, out: VaeOutput<B>, video: Tensor<B, 5>) -> VaeLoss<B> {
        let error = out.reconstruction - video;
        let recon = match self.recon_loss {
            ReconLoss::L1 => error.clone().abs().mean(),
            ReconLoss::Mse => error.clone().square().mean(),
        };
        let mut total = recon.clone() + out.kl.clone().mul_scalar(self.kl_weight);
        let t = error.dims()[2];
        if self.motion_weight > 0.0 && t > 1 {
            let change = error.clone().narrow(2, 1, t - 1) - error.narrow(2, 0, t - 1);
            total = total + change.abs().mean().mul_scalar(self.motion_weight);
        }
        VaeLoss { total, recon, kl: out.kl }
    }

    /// Parameters and convolution FLOPs (2 × multiply-adds; norms and activations left out) for
    /// one video of `frames × height × width`.
    ///
    /// # Panics
    /// If the size does not fit the compression factors, as for [`Vae::encode`].
    pub fn cost(&self, frames: usize, height: usize, width: usize) -> VaeCost {
        let (s, f) = (self.spatial_factor, self.temporal_factor);
        assert!(frames >= 1 && (frames - 1).is_multiple_of(f), "{frames} frames are not 1 + {f}k");
        assert!(height.is_multiple_of(s) && width.is_multiple_of(s), "{height}×{width} is not a multiple of {s}");
        let video = Extent { t: frames, h: height, w: width };
        let (encode_flops, latent) = self.encoder.flops(video);
        let (decode_flops, _) = self.decoder.flops(latent);
        VaeCost {
            video,
            latent,
            encoder_params: self.encoder.num_params(),
            decoder_params: self.decoder.num_params(),
            encode_gflops: encode_flops / 1e9,
            decode_gflops: decode_flops / 1e9,
        }
    }
}

/// Size and compute of a [`Vae`] for one video, from [`Vae::cost`]; `Display` prints a summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VaeCost {
    pub video: Extent,
    pub latent: Extent,
    pub encoder_params: usize,
    pub decoder_params: usize,
    pub encode_gflops: f64,
    pub decode_gflops: f64,
}

impl fmt::Display for VaeCost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (v, l) = (self.video, self.latent);
        write!(
            f,
            "{}×{}×{} → {}×{}×{}: params {:.2} M (encoder {:.2} M, decoder {:.2} M), \
             encode {:.2} GFLOP, decode {:.2} GFLOP",
            v.t,
            v.h,
            v.w,
            l.t,
            l.h,
            l.w,
            (self.encoder_params + self.decoder_params) as f64 / 1e6,
            self.encoder_params as f64 / 1e6,
            self.decoder_params as f64 / 1e6,
            self.encode_gflops,
            self.decode_gflops
        )
    }
}
