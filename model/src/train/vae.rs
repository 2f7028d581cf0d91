//! Training the video VAE on the procedural world.
//!
//! Batches stream from the world: batch `s` of a run with seed `seed` is a pure function of
//! `(seed, s)` (its own [`ClipSampler`] seeded from both), so a resumed run sees exactly the
//! batches it would have seen. A fraction of the batches are single-frame images (an image is a
//! 1-frame video for the causal VAE): joint image–video training. Each batch's clips render in
//! parallel on rayon, on a background thread one batch ahead of the step (a channel of 2).
//!
//! AdamW with a linear warm-up then a constant or cosine learning rate, per-tensor gradient-norm
//! clipping (burn's `GradientClippingConfig::Norm`), an optional EMA of the weights. Randomness
//! of burn (initialisation, the posterior sample) is seeded from `(seed, step)` before each step,
//! so a run is deterministic for a seed and resuming gives the weights of a straight run.
//!
//! **Decoder fine-tuning** (`decoder_only`, from a trained VAE with `init_from`): the encoder
//! runs outside autodiff and stays bit for bit as it was, so the latents a denoiser was trained
//! on do not move while the decoder keeps learning (as Stable Diffusion's decoder was
//! fine-tuned). A pipeline then takes the new VAE in place of the old one. With `fresh_decoder`
//! the decoder starts anew, of another width or without normalisation, on the same latents.
//!
//! **On the denoiser's latents** ([`DenoisedLatents`], with `decoder_only`): a stream's decoder
//! never sees the encoder's latents, only what the denoiser makes, which at the service's 4
//! DDIM steps is the last step's x̂₀ from t = 0.25 (α ≈ 0.77, σ ≈ 0.64): a posterior mean,
//! smoother than an encoding. So part of the video batches are decoded from latents the
//! pipeline's own denoiser makes of them instead — each clip's encoding noised to a late step
//! of the service's DDIM grid and denoised from there with its caption, its first latents
//! given as a stream's context (SDEdit, Meng et al. 2022) — against the clip itself. The
//! denoiser and the encoder stay as they are.
//!
//! A checkpoint is `vae.safetensors` (+ JSON with meta `{step, samples_seen, seed}`), the
//! optimizer state `optim.bin` (moments keyed by parameter order), `vae-ema.safetensors` when
//! the EMA is on, `loss.csv` and `loss.png`.

use super::common::{Feeder, LrSchedule, Optim, Optimisation, ema_update, load_optim, param_ids, save_optim};
use super::critic::{Critic, CriticConfig, adversarial_gradient, hinge};
use super::plot::{LossRow, read_loss_csv, write_loss_csv, write_loss_plot};
use crate::checkpoint::{self, Precision};
use crate::data::video_tensor;
use crate::diffusion::Guidance;
use crate::pipeline::{ChunkRequest, ExtendMode, Pipeline, SamplerSettings, SdeditStart, SelfConditioning};
use crate::text::TextEncoder;
use crate::vae::{Vae, VaeConfig};
use crate::world::{ClipOptions, ClipSampler, Split, noise_hash, noise_uniform, render_all};
use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::ElementConversion;
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Everything a VAE training run needs.
#[derive(Clone, Debug)]
pub struct TrainVaeOptions {
    /// The model; on resume the checkpoint's config is used instead.
    pub config: VaeConfig,
    pub width: usize,
    pub height: usize,
    /// Frames of the video batches (1 + 4k); image batches have 1.
    pub frames: usize,
    pub fps: f64,
    /// Chance that a clip has an attribute transition.
    pub transition_probability: f64,
    /// Clips (or images) per batch.
    pub batch: usize,
    /// The step to stop at (a resumed run continues from its checkpoint's step up to this).
    pub steps: usize,
    /// Optimiser, learning-rate curve, EMA.
    pub optim: Optimisation,
    /// Fraction of batches that are single-frame images.
    pub image_fraction: f64,
    /// A folder of real videos, a second data source (needs the `gst` feature).
    pub videos: Option<PathBuf>,
    /// Fraction of batches drawn from `videos` when it is given.
    pub video_fraction: f64,
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Continue from `out/vae.safetensors` if it exists.
    pub resume: bool,
    /// A fresh run starts from this VAE checkpoint's weights (and config) instead of an
    /// initialisation; a resumed run ignores it. Its decoder grows to `config`'s
    /// `decoder_blocks` when they are given and differ ([`crate::vae::Decoder::with_blocks`]).
    pub init_from: Option<PathBuf>,
    /// Train the decoder alone; the encoder stays bit for bit as it started. A denoiser trained
    /// on the encoder's latents keeps working with the fine-tuned decoder.
    pub decoder_only: bool,
    /// Decode part of the video batches from latents the denoiser makes of them (needs
    /// `decoder_only`); `None`: from the encoder's posterior only.
    pub denoised: Option<DenoisedLatents>,
    /// Weight of the loss's motion term ([`VaeConfig::motion_weight`]) in place of that of
    /// `config` or of `init_from`'s checkpoint; a resumed run keeps its checkpoint's.
    pub motion_weight: Option<f64>,
    /// With `init_from`: keep only its encoder, and start a decoder of `config`'s
    /// `decoder_channels` and `decoder_norm_groups` from a fresh initialisation.
    pub fresh_decoder: bool,
    /// With `init_from`: grow the latent to this many channels, keeping the trained ones
    /// ([`crate::vae::Encoder::with_latent_channels`]); `None`: the checkpoint's.
    pub latent_channels: Option<usize>,
    /// Up-sample time in the decoder by depth to time ([`VaeConfig::depth_to_time`]): for a
    /// fresh decoder, of `config`'s shape; with `init_from` alone, its decoder grown from the
    /// repeat it has, starting from the same output. A resumed run keeps its checkpoint's.
    pub depth_to_time: bool,
    /// An adversarial term for the decoder (needs `decoder_only`): a critic trained beside it
    /// ([`super::critic`]); `None`: the reconstruction loss alone.
    pub adversarial: Option<Adversarial>,
    /// Checkpoint every this many steps (and at the end); 0: only at the end.
    pub checkpoint_every: usize,
    /// A progress line on stderr every this many steps; 0: none.
    pub log_every: usize,
    /// Stop (with a checkpoint) after the first step that ends past this much wall-clock time,
    /// for training in legs of fixed length; `None`: run to `steps`.
    pub time_limit: Option<Duration>,
}

/// The adversarial term of a decoder-only run ([`super::critic`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Adversarial {
    /// Norm of the term's gradient on the reconstruction, as a multiple of the L1 term's.
    pub weight: f64,
    /// Steps at the start in which the critic trains alone (the decoder gets no term yet).
    pub critic_start: usize,
    /// The critic's learning rate as a multiple of the decoder's: it starts from nothing
    /// while the decoder is trained.
    pub critic_lr_scale: f64,
}

/// Where a decoder-only run gets denoised latents, and how it makes them.
#[derive(Clone, Debug)]
pub struct DenoisedLatents {
    /// A trained pipeline on the run's encoder (checked before the first step): its denoiser and
    /// its normalisation of the latents.
    pub pipeline: PathBuf,
    /// The text encoder's folder.
    pub text: PathBuf,
    /// Fraction of the video batches decoded from denoised latents.
    pub fraction: f64,
    /// The DDIM grid, as the service samples it.
    pub steps: usize,
    /// Each chosen batch starts from a step drawn evenly from `first_step..steps`: `steps − 1`
    /// is the last step alone (one denoiser pass), 0 would drown the clip in noise.
    pub first_step: usize,
    /// Latent frames given clean as the chunk's context, as a stream gives its last ones;
    /// the clips have the pipeline's window of latent frames.
    pub context: usize,
    /// Classifier-free text guidance, as the service's.
    pub guidance: f64,
}

impl DenoisedLatents {
    /// Half of the video batches, from step 2 or 3 of a 4-step grid (t = 0.5 or 0.25), two
    /// latents of context, text guidance 8: the service's settings.
    pub fn new(pipeline: impl Into<PathBuf>, text: impl Into<PathBuf>) -> Self {
        DenoisedLatents {
            pipeline: pipeline.into(),
            text: text.into(),
            fraction: 0.5,
            steps: 4,
            first_step: 2,
            context: 2,
            guidance: 8.0,
        }
    }

    /// The step batch `step` starts denoising from, if it is one of the `fraction` chosen.
    fn first_step_of(&self, seed: u64, step: usize) -> Option<usize> {
        let u = noise_uniform(seed, step as i64, 5);
        let span = (self.steps - self.first_step) as u64;
        (u < self.fraction).then(|| self.first_step + (noise_hash(seed, step as i64, 6) % span) as usize)
    }
}

/// The pipeline and text encoder that make the denoised latents of a run.
struct Denoising<B: Backend> {
    o: DenoisedLatents,
    pipeline: Pipeline<B>,
    text: TextEncoder<B>,
}

impl<B: Backend> Denoising<B> {
    fn load(o: &DenoisedLatents, device: &B::Device) -> Result<Self> {
        let pipeline = Pipeline::load(&o.pipeline, true, device)
            .with_context(|| format!("loading the pipeline {}", o.pipeline.display()))?;
        let text = TextEncoder::load(&o.text, device)
            .with_context(|| format!("loading the text encoder from {}", o.text.display()))?;
        Ok(Denoising { o: o.clone(), pipeline, text })
    }

    /// The clips' latents as the denoiser makes them from `mean` (`[b, c, window, h, w]`, the
    /// encoder's, unnormalised; so is the result): noised to the time of step `first` of the
    /// grid and denoised from there with each clip's caption, the first `context` given.
    fn latents(&self, mean: Tensor<B, 5>, captions: &[String], seed: u64, first: usize) -> Tensor<B, 5> {
        let x = self.pipeline.spec.normalise(mean);
        let [_, c, t, h, w] = x.dims();
        let k = self.o.context;
        let requests: Vec<ChunkRequest<B>> = captions
            .iter()
            .enumerate()
            .map(|(i, caption)| ChunkRequest {
                seed,
                chunk: i as u64,
                context: (k > 0).then(|| x.clone().narrow(0, i, 1).reshape([c, t, h, w]).narrow(1, 0, k)),
                anchors: None,
                text: self.text.embed(caption),
            })
            .collect();
        let settings = SamplerSettings {
            steps: self.o.steps,
            eta: 0.0,
            guidance: Guidance { text: self.o.guidance, context: 1.0 },
            mode: ExtendMode::Conditioned,
            // As when the shipped decoder was trained on these latents, so that its command
            // still makes it.
            self_conditioning: SelfConditioning::Guided,
        };
        let start = SdeditStart { latents: x.clone(), step: first };
        let made = Tensor::stack::<5>(self.pipeline.generate_from(&requests, &settings, Some(&start)), 0);
        let latents = if k == 0 { made } else { Tensor::cat(vec![x.narrow(2, 0, k), made], 2) };
        self.pipeline.spec.denormalise(latents)
    }

    /// Fails unless the pipeline's VAE encodes `video` as `encoder` does: its denoiser was
    /// trained on that encoder's latents.
    fn check_encoder(&self, encoder: &Vae<B>, video: Tensor<B, 5>) -> Result<()> {
        let (ours, _) = encoder.encode(video.clone());
        let (theirs, _) = self.pipeline.vae.encode(video);
        let scale = ours.clone().abs().max().into_scalar().elem::<f64>().max(1e-6);
        let diff = (ours - theirs).abs().max().into_scalar().elem::<f64>();
        if diff > 1e-2 * scale {
            bail!(
                "{}: its VAE encodes differently from the run's (max difference {diff:.3} on latents up to {scale:.3}); \
                 its denoiser needs the encoder it was trained on",
                self.o.pipeline.display()
            );
        }
        Ok(())
    }
}

impl TrainVaeOptions {
    /// Defaults for `config`: 64×64, 9 frames at 8 fps, batch 4, 1000 steps, lr 1e-3 after 100
    /// steps of warm-up, constant, clip 1.0, a quarter of the batches images, EMA 0.999.
    pub fn new(config: VaeConfig, out: impl Into<PathBuf>) -> Self {
        TrainVaeOptions {
            config,
            width: 64,
            height: 64,
            frames: 9,
            fps: 8.0,
            transition_probability: 0.3,
            batch: 4,
            steps: 1000,
            optim: Optimisation {
                lr: 1e-3,
                warmup: 100,
                schedule: LrSchedule::Constant,
                grad_clip: 1.0,
                weight_decay: 1e-4,
                ema_decay: Some(0.999),
            },
            image_fraction: 0.25,
            videos: None,
            video_fraction: 0.5,
            seed: 1,
            out: out.into(),
            resume: false,
            init_from: None,
            decoder_only: false,
            denoised: None,
            adversarial: None,
            motion_weight: None,
            fresh_decoder: false,
            latent_channels: None,
            depth_to_time: false,
            checkpoint_every: 500,
            log_every: 10,
            time_limit: None,
        }
    }

    /// These options with the optimiser's settings changed by `f`.
    pub fn with_optim(self, f: impl FnOnce(Optimisation) -> Optimisation) -> Self {
        TrainVaeOptions { optim: f(self.optim), ..self }
    }

    /// Whether batch `step` is a batch of images, and its clip options.
    fn batch_options(&self, step: usize) -> (bool, ClipOptions) {
        let u = noise_uniform(self.seed, step as i64, 2);
        let image = u < self.image_fraction;
        let frames = if image { 1 } else { self.frames };
        let o = ClipOptions {
            width: self.width,
            height: self.height,
            fps: self.fps,
            frames,
            transition_probability: self.transition_probability,
        };
        (image, o)
    }

    /// Whether batch `step` comes from the folder of real videos.
    fn is_video_batch(&self, step: usize) -> bool {
        let u = noise_uniform(self.seed, step as i64, 4);
        self.videos.is_some() && u < self.video_fraction
    }

    /// The clips of batch `step` from the folder of real videos, decoded in parallel: a pure
    /// function of `(seed, step)` and the folder.
    #[cfg(feature = "gst")]
    fn decode_batch(&self, folder: &crate::videos::VideoFolder, step: usize) -> Result<RenderedBatch> {
        use rayon::prelude::*;
        let (_, o) = self.batch_options(step);
        let mut sampler = crate::videos::VideoSampler::new(folder.clone(), noise_hash(self.seed, step as i64, 1));
        let requests: Vec<_> =
            (0..self.batch).map(|_| sampler.next_request(self.width, self.height, self.fps, o.frames)).collect();
        let frames = requests
            .par_iter()
            .map(|r| folder.clip(r).map(|c| c.frames).map_err(anyhow::Error::from))
            .collect::<Result<_>>()?;
        Ok(RenderedBatch { frames, captions: None })
    }

    /// The clips of batch `step`, rendered in parallel: a pure function of `(seed, step)`.
    pub fn render_batch(&self, step: usize) -> RenderedBatch {
        let (_, o) = self.batch_options(step);
        let mut sampler = ClipSampler::new(Split::Train, noise_hash(self.seed, step as i64, 1));
        let clips: Vec<_> = (0..self.batch).map(|_| sampler.next_clip(&o)).collect();
        let frames = render_all(&clips);
        RenderedBatch { frames, captions: Some(clips.iter().map(|c| c.caption()).collect()) }
    }

    fn validate(&self) -> Result<()> {
        let f = self.config.temporal_factor();
        let s = self.config.spatial_factor();
        if self.frames == 0 || !(self.frames - 1).is_multiple_of(f) {
            bail!("--frames {} is not 1 + {f}k", self.frames);
        }
        if self.width == 0 || self.height == 0 || !self.width.is_multiple_of(s) || !self.height.is_multiple_of(s) {
            bail!("{}x{} is not a multiple of {s}", self.width, self.height);
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.image_fraction) || !(0.0..=1.0).contains(&self.video_fraction) {
            bail!("the image and video fractions must be in [0, 1]");
        }
        if let Some(w) = self.motion_weight
            && !(w.is_finite() && w >= 0.0)
        {
            bail!("--motion-weight {w} must be a finite weight of 0 or more");
        }
        if let Some(a) = &self.adversarial {
            if !self.decoder_only {
                bail!("the adversarial term fine-tunes the decoder alone: add --decoder-only");
            }
            if !(a.weight.is_finite() && a.weight > 0.0) {
                bail!("--adversarial-weight {} must be a finite weight above 0", a.weight);
            }
            if !(a.critic_lr_scale.is_finite() && a.critic_lr_scale > 0.0) {
                bail!("--critic-lr-scale {} must be a finite multiple above 0", a.critic_lr_scale);
            }
        }
        if let Some(d) = &self.denoised {
            if !self.decoder_only {
                bail!("decoding denoised latents trains the decoder alone: add --decoder-only");
            }
            if !(0.0..=1.0).contains(&d.fraction) || d.first_step >= d.steps {
                bail!(
                    "denoised latents: a fraction of 0 to 1 and a first step below the steps ({} of {})",
                    d.first_step,
                    d.steps
                );
            }
        }
        self.optim.validate()
    }
}

/// A batch's clips as frames, with their captions where they have them.
pub struct RenderedBatch {
    /// Per clip, its frames as RGB bytes.
    pub frames: Vec<Vec<Vec<u8>>>,
    /// Per clip; `None` for real videos.
    pub captions: Option<Vec<String>>,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct TrainSummary {
    /// The step the run started from (0, or the checkpoint's).
    pub start_step: usize,
    /// The step it ended at.
    pub end_step: usize,
    /// Loss rows of this run's steps.
    pub rows: Vec<LossRow>,
    /// Videos and images per second over the run (rendering included, startup excluded).
    pub samples_per_second: f64,
}

/// A run's state between steps.
struct Run<B: AutodiffBackend> {
    config: VaeConfig,
    model: Vae<B>,
    optim: Optim<Vae<B>, B>,
    ema: Option<Vae<B::InnerBackend>>,
    critic: Option<CriticRun<B>>,
    step: usize,
    samples_seen: u64,
    rows: Vec<LossRow>,
}

/// The critic of an adversarial run and its optimiser.
struct CriticRun<B: AutodiffBackend> {
    config: CriticConfig,
    model: Critic<B>,
    optim: Optim<Critic<B>, B>,
}

impl<B: AutodiffBackend> CriticRun<B> {
    const FILE: &str = "critic.safetensors";

    /// A fresh critic (from the run's seed), or the checkpoint's when resuming.
    fn start(o: &TrainVaeOptions, resuming: bool, device: &B::Device) -> Result<Option<CriticRun<B>>> {
        if o.adversarial.is_none() {
            return Ok(None);
        }
        let config = CriticConfig::new();
        let optim = o.optim.adamw().init::<B, Critic<B>>();
        let path = o.out.join(Self::FILE);
        if resuming {
            let model = checkpoint::load(config.init(device), &path, device)?;
            let optim = load_optim(optim, &model, &o.out.join("critic-optim.bin"), device)?;
            return Ok(Some(CriticRun { config, model, optim }));
        }
        B::seed(device, noise_hash(o.seed, -1, 11));
        let model = config.init(device);
        param_ids(&model);
        Ok(Some(CriticRun { config, model, optim }))
    }

    fn save(&self, o: &TrainVaeOptions, meta: &serde_json::Value) -> Result<()> {
        save_optim(&self.optim, &self.model, &o.out.join("critic-optim"))?;
        checkpoint::save(&self.model, &self.config, meta, &o.out.join(Self::FILE), Precision::F32)?;
        Ok(())
    }
}

impl<B: AutodiffBackend> Run<B> {
    /// A fresh run, or the checkpoint's in `o.out` when resuming.
    fn start(o: &TrainVaeOptions, device: &B::Device) -> Result<Run<B>> {
        let ckpt = o.out.join("vae.safetensors");
        let adamw = o.optim.adamw();
        if !(o.resume && checkpoint::config_path(&ckpt).exists()) {
            if o.decoder_only && o.init_from.is_none() {
                bail!("a decoder-only run starts from a trained VAE (--init-from): its encoder stays as it is");
            }
            if o.fresh_decoder && o.init_from.is_none() {
                bail!("a fresh decoder replaces the decoder of a trained VAE (--init-from)");
            }
            let (config, model) = match &o.init_from {
                Some(from) => {
                    let config: VaeConfig = checkpoint::read_config(from)?;
                    let mut config = VaeConfig { motion_weight: o.motion_weight.or(config.motion_weight), ..config };
                    let mut trained: Vae<B> = checkpoint::load(config.init(device), from, device)?;
                    if o.fresh_decoder {
                        let config = VaeConfig {
                            decoder_channels: o.config.decoder_channels.clone(),
                            decoder_norm_groups: o.config.decoder_norm_groups,
                            depth_to_time: o.depth_to_time.then_some(true).or(o.config.depth_to_time),
                            decoder_blocks: o.config.decoder_blocks.clone(),
                            ..config
                        };
                        B::seed(device, noise_hash(o.seed, -1, 0));
                        let mut model: Vae<B> = config.init(device);
                        model.encoder = trained.encoder;
                        param_ids(&model);
                        (config, model)
                    } else {
                        // Grown from the output it gives: a wider latent, depth to time, more
                        // blocks.
                        if let Some(n) = o.latent_channels
                            && n != config.latent_channels
                        {
                            if o.decoder_only || n < config.latent_channels {
                                bail!(
                                    "{} has {} latent channels: a latent grows, end to end ({n} asked{})",
                                    from.display(),
                                    config.latent_channels,
                                    if o.decoder_only { ", with --decoder-only" } else { "" }
                                );
                            }
                            B::seed(device, noise_hash(o.seed, -1, 1));
                            trained.encoder = trained.encoder.with_latent_channels(&config, n, device);
                            trained.decoder = trained.decoder.with_latent_channels(n, device);
                            config = VaeConfig { latent_channels: n, ..config };
                        }
                        if o.depth_to_time && config.depth_to_time != Some(true) {
                            config = VaeConfig { depth_to_time: Some(true), ..config };
                            trained.decoder = trained.decoder.with_depth_to_time(device);
                        }
                        if let Some(blocks) = &o.config.decoder_blocks
                            && *blocks != config.decoder_block_counts()
                        {
                            config = VaeConfig { decoder_blocks: Some(blocks.clone()), ..config };
                            trained.decoder = trained.decoder.with_blocks(&config, device);
                        }
                        (config, trained)
                    }
                }
                None => {
                    let config = VaeConfig {
                        motion_weight: o.motion_weight.or(o.config.motion_weight),
                        depth_to_time: o.depth_to_time.then_some(true).or(o.config.depth_to_time),
                        ..o.config.clone()
                    };
                    B::seed(device, noise_hash(o.seed, -1, 0));
                    let model: Vae<B> = config.init(device);
                    param_ids(&model); // initialise every parameter now, from the seed
                    (config, model)
                }
            };
            let ema = o.optim.ema_decay.map(|_| model.valid());
            let optim = adamw.init::<B, Vae<B>>();
            let critic = CriticRun::start(o, false, device)?;
            return Ok(Run { config, model, optim, ema, critic, step: 0, samples_seen: 0, rows: Vec::new() });
        }
        let info = checkpoint::read_info(&ckpt)?;
        let config: VaeConfig = checkpoint::read_config(&ckpt)?;
        let step = info.meta["step"].as_u64().context("checkpoint meta without a step")? as usize;
        let samples_seen = info.meta["samples_seen"].as_u64().unwrap_or(0);
        if info.meta["seed"].as_u64() != Some(o.seed) {
            bail!("{} was trained with seed {}, not {}", ckpt.display(), info.meta["seed"], o.seed);
        }
        if info.meta["decoder_only"].as_bool().unwrap_or(false) != o.decoder_only {
            bail!(
                "{} was trained {}; resume it {}",
                ckpt.display(),
                if o.decoder_only { "end to end" } else { "decoder only" },
                if o.decoder_only { "without --decoder-only" } else { "with --decoder-only" }
            );
        }
        if let Some(w) = o.motion_weight
            && w != config.motion_weight.unwrap_or(0.0)
        {
            bail!(
                "{} trains with motion weight {}; a resumed run keeps it (not {w})",
                ckpt.display(),
                config.motion_weight.unwrap_or(0.0)
            );
        }
        if o.depth_to_time && config.depth_to_time != Some(true) {
            bail!("{} up-samples time by repeat; a resumed run keeps it (no --depth-to-time)", ckpt.display());
        }
        let adversarial = info.meta.get("adversarial_weight").and_then(|w| w.as_f64());
        if adversarial != o.adversarial.map(|a| a.weight) {
            bail!(
                "{} was trained with adversarial weight {adversarial:?}; a resumed run keeps it (not {:?})",
                ckpt.display(),
                o.adversarial.map(|a| a.weight)
            );
        }
        if let Some(blocks) = &o.config.decoder_blocks
            && *blocks != config.decoder_block_counts()
        {
            bail!(
                "{}'s decoder has {:?} blocks per level; a resumed run keeps them (not {blocks:?})",
                ckpt.display(),
                config.decoder_block_counts()
            );
        }
        let model: Vae<B> = checkpoint::load(config.init(device), &ckpt, device)?;
        let optim = load_optim(adamw.init::<B, Vae<B>>(), &model, &o.out.join("optim.bin"), device)?;
        let ema_path = o.out.join("vae-ema.safetensors");
        let ema = match o.optim.ema_decay {
            Some(_) if ema_path.exists() => Some(checkpoint::load(config.init(device), &ema_path, device)?),
            Some(_) => Some(model.valid()),
            None => None,
        };
        let csv = o.out.join("loss.csv");
        let mut rows = if csv.exists() { read_loss_csv(&csv)? } else { Vec::new() };
        rows.retain(|r| r.step < step);
        let critic = CriticRun::start(o, true, device)?;
        eprintln!("resuming {} at step {step} ({samples_seen} samples seen)", ckpt.display());
        Ok(Run { config, model, optim, ema, critic, step, samples_seen, rows })
    }

    fn save(&self, o: &TrainVaeOptions) -> Result<()> {
        let mut meta = serde_json::json!({ "step": self.step, "samples_seen": self.samples_seen, "seed": o.seed });
        if o.decoder_only {
            meta["decoder_only"] = true.into();
        }
        if let Some(from) = &o.init_from {
            meta["init_from"] = from.display().to_string().into();
            if o.fresh_decoder {
                meta["fresh_decoder"] = true.into();
            }
        }
        if let Some(d) = &o.denoised {
            meta["denoised_by"] = d.pipeline.display().to_string().into();
        }
        if let Some(a) = &o.adversarial {
            meta["adversarial_weight"] = a.weight.into();
            meta["critic_start"] = a.critic_start.into();
            meta["critic_lr_scale"] = a.critic_lr_scale.into();
        }
        if let Some(critic) = &self.critic {
            critic.save(o, &meta)?;
        }
        save_optim(&self.optim, &self.model, &o.out.join("optim"))?;
        if let Some(ema) = &self.ema {
            checkpoint::save(ema, &self.config, &meta, &o.out.join("vae-ema.safetensors"), Precision::F32)?;
        }
        // The model's JSON comes last: a checkpoint with it is complete.
        checkpoint::save(&self.model, &self.config, &meta, &o.out.join("vae.safetensors"), Precision::F32)?;
        write_loss_csv(&self.rows, &o.out.join("loss.csv"))?;
        write_loss_plot(&self.rows, &o.out.join("loss.png"), 640, 360)?;
        Ok(())
    }
}

/// Trains a VAE as `o` says, writing checkpoints, `loss.csv` and `loss.png` to `o.out`.
pub fn train_vae<B: AutodiffBackend>(o: &TrainVaeOptions, device: &B::Device) -> Result<TrainSummary> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let mut run = Run::<B>::start(o, device)?;
    let start = run.step;
    let o = &TrainVaeOptions { config: run.config.clone(), ..o.clone() };
    o.validate()?;
    if start >= o.steps {
        eprintln!("nothing to do: the checkpoint is at step {start}, --steps is {}", o.steps);
        return Ok(TrainSummary { start_step: start, end_step: start, rows: Vec::new(), samples_per_second: 0.0 });
    }

    let feeder_opts = o.clone();
    #[cfg(feature = "gst")]
    let folder = match &o.videos {
        Some(dir) => {
            Some(crate::videos::VideoFolder::open(dir).with_context(|| format!("--videos {}", dir.display()))?)
        }
        None => None,
    };
    #[cfg(not(feature = "gst"))]
    if let Some(dir) = &o.videos {
        bail!("--videos {}: this build cannot decode video (rebuild with the `gst` feature)", dir.display());
    }
    let mut feeder = Feeder::start(start..o.steps, move |step| {
        #[cfg(feature = "gst")]
        if let Some(folder) = &folder
            && feeder_opts.is_video_batch(step)
        {
            return feeder_opts.decode_batch(folder, step);
        }
        Ok::<_, anyhow::Error>(feeder_opts.render_batch(step))
    });
    // Decoder-only: the encoder runs outside autodiff, so it gets no gradient and no update.
    let frozen = o.decoder_only.then(|| run.model.valid());
    let denoising = o.denoised.as_ref().map(|d| Denoising::<B::InnerBackend>::load(d, device)).transpose()?;
    if let Some(d) = &denoising {
        let window = d.pipeline.spec.window;
        let (w, h) = (d.pipeline.spec.width, d.pipeline.spec.height);
        if o.frames != 1 + o.config.temporal_factor() * (window - 1) || (o.width, o.height) != (w, h) {
            bail!(
                "the denoiser makes windows of {window} latent frames at {w}x{h}: train on clips of {} frames at {w}x{h}",
                1 + o.config.temporal_factor() * (window - 1)
            );
        }
        if d.o.context >= window {
            bail!("a context of {} latent frames leaves nothing to denoise in a window of {window}", d.o.context);
        }
        // Before any step: the first batch's clips, as the pipeline's VAE and the run's encode them.
        let frames = o.render_batch(start).frames;
        let frozen = frozen.as_ref().expect("validated: denoised latents need decoder_only");
        d.check_encoder(frozen, video_tensor(&frames, o.width, o.height, device))?;
    }
    let first_row = run.rows.len();
    let run_started = Instant::now();
    let (mut window_started, mut window_samples) = (Instant::now(), 0u64);
    while run.step < o.steps {
        let step = run.step;
        let batch = feeder.next(step)??;
        let real = o.is_video_batch(step);
        let t = batch.frames[0].len();
        let video = video_tensor::<B>(&batch.frames, o.width, o.height, device);
        B::seed(device, noise_hash(o.seed, step as i64, 3));
        // The step the denoiser starts from, for a batch decoded from its latents.
        let denoised = match (&denoising, &batch.captions) {
            (Some(d), Some(captions)) if t > 1 => d.o.first_step_of(o.seed, step).map(|first| (d, captions, first)),
            _ => None,
        };
        let lr = o.optim.lr_at(step, o.steps);
        let mut critic_line = String::new();
        let (loss, objective) = match &frozen {
            Some(frozen) => {
                let (mean, logvar) = frozen.encode(video.clone().inner());
                let out = match denoised {
                    Some((d, captions, first)) => {
                        let latents = d.latents(mean.clone(), captions, noise_hash(o.seed, step as i64, 7), first);
                        let [latents, mean, logvar] = [latents, mean, logvar].map(Tensor::from_inner);
                        run.model.decode_given(latents, mean, logvar)
                    }
                    None => run.model.decode_posterior(Tensor::from_inner(mean), Tensor::from_inner(logvar)),
                };
                let reconstruction = out.reconstruction.clone();
                let loss = run.model.loss_of(out, video.clone());
                let mut objective = loss.total.clone();
                // Clips only: the critic judges frames with their changes.
                if let (Some(a), true) = (o.adversarial, t > 1)
                    && let Some(critic) = run.critic.take()
                {
                    let fake = reconstruction.clone().inner();
                    let mut lambda = 0.0;
                    if step >= a.critic_start {
                        // The term's gradient through the surrogate λ·Σ x̂ ⊙ g (critic.rs).
                        let (g, l) = adversarial_gradient(&critic.model, fake.clone(), a.weight);
                        lambda = l;
                        objective = objective + (reconstruction * Tensor::from_inner(g)).sum().mul_scalar(lambda);
                    }
                    let (d_loss, real_logit, fake_logit) = hinge(
                        critic.model.forward(Tensor::from_inner(video.clone().inner())),
                        critic.model.forward(Tensor::from_inner(fake)),
                    );
                    critic_line = format!(
                        ", critic {:.3} (real {real_logit:+.2}, fake {fake_logit:+.2}), λ {lambda:.2e}",
                        d_loss.clone().into_scalar().elem::<f64>()
                    );
                    let grads = GradientsParams::from_grads(d_loss.backward(), &critic.model);
                    let CriticRun { config, model, mut optim } = critic;
                    let model = optim.step(lr * a.critic_lr_scale, model, grads);
                    run.critic = Some(CriticRun { config, model, optim });
                }
                (loss, objective)
            }
            None => {
                let loss = run.model.loss(video);
                let objective = loss.total.clone();
                (loss, objective)
            }
        };
        let grads = GradientsParams::from_grads(objective.backward(), &run.model);
        run.model = run.optim.step(lr, run.model, grads);
        if let (Some(decay), Some(e)) = (o.optim.ema_decay_at(step), run.ema.take()) {
            let mut ema = ema_update(e, &run.model.valid(), decay);
            if let Some(frozen) = &frozen {
                // Averaging equal weights need not give them back bit for bit.
                ema.encoder = frozen.encoder.clone();
            }
            run.ema = Some(ema);
        }
        let row = LossRow {
            step,
            loss: loss.total.into_scalar().elem::<f64>(),
            recon: loss.recon.into_scalar().elem::<f64>(),
            kl: loss.kl.into_scalar().elem::<f64>(),
        };
        if !row.loss.is_finite() {
            bail!("the loss is {} at step {step}", row.loss);
        }
        run.rows.push(row);
        run.samples_seen += o.batch as u64;
        window_samples += o.batch as u64;
        run.step += 1;
        let step = run.step;
        if o.log_every > 0 && (step.is_multiple_of(o.log_every) || step == o.steps) {
            let rate = window_samples as f64 / window_started.elapsed().as_secs_f64();
            eprintln!(
                "step {step}/{} loss {:.5} (recon {:.5}, kl {:.3}{critic_line}) {rate:.2} samples/s lr {lr:.2e} [{t} frame{}{}{}; {}]",
                o.steps,
                row.loss,
                row.recon,
                row.kl,
                if t == 1 { "" } else { "s" },
                if real { ", real video" } else { "" },
                denoised.map(|(_, _, first)| format!(", denoised from step {first}")).unwrap_or_default(),
                feeder.take_stats().describe(window_started.elapsed())
            );
            (window_started, window_samples) = (Instant::now(), 0);
        }
        let last = step == o.steps || o.time_limit.is_some_and(|limit| run_started.elapsed() >= limit);
        if (o.checkpoint_every > 0 && step.is_multiple_of(o.checkpoint_every)) || last {
            run.save(o)?;
        }
        if last {
            break;
        }
    }
    feeder.finish()?;
    let samples_per_second = ((run.step - start) * o.batch) as f64 / run_started.elapsed().as_secs_f64();
    Ok(TrainSummary { start_step: start, end_step: run.step, rows: run.rows[first_row..].to_vec(), samples_per_second })
}
