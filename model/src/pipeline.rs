//! A trained generator: the VAE, the denoiser and how they fit together, and the chunk-by-chunk
//! generation of a stream.
//!
//! A pipeline folder holds `vae.safetensors`, `denoiser.safetensors` (and `denoiser-ema`),
//! each with its JSON config, and `pipeline.json` ([`PipelineSpec`]): frame size and rate, the
//! denoiser's window in latent frames, the latents' normalisation and the noise schedule.
//!
//! **Chunks.** A stream is a sequence of latent frames: the first stands for one video frame,
//! every later one for `f = 4`. A chunk denoises a window of `window` latent frames whose first
//! `k` are given clean (the last `k` latents of the stream so far) and appends the other
//! `window − k`. A request may also give long-range anchors ([`crate::rolling`]): clean latents
//! from much earlier, placed before the `k` with their distance ([`FramePosition::Anchor`]),
//! so that `window − a − k` are appended. Modes ([`ExtendMode`]): *replacement* (VDM's
//! baseline: the given frames enter only as `q(z_t | x)` samples in the noisy input),
//! *conditioned* (also clean in the context channels with their mask, W.A.L.T's frame
//! prediction), and conditioned plus reconstruction guidance (needs autodiff;
//! [`crate::guidance`]). Every request in a batch draws its noise from its own counter-based
//! stream `(seed, chunk)`, so a chunk is the same whichever other sessions share the batch.
//!
//! **Distilled denoisers** ([`crate::train::distill`]) sample in the steps their spec gives
//! ([`Distilled`]), one pass each: their teacher's classifier-free guidance is part of their
//! output, so [`Pipeline::generate`] adds none.
//!
//! **Decoding.** The VAE decoder is causal: [`Pipeline::decode_stream`] decodes each chunk's
//! new latents with the stream's [`StreamState`] (the past frames of every temporal
//! convolution), which gives the frames of one decode of the whole stream — no seam.

use crate::checkpoint;
use crate::diffusion::{Ddim, Guidance, Schedule, gaussian};
use crate::dit::{Condition, Denoiser, DenoiserConfig, DenoiserInput, FrameContext, FramePosition, TextCondition};
use crate::rolling::Anchors;
use crate::text::{TextBatch, TextEmbedding};
use crate::vae::{StreamState, Vae, VaeConfig};
use anyhow::{Context, Result, bail};
use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

pub const VAE_FILE: &str = "vae.safetensors";
pub const DENOISER_FILE: &str = "denoiser.safetensors";
pub const DENOISER_EMA_FILE: &str = "denoiser-ema.safetensors";
pub const SPEC_FILE: &str = "pipeline.json";

/// How the VAE and the denoiser were trained together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineSpec {
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    /// Latent frames the denoiser sees at once.
    pub window: usize,
    /// The denoiser works on `(latent − mean) / std`: over all channels pooled, or per channel
    /// when `channels` is set.
    pub latent_mean: f64,
    pub latent_std: f64,
    /// Per-channel statistics of the latents, which normalise in place of the pooled ones. A
    /// VAE trained with a tiny KL weight leaves its channels at unequal scales (the cpu VAE's
    /// standard deviations span 4–15): pooled, the narrow channels would carry a quarter of
    /// the signal of the wide ones at every noise level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<ChannelStats>,
    pub schedule: Schedule,
    /// Whether the denoiser was trained with long-range anchors ([`crate::rolling`]); a stream
    /// gives it none otherwise.
    #[serde(default)]
    pub anchors: bool,
    /// Noise augmentation of the context: the standard deviation of the variance-preserving
    /// Gaussian noise the given frames (recent latents and anchors) get as the denoiser's
    /// conditioning input, `√(1 − s²)·x + s·ε`, when it was trained on context noised so
    /// (`train --context-noise`; half its maximum). Its own errors then look to it like noise
    /// it learnt to see through, instead of a clean past to carry on. 0: clean context.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub context_noise: f64,
    /// Set when the denoiser is a progressively distilled student ([`crate::train::distill`]):
    /// it samples in `steps` DDIM steps with one pass each, its teacher's guidance built in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distilled: Option<Distilled>,
}

/// The noise stream of a chunk's context noise ([`PipelineSpec::context_noise`]), apart from
/// its initial noise (0), its replacement noise (2 + step) and its DDIM noise (1,000,000 + step).
const CONTEXT_NOISE_STREAM: u64 = 2_000_000;

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// `x` with variance-preserving Gaussian noise of standard deviation `s`: `√(1 − s²)·x + s·ε`.
pub fn noised_context<B: Backend, const D: usize>(x: Tensor<B, D>, eps: Tensor<B, D>, s: f64) -> Tensor<B, D> {
    x.mul_scalar((1.0 - s * s).sqrt()) + eps.mul_scalar(s)
}

/// The mean and standard deviation of every latent channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

/// What a distilled denoiser was distilled to, and from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Distilled {
    /// The DDIM steps it was trained to sample in.
    pub steps: usize,
    /// The steps of the first teacher (the undistilled model) it stands for.
    pub from_steps: usize,
    /// The classifier-free guidance of the first teacher, now part of the student's output.
    pub guidance: Guidance,
}

impl PipelineSpec {
    /// `requested` as this pipeline must be sampled: a distilled denoiser takes its own number
    /// of steps, and no classifier-free guidance on top of the one it learnt.
    pub fn sampler(&self, requested: SamplerSettings) -> SamplerSettings {
        match self.distilled {
            Some(d) => SamplerSettings { steps: d.steps, guidance: Guidance::NONE, ..requested },
            None => requested,
        }
    }

    /// `(latent − mean) / std` of raw VAE latents `[b, c, t, h, w]`.
    pub fn normalise<B: Backend>(&self, latents: Tensor<B, 5>) -> Tensor<B, 5> {
        match &self.channels {
            Some(ch) => {
                let device = latents.device();
                (latents - per_channel(&ch.mean, &device)) / per_channel(&ch.std, &device)
            }
            None => latents.sub_scalar(self.latent_mean).div_scalar(self.latent_std),
        }
    }

    /// Raw VAE latents from normalised ones: the inverse of [`PipelineSpec::normalise`].
    pub fn denormalise<B: Backend>(&self, latents: Tensor<B, 5>) -> Tensor<B, 5> {
        match &self.channels {
            Some(ch) => {
                let device = latents.device();
                latents * per_channel(&ch.std, &device) + per_channel(&ch.mean, &device)
            }
            None => latents.mul_scalar(self.latent_std).add_scalar(self.latent_mean),
        }
    }

    pub fn load(dir: &Path) -> Result<PipelineSpec> {
        let path = dir.join(SPEC_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(SPEC_FILE);
        let text = serde_json::to_string_pretty(self).expect("the spec serialises");
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// `values` as a `[1, c, 1, 1, 1]` tensor, to broadcast over `[b, c, t, h, w]`.
fn per_channel<B: Backend>(values: &[f64], device: &B::Device) -> Tensor<B, 5> {
    let c = values.len();
    let values: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    Tensor::<B, 1>::from_data(TensorData::new(values, [c]), device).reshape([1, c, 1, 1, 1])
}

/// The pipeline folder to load for `device`: `dir` itself when it holds a pipeline
/// (`pipeline.json`); otherwise `dir` is a folder of tiers and the device picks one — `gpu/`
/// on a CUDA device, `cpu/` on the CPU — falling back to the other tier when that one is
/// missing (a GPU runs the cpu tier fine; the gpu tier on a CPU is far from real time, but it
/// is what there is).
///
/// # Errors
/// When neither `dir` nor a tier in it holds a pipeline.
pub fn tier_dir(dir: &Path, device: crate::device::Resolved) -> Result<std::path::PathBuf> {
    if dir.join(SPEC_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    let order = match device {
        crate::device::Resolved::Cuda => ["gpu", "cpu"],
        crate::device::Resolved::Cpu => ["cpu", "gpu"],
    };
    order
        .iter()
        .map(|tier| dir.join(tier))
        .find(|d| d.join(SPEC_FILE).exists())
        .with_context(|| format!("{} holds no pipeline ({SPEC_FILE}), nor a cpu/ or gpu/ tier with one", dir.display()))
}

/// The denoiser checkpoint of the pipeline folder `dir`: its EMA weights when `ema` and it has
/// them, else its weights.
pub fn denoiser_path(dir: &Path, ema: bool) -> std::path::PathBuf {
    let ema_path = dir.join(DENOISER_EMA_FILE);
    if ema && checkpoint::config_path(&ema_path).exists() { ema_path } else { dir.join(DENOISER_FILE) }
}

/// How a chunk uses the frames before it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtendMode {
    /// VDM's replacement: the past frames only as noised latents in the input.
    Replacement,
    /// Replacement plus the clean past frames in the context channels (W.A.L.T).
    Conditioned,
    /// Conditioned plus reconstruction guidance of this weight (Ho et al. 2022).
    Guided { weight: f64 },
}

impl ExtendMode {
    fn conditions(&self) -> bool {
        !matches!(self, ExtendMode::Replacement)
    }
}

/// What a sampling step feeds the denoiser as self-conditioning (Chen et al. 2022): a clean
/// estimate from the step before (none at the first step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SelfConditioning {
    /// The guided x̂ that the previous step moved to, the same for every guidance pass. With
    /// text guidance w it lies w times further from the unconditional estimate than anything
    /// training fed. What everything sampled before this setting existed used.
    Guided,
    /// Each guidance pass (with the prompt, without it, …) its own unguided x̂ of the previous
    /// step: what training feeds, an estimate the network itself made under the same condition.
    #[default]
    PerPass,
    /// None at any step.
    Off,
}

impl SelfConditioning {
    fn recorded_before_it_existed() -> Self {
        SelfConditioning::Guided
    }
}

impl std::str::FromStr for SelfConditioning {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, String> {
        match name {
            "guided" => Ok(SelfConditioning::Guided),
            "per-pass" => Ok(SelfConditioning::PerPass),
            "off" => Ok(SelfConditioning::Off),
            other => Err(format!("unknown self-conditioning {other:?}: guided, per-pass or off")),
        }
    }
}

/// Sampling settings of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SamplerSettings {
    pub steps: usize,
    /// DDIM η.
    pub eta: f64,
    pub guidance: Guidance,
    pub mode: ExtendMode,
    /// Absent from settings recorded before it existed, which sampled [`SelfConditioning::Guided`].
    #[serde(default = "SelfConditioning::recorded_before_it_existed")]
    pub self_conditioning: SelfConditioning,
}

impl Default for SamplerSettings {
    fn default() -> Self {
        SamplerSettings {
            steps: 16,
            eta: 0.0,
            guidance: Guidance { text: 3.0, context: 1.0 },
            mode: ExtendMode::Conditioned,
            self_conditioning: SelfConditioning::PerPass,
        }
    }
}

/// One stream's chunk to generate.
#[derive(Debug, Clone)]
pub struct ChunkRequest<B: Backend> {
    /// The stream's seed and the chunk's index: its noise stream.
    pub seed: u64,
    pub chunk: u64,
    /// `[c, k, h, w]`: the last `k < window` normalised latents of the stream; `None` for the
    /// first chunk.
    pub context: Option<Tensor<B, 4>>,
    /// Long-range anchors, placed before the context; `None`: none.
    pub anchors: Option<Anchors<B>>,
    /// The prompt, as the text encoder gives it (possibly a blend).
    pub text: Arc<TextEmbedding>,
}

/// Where [`Pipeline::generate_from`] starts: these latents, noised to the time of this step of
/// the DDIM grid.
#[derive(Debug, Clone)]
pub struct SdeditStart<B: Backend> {
    /// `[b, c, window, h, w]`, normalised: the whole window of every request, the given
    /// frames included (they are replaced as in any chunk).
    pub latents: Tensor<B, 5>,
    /// The first step to run, `0..steps` (0: from pure noise, the latents drowned).
    pub step: usize,
}

/// The denoiser passes one guided step runs, as (with context, with text): the full pass; the
/// context-only pass when either scale is not 1; the null pass when the context is guided.
fn guidance_passes(g: &Guidance) -> Vec<(bool, bool)> {
    let mut passes = vec![(true, true)];
    if g.text != 1.0 || g.context != 1.0 {
        passes.push((true, false));
    }
    if g.context != 1.0 {
        passes.push((false, false));
    }
    passes
}

/// A loaded pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline<B: Backend> {
    pub spec: PipelineSpec,
    pub vae: Vae<B>,
    pub vae_config: VaeConfig,
    pub denoiser: Denoiser<B>,
    pub denoiser_config: DenoiserConfig,
    /// Run the guided passes of a denoising step (with and without the prompt, …) side by side
    /// on the thread pool instead of as one batch: on the CPU one batched pass keeps about one
    /// core busy. The same values either way. Off as loaded; [`Pipeline::with_parallel_passes`].
    pub parallel_passes: bool,
}

impl<B: Backend> Pipeline<B> {
    /// Loads the folder `dir`; `ema` picks the EMA weights of the denoiser when present.
    pub fn load(dir: &Path, ema: bool, device: &B::Device) -> Result<Pipeline<B>> {
        let spec = PipelineSpec::load(dir)?;
        let vae_path = dir.join(VAE_FILE);
        let vae_config: VaeConfig = checkpoint::read_config(&vae_path)?;
        let vae = checkpoint::load(vae_config.init(device), &vae_path, device)?;
        let path = denoiser_path(dir, ema);
        let denoiser_config: DenoiserConfig = checkpoint::read_config(&path)?;
        let denoiser = checkpoint::load(denoiser_config.init(device), &path, device)?;
        if let Some(ch) = &spec.channels
            && (ch.mean.len() != vae_config.latent_channels || ch.std.len() != vae_config.latent_channels)
        {
            bail!(
                "{}: pipeline.json has statistics of {} channels, the VAE gives {}",
                dir.display(),
                ch.mean.len(),
                vae_config.latent_channels
            );
        }
        if denoiser_config.latent_channels != vae_config.latent_channels {
            bail!(
                "{}: the denoiser takes {} latent channels, the VAE gives {}",
                dir.display(),
                denoiser_config.latent_channels,
                vae_config.latent_channels
            );
        }
        Ok(Pipeline { spec, vae, vae_config, denoiser, denoiser_config, parallel_passes: false })
    }

    /// This pipeline with [`Pipeline::parallel_passes`] set to `on`.
    pub fn with_parallel_passes(self, on: bool) -> Pipeline<B> {
        Pipeline { parallel_passes: on, ..self }
    }

    /// Writes this pipeline to `dir` as the service ships it: the spec, the VAE and the
    /// denoiser (whichever weights were loaded, e.g. the EMA) in `precision`, with the metadata
    /// (steps, samples seen) of the checkpoints in `from`; no EMA twin, no optimiser state.
    pub fn export(&self, from: &Path, dir: &Path, precision: checkpoint::Precision) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let denoiser_from = denoiser_path(from, true);
        let vae_meta = checkpoint::read_info(&from.join(VAE_FILE))?.meta;
        let denoiser_meta = checkpoint::read_info(&denoiser_from)?.meta;
        checkpoint::save(&self.vae, &self.vae_config, &vae_meta, &dir.join(VAE_FILE), precision)?;
        checkpoint::save(&self.denoiser, &self.denoiser_config, &denoiser_meta, &dir.join(DENOISER_FILE), precision)?;
        self.spec.save(dir)
    }

    /// This pipeline for frames of `width × height`: the denoiser's positions and relative
    /// biases resampled from the frame size it was trained at ([`Denoiser::resized`]; the VAE
    /// is convolutional and runs at any size). The noise schedule stays the one the denoiser
    /// learnt: shifted for the new size (*simple diffusion*), it meets noisier latents than it
    /// learnt at every time, which measured worse (docs/MODEL_CARD.md). A run that goes on from
    /// the result (`train --init-from`) keeps it too.
    pub fn resized(self, width: usize, height: usize) -> Result<Pipeline<B>> {
        let s = self.vae_config.spatial_factor() * self.denoiser_config.patch_size;
        if width == 0 || height == 0 || !width.is_multiple_of(s) || !height.is_multiple_of(s) {
            bail!("{width}x{height} is not a multiple of {s}, the VAE's factor times the patch");
        }
        let side = self.denoiser_config.max_latent_size * self.vae_config.spatial_factor();
        if width > side || height > side {
            bail!("{width}x{height} is larger than the denoiser's position table ({side}x{side})");
        }
        let grid = |w: usize, h: usize| [h / s, w / s];
        let denoiser = self.denoiser.resized(grid(self.spec.width, self.spec.height), grid(width, height));
        Ok(Pipeline { spec: PipelineSpec { width, height, ..self.spec }, denoiser, ..self })
    }

    /// `[c, h, w]` of one latent frame.
    pub fn latent_frame(&self) -> [usize; 3] {
        let s = self.vae_config.spatial_factor();
        [self.vae_config.latent_channels, self.spec.height / s, self.spec.width / s]
    }

    /// Video frames per latent frame after the first.
    pub fn temporal_factor(&self) -> usize {
        self.vae_config.temporal_factor()
    }

    /// Normalised latents `[b, c, t, h, w]` of a video `[b, 3, 1 + 4k, H, W]` in [-1, 1].
    pub fn encode(&self, video: Tensor<B, 5>) -> Tensor<B, 5> {
        let (mean, _) = self.vae.encode(video);
        self.spec.normalise(mean)
    }

    /// Video frames `[b, 3, t, H, W]` of normalised latents `[b, c, t', h, w]`, decoded alone.
    pub fn decode(&self, latents: Tensor<B, 5>) -> Tensor<B, 5> {
        self.vae.decode(self.spec.denormalise(latents))
    }

    /// The frames of the next normalised latents `[b, c, n, h, w]` of a stream whose decoder
    /// state is `state` (one per stream, starting from `StreamState::default()`): `1 + 4(n − 1)`
    /// frames for the first chunk, `4n` after, seamless.
    pub fn decode_stream(&self, latents: Tensor<B, 5>, state: &mut StreamState<B>) -> Tensor<B, 5> {
        self.vae.decode_stream(self.spec.denormalise(latents), state)
    }

    /// The noise of `request`'s chunk for `frames` latent frames, stream `stream`.
    fn noise(&self, request: &ChunkRequest<B>, stream: u64, frames: usize, device: &B::Device) -> Tensor<B, 4> {
        let [c, h, w] = self.latent_frame();
        let seed = crate::world::noise_hash(request.seed, request.chunk as i64, 1);
        Tensor::from_data(TensorData::new(gaussian(seed, stream, c * frames * h * w), [c, frames, h, w]), device)
    }

    /// The guided v̂ of one denoising step of a batch, at the time `t[i]` for item `i`: runs
    /// the guided passes as one batch of the denoiser and combines them. `self_cond` is either
    /// `[b, …]`, fed to every pass, or `[passes · b, …]`, a part per pass in the order of the
    /// returned passes. Also returns every pass's own v̂, `[passes · b, …]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn guided_v(
        &self,
        settings: &SamplerSettings,
        z: Tensor<B, 5>,
        t: &[f64],
        self_cond: Option<Tensor<B, 5>>,
        context: &Option<FrameContext<B>>,
        positions: &Option<Vec<Vec<FramePosition>>>,
        text: &TextCondition<B>,
        device: &B::Device,
    ) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let b = z.dims()[0];
        assert_eq!(t.len(), b, "a time per item");
        let g = settings.guidance;
        let passes = guidance_passes(&g);
        let n = passes.len();
        let repeat = |x: &Tensor<B, 5>| Tensor::cat(vec![x.clone(); n], 0);
        let z_all = repeat(&z);
        let drop: Vec<bool> = passes.iter().flat_map(|&(_, text)| std::iter::repeat_n(!text, b)).collect();
        let text_all = TextCondition {
            tokens: Tensor::cat(vec![text.tokens.clone(); n], 0),
            padding_mask: Tensor::cat(vec![text.padding_mask.clone(); n], 0),
            pooled: Tensor::cat(vec![text.pooled.clone(); n], 0),
        }
        .drop_where(Tensor::from_data(TensorData::new(drop, [n * b]), device));
        let context_all = context.as_ref().map(|c| {
            let tt = c.frame_mask.dims()[1];
            let keep: Vec<bool> = passes.iter().flat_map(|&(ctx, _)| std::iter::repeat_n(ctx, b * tt)).collect();
            let keep = Tensor::<B, 2, Bool>::from_data(TensorData::new(keep, [n * b, tt]), device);
            FrameContext {
                latents: repeat(&c.latents),
                frame_mask: Tensor::cat(vec![c.frame_mask.clone(); n], 0).bool_and(keep),
            }
        });
        let input = DenoiserInput {
            z_t: z_all,
            t: Tensor::from_data(TensorData::new(t.repeat(n).iter().map(|&t| t as f32).collect(), [n * b]), device),
            self_cond: self_cond.map(|s| if s.dims()[0] == b { repeat(&s) } else { s }),
            context: context_all,
            condition: Condition::Text(text_all),
            positions: positions.as_ref().map(|p| (0..n).flat_map(|_| p.iter().cloned()).collect()),
        };
        let v = if self.parallel_passes && n > 1 {
            use rayon::prelude::*;
            let passes: Vec<Tensor<B, 5>> =
                input.split(n).into_par_iter().map(|pass| self.denoiser.forward(pass)).collect();
            Tensor::cat(passes, 0)
        } else {
            self.denoiser.forward(input)
        };
        let mut parts = v.clone().chunk(n, 0).into_iter();
        let full = parts.next().expect("the full pass");
        let guided = match (parts.next(), parts.next()) {
            (None, _) => full,
            (Some(context_only), None) => {
                Guidance { context: 1.0, ..g }.combine(context_only.clone(), context_only, full)
            }
            (Some(context_only), Some(null)) => g.combine(null, context_only, full),
        };
        (guided, v)
    }

    /// GFLOPs of the denoiser's matrix products for one chunk of one stream with `settings`
    /// and a prompt of `text_tokens` tokens: every guided pass of every step, and for
    /// reconstruction guidance the backward pass of the full one (≈ twice a forward).
    pub fn chunk_gflops(&self, settings: &SamplerSettings, text_tokens: usize) -> f64 {
        let [_, h, w] = self.latent_frame();
        let forward = self.denoiser_config.gflops(self.spec.window, h, w, text_tokens);
        let backward = if matches!(settings.mode, ExtendMode::Guided { .. }) { 2.0 } else { 0.0 };
        settings.steps as f64 * (self.passes_per_step(settings) as f64 + backward) * forward
    }

    /// The denoiser passes one step with `settings` runs: one for a distilled denoiser, else
    /// one per guided pass.
    pub fn passes_per_step(&self, settings: &SamplerSettings) -> usize {
        guidance_passes(&self.guidance(settings)).len()
    }

    /// The guidance `settings` get with this denoiser: none on top of a distilled one's own.
    fn guidance(&self, settings: &SamplerSettings) -> Guidance {
        if self.spec.distilled.is_some() { Guidance::NONE } else { settings.guidance }
    }

    /// Generates one chunk for every request, batched: returns each request's new normalised
    /// latents `[c, window − a − k, h, w]` (`a` anchors, `k` context frames).
    ///
    /// # Panics
    /// If anchors and context fill the window, or a tensor has the wrong shape.
    pub fn generate(&self, requests: &[ChunkRequest<B>], settings: &SamplerSettings) -> Vec<Tensor<B, 4>> {
        self.generate_from(requests, settings, None)
    }

    /// [`Pipeline::generate`], or with `start` from known latents noised to a step of the grid
    /// instead of from pure noise (SDEdit): latents like those the denoiser makes, near
    /// `start`'s, to train a decoder on ([`crate::train::DenoisedLatents`]).
    ///
    /// # Panics
    /// As [`Pipeline::generate`]; if `start`'s latents are not `[b, c, window, h, w]` or its
    /// step is not on the grid.
    pub fn generate_from(
        &self,
        requests: &[ChunkRequest<B>],
        settings: &SamplerSettings,
        start: Option<&SdeditStart<B>>,
    ) -> Vec<Tensor<B, 4>> {
        self.sample_window(requests, settings, start, self.spec.window)
    }

    /// One latent frame, a still image, for every request (which must have no context or
    /// anchors), as the denoiser learnt from its image batches: `[c, 1, h, w]` each.
    ///
    /// # Panics
    /// If a request has context or anchors.
    pub fn generate_image(&self, requests: &[ChunkRequest<B>], settings: &SamplerSettings) -> Vec<Tensor<B, 4>> {
        self.sample_window(requests, settings, None, 1)
    }

    /// [`Pipeline::generate_from`] for a window of `t` latent frames.
    fn sample_window(
        &self,
        requests: &[ChunkRequest<B>],
        settings: &SamplerSettings,
        start: Option<&SdeditStart<B>>,
        t: usize,
    ) -> Vec<Tensor<B, 4>> {
        let settings = &SamplerSettings { guidance: self.guidance(settings), ..*settings };
        let device = self.denoiser.patch_embedding.weight.device();
        let [c, h, w] = self.latent_frame();
        let b = requests.len();
        if b == 0 {
            return Vec::new();
        }
        let anchors: Vec<usize> = requests.iter().map(|r| r.anchors.as_ref().map_or(0, |a| a.len())).collect();
        let given: Vec<usize> =
            requests.iter().zip(&anchors).map(|(r, &a)| a + r.context.as_ref().map_or(0, |x| x.dims()[1])).collect();
        assert!(
            given.iter().all(|&k| k < t),
            "anchors and context of {given:?} frames leave no room in a window of {t}"
        );
        // Clean anchors and context, zero-padded to the window, and their mask.
        let clean = Tensor::stack::<5>(
            requests
                .iter()
                .zip(&given)
                .map(|(r, &k)| {
                    let parts: Vec<Tensor<B, 4>> =
                        r.anchors.iter().map(|a| a.latents.clone()).chain(r.context.iter().cloned()).collect();
                    if parts.is_empty() {
                        Tensor::zeros([c, t, h, w], &device)
                    } else {
                        Tensor::cat([parts, vec![Tensor::zeros([c, t - k, h, w], &device)]].concat(), 1)
                    }
                })
                .collect(),
            0,
        );
        let positions = anchors.iter().any(|&a| a > 0).then(|| {
            requests
                .iter()
                .zip(&anchors)
                .map(|(r, &a)| FramePosition::window(r.anchors.as_ref().map_or(&[][..], |x| &x.distances), t - a))
                .collect::<Vec<_>>()
        });
        let mask_values: Vec<bool> = given.iter().flat_map(|&k| (0..t).map(move |i| i < k)).collect();
        let mask = Tensor::<B, 2, Bool>::from_data(TensorData::new(mask_values, [b, t]), &device);
        let mask5 = mask.clone().reshape([b, 1, t, 1, 1]).expand([b, c, t, h, w]);
        let any_context = given.iter().any(|&k| k > 0);
        let text = TextCondition::from(TextBatch::<B>::from_embeddings(
            &requests.iter().map(|r| r.text.clone()).collect::<Vec<_>>(),
            &device,
        ));
        let per_request =
            |stream: u64| Tensor::stack::<5>(requests.iter().map(|r| self.noise(r, stream, t, &device)).collect(), 0);
        // What the denoiser is conditioned on: the given frames, noised as it was trained to
        // see them (`spec.context_noise`); replacement and reconstruction guidance keep them clean.
        let context = (any_context && settings.mode.conditions()).then(|| {
            let s = self.spec.context_noise;
            let latents = if s > 0.0 {
                noised_context(clean.clone(), per_request(CONTEXT_NOISE_STREAM), s)
            } else {
                clean.clone()
            };
            FrameContext { latents, frame_mask: mask.clone() }
        });
        let ddim = Ddim { schedule: self.spec.schedule, steps: settings.steps, eta: settings.eta };
        // Replacement: the given frames as q(z_t | x) before every step.
        let replace = |z: Tensor<B, 5>, time: f64, index: usize| {
            if !any_context {
                return z;
            }
            let co = self.spec.schedule.at(time);
            let noised = clean.clone().mul_scalar(co.alpha) + per_request(2 + index as u64).mul_scalar(co.sigma);
            z.mask_where(mask5.clone(), noised)
        };
        let guide = matches!(settings.mode, ExtendMode::Guided { .. }).then(|| {
            <Denoiser<Autodiff<B>> as AutodiffModule<Autodiff<B>>>::from_inner(self.denoiser.clone()).no_grad()
        });
        let (first, z) = match start {
            None => (0, per_request(0)),
            Some(start) => {
                assert_eq!(start.latents.dims(), [b, c, t, h, w], "SDEdit latents of the batch's window");
                assert!(start.step < settings.steps, "SDEdit from step {} of {}", start.step, settings.steps);
                let co = self.spec.schedule.at(ddim.steps()[start.step].t);
                (start.step, start.latents.clone().mul_scalar(co.alpha) + per_request(0).mul_scalar(co.sigma))
            }
        };
        let mut index = 0;
        // Every guidance pass's own x̂ of the previous step, for `SelfConditioning::PerPass`.
        let mut own_estimates: Option<Tensor<B, 5>> = None;
        let z = ddim.sample_from(
            first,
            z,
            |z, time, guided_estimate| {
                let z = replace(z, time, index);
                index += 1;
                let times = vec![time; b];
                let fed = match settings.self_conditioning {
                    SelfConditioning::Guided => guided_estimate,
                    SelfConditioning::PerPass => own_estimates.take(),
                    SelfConditioning::Off => None,
                };
                let (v, passes) =
                    self.guided_v(settings, z.clone(), &times, fed.clone(), &context, &positions, &text, &device);
                if settings.self_conditioning == SelfConditioning::PerPass {
                    let co = self.spec.schedule.at(time);
                    let n = passes.dims()[0] / b;
                    own_estimates =
                        Some(Tensor::cat(vec![z.clone(); n], 0).mul_scalar(co.alpha) - passes.mul_scalar(co.sigma));
                }
                // The full pass's part is what reconstruction guidance differentiates.
                let self_cond = fed.map(|s| s.narrow(0, 0, b));
                match (settings.mode, &guide) {
                    (ExtendMode::Guided { weight }, Some(guide)) if any_context => {
                        let co = self.spec.schedule.at(time);
                        let x = z.clone().mul_scalar(co.alpha) - v.mul_scalar(co.sigma);
                        let g = reconstruction_gradient(
                            guide,
                            z.clone(),
                            time,
                            co,
                            self_cond,
                            &context,
                            &positions,
                            &text,
                            &clean,
                            &mask5,
                        );
                        // x̃ᵇ = x̂ᵇ − (w_r α_t / 2) ∇_{zᵇ} ‖xᵃ − x̂ᵃ‖², on the frames to generate only.
                        let g = g.mask_fill(mask5.clone(), 0.0).mul_scalar(weight * co.alpha / 2.0);
                        (z.mul_scalar(co.alpha) - (x - g)).div_scalar(co.sigma)
                    }
                    _ => v,
                }
            },
            |i| per_request(1_000_000 + i as u64),
            |_, _| {},
        );
        requests
            .iter()
            .zip(&given)
            .enumerate()
            .map(|(i, (_, &k))| z.clone().narrow(0, i, 1).reshape([c, t, h, w]).narrow(1, k, t - k))
            .collect()
    }
}

/// ∇_z ‖xᵃ − x̂ᵃ(z)‖² of the conditioned pass, summed over the given frames of every request
/// (requests are independent, so each gets the gradient of its own error): the reconstruction
/// guidance of Ho et al. 2022, by autodiff through the denoiser (weights frozen).
#[allow(clippy::too_many_arguments)]
fn reconstruction_gradient<B: Backend>(
    guide: &Denoiser<Autodiff<B>>,
    z: Tensor<B, 5>,
    t: f64,
    co: crate::diffusion::Coefficients,
    self_cond: Option<Tensor<B, 5>>,
    context: &Option<FrameContext<B>>,
    positions: &Option<Vec<Vec<FramePosition>>>,
    text: &TextCondition<B>,
    clean: &Tensor<B, 5>,
    given: &Tensor<B, 5, Bool>,
) -> Tensor<B, 5> {
    type A<B> = Autodiff<B>;
    let b = z.dims()[0];
    let z_ad = Tensor::<A<B>, 5>::from_inner(z).require_grad();
    let input = DenoiserInput {
        z_t: z_ad.clone(),
        t: Tensor::from_inner(Tensor::full([b], t, &clean.device())),
        self_cond: self_cond.map(Tensor::from_inner),
        context: context.as_ref().map(|c| FrameContext {
            latents: Tensor::from_inner(c.latents.clone()),
            frame_mask: Tensor::from_inner(c.frame_mask.clone()),
        }),
        condition: Condition::Text(TextCondition {
            tokens: Tensor::from_inner(text.tokens.clone()),
            padding_mask: Tensor::from_inner(text.padding_mask.clone()),
            pooled: Tensor::from_inner(text.pooled.clone()),
        }),
        positions: positions.clone(),
    };
    let v = guide.forward(input);
    let x_hat = z_ad.clone().mul_scalar(co.alpha) - v.mul_scalar(co.sigma);
    let error = (Tensor::<A<B>, 5>::from_inner(clean.clone()) - x_hat)
        .mask_fill(Tensor::from_inner(given.clone()).bool_not(), 0.0);
    let grads = error.square().sum().backward();
    z_ad.grad(&grads).expect("z requires its gradient")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Resolved;

    /// A spec written before distillation existed reads as undistilled and samples as asked; a
    /// distilled one samples in its own steps without guidance.
    #[test]
    fn a_distilled_spec_sets_the_steps_and_drops_the_guidance() {
        let old = r#"{"width": 128, "height": 128, "fps": 8.0, "window": 4, "latent_mean": 0.0,
            "latent_std": 1.0, "schedule": {"logsnr_shift": 0.0, "logsnr_min": -15.0, "logsnr_max": 15.0}}"#;
        let spec: PipelineSpec = serde_json::from_str(old).unwrap();
        assert_eq!(spec.distilled, None);
        let asked = SamplerSettings { steps: 8, ..SamplerSettings::default() };
        assert_eq!(spec.sampler(asked), asked);
        let guidance = Guidance { text: 3.0, context: 1.5 };
        let distilled = PipelineSpec { distilled: Some(Distilled { steps: 4, from_steps: 32, guidance }), ..spec };
        let json = serde_json::to_string(&distilled).unwrap();
        assert_eq!(serde_json::from_str::<PipelineSpec>(&json).unwrap(), distilled);
        assert_eq!(distilled.sampler(asked), SamplerSettings { steps: 4, guidance: Guidance::NONE, ..asked });
    }

    /// Settings recorded before self-conditioning was a setting replay as they were sampled;
    /// anything new samples with each pass's own estimate.
    #[test]
    fn settings_recorded_before_self_conditioning_replay_guided() {
        let old = r#"{"steps": 4, "eta": 0.0, "guidance": {"text": 8.0, "context": 1.0}, "mode": "conditioned"}"#;
        let recorded: SamplerSettings = serde_json::from_str(old).unwrap();
        assert_eq!(recorded.self_conditioning, SelfConditioning::Guided);
        assert_eq!(SamplerSettings::default().self_conditioning, SelfConditioning::PerPass);
        let now = SamplerSettings { self_conditioning: SelfConditioning::Off, ..recorded };
        assert_eq!(serde_json::from_str::<SamplerSettings>(&serde_json::to_string(&now).unwrap()).unwrap(), now);
        for name in ["guided", "per-pass", "off"] {
            let parsed: SelfConditioning = name.parse().unwrap();
            assert_eq!(serde_json::to_value(parsed).unwrap(), name);
        }
        assert!("per_pass".parse::<SelfConditioning>().is_err());
    }

    /// Per-channel statistics normalise every channel to its own scale, and back exactly; a
    /// spec without them normalises with the pooled ones.
    #[test]
    fn per_channel_statistics_normalise_each_channel() {
        type B = burn::backend::Flex;
        let device = Default::default();
        let pooled: PipelineSpec = serde_json::from_str(
            r#"{"width": 64, "height": 64, "fps": 8.0, "window": 4, "latent_mean": 1.0, "latent_std": 2.0,
            "schedule": {"logsnr_shift": 0.0, "logsnr_min": -15.0, "logsnr_max": 15.0}}"#,
        )
        .unwrap();
        assert_eq!(pooled.channels, None);
        let spec = PipelineSpec {
            channels: Some(ChannelStats { mean: vec![-5.0, 2.0], std: vec![15.0, 4.0] }),
            ..pooled.clone()
        };
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<PipelineSpec>(&json).unwrap(), spec);
        // Channel 0 drawn as N(-5, 15²), channel 1 as N(2, 4²).
        let noise = Tensor::<B, 5>::random([2, 2, 3, 4, 4], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let raw = Tensor::cat(
            vec![
                noise.clone().narrow(1, 0, 1).mul_scalar(15.0).sub_scalar(5.0),
                noise.narrow(1, 1, 1).mul_scalar(4.0).add_scalar(2.0),
            ],
            1,
        );
        let normalised = spec.normalise(raw.clone());
        for c in 0..2 {
            let x = normalised.clone().narrow(1, c, 1);
            let mean = x.clone().mean().into_scalar();
            let std = x.sub_scalar(mean).square().mean().into_scalar().sqrt();
            assert!(mean.abs() < 0.35 && (std - 1.0).abs() < 0.35, "channel {c}: mean {mean}, std {std}");
        }
        let back = spec.denormalise(normalised);
        assert!(back.sub(raw.clone()).abs().max().into_scalar() < 1e-4);
        let by_pool = pooled.normalise(raw.clone());
        assert!(by_pool.sub(raw.sub_scalar(1.0).div_scalar(2.0)).abs().max().into_scalar() < 1e-6);
    }

    #[test]
    fn the_device_picks_the_tier() {
        let root = std::env::temp_dir().join(format!("endless-tiers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let spec = |dir: &Path| {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(dir.join(SPEC_FILE), "{}").unwrap();
        };
        assert!(tier_dir(&root, Resolved::Cpu).is_err(), "nothing there yet");
        spec(&root.join("cpu"));
        assert_eq!(tier_dir(&root, Resolved::Cpu).unwrap(), root.join("cpu"));
        assert_eq!(tier_dir(&root, Resolved::Cuda).unwrap(), root.join("cpu"), "no gpu tier: the cpu one");
        spec(&root.join("gpu"));
        assert_eq!(tier_dir(&root, Resolved::Cuda).unwrap(), root.join("gpu"));
        assert_eq!(tier_dir(&root, Resolved::Cpu).unwrap(), root.join("cpu"));
        // A pipeline folder is used as it is, whatever the device.
        assert_eq!(tier_dir(&root.join("gpu"), Resolved::Cpu).unwrap(), root.join("gpu"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
