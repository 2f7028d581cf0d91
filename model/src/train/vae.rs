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
//! A checkpoint is `vae.safetensors` (+ JSON with meta `{step, samples_seen, seed}`), the
//! optimizer state `optim.bin` (moments keyed by parameter order), `vae-ema.safetensors` when
//! the EMA is on, `loss.csv` and `loss.png`.

use super::plot::{LossRow, read_loss_csv, write_loss_csv, write_loss_plot};
use crate::checkpoint::{self, Precision};
use crate::data::video_tensor;
use crate::vae::{Vae, VaeConfig};
use crate::world::{ClipOptions, ClipSampler, Split, noise_hash};
use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::ElementConversion;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

/// How the learning rate goes after the warm-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrSchedule {
    /// The peak rate to the end.
    Constant,
    /// Cosine from the peak down to a tenth of it at the last step.
    Cosine,
}

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
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up.
    pub warmup: usize,
    pub schedule: LrSchedule,
    /// Gradient-norm clip per parameter tensor; 0 turns it off.
    pub grad_clip: f32,
    pub weight_decay: f32,
    /// Fraction of batches that are single-frame images.
    pub image_fraction: f64,
    pub seed: u64,
    /// Output folder.
    pub out: PathBuf,
    /// Continue from `out/vae.safetensors` if it exists.
    pub resume: bool,
    /// Checkpoint every this many steps (and at the end); 0: only at the end.
    pub checkpoint_every: usize,
    /// A progress line on stderr every this many steps; 0: none.
    pub log_every: usize,
    /// Decay of the EMA of the weights (e.g. 0.999); `None`: no EMA.
    pub ema_decay: Option<f64>,
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
            lr: 1e-3,
            warmup: 100,
            schedule: LrSchedule::Constant,
            grad_clip: 1.0,
            weight_decay: 1e-4,
            image_fraction: 0.25,
            seed: 1,
            out: out.into(),
            resume: false,
            checkpoint_every: 500,
            log_every: 10,
            ema_decay: Some(0.999),
        }
    }

    /// The learning rate of `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        let warm = if self.warmup == 0 { 1.0 } else { ((step + 1) as f64 / self.warmup as f64).min(1.0) };
        let decay = match self.schedule {
            LrSchedule::Constant => 1.0,
            LrSchedule::Cosine => {
                let span = self.steps.saturating_sub(self.warmup).max(1) as f64;
                let p = (step.saturating_sub(self.warmup) as f64 / span).min(1.0);
                0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
            }
        };
        self.lr * warm * decay
    }

    /// Whether batch `step` is a batch of images, and its clip options.
    fn batch_options(&self, step: usize) -> (bool, ClipOptions) {
        let u = (noise_hash(self.seed, step as i64, 2) >> 11) as f64 / (1u64 << 53) as f64;
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

    /// The clips of batch `step`, rendered in parallel: a pure function of `(seed, step)`.
    pub fn render_batch(&self, step: usize) -> Vec<Vec<Vec<u8>>> {
        let (_, o) = self.batch_options(step);
        let mut sampler = ClipSampler::new(Split::Train, noise_hash(self.seed, step as i64, 1));
        let clips: Vec<_> = (0..self.batch).map(|_| sampler.next_clip(&o)).collect();
        clips.par_iter().map(|c| c.render(false)).collect()
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
        if !(0.0..=1.0).contains(&self.image_fraction) {
            bail!("the image fraction must be in [0, 1]");
        }
        if let Some(d) = self.ema_decay
            && !(0.0..1.0).contains(&d)
        {
            bail!("the EMA decay must be in [0, 1)");
        }
        Ok(())
    }
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

type Optim<B> = OptimizerAdaptor<AdamW, Vae<B>, B>;

/// Initialises every lazy parameter in place, in visit order; collects their ids.
struct Ids(Vec<ParamId>);

impl<B: Backend> ModuleVisitor<B> for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = param.val();
        self.0.push(param.id);
    }
}

fn param_ids<B: Backend, M: Module<B>>(module: &M) -> Vec<ParamId> {
    let mut ids = Ids(Vec::new());
    module.visit(&mut ids);
    ids.0
}

/// The parameters, flattened, in visit order.
struct Flatten<B: Backend>(Vec<Tensor<B, 1>>);

impl<B: Backend> ModuleVisitor<B> for Flatten<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.0.push(t.reshape([n]));
    }
}

/// `ema ← decay · ema + (1 − decay) · θ`, parameter by parameter in visit order.
struct EmaUpdate<B: Backend> {
    current: std::vec::IntoIter<Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for EmaUpdate<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let theta = self.current.next().expect("the EMA has the model's parameters");
        let decay = self.decay;
        param.map(|ema| {
            let shape = ema.shape();
            ema.mul_scalar(decay) + theta.reshape(shape).mul_scalar(1.0 - decay)
        })
    }
}

fn ema_update<B: Backend>(ema: Vae<B>, model: &Vae<B>, decay: f64) -> Vae<B> {
    let mut flat = Flatten(Vec::new());
    model.visit(&mut flat);
    ema.map(&mut EmaUpdate { current: flat.0.into_iter(), decay })
}

fn recorder() -> BinFileRecorder<FullPrecisionSettings> {
    BinFileRecorder::<FullPrecisionSettings>::new()
}

/// Saves the optimizer's state with parameter ids replaced by their visit index, so it loads
/// into a model built afresh (whose ids differ).
fn save_optim<B: AutodiffBackend>(optim: &Optim<B>, model: &Vae<B>, path: &Path) -> Result<()> {
    let index: std::collections::HashMap<ParamId, u64> =
        param_ids(model).into_iter().enumerate().map(|(i, id)| (id, i as u64)).collect();
    let record: <Optim<B> as Optimizer<Vae<B>, B>>::Record = optim
        .to_record()
        .into_iter()
        .map(|(id, r)| (ParamId::from(*index.get(&id).expect("optimizer state of a model parameter")), r))
        .collect();
    recorder().record(record, path.to_path_buf()).with_context(|| format!("writing {}", path.display()))
}

fn load_optim<B: AutodiffBackend>(
    optim: Optim<B>,
    model: &Vae<B>,
    path: &Path,
    device: &B::Device,
) -> Result<Optim<B>> {
    let ids = param_ids(model);
    let record: <Optim<B> as Optimizer<Vae<B>, B>>::Record =
        recorder().load(path.to_path_buf(), device).with_context(|| format!("reading {}", path.display()))?;
    let mut remapped = <Optim<B> as Optimizer<Vae<B>, B>>::Record::default();
    for (i, r) in record {
        let id =
            ids.get(i.val() as usize).with_context(|| format!("{}: state of an unknown parameter", path.display()))?;
        remapped.insert(*id, r);
    }
    Ok(optim.load_record(remapped))
}

fn save_all<B: AutodiffBackend>(
    o: &TrainVaeOptions,
    config: &VaeConfig,
    model: &Vae<B>,
    optim: &Optim<B>,
    ema: Option<&Vae<B::InnerBackend>>,
    rows: &[LossRow],
    step: usize,
    samples_seen: u64,
) -> Result<()> {
    let meta = serde_json::json!({ "step": step, "samples_seen": samples_seen, "seed": o.seed });
    save_optim(optim, model, &o.out.join("optim"))?;
    if let Some(ema) = ema {
        checkpoint::save(ema, config, &meta, &o.out.join("vae-ema.safetensors"), Precision::F32)?;
    }
    // The model's JSON comes last: a checkpoint with it is complete.
    checkpoint::save(model, config, &meta, &o.out.join("vae.safetensors"), Precision::F32)?;
    write_loss_csv(rows, &o.out.join("loss.csv"))?;
    write_loss_plot(rows, &o.out.join("loss.png"), 640, 360)?;
    Ok(())
}

/// Trains a VAE as `o` says, writing checkpoints, `loss.csv` and `loss.png` to `o.out`.
pub fn train_vae<B: AutodiffBackend>(o: &TrainVaeOptions, device: &B::Device) -> Result<TrainSummary> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    let ckpt = o.out.join("vae.safetensors");
    let mut adamw = AdamWConfig::new().with_weight_decay(o.weight_decay);
    if o.grad_clip > 0.0 {
        adamw = adamw.with_grad_clipping(Some(burn::optim::grad_clipping::GradientClippingConfig::Norm(o.grad_clip)));
    }
    let resuming = o.resume && checkpoint::config_path(&ckpt).exists();
    let (config, mut model, mut optim, mut ema, start, mut samples_seen, mut rows) = if resuming {
        let info = checkpoint::read_info(&ckpt)?;
        let config: VaeConfig = checkpoint::read_config(&ckpt)?;
        let start = info.meta["step"].as_u64().context("checkpoint meta without a step")? as usize;
        let seen = info.meta["samples_seen"].as_u64().unwrap_or(0);
        if info.meta["seed"].as_u64() != Some(o.seed) {
            bail!("{} was trained with seed {}, not {}", ckpt.display(), info.meta["seed"], o.seed);
        }
        let model: Vae<B> = checkpoint::load(config.init(device), &ckpt, device)?;
        let optim = load_optim(adamw.init::<B, Vae<B>>(), &model, &o.out.join("optim.bin"), device)?;
        let ema_path = o.out.join("vae-ema.safetensors");
        let ema = match o.ema_decay {
            Some(_) if ema_path.exists() => Some(checkpoint::load(config.init(device), &ema_path, device)?),
            Some(_) => Some(model.valid()),
            None => None,
        };
        let csv = o.out.join("loss.csv");
        let mut rows = if csv.exists() { read_loss_csv(&csv)? } else { Vec::new() };
        rows.retain(|r| r.step < start);
        eprintln!("resuming {} at step {start} ({seen} samples seen)", ckpt.display());
        (config, model, optim, ema, start, seen, rows)
    } else {
        let config = o.config.clone();
        B::seed(device, noise_hash(o.seed, -1, 0));
        let model: Vae<B> = config.init(device);
        param_ids(&model); // initialise every parameter now, from the seed
        let ema = o.ema_decay.map(|_| model.valid());
        (config, model, adamw.init::<B, Vae<B>>(), ema, 0, 0, Vec::new())
    };
    let o = &TrainVaeOptions { config: config.clone(), ..o.clone() };
    o.validate()?;
    if start >= o.steps {
        eprintln!("nothing to do: the checkpoint is at step {start}, --steps is {}", o.steps);
        return Ok(TrainSummary { start_step: start, end_step: start, rows: Vec::new(), samples_per_second: 0.0 });
    }

    // The feeder: renders batch s + 1 while step s runs.
    let (tx, rx) = mpsc::sync_channel::<(usize, Vec<Vec<Vec<u8>>>)>(2);
    let feeder_opts = o.clone();
    let feeder = std::thread::spawn(move || {
        for step in start..feeder_opts.steps {
            if tx.send((step, feeder_opts.render_batch(step))).is_err() {
                break;
            }
        }
    });

    let first_row = rows.len();
    let run_started = Instant::now();
    let (mut window_started, mut window_samples) = (Instant::now(), 0u64);
    let mut step = start;
    while step < o.steps {
        let (s, clips) = rx.recv().context("the batch feeder stopped")?;
        debug_assert_eq!(s, step);
        let t = clips[0].len();
        let video = video_tensor::<B>(&clips, o.width, o.height, device);
        B::seed(device, noise_hash(o.seed, step as i64, 3));
        let loss = model.loss(video);
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        let lr = o.lr_at(step);
        model = optim.step(lr, model, grads);
        if let (Some(decay), Some(e)) = (o.ema_decay, ema.take()) {
            // Warm-up of the EMA: a short memory early on.
            let d = decay.min((1.0 + step as f64) / (10.0 + step as f64));
            ema = Some(ema_update(e, &model.valid(), d));
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
        rows.push(row);
        samples_seen += o.batch as u64;
        window_samples += o.batch as u64;
        step += 1;
        if o.log_every > 0 && (step.is_multiple_of(o.log_every) || step == o.steps) {
            let rate = window_samples as f64 / window_started.elapsed().as_secs_f64();
            eprintln!(
                "step {step}/{} loss {:.5} (recon {:.5}, kl {:.3}) {rate:.2} samples/s lr {lr:.2e} [{t} frame{}]",
                o.steps,
                row.loss,
                row.recon,
                row.kl,
                if t == 1 { "" } else { "s" }
            );
            (window_started, window_samples) = (Instant::now(), 0);
        }
        if (o.checkpoint_every > 0 && step.is_multiple_of(o.checkpoint_every)) || step == o.steps {
            save_all(o, &config, &model, &optim, ema.as_ref(), &rows, step, samples_seen)?;
        }
    }
    drop(rx);
    feeder.join().map_err(|_| anyhow::anyhow!("the batch feeder panicked"))?;
    let samples_per_second = ((step - start) * o.batch) as f64 / run_started.elapsed().as_secs_f64();
    Ok(TrainSummary { start_step: start, end_step: step, rows: rows[first_row..].to_vec(), samples_per_second })
}
