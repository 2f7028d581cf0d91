//! `endless-model eval-vae`, `train-evaluator` and `eval`: measuring the models.

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use endless_model::checkpoint;
use endless_model::device::{DeviceKind, Resolved, resolve};
use endless_model::eval::evaluate_vae;
use endless_model::media::{Size, write_png};
use endless_model::vae::{Vae, VaeConfig};
use endless_model::world::ClipOptions;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct EvalVaeArgs {
    /// A VAE checkpoint (`vae.safetensors` with its JSON), or a pipeline folder.
    #[arg(long)]
    vae: PathBuf,
    /// Frame size, WIDTHxHEIGHT.
    #[arg(long, default_value = "128x128")]
    size: Size,
    /// Frames per clip (1 + 4k).
    #[arg(long, default_value_t = 17)]
    frames: usize,
    /// Held-out clips to reconstruct.
    #[arg(long, default_value_t = 32)]
    clips: usize,
    /// Clips per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Seed of the held-out clips.
    #[arg(long, default_value_t = 1000)]
    seed: u64,
    /// JSON report (also printed).
    #[arg(long)]
    json: Option<PathBuf>,
    /// PNG: the first clip's frames over their reconstructions.
    #[arg(long)]
    sheet: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

/// The VAE checkpoint a path names: a file, or `vae.safetensors` in a folder.
fn vae_path(path: &Path) -> PathBuf {
    if path.is_dir() { path.join("vae.safetensors") } else { path.to_path_buf() }
}

fn load_vae<B: Backend>(path: &Path, device: &B::Device) -> Result<Vae<B>> {
    let config: VaeConfig = checkpoint::read_config(path)?;
    checkpoint::load(config.init(device), path, device).with_context(|| format!("loading {}", path.display()))
}

pub fn eval_vae(args: EvalVaeArgs) -> Result<()> {
    on_device!(args.device, eval_vae_on, &args)
}

fn eval_vae_on<B: Backend>(device: &B::Device, args: &EvalVaeArgs) -> Result<()> {
    let path = vae_path(&args.vae);
    let vae = load_vae::<B>(&path, device)?;
    let options =
        ClipOptions { width: args.size.width, height: args.size.height, frames: args.frames, ..ClipOptions::default() };
    let (report, (sheet_size, sheet)) = evaluate_vae(&vae, &options, args.clips, args.batch.max(1), args.seed, device);
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    println!(
        "{}: PSNR {:.2} dB mean, {:.2} dB worst clip, over {} held-out clips of {} frames at {}",
        path.display(),
        report.psnr_mean,
        report.psnr_min,
        report.clips,
        report.frames_per_clip,
        args.size
    );
    if let Some(p) = &args.json {
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.sheet {
        write_png(p, sheet_size, &sheet)?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct TrainEvaluatorArgs {
    /// Clip size: that of the videos it will judge (a multiple of 64).
    #[arg(long, default_value = "128x128")]
    size: Size,
    /// Frames per training clip.
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Frames per second of the clips (and of the videos it will judge).
    #[arg(long, default_value_t = 8.0)]
    fps: f64,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    /// Peak learning rate (cosine decay after 50 warm-up steps).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Held-out clips for the accuracy report.
    #[arg(long, default_value_t = 256)]
    eval_clips: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value = "runs/evaluator")]
    out: PathBuf,
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

pub fn train_evaluator(args: TrainEvaluatorArgs) -> Result<()> {
    on_device!(args.device, train_evaluator_on, autodiff, &args)
}

fn train_evaluator_on<B: burn::tensor::backend::AutodiffBackend>(
    device: &B::Device,
    args: &TrainEvaluatorArgs,
) -> Result<()> {
    use endless_model::eval::EvaluatorConfig;
    use endless_model::train::{TrainEvaluatorOptions, train_evaluator};
    let options = TrainEvaluatorOptions {
        width: args.size.width,
        height: args.size.height,
        frames: args.frames,
        batch: args.batch,
        steps: args.steps,
        eval_clips: args.eval_clips,
        seed: args.seed,
        ..TrainEvaluatorOptions::new(EvaluatorConfig::new().with_fps(args.fps), &args.out)
    };
    let options =
        TrainEvaluatorOptions { optim: endless_model::train::Optimisation { lr: args.lr, ..options.optim }, ..options };
    let report = train_evaluator::<B>(&options, device)?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    println!(
        "held-out accuracy (worst attribute) {:.2} % over {} frames of {} clips; written to {}",
        100.0 * report.worst,
        report.frames,
        report.clips,
        args.out.display()
    );
    Ok(())
}
