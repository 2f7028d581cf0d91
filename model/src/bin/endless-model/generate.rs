//! `endless-model train` and `endless-model sample`: the denoiser's training and sampling from a
//! pipeline folder, on the device chosen with `--device`.

use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use endless_model::device::{DeviceKind, Resolved, resolve};
use endless_model::diffusion::Guidance;
use endless_model::dit::DenoiserConfig;
use endless_model::media::{Size, contact_sheet, write_mp4, write_png};
use endless_model::pipeline::{ExtendMode, Pipeline, SamplerSettings, SelfConditioning};
use endless_model::rolling::{ContextLayout, RollingContext};
use endless_model::text::{TextEncoder, default_dir};
use endless_model::train::{DistillFrom, LrSchedule, Optimisation, TrainDenoiserOptions, train_denoiser};
use endless_model::vae::StreamState;
use std::path::PathBuf;
use std::time::Instant;

/// Runs `$f::<Backend>(&device, args…)` on the resolved device.
macro_rules! on_device {
    // Training in bf16 (weights, activations and optimiser state: burn has no mixed precision):
    // CUDA only.
    ($kind:expr, $f:ident, autodiff_bf16, $($arg:expr),*) => {
        match resolve($kind).map_err(anyhow::Error::msg)? {
            Resolved::Cpu => bail!("--precision bf16 needs the CUDA device (the CPU backend trains in f32)"),
            #[cfg(feature = "cuda")]
            Resolved::Cuda => {
                $f::<burn::backend::Autodiff<burn::backend::Cuda<burn::tensor::bf16>>>(&Default::default(), $($arg),*)
            }
            #[cfg(not(feature = "cuda"))]
            Resolved::Cuda => unreachable!("resolve refuses cuda without the feature"),
        }
    };
    ($kind:expr, $f:ident, autodiff, $($arg:expr),*) => {
        match resolve($kind).map_err(anyhow::Error::msg)? {
            Resolved::Cpu => $f::<burn::backend::Autodiff<burn::backend::Flex>>(&Default::default(), $($arg),*),
            #[cfg(feature = "cuda")]
            Resolved::Cuda => $f::<burn::backend::Autodiff<burn::backend::Cuda>>(&Default::default(), $($arg),*),
            #[cfg(not(feature = "cuda"))]
            Resolved::Cuda => unreachable!("resolve refuses cuda without the feature"),
        }
    };
    ($kind:expr, $f:ident, $($arg:expr),*) => {
        match resolve($kind).map_err(anyhow::Error::msg)? {
            Resolved::Cpu => $f::<burn::backend::Flex>(&Default::default(), $($arg),*),
            #[cfg(feature = "cuda")]
            Resolved::Cuda => $f::<burn::backend::Cuda>(&Default::default(), $($arg),*),
            #[cfg(not(feature = "cuda"))]
            Resolved::Cuda => unreachable!("resolve refuses cuda without the feature"),
        }
    };
}

/// What every training run takes besides its model and data: the seed, resuming, and how often
/// it checkpoints and logs (`--resume` continues from the checkpoint in `--out`).
#[derive(clap::Args)]
pub struct RunArgs {
    /// Seed of the data stream and the initialisation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Continue from the checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 500)]
    pub checkpoint_every: usize,
    /// A progress line every this many steps.
    #[arg(long, default_value_t = 10)]
    pub log_every: usize,
    /// Stop, with a checkpoint, after the first step that ends past this many seconds (training
    /// in legs: `--resume` continues).
    #[arg(long)]
    pub time_limit: Option<f64>,
}

impl RunArgs {
    pub fn time_limit(&self) -> Option<std::time::Duration> {
        self.time_limit.map(std::time::Duration::from_secs_f64)
    }
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// Denoiser preset: tiny, medium, small or base.
    #[arg(long, default_value = "tiny", conflicts_with = "init_from")]
    preset: String,
    /// The trained VAE checkpoint. With --init-from: a VAE to train on in place of the
    /// pipeline's, one whose latent grew from the pipeline's (`train-vae --init-from
    /// --latent-channels`): the denoiser grows to its channels, the new ones starting at zero.
    #[arg(long, required_unless_present = "init_from")]
    vae: Option<PathBuf>,
    /// Go on training this pipeline folder (e.g. models/cpu): its denoiser, VAE, latent
    /// statistics, frame size, rate and window, with a fresh optimiser. Give another --seed
    /// than its run's, or the run sees the same clips again.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// all-MiniLM-L6-v2 folder (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Frame size, WIDTHxHEIGHT (multiples of 8 × the patch size).
    #[arg(long, default_value = "64x64", conflicts_with = "init_from")]
    size: Size,
    /// Frames per second of the training clips (and of the streams the pipeline makes).
    #[arg(long, default_value_t = 8.0, conflicts_with = "init_from")]
    fps: f64,
    /// Latent frames the denoiser sees at once.
    #[arg(long, default_value_t = 4, conflicts_with = "init_from")]
    window: usize,
    /// Extra latent frames before the window (windows start at a random offset up to this).
    #[arg(long, default_value_t = 2)]
    lead: usize,
    /// Clips per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The step to stop at.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    /// Steps of linear warm-up.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Cosine decay to a tenth of the peak after the warm-up (default: constant).
    #[arg(long)]
    cosine: bool,
    /// Decay of the EMA of the weights; 0 turns the EMA off.
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// Fraction of batches that are single images.
    #[arg(long, default_value_t = 0.2)]
    image_fraction: f64,
    /// Steps each rendered video clip is trained on: a video step renders --batch / this new
    /// clips and takes the rest from the steps before it (1: every clip once). Less rendering
    /// and encoding per sample, for runs that wait for their data.
    #[arg(long, default_value_t = 1)]
    reuse: usize,
    /// Chance that a clip gets 1 or 2 clean past latent frames (frame prediction, p_fp).
    #[arg(long, default_value_t = 0.5)]
    frame_prediction: f64,
    /// Fraction of video batches whose windows start with a long-range anchor (0: a model
    /// that streams without anchors).
    #[arg(long, default_value_t = 0.25)]
    anchor_fraction: f64,
    /// The farthest an anchor is drawn from, in latent frames.
    #[arg(long, default_value_t = 128)]
    max_anchor_distance: usize,
    /// Chance that a prompt is dropped (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    text_dropout: f64,
    /// Conditioning augmentation: Gaussian noise on every text vector (token states and the
    /// pooled embedding), this many times the vector's RMS; 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    text_noise: f64,
    /// Noise augmentation of the context: each clip's given frames get variance-preserving
    /// Gaussian noise of a standard deviation uniform in [0, this); the pipeline samples with
    /// half of it. 0 turns it off. Default: what the pipeline of --init-from was trained with,
    /// else 0.
    #[arg(long)]
    context_noise: Option<f64>,
    /// Weight of a motion term added to the loss: the MSE of the error's changes from one
    /// latent frame to the next; 0 turns it off.
    #[arg(long, default_value_t = 0.0)]
    motion_weight: f64,
    /// Chance that a batch trains with self-conditioning.
    #[arg(long, default_value_t = 0.5)]
    self_condition: f64,
    #[command(flatten)]
    run: RunArgs,
    /// Output folder: becomes a pipeline folder (`sample --model` it).
    #[arg(long, default_value = "runs/denoiser-tiny")]
    out: PathBuf,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
    /// f32, or bf16 on CUDA (checkpoints are written in f32 either way).
    #[arg(long, default_value = "f32")]
    precision: String,
}

/// Trains the VAE on the device `kind` resolves to.
pub fn train_vae(kind: DeviceKind, options: &endless_model::train::TrainVaeOptions) -> Result<()> {
    on_device!(kind, train_vae_on, autodiff, options)
}

fn train_vae_on<B: AutodiffBackend>(device: &B::Device, options: &endless_model::train::TrainVaeOptions) -> Result<()> {
    let summary = endless_model::train::train_vae::<B>(options, device)?;
    if let (Some(first), Some(last)) = (summary.rows.first(), summary.rows.last()) {
        println!(
            "steps {}..{}: loss {:.5} → {:.5} (recon {:.5} → {:.5}), {:.2} samples/s; wrote {}",
            summary.start_step,
            summary.end_step,
            first.loss,
            last.loss,
            first.recon,
            last.recon,
            summary.samples_per_second,
            options.out.display()
        );
    }
    Ok(())
}

pub fn train(args: TrainArgs) -> Result<()> {
    let text = args.text.clone().unwrap_or_else(default_dir);
    let base = match (&args.init_from, &args.vae) {
        (Some(from), vae) => {
            let options = TrainDenoiserOptions::continuing(from, text, &args.out)?;
            TrainDenoiserOptions { vae: vae.clone().unwrap_or(options.vae.clone()), ..options }
        }
        (None, Some(vae)) => {
            let config = match args.preset.as_str() {
                "tiny" => DenoiserConfig::tiny(),
                "medium" => DenoiserConfig::medium(),
                "small" => DenoiserConfig::small(),
                "base" => DenoiserConfig::base(),
                other => bail!("unknown --preset {other:?}: tiny, medium, small or base"),
            };
            TrainDenoiserOptions {
                width: args.size.width,
                height: args.size.height,
                fps: args.fps,
                window: args.window,
                ..TrainDenoiserOptions::new(config, vae, text, &args.out)
            }
        }
        (None, None) => bail!("--vae or --init-from is needed"),
    };
    let options = TrainDenoiserOptions {
        lead: args.lead,
        batch: args.batch,
        steps: args.steps,
        image_fraction: args.image_fraction,
        reuse: args.reuse,
        frame_prediction: args.frame_prediction,
        anchor_fraction: args.anchor_fraction,
        max_anchor_distance: args.max_anchor_distance,
        text_dropout: args.text_dropout,
        text_noise: args.text_noise,
        context_noise: args.context_noise.unwrap_or(base.context_noise),
        motion_weight: args.motion_weight,
        self_condition: args.self_condition,
        seed: args.run.seed,
        resume: args.run.resume,
        checkpoint_every: args.run.checkpoint_every,
        log_every: args.run.log_every,
        time_limit: args.run.time_limit(),
        ..base
    }
    .with_optim(|o| Optimisation {
        lr: args.lr,
        warmup: args.warmup,
        schedule: if args.cosine { LrSchedule::Cosine } else { LrSchedule::Constant },
        ema_decay: (args.ema > 0.0).then_some(args.ema),
        ..o
    });
    match args.precision.as_str() {
        "f32" => on_device!(args.device, train_on, autodiff, &options),
        "bf16" => on_device!(args.device, train_on, autodiff_bf16, &options),
        other => bail!("unknown --precision {other:?}: f32 or bf16"),
    }
}

fn train_on<B: AutodiffBackend>(device: &B::Device, options: &TrainDenoiserOptions) -> Result<()> {
    let summary = train_denoiser::<B>(options, device)?;
    if let (Some(first), Some(last)) = (summary.rows.first(), summary.rows.last()) {
        println!(
            "steps {}..{}: loss {:.5} → {:.5}, {:.2} samples/s; wrote {}",
            summary.start_step,
            summary.end_step,
            first.loss,
            last.loss,
            summary.samples_per_second,
            options.out.display()
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DistillArgs {
    /// The teacher's pipeline folder: a trained one, or the student of an earlier round.
    #[arg(long)]
    teacher: PathBuf,
    /// DDIM steps of an undistilled teacher (a distilled one's are in its pipeline.json); the
    /// student takes half, or as many with --guidance-only.
    #[arg(long, default_value_t = 32)]
    teacher_steps: usize,
    /// Classifier-free guidance scale of the text built into the student (undistilled teacher).
    #[arg(long, default_value_t = 8.0)]
    text_guidance: f64,
    /// Classifier-free guidance scale of the past frames built into the student.
    #[arg(long, default_value_t = 1.0)]
    context_guidance: f64,
    /// Distil the guidance alone: the student keeps the undistilled teacher's steps and learns
    /// its guided output at each in one pass (half the passes; no step is halved).
    #[arg(long)]
    guidance_only: bool,
    /// Clips per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The step to stop at.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Learning rate (constant).
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    /// Decay of the EMA of the weights; 0 turns the EMA off.
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// The undistilled pipeline the report compares with (default: the teacher).
    #[arg(long)]
    reference: Option<PathBuf>,
    /// Held-out prompts of the report (one stream of two chunks each).
    #[arg(long, default_value_t = 8)]
    report_prompts: usize,
    /// all-MiniLM-L6-v2 folder (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
    #[arg(long)]
    text: Option<PathBuf>,
    #[command(flatten)]
    run: RunArgs,
    /// Output folder: becomes a pipeline folder.
    #[arg(long, default_value = "runs/distilled")]
    out: PathBuf,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

pub fn distill(args: DistillArgs) -> Result<()> {
    let from = DistillFrom {
        teacher: args.teacher.clone(),
        teacher_steps: args.teacher_steps,
        guidance: Guidance { text: args.text_guidance, context: args.context_guidance },
        guidance_only: args.guidance_only,
    };
    let text = args.text.clone().unwrap_or_else(default_dir);
    let options = TrainDenoiserOptions {
        batch: args.batch,
        steps: args.steps,
        seed: args.run.seed,
        resume: args.run.resume,
        checkpoint_every: args.run.checkpoint_every,
        log_every: args.run.log_every,
        time_limit: args.run.time_limit(),
        ..TrainDenoiserOptions::distilling(from, &text, &args.out)?
    }
    .with_optim(|o| Optimisation { lr: args.lr, ema_decay: (args.ema > 0.0).then_some(args.ema), ..o });
    on_device!(args.device, distill_on, autodiff, &args, &options)
}

fn distill_on<B: AutodiffBackend>(
    device: &B::Device,
    args: &DistillArgs,
    options: &TrainDenoiserOptions,
) -> Result<()> {
    train_on::<B>(device, options)?;
    // How closely the student follows the reference, against the reference with fewer steps.
    let student = Pipeline::<B::InnerBackend>::load(&args.out, true, device)?;
    let distilled = student.spec.distilled.context("the student's pipeline.json says it is distilled")?;
    let (reference_dir, reference_settings) = match &args.reference {
        Some(dir) => (
            dir.clone(),
            SamplerSettings { steps: distilled.from_steps, guidance: distilled.guidance, ..Default::default() },
        ),
        None => {
            let teacher = Pipeline::<B::InnerBackend>::load(&args.teacher, true, device)?;
            let steps = teacher.spec.distilled.map_or(args.teacher_steps, |d| d.steps);
            (args.teacher.clone(), SamplerSettings { steps, guidance: distilled.guidance, ..Default::default() })
        }
    };
    let reference = Pipeline::<B::InnerBackend>::load(&reference_dir, true, device)?;
    let text = load_text::<B::InnerBackend>(&args.text, device)?;
    let prompts: Vec<_> = endless_model::eval::held_out_cases(args.report_prompts.max(1), args.run.seed)
        .iter()
        .map(|case| text.embed(&case.prompt))
        .collect();
    let a = endless_model::train::agreement(&student, &reference, &reference_settings, &prompts, args.run.seed);
    println!("| sampler | steps | latent MSE from {} at {} steps |", reference_dir.display(), a.teacher_steps);
    println!("|---|---|---|");
    println!("| distilled student | {} | {:.5} |", a.student_steps, a.student_mse);
    if a.student_steps < a.teacher_steps {
        println!("| reference, as few steps | {} | {:.5} |", a.student_steps, a.teacher_few_steps_mse);
    }
    println!("| reference, as few passes | {} | {:.5} |", a.same_passes_steps, a.teacher_same_passes_mse);
    let path = args.out.join("distillation.json");
    std::fs::write(&path, serde_json::to_string_pretty(&a)? + "\n")
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[derive(clap::Args)]
pub struct SampleArgs {
    /// A pipeline folder (what `train` writes).
    #[arg(long)]
    model: PathBuf,
    /// What to show.
    #[arg(long)]
    prompt: String,
    /// Length of the video.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// MP4 output (needs the `gst` feature).
    #[arg(long)]
    out: Option<PathBuf>,
    /// PNG contact sheet of 12 frames spread over the video.
    #[arg(long)]
    contact_sheet: Option<PathBuf>,
    /// DDIM steps per chunk.
    #[arg(long, default_value_t = 16)]
    steps: usize,
    /// DDIM η (0: deterministic).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    /// Classifier-free guidance scale of the text.
    #[arg(long, default_value_t = 8.0)]
    text_guidance: f64,
    /// Classifier-free guidance scale of the past frames.
    #[arg(long, default_value_t = 1.0)]
    context_guidance: f64,
    /// How chunks use the frames before them: replacement, conditioned or guided.
    #[arg(long, default_value = "conditioned")]
    mode: String,
    /// What a step feeds the denoiser as self-conditioning: `per-pass` (each guidance pass its
    /// own estimate of the step before, as training feeds it), `guided` (the step's guided
    /// estimate, as everything sampled before 2026-12-05) or `off`.
    #[arg(long, default_value = "per-pass")]
    self_conditioning: SelfConditioning,
    /// Reconstruction-guidance weight (mode guided).
    #[arg(long, default_value_t = 2.0)]
    guidance_weight: f64,
    /// Latent frames each chunk is conditioned on, anchors included.
    #[arg(long, default_value_t = 2)]
    context: usize,
    /// How many of them are long-range anchors (when the pipeline was trained with them).
    #[arg(long, default_value_t = 1)]
    anchors: usize,
    /// Latent frames between anchor candidates.
    #[arg(long, default_value_t = 8)]
    anchor_every: usize,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
    /// Seed of the noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// all-MiniLM-L6-v2 folder (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
    #[arg(long)]
    text: Option<PathBuf>,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

#[derive(clap::Args)]
pub struct DecodeBenchArgs {
    /// A pipeline folder.
    #[arg(long, default_value = "models/cpu")]
    model: PathBuf,
    /// Latent frames per chunk: the service's is the window less the context frames (4 − 2).
    #[arg(long, default_value_t = 2)]
    latents: usize,
    /// Chunks timed, after the stream's first.
    #[arg(long, default_value_t = 24)]
    chunks: usize,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

pub fn decode_bench(args: DecodeBenchArgs) -> Result<()> {
    if args.latents == 0 || args.chunks == 0 {
        bail!("--latents and --chunks must be at least 1");
    }
    on_device!(args.device, decode_bench_on, &args)
}

fn decode_bench_on<B: Backend>(device: &B::Device, args: &DecodeBenchArgs) -> Result<()> {
    use burn::tensor::{Distribution, Tensor};
    use endless_model::vae::{DecoderStage, Extent};
    let pipeline = Pipeline::<B>::load(&args.model, true, device)?;
    let spec = &pipeline.spec;
    let factor = pipeline.vae_config.spatial_factor();
    let (h, w) = (spec.height / factor, spec.width / factor);
    let c = pipeline.vae_config.latent_channels;
    let decoder = &pipeline.vae.decoder;
    let latents = || Tensor::<B, 5>::random([1, c, args.latents, h, w], Distribution::Normal(0.0, 1.0), device);
    let sync = || B::sync(device).map_err(|e| anyhow::anyhow!("{e:?}"));
    let mut state = StreamState::default();
    let mut stages: Vec<(DecoderStage, [usize; 5], f64)> = Vec::new();
    let mut chunk_ms = Vec::with_capacity(args.chunks);
    let mut frames = 0;
    for chunk in 0..=args.chunks {
        let z = spec.denormalise(latents()).swap_dims(1, 2);
        sync()?;
        let started = Instant::now();
        let mut lap = Instant::now();
        let mut failed = None;
        let video = decoder.forward_stream_observed(z, Some(&mut state), |stage, out| {
            if let Err(e) = sync() {
                failed = Some(e);
            }
            let ms = lap.elapsed().as_secs_f64() * 1e3;
            lap = Instant::now();
            // The stream's first chunk decodes its first frame alone: a warm-up, not counted.
            if chunk > 0 {
                match stages.iter_mut().find(|(s, _, _)| *s == stage) {
                    Some((_, _, total)) => *total += ms,
                    None => stages.push((stage, out.dims(), ms)),
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if chunk > 0 {
            frames += video.dims()[1];
            chunk_ms.push(started.elapsed().as_secs_f64() * 1e3);
        }
    }
    let per_chunk = frames / args.chunks;
    let (gflops, _) = decoder.flops(Extent { t: args.latents, h, w });
    // flops() counts a clip's decode (1 + 4(t − 1) frames); a chunk in the stream makes 4t.
    let gflops = gflops / 1e9 * per_chunk as f64 / (1 + 4 * (args.latents - 1)) as f64;
    let total: f64 = chunk_ms.iter().sum();
    chunk_ms.sort_by(f64::total_cmp);
    let pct = |q: f64| chunk_ms[((chunk_ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{}: {}x{} video, {} latent frames ({per_chunk} frames) a chunk, {} chunks, {} threads",
        args.model.display(),
        spec.width,
        spec.height,
        args.latents,
        args.chunks,
        rayon::current_num_threads()
    );
    println!(
        "per chunk: median {:.1} ms, p90 {:.1} ms; {:.1} frames/s ({:.2}x real time at {} fps); \
         convolutions {gflops:.2} GFLOP a chunk, {:.1} GFLOP/s",
        pct(0.5),
        pct(0.9),
        frames as f64 / total * 1e3,
        frames as f64 / total * 1e3 / spec.fps,
        spec.fps,
        gflops * args.chunks as f64 / total * 1e3
    );
    println!("| stage | output [b, t, c, h, w] | ms a chunk | share |");
    println!("|---|---|---|---|");
    let staged: f64 = stages.iter().map(|(_, _, ms)| ms).sum();
    for (stage, dims, ms) in &stages {
        println!("| {stage} | {dims:?} | {:.2} | {:.1} % |", ms / args.chunks as f64, 100.0 * ms / staged);
    }
    Ok(())
}

/// Tells that `pipeline` samples in its own steps, its guidance built in, when it is distilled.
pub fn say_if_distilled<B: Backend>(pipeline: &Pipeline<B>) {
    if let Some(d) = pipeline.spec.distilled {
        eprintln!(
            "distilled from {} steps: {} steps, one pass each, guidance (text {}, past frames {}) built in",
            d.from_steps, d.steps, d.guidance.text, d.guidance.context
        );
    }
}

/// The text encoder in `dir`, or where it is by default ($ENDLESS_MINILM_DIR, else
/// ~/.cache/endless/minilm).
pub(crate) fn load_text<B: Backend>(dir: &Option<PathBuf>, device: &B::Device) -> Result<TextEncoder<B>> {
    let dir = dir.clone().unwrap_or_else(default_dir);
    TextEncoder::<B>::load(&dir, device).with_context(|| format!("loading the text encoder from {}", dir.display()))
}

/// An extension mode by name; `weight` is the reconstruction-guidance weight of `guided`.
pub fn parse_mode(name: &str, weight: f64) -> Result<ExtendMode> {
    Ok(match name {
        "replacement" => ExtendMode::Replacement,
        "conditioned" => ExtendMode::Conditioned,
        "guided" => ExtendMode::Guided { weight },
        other => bail!("unknown mode {other:?}: replacement, conditioned or guided"),
    })
}

pub fn sample(args: SampleArgs) -> Result<()> {
    if args.out.is_none() && args.contact_sheet.is_none() {
        bail!("nothing to write: give --out clip.mp4 and/or --contact-sheet sheet.png");
    }
    if !(args.seconds > 0.0 && args.seconds <= 86_400.0) {
        bail!("--seconds must be in (0, 86400]");
    }
    let mode = parse_mode(&args.mode, args.guidance_weight)?;
    let settings = SamplerSettings {
        steps: args.steps.max(1),
        eta: args.eta,
        guidance: Guidance { text: args.text_guidance, context: args.context_guidance },
        mode,
        self_conditioning: args.self_conditioning,
    };
    let parallel = parallel_passes(args.device)?;
    on_device!(args.device, sample_on, &args, &settings, parallel)
}

/// Whether a pipeline on `kind` runs the guided passes of a step side by side: on the CPU, as
/// the service does ([`Pipeline::parallel_passes`]; the same values either way).
pub fn parallel_passes(kind: DeviceKind) -> Result<bool> {
    Ok(resolve(kind).map_err(anyhow::Error::msg)? == Resolved::Cpu)
}

fn sample_on<B: Backend>(
    device: &B::Device,
    args: &SampleArgs,
    settings: &SamplerSettings,
    parallel_passes: bool,
) -> Result<()> {
    let started = Instant::now();
    let pipeline = Pipeline::<B>::load(&args.model, !args.no_ema, device)?.with_parallel_passes(parallel_passes);
    say_if_distilled(&pipeline);
    let settings = &pipeline.spec.sampler(*settings);
    let text = load_text::<B>(&args.text, device)?;
    let spec = &pipeline.spec;
    let size = Size { width: spec.width, height: spec.height };
    let wanted = (args.seconds * spec.fps).round().max(1.0) as usize;
    let layout = ContextLayout { frames: args.context, anchors: args.anchors, anchor_every: args.anchor_every }
        .fit(spec.window, spec.anchors);
    let embedding = text.embed(&args.prompt);
    eprintln!("loaded {} in {:.1} s", args.model.display(), started.elapsed().as_secs_f64());

    let started = Instant::now();
    let mut rolling = RollingContext::<B>::new(layout);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut chunk = 0u64;
    let mut decoder = StreamState::default();
    while frames.len() < wanted {
        let request = rolling.request(args.seed, chunk, embedding.clone());
        let new = pipeline.generate(std::slice::from_ref(&request), settings).remove(0);
        let video = pipeline.decode_stream(new.clone().unsqueeze_dim(0), &mut decoder);
        frames.extend(endless_model::data::video_frames(video).remove(0));
        rolling.push(new);
        chunk += 1;
    }
    frames.truncate(wanted);
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} frames ({:.1} s of video) in {chunk} chunks, {seconds:.1} s: {:.2}× real time",
        frames.len(),
        frames.len() as f64 / spec.fps,
        frames.len() as f64 / spec.fps / seconds
    );
    if let Some(path) = &args.contact_sheet {
        let picks: Vec<usize> = (0..12).map(|i| i * (frames.len() - 1) / 11).collect();
        let picked: Vec<Vec<u8>> = picks.iter().map(|&i| frames[i].clone()).collect();
        let (sheet, rgb) = contact_sheet(&picked, size, 4, 4);
        write_png(path, sheet, &rgb).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.out {
        let n = write_mp4(path, size, spec.fps, frames.into_iter())
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} ({n} frames)", path.display());
    }
    Ok(())
}
