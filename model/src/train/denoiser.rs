//! Training the denoiser on VAE latents of the procedural world.
//!
//! Every step's batch is rendered and encoded on a feeder thread (the frozen VAE and the text
//! encoder on the inner, non-autodiff backend) while the previous step trains, and the frames
//! of the step after it are rendered on a thread of their own, every frame a task on rayon's
//! pool, while this step's are encoded: on a GPU the encoding is the device's and the rendering
//! the CPU's, and each would otherwise wait for the other. A batch of step
//! `s` is a pure function of `(seed, s)`: its clips, captions, window, diffusion times, noise,
//! dropout and frame-prediction draws all come from counter-based hashes, so a run is
//! deterministic for a seed and a resumed run equals a straight one.
//!
//! - **Windows from the middle of streams.** A clip of `lead + window` latent frames is encoded
//!   and a window of `window` latent frames starts at a random offset in `0..=lead`. A stream
//!   extended chunk by chunk shows the denoiser windows whose first latent frame stands for four
//!   video frames, not an image; training on both kinds keeps generation in distribution.
//! - **Joint image–video.** A fraction of the batches are single images (one latent frame).
//! - **Reusing rendered clips** (`reuse` k > 1): a video step renders and encodes only
//!   `batch / k` new clips and trains on them together with the new clips of the `k − 1` steps
//!   before it, each time with its own window, noise and draws; every clip is seen k times, in
//!   k different batches. Rendering (on the CPU's cores) and encoding (on the training device)
//!   are the feeder's work, which on the 2-core VM is more than the step's (the step waited for
//!   it 55–60 % of the time). k = 1 is the run without reuse, bit for bit, and the default. On the VM, in the
//!   same time, k = 2 trained twice the steps on as many different clips and made a better
//!   model (FWD); k = 4 trained on fewer different clips and made a worse one (BENCHMARKS.md).
//! - **Frame prediction** (W.A.L.T): with probability `frame_prediction` a clip gets its first
//!   1 or 2 latent frames as clean context (the context channels and mask); otherwise none,
//!   which is also the null condition of past-frame guidance. The loss covers every frame —
//!   context frames too, so x̂ of the context is meaningful for reconstruction guidance.
//! - **Long-range anchors** (Flexible Diffusion Models): a fraction `anchor_fraction` of the
//!   video batches replace each window's first latent by one from the same world stream
//!   `d` latent frames before the next (`d` log-uniform in `1..=max_anchor_distance`), given
//!   clean with its distance ([`FramePosition::Anchor`]), followed by 1 or 2 clean recent
//!   latents: the layout a stream's chunks have once it holds anchors ([`crate::rolling`]).
//! - **Context noise augmentation** (the remedy for compounding errors that cascaded models
//!   and GameNGen use): with `context_noise` > 0 each clip's given frames reach the denoiser
//!   noised, `√(1 − s²)·x + s·ε` with `s` uniform in `[0, context_noise)`, and the pipeline
//!   samples with the middle level. A stream conditions every chunk on latents it made itself;
//!   trained on clean context only, the denoiser carries their errors on and they compound.
//! - **Text dropout** replaces a prompt by the null prompt with probability `text_dropout`
//!   (classifier-free guidance).
//! - **Conditioning augmentation** (StackGAN's, without its learnt variance): with
//!   `text_noise` σ > 0, every token state and the pooled embedding get Gaussian noise of σ
//!   times their own RMS, so a prompt stands for a neighbourhood of the text encoder's space
//!   rather than a point, and phrasings the run never saw land where it trained.
//! - **Self-conditioning** (Chen et al. 2022): with probability `self_condition` a batch first
//!   runs without it, and the detached x̂ of that pass is fed to the trained pass.
//! - **v-prediction**, MSE, times uniform in `[0, 1]` through the resolution-shifted cosine
//!   schedule.
//! - **A motion term** (`motion_weight` λ > 0): λ times the MSE of the error's change from one
//!   latent frame to the next is added, which weights the part of the error that is the
//!   frames' motion (a pan moves the latent by a fraction of a cell per frame, a small share of
//!   the plain MSE) above the part they share.
//!
//! The output folder is a whole pipeline ([`crate::pipeline`]): `denoiser.safetensors` (+ JSON
//! with the step and the latent statistics), `denoiser-ema.safetensors`, a copy of the VAE,
//! `pipeline.json`, `optim.bin`, `loss.csv` and `loss.png`.

use super::common::{Feeder, Optim, Optimisation, ema_update, load_optim, param_ids, save_optim};
use super::distill::{DistillFrom, distill_loss};
use super::plot::{LossRow, read_loss_csv, write_loss_csv, write_loss_plot};
use super::vae::TrainSummary;
use crate::checkpoint::{self, Precision};
use crate::data::video_tensor;
use crate::diffusion::{Schedule, gaussian, gaussian_tensor};
use crate::dit::{Condition, Denoiser, DenoiserConfig, DenoiserInput, FrameContext, FramePosition, TextCondition};
use crate::pipeline::{ChannelStats, DENOISER_EMA_FILE, DENOISER_FILE, PipelineSpec, VAE_FILE};
use crate::text::{TextBatch, TextEmbedding, TextEncoder};
use crate::vae::{Vae, VaeConfig};
use crate::world::{Clip, ClipOptions, ClipSampler, Split, noise_hash, noise_uniform, render_all};
use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::ElementConversion;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Bool, Tensor, TensorData};
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Everything a denoiser training run needs.
#[derive(Clone, Debug)]
pub struct TrainDenoiserOptions {
    /// The model; its `latent_channels` is set from the VAE. On resume the checkpoint's config
    /// is used instead.
    pub config: DenoiserConfig,
    /// The trained VAE checkpoint (`vae.safetensors` with its JSON beside); frozen.
    pub vae: PathBuf,
    /// The all-MiniLM-L6-v2 folder.
    pub text: PathBuf,
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    /// Latent frames the denoiser sees at once.
    pub window: usize,
    /// Extra latent frames before the window: windows start at a random offset up to this.
    pub lead: usize,
    /// Chance that a clip has an attribute transition.
    pub transition_probability: f64,
    pub batch: usize,
    /// The step to stop at (a resumed run continues from its checkpoint's step up to this).
    pub steps: usize,
    pub optim: Optimisation,
    /// Fraction of batches that are single-frame images.
    pub image_fraction: f64,
    /// Steps a rendered video clip is trained on (see the module's "Reusing rendered clips");
    /// 1: every clip once. Divides `batch`.
    pub reuse: usize,
    /// Chance that a video clip gets 1 or 2 clean past latent frames (W.A.L.T's p_fp).
    pub frame_prediction: f64,
    /// Fraction of video batches whose windows start with a long-range anchor.
    pub anchor_fraction: f64,
    /// The farthest an anchor is drawn from, in latent frames.
    pub max_anchor_distance: usize,
    /// Chance that a prompt is replaced by the null prompt.
    pub text_dropout: f64,
    /// Conditioning augmentation: Gaussian noise on each text vector (every token state and
    /// the pooled embedding) with a standard deviation of this times the vector's RMS; 0: none.
    pub text_noise: f64,
    /// Noise augmentation of the context: each clip's given frames (past latents and anchors)
    /// reach the denoiser as `√(1 − s²)·x + s·ε`, `s` uniform in `[0, context_noise)` per clip;
    /// the pipeline then samples with `s` = half of it ([`PipelineSpec::context_noise`]). 0:
    /// clean context.
    pub context_noise: f64,
    /// Weight of the motion term: the MSE of the v error's differences between consecutive
    /// latent frames ([`motion_term`]); 0: none.
    pub motion_weight: f64,
    /// Chance that a batch trains with self-conditioning.
    pub self_condition: f64,
    /// Latent side at which the cosine schedule is used unshifted.
    pub schedule_base: usize,
    /// Batches encoded to estimate the latents' mean and standard deviation.
    pub stats_batches: usize,
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Continue from `out/denoiser.safetensors` if it exists.
    pub resume: bool,
    /// Checkpoint every this many steps (and at the end); 0: only at the end.
    pub checkpoint_every: usize,
    /// A progress line on stderr every this many steps; 0: none.
    pub log_every: usize,
    /// Stop (with a checkpoint) after the first step that ends past this much wall-clock time,
    /// for training in legs of fixed length; `None`: run to `steps`.
    pub time_limit: Option<Duration>,
    /// Progressive distillation ([`super::distill`]): the run starts from this teacher's
    /// weights and learns to take two of its steps in one; `None`: ordinary training.
    pub distill: Option<DistillFrom>,
    /// A pipeline folder whose denoiser (its EMA weights when it has them), latent statistics
    /// and VAE the run starts from, with a fresh optimiser: an exported pipeline
    /// (`models/cpu`) has no optimiser state to `resume`, so this is how training goes on from
    /// shipped weights. `None`: a fresh initialisation.
    pub init_from: Option<PathBuf>,
}

impl TrainDenoiserOptions {
    /// Defaults: 64×64 at 8 fps, windows of 4 latent frames with a lead of 2, batch 4, 1000
    /// steps, lr 3e-4 after 100 steps of warm-up, clip 1.0, EMA 0.999, a fifth of the batches
    /// images, p_fp 0.5, a quarter of the video batches with an anchor up to 128 latent frames
    /// back, text dropout 0.1, self-conditioning on half the batches.
    pub fn new(
        config: DenoiserConfig,
        vae: impl Into<PathBuf>,
        text: impl Into<PathBuf>,
        out: impl Into<PathBuf>,
    ) -> Self {
        TrainDenoiserOptions {
            config,
            vae: vae.into(),
            text: text.into(),
            width: 64,
            height: 64,
            fps: 8.0,
            window: 4,
            lead: 2,
            transition_probability: 0.3,
            batch: 4,
            steps: 1000,
            optim: Optimisation {
                lr: 3e-4,
                warmup: 100,
                schedule: super::LrSchedule::Constant,
                grad_clip: 1.0,
                weight_decay: 0.0,
                ema_decay: Some(0.999),
            },
            image_fraction: 0.2,
            reuse: 1,
            frame_prediction: 0.5,
            anchor_fraction: 0.25,
            max_anchor_distance: 128,
            text_dropout: 0.1,
            text_noise: 0.0,
            context_noise: 0.0,
            motion_weight: 0.0,
            self_condition: 0.5,
            schedule_base: 8,
            stats_batches: 4,
            seed: 1,
            out: out.into(),
            resume: false,
            checkpoint_every: 500,
            log_every: 10,
            time_limit: None,
            distill: None,
            init_from: None,
        }
    }

    /// Options shaped as the pipeline in `from`: its frame size, rate, window, VAE and model;
    /// its anchors and context noise when it was trained with them. With the pipeline's spec.
    fn shaped_as(from: &Path, text: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Result<(PipelineSpec, Self)> {
        let spec = PipelineSpec::load(from)?;
        let config: DenoiserConfig = checkpoint::read_config(&crate::pipeline::denoiser_path(from, true))?;
        let options = TrainDenoiserOptions {
            width: spec.width,
            height: spec.height,
            fps: spec.fps,
            window: spec.window,
            anchor_fraction: if spec.anchors { 0.25 } else { 0.0 },
            // The context it was trained on: twice the level it samples with.
            context_noise: 2.0 * spec.context_noise,
            ..TrainDenoiserOptions::new(config, from.join(VAE_FILE), text, out)
        };
        Ok((spec, options))
    }

    /// Options that distil `from`'s teacher into `out`, shaped as the teacher
    /// ([`TrainDenoiserOptions::shaped_as`]). Distillation wants a smaller learning rate than
    /// training from scratch (1e-4) and no warm-up.
    pub fn distilling(from: DistillFrom, text: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Result<Self> {
        let (_, options) = Self::shaped_as(&from.teacher, text, out)?;
        Ok(TrainDenoiserOptions { image_fraction: 0.0, distill: Some(from), ..options }.with_optim(|o| Optimisation {
            lr: 1e-4,
            warmup: 0,
            ..o
        }))
    }

    /// Options that go on training the pipeline in `from` into `out`, shaped as it
    /// ([`TrainDenoiserOptions::shaped_as`]), from its weights and latent statistics. Give the
    /// run another seed than the one `from` was trained with, or it sees the same clips again.
    pub fn continuing(from: &Path, text: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Result<Self> {
        let (spec, options) = Self::shaped_as(from, text, out)?;
        if spec.distilled.is_some() {
            bail!("{} is distilled: a further round is `distill --teacher`", from.display());
        }
        Ok(TrainDenoiserOptions { init_from: Some(from.to_path_buf()), ..options })
    }

    /// These options with the optimiser's settings changed by `f`.
    pub fn with_optim(self, f: impl FnOnce(Optimisation) -> Optimisation) -> Self {
        TrainDenoiserOptions { optim: f(self.optim), ..self }
    }

    /// A uniform number in [0, 1) for draw `k` of item `i` of step `step`.
    /// Whether step `step` trains on single images (a share `image_fraction` of the steps).
    fn image_step(&self, step: i64) -> bool {
        self.uniform(step, 0, 1) < self.image_fraction
    }

    pub(crate) fn uniform(&self, step: i64, i: usize, k: i64) -> f64 {
        noise_uniform(noise_hash(self.seed, step, 11), i as i64, k)
    }

    fn validate(&self, vae: &VaeConfig) -> Result<()> {
        let s = vae.spatial_factor();
        if self.width == 0 || self.height == 0 || !self.width.is_multiple_of(s) || !self.height.is_multiple_of(s) {
            bail!("{}x{} is not a multiple of {s}", self.width, self.height);
        }
        let p = self.config.patch_size;
        if !(self.width / s).is_multiple_of(p) || !(self.height / s).is_multiple_of(p) {
            bail!("latents of {}x{} are not a multiple of the patch size {p}", self.width / s, self.height / s);
        }
        if self.window == 0 || self.window > self.config.max_frames {
            bail!("--window {} must be in 1..={}", self.window, self.config.max_frames);
        }
        if self.width.max(self.height) / s > self.config.max_latent_size {
            bail!("{}x{} is larger than the model's {} latents", self.width, self.height, self.config.max_latent_size);
        }
        if self.batch == 0 {
            bail!("--batch must be at least 1");
        }
        if self.reuse == 0 || !self.batch.is_multiple_of(self.reuse) {
            bail!("--reuse {} must be at least 1 and divide --batch {}", self.reuse, self.batch);
        }
        if self.anchor_fraction > 0.0 {
            if self.window < 3 {
                bail!("anchors need windows of at least 3 latent frames (an anchor, a context frame, a new one)");
            }
            if self.config.anchor_buckets == 0 || self.max_anchor_distance == 0 {
                bail!("anchors need a model with anchor buckets and a maximum anchor distance of at least 1");
            }
        }
        for (name, p) in [
            ("image fraction", self.image_fraction),
            ("frame-prediction probability", self.frame_prediction),
            ("anchor fraction", self.anchor_fraction),
            ("text dropout", self.text_dropout),
            ("self-conditioning probability", self.self_condition),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("the {name} must be in [0, 1]");
            }
        }
        if !(0.0..=10.0).contains(&self.text_noise) {
            bail!("the text noise must be in [0, 10] (times each vector's RMS)");
        }
        if !(0.0..1.0).contains(&self.context_noise) {
            bail!("the context noise must be in [0, 1) (a standard deviation of unit-variance latents)");
        }
        if !(0.0..=100.0).contains(&self.motion_weight) {
            bail!("the motion weight must be in [0, 100]");
        }
        self.optim.validate()
    }

    /// The context noise the pipeline samples with: half the largest it trained on, the middle
    /// of what it saw.
    pub fn sampling_context_noise(&self) -> f64 {
        self.context_noise / 2.0
    }

    /// The diffusion schedule of these latents.
    pub fn schedule(&self, vae: &VaeConfig) -> Schedule {
        let side = self.width.max(self.height) / vae.spatial_factor();
        Schedule::for_resolution(side, self.schedule_base)
    }
}

/// One batch as the feeder prepares it: raw (unnormalised) latents and the prompts.
struct Batch {
    /// `[b, c, t, h, w]`
    latents: TensorData,
    embeddings: Vec<Arc<TextEmbedding>>,
    /// Per clip, the distance of the anchor that replaced its first latent; `None`: no anchors.
    anchors: Option<Vec<usize>>,
    /// Time spent rendering the world for this batch (the rest of its making is encoding).
    rendering: Duration,
}

/// Renders and encodes batches: lives on the feeder thread.
struct Encoder<B: Backend> {
    o: TrainDenoiserOptions,
    vae: Vae<B>,
    vae_config: VaeConfig,
    text: Arc<TextEncoder<B>>,
    device: B::Device,
    /// With `reuse` > 1: the new video clips of recent steps, by step.
    recent: Vec<(i64, Clips<B>)>,
    /// Rendering time since the last batch was assembled.
    rendering: Cell<Duration>,
    /// The next step's frames, being rendered on a thread of their own while this step encodes.
    ahead: Option<Ahead>,
    /// The frames rendered ahead for the step being made, each taken by the first
    /// [`Encoder::render`] that asks for its clip.
    ready: RefCell<Rendered>,
    /// Clips rendered in place because nothing had rendered them ahead: those of a run's first
    /// step (with `reuse` > 1, the earlier steps' clips it trains on too) and of the latent
    /// statistics' batches; none after.
    missed: Cell<usize>,
}

/// Clips with their frames, RGB8.
type Rendered = Vec<(Clip, Vec<Vec<u8>>)>;

/// The frames of the clips step `step` renders ([`Encoder::renders`]), and how long they took.
struct Ahead {
    step: i64,
    thread: JoinHandle<(Rendered, Duration)>,
}

/// Video clips rendered and encoded whole: `lead + window` latent frames each.
#[derive(Clone)]
struct Clips<B: Backend> {
    clips: Vec<Clip>,
    /// `[n, c, lead + window, h, w]`, raw
    latents: Tensor<B, 5>,
    embeddings: Vec<Arc<TextEmbedding>>,
}

impl<B: Backend> Encoder<B> {
    fn new(
        o: TrainDenoiserOptions,
        vae: Vae<B>,
        vae_config: VaeConfig,
        text: Arc<TextEncoder<B>>,
        device: B::Device,
    ) -> Self {
        Encoder {
            o,
            vae,
            vae_config,
            text,
            device,
            recent: Vec::new(),
            rendering: Cell::default(),
            ahead: None,
            ready: RefCell::default(),
            missed: Cell::default(),
        }
    }

    /// The first `n` clips of `latent_frames` latent frames the sampler seeded with `seed` draws.
    fn draw(&self, seed: u64, n: usize, latent_frames: usize) -> Vec<Clip> {
        let o = &self.o;
        let options = ClipOptions {
            width: o.width,
            height: o.height,
            fps: o.fps,
            frames: 1 + self.vae_config.temporal_factor() * (latent_frames - 1),
            transition_probability: o.transition_probability,
        };
        let mut sampler = ClipSampler::new(Split::Train, seed);
        (0..n).map(|_| sampler.next_clip(&options)).collect()
    }

    /// [`Encoder::draw`]'s clips, rendered, encoded and captioned.
    fn clips(&self, seed: u64, n: usize, latent_frames: usize) -> Clips<B> {
        let o = &self.o;
        let clips = self.draw(seed, n, latent_frames);
        let frames = self.render(&clips);
        let (latents, _) = self.vae.encode(video_tensor::<B>(&frames, o.width, o.height, &self.device));
        let captions: Vec<String> = clips.iter().map(Clip::caption).collect();
        let embeddings = self.text.embed_many(&captions.iter().map(String::as_str).collect::<Vec<_>>());
        Clips { clips, latents, embeddings }
    }

    /// The batch drawn with `seed` (a step's, or a statistics batch's), every clip new.
    fn batch(&self, seed: u64, step: i64) -> Batch {
        let image = self.o.image_step(step);
        let latent_frames = if image { 1 } else { self.o.lead + self.o.window };
        self.assemble(self.clips(seed, self.o.batch, latent_frames), step, image)
    }

    /// The batch of training step `step`: [`Encoder::batch`] with the step's seed, or with
    /// `reuse` > 1 and a video step, the new clips of this step and the `reuse − 1` before it.
    fn step_batch(&mut self, step: i64) -> Batch {
        self.render_ahead(step);
        let (reuse, seed) = (self.o.reuse as i64, self.o.seed);
        if reuse == 1 || self.o.image_step(step) {
            return self.batch(noise_hash(seed, step, 1), step);
        }
        self.recent.retain(|(s, _)| (step - reuse + 1..=step).contains(s));
        let mut parts = Vec::with_capacity(reuse as usize);
        for s in (step - reuse + 1..=step).rev() {
            let part = match self.recent.iter().find(|(r, _)| *r == s) {
                Some((_, part)) => part.clone(),
                None => {
                    let n = self.o.batch / self.o.reuse;
                    let part = self.clips(noise_hash(seed, s, 1), n, self.o.lead + self.o.window);
                    self.recent.push((s, part.clone()));
                    part
                }
            };
            parts.push(part);
        }
        let clips = Clips {
            clips: parts.iter().flat_map(|p| p.clips.iter().cloned()).collect(),
            latents: Tensor::cat(parts.iter().map(|p| p.latents.clone()).collect(), 0),
            embeddings: parts.iter().flat_map(|p| p.embeddings.iter().cloned()).collect(),
        };
        self.assemble(clips, step, false)
    }

    /// The clips step `step` renders when the steps before it have been made: every clip of its
    /// batch, or with `reuse` > 1 its own new ones; then its anchors' clips. What the
    /// render-ahead thread makes for it.
    fn renders(&self, step: i64) -> Vec<Clip> {
        let o = &self.o;
        if o.image_step(step) {
            return self.draw(noise_hash(o.seed, step, 1), o.batch, 1);
        }
        let (whole, n) = (o.lead + o.window, o.batch / o.reuse);
        let new = self.draw(noise_hash(o.seed, step, 1), n, whole);
        let earlier =
            (step - o.reuse as i64 + 1..step).rev().flat_map(|s| self.draw(noise_hash(o.seed, s, 1), n, whole));
        let batch: Vec<Clip> = new.iter().cloned().chain(earlier).collect();
        match self.anchors(&batch, step) {
            Some((_, anchors)) => [new, anchors].concat(),
            None => new,
        }
    }

    /// Takes the frames rendered ahead for `step` (their rendering time is this batch's) and
    /// starts rendering those of `step + 1`, which a thread makes while this step encodes.
    fn render_ahead(&mut self, step: i64) {
        let ready = self.ready.get_mut();
        ready.clear();
        // Frames rendered for another step (steps made out of order) are not this step's.
        if let Some(Ahead { step: _, thread }) = self.ahead.take().filter(|a| a.step == step) {
            let (frames, took) = thread.join().expect("the render-ahead thread panicked");
            *ready = frames;
            self.rendering.set(self.rendering.get() + took);
        }
        if step + 1 < self.o.steps as i64 {
            let clips = self.renders(step + 1);
            let thread = std::thread::spawn(move || {
                let started = Instant::now();
                let frames = render_all(&clips);
                (clips.into_iter().zip(frames).collect(), started.elapsed())
            });
            self.ahead = Some(Ahead { step: step + 1, thread });
        }
    }

    /// The first latent of each clip's window at `step` (video steps).
    fn window_start(&self, step: i64) -> usize {
        let o = &self.o;
        ((o.uniform(step, 0, 2) * (o.lead + 1) as f64) as usize).min(o.lead)
    }

    /// The anchors a video step draws for its clips, a share `anchor_fraction` of the steps:
    /// each clip's distance and the clip whose second latent is its anchor, `d` latent frames
    /// before the window's second latent (index start + 1 of the clip, its last video frame
    /// f·(start + 1)); the second latent of a 1 + f frame clip, a latent that stands for f
    /// frames, as in a stream.
    fn anchors(&self, clips: &[Clip], step: i64) -> Option<(Vec<usize>, Vec<Clip>)> {
        let o = &self.o;
        if o.uniform(step, 0, 8) >= o.anchor_fraction {
            return None;
        }
        let (f, start) = (self.vae_config.temporal_factor(), self.window_start(step));
        let log_max = (o.max_anchor_distance as f64).ln();
        let distances: Vec<usize> = (0..clips.len())
            .map(|i| ((o.uniform(step, i, 9) * log_max).exp() as usize).clamp(1, o.max_anchor_distance))
            .collect();
        let anchor_clips = clips
            .iter()
            .zip(&distances)
            .map(|(clip, &d)| Clip {
                start: clip.start + (f as f64 * (start as f64 - d as f64)) / clip.fps,
                frames: 1 + f,
                ..clip.clone()
            })
            .collect();
        Some((distances, anchor_clips))
    }

    /// Step `step`'s window of each clip (with the step's anchors, when it draws them).
    fn assemble(&self, Clips { clips, latents: mean, embeddings }: Clips<B>, step: i64, image: bool) -> Batch {
        let o = &self.o;
        let (window, start) = if image { (1, 0) } else { (o.window, self.window_start(step)) };
        let latents = mean.narrow(2, start, window);
        let anchors = if image { None } else { self.anchors(&clips, step) };
        let Some((distances, anchor_clips)) = anchors else {
            return Batch { latents: latents.into_data(), embeddings, anchors: None, rendering: self.rendering.take() };
        };
        let frames = self.render(&anchor_clips);
        let (anchor, _) = self.vae.encode(video_tensor::<B>(&frames, o.width, o.height, &self.device));
        let latents = Tensor::cat(vec![anchor.narrow(2, 1, 1), latents.narrow(2, 1, window - 1)], 2);
        Batch { latents: latents.into_data(), embeddings, anchors: Some(distances), rendering: self.rendering.take() }
    }

    /// The clips' frames: those rendered ahead, and the others rendered now on every core,
    /// counting the time in `rendering`.
    fn render(&self, clips: &[Clip]) -> Vec<Vec<Vec<u8>>> {
        let mut ready = self.ready.borrow_mut();
        let mut frames: Vec<Option<Vec<Vec<u8>>>> =
            clips.iter().map(|c| ready.iter().position(|(r, _)| r == c).map(|i| ready.swap_remove(i).1)).collect();
        let missing: Vec<Clip> =
            clips.iter().zip(&frames).filter(|(_, f)| f.is_none()).map(|(c, _)| c.clone()).collect();
        if !missing.is_empty() {
            let started = Instant::now();
            let mut rendered = render_all(&missing).into_iter();
            self.rendering.set(self.rendering.get() + started.elapsed());
            self.missed.set(self.missed.get() + missing.len());
            frames.iter_mut().filter(|f| f.is_none()).for_each(|f| *f = rendered.next());
        }
        frames.into_iter().map(|f| f.expect("every clip is rendered")).collect()
    }
}

/// The latents' mean and standard deviation over `n` batches, all elements pooled and per
/// channel.
fn latent_stats<B: Backend>(encoder: &Encoder<B>, n: usize) -> (f64, f64, ChannelStats) {
    let mut channels: Vec<Vec<f64>> = Vec::new();
    for i in 0..n.max(1) {
        let b = encoder.batch(noise_hash(encoder.o.seed, -(i as i64) - 2, 5), -(i as i64) - 2);
        let [_, c, t, h, w] = b.latents.shape[..] else { unreachable!("latents are [b, c, t, h, w]") };
        channels.resize_with(c, Vec::new);
        for (j, v) in b.latents.convert::<f32>().into_vec::<f32>().expect("f32 latents").into_iter().enumerate() {
            channels[j / (t * h * w) % c].push(v as f64);
        }
    }
    let (mean, std) = mean_std(channels.iter().flatten().copied());
    let (means, stds) = channels.iter().map(|v| mean_std(v.iter().copied())).map(|(m, s)| (m, s.max(1e-6))).unzip();
    (mean, std.max(1e-6), ChannelStats { mean: means, std: stds })
}

fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64) {
    let (n, sum) = values.clone().fold((0usize, 0.0), |(n, s), v| (n + 1, s + v));
    let mean = sum / n as f64;
    (mean, (values.map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64).sqrt())
}

/// A run's state between steps.
struct Run<B: AutodiffBackend> {
    config: DenoiserConfig,
    spec: PipelineSpec,
    model: Denoiser<B>,
    optim: Optim<Denoiser<B>, B>,
    ema: Option<Denoiser<B::InnerBackend>>,
    step: usize,
    samples_seen: u64,
    rows: Vec<LossRow>,
}

impl<B: AutodiffBackend> Run<B> {
    fn save(&self, o: &TrainDenoiserOptions) -> Result<()> {
        let meta = serde_json::json!({
            "step": self.step,
            "samples_seen": self.samples_seen,
            "seed": o.seed,
            "latent_mean": self.spec.latent_mean,
            "latent_std": self.spec.latent_std,
            "init_from": o.init_from.as_ref().map(|p| p.display().to_string()),
        });
        save_optim(&self.optim, &self.model, &o.out.join("optim"))?;
        if let Some(ema) = &self.ema {
            checkpoint::save(ema, &self.config, &meta, &o.out.join(DENOISER_EMA_FILE), Precision::F32)?;
        }
        self.spec.save(&o.out)?;
        // The model's JSON comes last: a checkpoint with it is complete.
        checkpoint::save(&self.model, &self.config, &meta, &o.out.join(DENOISER_FILE), Precision::F32)?;
        write_loss_csv(&self.rows, &o.out.join("loss.csv"))?;
        write_loss_plot(&self.rows, &o.out.join("loss.png"), 640, 360)?;
        Ok(())
    }
}

/// Copies the VAE checkpoint (weights and JSON) into the pipeline folder, unless it is there.
fn copy_vae(from: &Path, out: &Path) -> Result<()> {
    let to = out.join(VAE_FILE);
    if from.canonicalize().ok() == to.canonicalize().ok() {
        return Ok(());
    }
    for (a, b) in [(from.to_path_buf(), to.clone()), (checkpoint::config_path(from), checkpoint::config_path(&to))] {
        std::fs::copy(&a, &b).with_context(|| format!("copying {} to {}", a.display(), b.display()))?;
    }
    Ok(())
}

/// Checks that a run going on from a denoiser of `config` can train on the VAE at `vae` (of
/// `vae_config`): one of the same latent channels, or one whose latent grew from them.
fn check_latent_growth(config: &DenoiserConfig, vae_config: &VaeConfig, vae: &Path) -> Result<()> {
    if vae_config.latent_channels < config.latent_channels {
        bail!(
            "{} has {} latent channels, fewer than the denoiser's {}: a latent only grows",
            vae.display(),
            vae_config.latent_channels,
            config.latent_channels
        );
    }
    Ok(())
}

/// Trains a denoiser as `o` says; `o.out` becomes a pipeline folder.
pub fn train_denoiser<B: AutodiffBackend>(o: &TrainDenoiserOptions, device: &B::Device) -> Result<TrainSummary> {
    if o.distill.is_some() && o.init_from.is_some() {
        bail!("a distillation starts from its teacher: no init_from");
    }
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let vae_config: VaeConfig = checkpoint::read_config(&o.vae)?;
    let vae: Vae<B::InnerBackend> = checkpoint::load(vae_config.init(device), &o.vae, device)?;
    let text = Arc::new(
        TextEncoder::<B::InnerBackend>::load(&o.text, device)
            .with_context(|| format!("loading the text encoder from {}", o.text.display()))?,
    );
    let teacher = o.distill.as_ref().map(|d| d.load::<B::InnerBackend>(device)).transpose()?;
    let ckpt = o.out.join(DENOISER_FILE);
    let resuming = o.resume && checkpoint::config_path(&ckpt).exists();
    // The denoiser a fresh run goes on from, as it was trained: its latent may be narrower than
    // the VAE's, when that VAE's latent grew from the pipeline's.
    let trained: Option<DenoiserConfig> = match &o.init_from {
        Some(from) if !resuming => Some(checkpoint::read_config(&crate::pipeline::denoiser_path(from, true))?),
        _ => None,
    };
    let config = if resuming {
        checkpoint::read_config(&ckpt)?
    } else if let Some(teacher) = &teacher {
        teacher.pipeline.denoiser_config.clone()
    } else if let Some(trained) = &trained {
        check_latent_growth(trained, &vae_config, &o.vae)?;
        trained.clone().with_latent_channels(vae_config.latent_channels)
    } else {
        o.config.clone().with_latent_channels(vae_config.latent_channels).with_text_dim(text.dim())
    };
    let o = &TrainDenoiserOptions { config: config.clone(), ..o.clone() };
    o.validate(&vae_config)?;
    let mut encoder = Encoder::new(o.clone(), vae, vae_config.clone(), text, device.clone());

    let adamw = o.optim.adamw();
    let mut run = if resuming {
        let info = checkpoint::read_info(&ckpt)?;
        let step = info.meta["step"].as_u64().context("checkpoint meta without a step")? as usize;
        if info.meta["seed"].as_u64() != Some(o.seed) {
            bail!("{} was trained with seed {}, not {}", ckpt.display(), info.meta["seed"], o.seed);
        }
        let spec = PipelineSpec::load(&o.out)?;
        let model: Denoiser<B> = checkpoint::load(config.init(device), &ckpt, device)?;
        let optim = load_optim(adamw.init::<B, Denoiser<B>>(), &model, &o.out.join("optim.bin"), device)?;
        let ema_path = o.out.join(DENOISER_EMA_FILE);
        let ema = match o.optim.ema_decay {
            Some(_) if ema_path.exists() => Some(checkpoint::load(config.init(device), &ema_path, device)?),
            Some(_) => Some(model.valid()),
            None => None,
        };
        let csv = o.out.join("loss.csv");
        let mut rows = if csv.exists() { read_loss_csv(&csv)? } else { Vec::new() };
        rows.retain(|r| r.step < step);
        let samples_seen = info.meta["samples_seen"].as_u64().unwrap_or(0);
        eprintln!("resuming {} at step {step} ({samples_seen} samples seen)", ckpt.display());
        Run { config: config.clone(), spec, model, optim, ema, step, samples_seen, rows }
    } else {
        let spec = match (&teacher, &o.init_from) {
            (Some(teacher), _) => teacher.student_spec(),
            (None, Some(from)) => {
                let spec = PipelineSpec::load(from)?;
                if (spec.width, spec.height, spec.fps, spec.window) != (o.width, o.height, o.fps, o.window) {
                    bail!(
                        "{} is {}x{} at {} fps with windows of {}: the run must be too",
                        from.display(),
                        spec.width,
                        spec.height,
                        spec.fps,
                        spec.window
                    );
                }
                // Anchors learnt now count as much as anchors learnt before.
                // A run with context noise samples with its own; one without keeps what the
                // pipeline it goes on from samples with.
                let context_noise = if o.context_noise > 0.0 { o.sampling_context_noise() } else { spec.context_noise };
                let spec = PipelineSpec { anchors: spec.anchors || o.anchor_fraction > 0.0, context_noise, ..spec };
                if trained.as_ref().is_some_and(|t| t.latent_channels == vae_config.latent_channels) {
                    spec
                } else {
                    // A grown latent: every channel's statistics from the new encoder.
                    let (latent_mean, latent_std, channels) = latent_stats(&encoder, o.stats_batches);
                    eprintln!("latents of the grown VAE: mean {latent_mean:.4}, std {latent_std:.4}");
                    PipelineSpec { latent_mean, latent_std, channels: Some(channels), ..spec }
                }
            }
            (None, None) => {
                let started = Instant::now();
                let (latent_mean, latent_std, channels) = latent_stats(&encoder, o.stats_batches);
                let per_channel: Vec<String> =
                    channels.mean.iter().zip(&channels.std).map(|(m, s)| format!("{m:.2}±{s:.2}")).collect();
                eprintln!(
                    "latents: mean {latent_mean:.4}, std {latent_std:.4}; per channel {} (over {} batches, {:.1} s)",
                    per_channel.join(" "),
                    o.stats_batches,
                    started.elapsed().as_secs_f64()
                );
                PipelineSpec {
                    width: o.width,
                    height: o.height,
                    fps: o.fps,
                    window: o.window,
                    latent_mean,
                    latent_std,
                    channels: Some(channels),
                    schedule: o.schedule(&vae_config),
                    anchors: o.anchor_fraction > 0.0,
                    context_noise: o.sampling_context_noise(),
                    distilled: None,
                }
            }
        };
        copy_vae(&o.vae, &o.out)?;
        // A student starts as its teacher; a continued run as the pipeline it continues.
        let start_from = o.distill.as_ref().map(|d| &d.teacher).or(o.init_from.as_ref());
        let model: Denoiser<B> = match start_from {
            Some(from) => {
                let shape = trained.clone().unwrap_or_else(|| config.clone());
                let model: Denoiser<B> =
                    checkpoint::load(shape.init(device), &crate::pipeline::denoiser_path(from, true), device)?;
                model.with_latent_channels(config.latent_channels, device)
            }
            None => {
                B::seed(device, noise_hash(o.seed, -1, 0));
                let model = config.init(device);
                param_ids(&model); // initialise every parameter now, from the seed
                model
            }
        };
        let ema = o.optim.ema_decay.map(|_| model.valid());
        let optim = adamw.init::<B, Denoiser<B>>();
        Run { config: config.clone(), spec, model, optim, ema, step: 0, samples_seen: 0, rows: Vec::new() }
    };
    let start = run.step;
    if start >= o.steps {
        eprintln!("nothing to do: the checkpoint is at step {start}, --steps is {}", o.steps);
        return Ok(TrainSummary { start_step: start, end_step: start, rows: Vec::new(), samples_per_second: 0.0 });
    }

    let mut feeder = Feeder::start(start..o.steps, move |step| encoder.step_batch(step as i64));
    let first_row = run.rows.len();
    let run_started = Instant::now();
    let (mut window_started, mut window_samples) = (Instant::now(), 0u64);
    let (mut window_batches, mut window_rendering) = (0u32, Duration::ZERO);
    while run.step < o.steps {
        let step = run.step;
        let batch = feeder.next(step)?;
        (window_batches, window_rendering) = (window_batches + 1, window_rendering + batch.rendering);
        let latents = run.spec.normalise(Tensor::<B, 5>::from_data(batch.latents, device));
        let t = latents.dims()[2];
        let anchors = batch.anchors.as_deref();
        let loss = match &teacher {
            Some(teacher) => distill_loss(o, &run.model, teacher, latents, &batch.embeddings, anchors, step),
            None => step_loss(o, &run.model, &run.spec.schedule, latents, &batch.embeddings, anchors, step),
        };
        let grads = GradientsParams::from_grads(loss.backward(), &run.model);
        let lr = o.optim.lr_at(step, o.steps);
        run.model = run.optim.step(lr, run.model, grads);
        if let (Some(decay), Some(e)) = (o.optim.ema_decay_at(step), run.ema.take()) {
            run.ema = Some(ema_update(e, &run.model.valid(), decay));
        }
        let value = loss.into_scalar().elem::<f64>();
        if !value.is_finite() {
            bail!("the loss is {value} at step {step}");
        }
        run.rows.push(LossRow { step, loss: value, recon: value, kl: 0.0 });
        run.samples_seen += o.batch as u64;
        window_samples += o.batch as u64;
        run.step += 1;
        let step = run.step;
        if o.log_every > 0 && (step.is_multiple_of(o.log_every) || step == o.steps) {
            let rate = window_samples as f64 / window_started.elapsed().as_secs_f64();
            let recent = &run.rows[run.rows.len().saturating_sub(o.log_every)..];
            let mean = recent.iter().map(|r| r.loss).sum::<f64>() / recent.len() as f64;
            eprintln!(
                "step {step}/{} loss {mean:.5} (mean of the last {}) {rate:.2} samples/s lr {lr:.2e} [{t} latent frame{}; {}; rendering {:.2} s a batch]",
                o.steps,
                recent.len(),
                if t == 1 { "" } else { "s" },
                feeder.take_stats().describe(window_started.elapsed()),
                window_rendering.as_secs_f64() / window_batches as f64
            );
            (window_started, window_samples) = (Instant::now(), 0);
            (window_batches, window_rendering) = (0, Duration::ZERO);
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

/// The loss of one batch of normalised latents `x` (`[b, c, t, h, w]`) at `step`; with
/// `anchors`, each clip's first latent is an anchor that far back.
pub fn step_loss<B: AutodiffBackend>(
    o: &TrainDenoiserOptions,
    model: &Denoiser<B>,
    schedule: &Schedule,
    x: Tensor<B, 5>,
    embeddings: &[Arc<TextEmbedding>],
    anchors: Option<&[usize]>,
    step: usize,
) -> Tensor<B, 1> {
    let [b, c, t, h, w] = x.dims();
    let device = x.device();
    let step = step as i64;
    // Diffusion times, stratified over the batch so every batch spans the whole range.
    let times: Vec<f64> = (0..b).map(|i| (i as f64 + o.uniform(step, i, 3)) / b as f64).collect();
    let (alpha, sigma) = coefficients::<B>(schedule, &times, &device);
    let eps_seed = noise_hash(o.seed, step, 12);
    let eps =
        Tensor::<B, 5>::from_data(TensorData::new(gaussian(eps_seed, 0, b * c * t * h * w), [b, c, t, h, w]), &device);
    let z_t = x.clone() * alpha.clone() + eps.clone() * sigma.clone();
    let target = eps * alpha.clone() - x.clone() * sigma.clone();

    let Conditions { context, positions, text, .. } =
        conditions(o, &x, embeddings, anchors, step, o.text_dropout, o.text_noise);
    let t_in = Tensor::<B, 1>::from_data(TensorData::new(times.iter().map(|&s| s as f32).collect(), [b]), &device);
    let input = |self_cond| DenoiserInput {
        z_t: z_t.clone(),
        t: t_in.clone(),
        self_cond,
        context: context.clone(),
        condition: Condition::Text(text.clone()),
        positions: positions.clone(),
    };
    let self_cond = (o.uniform(step, 0, 7) < o.self_condition).then(|| {
        let v = model.forward(input(None)).detach();
        (z_t.clone() * alpha.clone() - v * sigma.clone()).detach()
    });
    let v = model.forward(input(self_cond));
    let error = v - target;
    let loss = error.clone().square().mean();
    if o.motion_weight > 0.0 && t > 1 { loss + motion_term(error).mul_scalar(o.motion_weight) } else { loss }
}

/// The MSE of the differences of `error` (`[b, c, t, h, w]`, t ≥ 2) between consecutive
/// frames: the error of the frames' changes, which a prediction that gets each frame's
/// content right but moves it wrongly pays for here and hardly in the plain MSE.
pub(crate) fn motion_term<B: Backend>(error: Tensor<B, 5>) -> Tensor<B, 1> {
    let [b, c, t, h, w] = error.dims();
    let later = error.clone().slice([0..b, 0..c, 1..t, 0..h, 0..w]);
    let earlier = error.slice([0..b, 0..c, 0..t - 1, 0..h, 0..w]);
    (later - earlier).square().mean()
}

/// α and σ of the diffusion time of every item, as `[b, 1, 1, 1, 1]` tensors.
pub(crate) fn coefficients<B: Backend>(
    schedule: &Schedule,
    times: &[f64],
    device: &B::Device,
) -> (Tensor<B, 5>, Tensor<B, 5>) {
    let c: Vec<_> = times.iter().map(|&t| schedule.at(t)).collect();
    let column = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [times.len(), 1, 1, 1, 1]), device);
    (column(c.iter().map(|c| c.alpha as f32).collect()), column(c.iter().map(|c| c.sigma as f32).collect()))
}

/// What a training batch is conditioned on.
pub(crate) struct Conditions<B: Backend> {
    /// `[b, t]` flattened: the frames given clean.
    pub given: Vec<bool>,
    pub context: Option<FrameContext<B>>,
    pub positions: Option<Vec<Vec<FramePosition>>>,
    pub text: TextCondition<B>,
}

/// The conditions of the batch `x` (`[b, c, t, h, w]`, normalised) at `step`: frame prediction
/// gives 1 or 2 clean past frames to some clips (an anchor and 1 or 2 to every clip of an
/// anchored batch), each prompt is dropped with probability `text_dropout`, and the text
/// vectors of the rest get noise of `text_noise` times their RMS ([`text_augmented`]). The
/// draws depend on `(seed, step)` only, so any backend gets the same ones.
pub(crate) fn conditions<B: Backend>(
    o: &TrainDenoiserOptions,
    x: &Tensor<B, 5>,
    embeddings: &[Arc<TextEmbedding>],
    anchors: Option<&[usize]>,
    step: i64,
    text_dropout: f64,
    text_noise: f64,
) -> Conditions<B> {
    let [b, _, t, _, _] = x.dims();
    let device = x.device();
    let mut given = vec![false; b * t];
    let lead = usize::from(anchors.is_some());
    if t > 1 {
        for i in 0..b {
            if anchors.is_some() || o.uniform(step, i, 4) < o.frame_prediction {
                let k = if o.uniform(step, i, 5) < 0.5 || t == 2 + lead { 1 } else { 2 };
                given[i * t..i * t + lead + k].fill(true);
            }
        }
    }
    let positions =
        anchors.map(|distances| distances.iter().map(|&d| FramePosition::window(&[d], t - 1)).collect::<Vec<_>>());
    let context = given.iter().any(|&g| g).then(|| FrameContext {
        latents: if o.context_noise > 0.0 { context_noised(o, x.clone(), step) } else { x.clone() },
        frame_mask: Tensor::<B, 2, Bool>::from_data(TensorData::new(given.clone(), [b, t]), &device),
    });
    let dropped: Vec<bool> = (0..b).map(|i| o.uniform(step, i, 6) < text_dropout).collect();
    let text = TextCondition::from(TextBatch::<B>::from_embeddings(embeddings, &device));
    let text = if text_noise > 0.0 { text_augmented(text, text_noise, noise_hash(o.seed, step, 13)) } else { text };
    let text = text.drop_where(Tensor::from_data(TensorData::new(dropped, [b]), &device));
    Conditions { given, context, positions, text }
}

/// Noise augmentation of the context: `x` (`[b, c, t, h, w]`) with each clip's own
/// variance-preserving noise ([`crate::pipeline::noised_context`]) of a standard deviation
/// uniform in `[0, o.context_noise)`, drawn from `(seed, step)`.
pub(crate) fn context_noised<B: Backend>(o: &TrainDenoiserOptions, x: Tensor<B, 5>, step: i64) -> Tensor<B, 5> {
    let dims @ [b, ..] = x.dims();
    let device = x.device();
    let levels: Vec<f32> = (0..b).map(|i| (o.uniform(step, i, 14) * o.context_noise) as f32).collect();
    let s = Tensor::<B, 5>::from_data(TensorData::new(levels, [b, 1, 1, 1, 1]), &device);
    let eps = gaussian_tensor::<B, 5>(noise_hash(o.seed, step, 15), 0, dims, &device);
    let keep = (s.clone().square().neg() + 1.0).sqrt();
    x * keep + eps * s
}

/// Conditioning augmentation: `text` with Gaussian noise (stream `seed`) on every token state
/// and on the pooled embedding, each vector's of standard deviation `sigma` times its RMS, so
/// that the noise is the same share of every vector whatever its scale (MiniLM's token states
/// are not normalised; its pooled embedding has norm 1).
pub(crate) fn text_augmented<B: Backend>(text: TextCondition<B>, sigma: f64, seed: u64) -> TextCondition<B> {
    fn jittered<B: Backend, const D: usize>(v: Tensor<B, D>, sigma: f64, seed: u64, stream: u64) -> Tensor<B, D> {
        let rms = v.clone().square().mean_dim(D - 1).sqrt();
        let eps = gaussian_tensor::<B, D>(seed, stream, v.dims(), &v.device());
        v + eps * rms * sigma
    }
    TextCondition {
        tokens: jittered(text.tokens, sigma, seed, 0),
        pooled: jittered(text.pooled, sigma, seed, 1),
        padding_mask: text.padding_mask,
    }
}

/// A very small VAE (8–16 channels) with its initial weights, saved into `dir`: a fixed encoder
/// is all a denoiser's training needs, for tests.
pub fn micro_vae(dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("vae-init.safetensors");
    let config = VaeConfig::tiny().with_channels(vec![8, 16, 16, 16]);
    let device = Default::default();
    burn::backend::Flex::seed(&device, 3);
    let vae = config.init::<burn::backend::Flex>(&device);
    checkpoint::save(&vae, &config, &serde_json::json!({}), &path, Precision::F32)?;
    Ok(path)
}

/// Options for a 2-block denoiser 64 wide on 32×32 clips (windows of 3 latent frames, batch 2,
/// no warm-up, lr 2e-3): seconds per dozen steps on the CPU, for tests.
pub fn micro_options(vae: &Path, text: &Path, out: &Path) -> TrainDenoiserOptions {
    let config = DenoiserConfig::tiny().with_hidden_size(64).with_depth(2).with_num_heads(2).with_frequency_dim(64);
    TrainDenoiserOptions {
        width: 32,
        height: 32,
        window: 3,
        lead: 1,
        batch: 2,
        log_every: 0,
        checkpoint_every: 0,
        time_limit: None,
        stats_batches: 1,
        ..TrainDenoiserOptions::new(config, vae, text, out)
    }
    .with_optim(|o| Optimisation { warmup: 0, lr: 2e-3, ema_decay: Some(0.9), ..o })
}

/// Trains a micro pipeline ([`micro_vae`], [`micro_options`]) for `steps` steps into `out`:
/// seconds of CPU, for tests of everything that loads a pipeline. What it generates is
/// noise-like; its structure is the real one.
pub fn micro_pipeline(out: &Path, text: &Path, steps: usize) -> Result<()> {
    type B = burn::backend::Autodiff<burn::backend::Flex>;
    let vae = micro_vae(out)?;
    train_denoiser::<B>(&TrainDenoiserOptions { steps, ..micro_options(&vae, text, out) }, &Default::default())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    /// Vectors whose RMS differs by row: `scale · (1 + row)` times a fixed pattern.
    fn rows<const D: usize>(shape: [usize; D], scale: f32) -> Tensor<Flex, D> {
        let d = shape[D - 1];
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|i| scale * (1 + i / d) as f32 * (((i * 37 + 11) % 23) as f32 / 11.0 - 1.0))
            .collect();
        Tensor::from_data(TensorData::new(values, shape), &Default::default())
    }

    fn text() -> TextCondition<Flex> {
        let mask = TensorData::new(vec![false, false, false, true, false, false, false, false], [2, 4]);
        TextCondition {
            tokens: rows([2, 4, 384], 8.0),
            padding_mask: Tensor::from_data(mask, &Default::default()),
            pooled: rows([2, 384], 0.05),
        }
    }

    /// Per vector (last axis): the norm of `noisy − clean` over the RMS of `clean` times √d,
    /// and the cosine between them.
    fn noise_share<const D: usize>(clean: Tensor<Flex, D>, noisy: Tensor<Flex, D>) -> Vec<(f32, f32)> {
        let d = clean.dims()[D - 1];
        let (a, b) = (clean.into_data().to_vec::<f32>().unwrap(), noisy.into_data().to_vec::<f32>().unwrap());
        a.chunks(d)
            .zip(b.chunks(d))
            .map(|(a, b)| {
                let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
                let (na, nb) = (norm(&mut a.iter().copied()), norm(&mut b.iter().copied()));
                let diff = norm(&mut a.iter().zip(b).map(|(x, y)| y - x));
                let rms = na / (d as f32).sqrt();
                let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
                (diff / (rms * (d as f32).sqrt()), dot / (na * nb))
            })
            .collect()
    }

    /// The motion term sees what the frames' changes get wrong: an error that is the same in
    /// every frame costs nothing there, one that alternates costs four times its square.
    #[test]
    fn the_motion_term_is_the_error_of_the_changes() {
        let device = Default::default();
        let shape = [1, 2, 3, 2, 2];
        let still = Tensor::<Flex, 5>::ones(shape, &device).mul_scalar(0.5);
        assert_eq!(motion_term(still).into_scalar(), 0.0);
        let signs: Vec<f32> = (0..24).map(|i| if (i / 4) % 3 == 1 { -0.5 } else { 0.5 }).collect();
        let alternating = Tensor::<Flex, 5>::from_data(TensorData::new(signs, shape), &device);
        assert!((motion_term(alternating).into_scalar() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn text_noise_is_a_share_of_each_vector_and_seeded() {
        let clean = text();
        let sigma = 0.5;
        let noisy = text_augmented(clean.clone(), sigma, 3);
        // The same share of every vector, whatever its scale (the rows' scales span 8·1 to 8·8
        // and 0.05 to 0.1), so the direction moves alike: cos ≈ 1/√(1 + σ²) = 0.894.
        let shares = [
            noise_share(clean.tokens.clone(), noisy.tokens.clone()),
            noise_share(clean.pooled.clone(), noisy.pooled.clone()),
        ];
        for (share, cos) in shares.concat() {
            assert!((share - sigma as f32).abs() < 0.05, "noise of {share} × RMS, expected {sigma}");
            assert!((cos - 0.894).abs() < 0.03, "cosine {cos}");
        }
        assert_eq!(noisy.padding_mask.to_data(), clean.padding_mask.to_data(), "the mask is the prompt's");
        // Seeded: the same seed gives the same noise, another seed other noise.
        let again = text_augmented(clean.clone(), sigma, 3);
        assert_eq!(again.tokens.to_data(), noisy.tokens.to_data());
        assert_eq!(again.pooled.to_data(), noisy.pooled.to_data());
        let other = text_augmented(clean, sigma, 4);
        let moved = (other.tokens - noisy.tokens).abs().max().into_scalar();
        assert!(moved > 1.0, "another seed moves the tokens by {moved}");
    }

    #[test]
    fn context_noise_is_each_clips_own_level_and_seeded() {
        let root = std::env::temp_dir().join("endless-context-noise-unused");
        let o = TrainDenoiserOptions { context_noise: 0.6, ..micro_options(&root, &root, &root) };
        let x = gaussian_tensor::<Flex, 5>(99, 0, [8, 4, 3, 8, 8], &Default::default());
        let noisy = context_noised(&o, x.clone(), 7);
        let mut levels = Vec::new();
        for i in 0..8 {
            let clean: Vec<f32> = x.clone().narrow(0, i, 1).into_data().to_vec().unwrap();
            let got: Vec<f32> = noisy.clone().narrow(0, i, 1).into_data().to_vec().unwrap();
            // got = k·x + s·ε with ε independent of x: k is the regression slope of got on x,
            // s the RMS of what is left, and variance is kept: k² + s² = 1.
            let (xx, xy) = clean.iter().zip(&got).fold((0.0, 0.0), |(xx, xy), (a, b)| (xx + a * a, xy + a * b));
            let k = xy / xx;
            let rest = clean.iter().zip(&got).map(|(a, b)| (b - k * a).powi(2)).sum::<f32>() / got.len() as f32;
            let s = rest.sqrt();
            assert!((k * k + s * s - 1.0).abs() < 0.1, "clip {i}: slope {k}, noise {s}");
            assert!(s < 0.6 + 0.05, "clip {i}: noise {s}");
            levels.push(s);
        }
        let spread = levels.iter().cloned().fold(0.0f32, f32::max) - levels.iter().cloned().fold(1.0f32, f32::min);
        assert!(spread > 0.1, "every clip draws its own level: {levels:?}");
        let again = context_noised(&o, x.clone(), 7);
        assert_eq!(again.to_data(), noisy.to_data(), "the same step draws the same noise");
        let other = context_noised(&o, x, 8);
        assert!((other - noisy).abs().max().into_scalar() > 0.1, "another step draws other noise");
    }

    #[test]
    fn a_reused_clip_comes_back_in_the_next_steps_batch() {
        let Some(text) = crate::text::dir_for_tests() else { return };
        let root = std::env::temp_dir().join(format!("endless-reuse-{}", std::process::id()));
        let vae = micro_vae(&root).unwrap();
        let o = TrainDenoiserOptions {
            batch: 4,
            reuse: 2,
            image_fraction: 0.0,
            anchor_fraction: 0.5,
            ..micro_options(&vae, &text, &root)
        };
        let device = Default::default();
        let vae_config: VaeConfig = checkpoint::read_config(&o.vae).unwrap();
        let encoder = || {
            let vae = checkpoint::load(vae_config.init(&device), &o.vae, &device).unwrap();
            let text = Arc::new(TextEncoder::load(&text, &device).unwrap());
            Encoder::<Flex>::new(o.clone(), vae, vae_config.clone(), text, device)
        };
        let latents = |b: &Batch| b.latents.to_vec::<f32>().unwrap();
        let (mut straight, mut resumed) = (encoder(), encoder());
        let first = straight.step_batch(0);
        // The first step renders its clips and the clips of the step before it in place...
        let missed = straight.missed.get();
        assert_eq!(missed, 4 + first.anchors.as_ref().map_or(0, Vec::len));
        let batches: Vec<Batch> = std::iter::once(first).chain((1..4).map(|s| straight.step_batch(s))).collect();
        // ...and every later one finds all of its frames rendered ahead, anchors included.
        assert_eq!(straight.missed.get(), missed, "every clip after the first step is rendered ahead");
        // Each batch carries the time its own clips took to render, and no more.
        assert!(batches.iter().all(|b| b.rendering > Duration::ZERO));
        assert_eq!(straight.rendering.get(), Duration::ZERO);
        // Step s trains on its 2 new clips, then step s − 1's: built by hand from the clips
        // each step draws (the lead's latent frames and all).
        let whole = o.lead + o.window;
        for s in 1..4 {
            let (new, old) = (
                straight.clips(noise_hash(o.seed, s, 1), 2, whole),
                straight.clips(noise_hash(o.seed, s - 1, 1), 2, whole),
            );
            let both = Clips {
                clips: [new.clips, old.clips].concat(),
                latents: Tensor::cat(vec![new.latents, old.latents], 0),
                embeddings: [new.embeddings, old.embeddings].concat(),
            };
            let by_hand = straight.assemble(both, s, false);
            assert_eq!(latents(&batches[s as usize]), latents(&by_hand), "step {s}");
            assert_eq!(batches[s as usize].anchors, by_hand.anchors);
        }
        assert!(batches.iter().any(|b| b.anchors.is_some()), "anchors are drawn for reused clips too");
        // A run resumed at step 2 has no clips of step 1 yet and makes them again.
        assert_eq!(latents(&resumed.step_batch(2)), latents(&batches[2]));
        assert_eq!(resumed.recent.len(), 2, "only the steps still to be reused are kept");
        // reuse 1 is the batch of fresh clips.
        let mut fresh = Encoder { o: TrainDenoiserOptions { reuse: 1, ..o.clone() }, ..encoder() };
        let b = fresh.step_batch(3);
        assert_eq!(latents(&b), latents(&fresh.batch(noise_hash(o.seed, 3, 1), 3)));
        assert_ne!(latents(&b), latents(&batches[3]));
        std::fs::remove_dir_all(&root).ok();
    }
}
