//! `endless-model eval-vae`, `train-evaluator` and `eval`: measuring the models.

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use endless_model::checkpoint;
use endless_model::device::{DeviceKind, Resolved, resolve};
use endless_model::eval::evaluate_vae;
use endless_model::media::{Size, write_png};
use endless_model::pipeline::SelfConditioning;
use endless_model::vae::{Vae, VaeConfig};
use endless_model::world::{ClipOptions, Split};
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
    let by_weather: Vec<String> =
        report.psnr_by_weather.iter().map(|(w, p, n)| format!("{w} {p:.2} dB ({n})")).collect();
    println!("by weather: {}", by_weather.join(", "));
    println!(
        "camera read off the pixels: the same in {:.0} % of reconstructions, speed off by {:.3} screen heights/s",
        100.0 * report.camera_agreement,
        report.camera_speed_error
    );
    println!(
        "the pan (least squares, clips that pan throughout): {:.0} % of it in the clips, {:.0} % in the latent, {:.0} % in the reconstruction",
        100.0 * report.pan_in_clips,
        100.0 * report.pan_in_latent,
        100.0 * report.pan_in_reconstruction
    );
    println!(
        "seams at latent-frame boundaries: the reconstructions jump {:.2}× (the clips {:.2}×)",
        report.latent_jump, report.latent_jump_real
    );
    if let Some(p) = &args.json {
        std::fs::write(p, json).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &args.sheet {
        write_png(p, sheet_size, &sheet)?;
    }
    Ok(())
}

/// The clips an evaluator trains on and is scored on.
#[derive(clap::Args)]
pub struct EvaluatorClips {
    /// Clip size: that of the videos it will judge (a multiple of 64).
    #[arg(long, default_value = "128x128")]
    size: Size,
    /// Frames per clip.
    #[arg(long, default_value_t = 16)]
    frames: usize,
    /// Frames per second of the clips (and of the videos it will judge).
    #[arg(long, default_value_t = 8.0)]
    fps: f64,
}

#[derive(clap::Args)]
pub struct TrainEvaluatorArgs {
    #[command(flatten)]
    clips: EvaluatorClips,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 1500)]
    steps: usize,
    /// Peak learning rate (cosine decay after 50 warm-up steps).
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Frames are pooled to this square size before the CNN.
    #[arg(long, default_value_t = 64)]
    input_size: usize,
    /// Widths of the CNN's stride-2 convolutions.
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,96")]
    channels: Vec<usize>,
    /// Train on the training split's combinations only (by default every combination, the
    /// generator's held-out ones included: the evaluator must read those right).
    #[arg(long)]
    training_combinations_only: bool,
    /// Held-out clips for the accuracy report.
    #[arg(long, default_value_t = 256)]
    eval_clips: usize,
    /// Lucas–Kanade iterations of the camera's own head, which reads each band's motion into
    /// the frame and out of it (one frame ahead); 0: no such head, the shared head reads the
    /// camera causally, as it did up to v5, whose command this keeps. Default: 3 with
    /// --camera-head-on, else 0.
    #[arg(long)]
    camera_motion_iterations: Option<usize>,
    /// Train only the camera's own head onto this trained evaluator (a folder or file),
    /// keeping the rest of it, and so its features and FWD, as they are.
    #[arg(long)]
    camera_head_on: Option<PathBuf>,
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
        width: args.clips.size.width,
        height: args.clips.size.height,
        frames: args.clips.frames,
        batch: args.batch,
        steps: args.steps,
        eval_clips: args.eval_clips,
        all_combinations: !args.training_combinations_only,
        seed: args.seed,
        camera_head_on: args.camera_head_on.clone(),
        ..TrainEvaluatorOptions::new(
            EvaluatorConfig::new()
                .with_fps(args.clips.fps)
                .with_input_size(args.input_size)
                .with_channels(args.channels.clone())
                .with_camera_motion_iterations(
                    Some(args.camera_motion_iterations.unwrap_or(if args.camera_head_on.is_some() { 3 } else { 0 }))
                        .filter(|&n| n > 0),
                ),
            &args.out,
        )
    };
    let options =
        TrainEvaluatorOptions { optim: endless_model::train::Optimisation { lr: args.lr, ..options.optim }, ..options };
    let report = train_evaluator::<B>(&options, device)?;
    print_accuracy(&report);
    println!("written to {}", args.out.display());
    Ok(())
}

/// The accuracy table and each attribute's most frequent mistakes.
fn print_accuracy(report: &endless_model::train::AccuracyReport) {
    println!("| attribute | accuracy | steady clips | most frequent mistakes (truth → read: frames) |");
    println!("|---|---|---|---|");
    for ((name, all), (confusion, (_, steady))) in
        report.accuracy.iter().zip(report.confusion.iter().zip(&report.accuracy_steady))
    {
        let mistakes: Vec<String> =
            confusion.mistakes().iter().take(4).map(|(t, r, n)| format!("{t} → {r}: {n}")).collect();
        println!("| {name} | {:.1} % | {:.1} % | {} |", 100.0 * all, 100.0 * steady, mistakes.join(", "));
    }
    println!(
        "held-out accuracy (worst attribute) {:.2} % over {} frames of {} clips",
        100.0 * report.worst,
        report.frames,
        report.clips
    );
}

#[derive(clap::Args)]
pub struct EvalEvaluatorArgs {
    /// The evaluator's folder (what `train-evaluator` writes); the repository ships one.
    #[arg(long, default_value = "models/evaluator")]
    evaluator: PathBuf,
    /// The clips, as trained.
    #[command(flatten)]
    clip: EvaluatorClips,
    /// Held-out clips, half of them with a transition.
    #[arg(long, default_value_t = 256)]
    clips: usize,
    /// Seed of the held-out clips (`train-evaluator` reports on seed + 1000000).
    #[arg(long, default_value_t = 1_000_001)]
    seed: u64,
    /// JSON report, confusion matrices included.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

pub fn eval_evaluator(args: EvalEvaluatorArgs) -> Result<()> {
    on_device!(args.device, eval_evaluator_on, &args)
}

fn eval_evaluator_on<B: Backend>(device: &B::Device, args: &EvalEvaluatorArgs) -> Result<()> {
    use endless_model::train::{accuracy, load_evaluator};
    let evaluator = load_evaluator::<B>(&args.evaluator, device)?;
    let options = ClipOptions {
        width: args.clip.size.width,
        height: args.clip.size.height,
        fps: args.clip.fps,
        frames: args.clip.frames,
        transition_probability: 0.5,
    };
    let report = accuracy(&evaluator, &options, Split::HeldOut, args.clips, args.seed, device);
    print_accuracy(&report);
    if let Some(json) = &args.json {
        std::fs::write(json, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A pipeline folder.
    #[arg(long)]
    model: PathBuf,
    /// The evaluator's folder (what `train-evaluator` writes); the repository ships one.
    #[arg(long, default_value = "models/evaluator")]
    evaluator: PathBuf,
    /// Held-out prompts, one clip each.
    #[arg(long, default_value_t = 12)]
    cases: usize,
    /// Length of each clip.
    #[arg(long, default_value_t = 4.0)]
    clip_seconds: f64,
    /// Whose combinations of attributes: "held-out" (the measure) or "train" (what training
    /// draws: how well the model fits what it saw).
    #[arg(long, default_value = "held-out", value_parser = parse_split)]
    split: Split,
    /// The words of the prompts: "held-out" or "train" (default: --split's).
    #[arg(long, value_parser = parse_split)]
    phrasing: Option<Split>,
    /// Also continue world clips: each case's stream starts from the latents of a world clip of
    /// its attributes, and what it makes after them is measured (a row of its own).
    #[arg(long)]
    continued: bool,
    /// Start every generated clip from a still image the denoiser makes for its prompt (one
    /// latent frame), continued as a video's first frame, instead of from a window of noise.
    #[arg(long)]
    image_first: bool,
    /// Length of the one continuous stream measured minute by minute (0: none).
    #[arg(long, default_value_t = 1.0)]
    drift_minutes: f64,
    /// Prompt switches measured.
    #[arg(long, default_value_t = 4)]
    switch_cases: usize,
    /// Extension modes to compare on the same prompts and seeds (the ablation).
    #[arg(long, value_delimiter = ',', default_value = "conditioned")]
    modes: Vec<String>,
    /// DDIM steps per chunk.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// DDIM η (0: deterministic; 1: as stochastic as ancestral sampling).
    #[arg(long, default_value_t = 0.0)]
    eta: f64,
    #[arg(long, default_value_t = 8.0)]
    text_guidance: f64,
    #[arg(long, default_value_t = 1.0)]
    context_guidance: f64,
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
    /// Streams generated per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
    /// all-MiniLM-L6-v2 folder (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Output folder: report-<mode>.json, summary.json, drift-*.png.
    #[arg(long, default_value = "runs/eval")]
    out: PathBuf,
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let parallel = crate::generate::parallel_passes(args.device)?;
    on_device!(args.device, eval_on, &args, parallel)
}

fn eval_on<B: Backend>(device: &B::Device, args: &EvalArgs, parallel_passes: bool) -> Result<()> {
    use endless_model::diffusion::Guidance;
    use endless_model::eval::{GenerationEvalOptions, GenerationReport, evaluate_generation};
    use endless_model::pipeline::{Pipeline, SamplerSettings};
    use endless_model::rolling::ContextLayout;
    use endless_model::train::{load_evaluator, write_series_plot};
    let pipeline = Pipeline::<B>::load(&args.model, !args.no_ema, device)?.with_parallel_passes(parallel_passes);
    crate::generate::say_if_distilled(&pipeline);
    let evaluator = load_evaluator::<B>(&args.evaluator, device)?;
    let text = crate::generate::load_text::<B>(&args.text, device)?;
    std::fs::create_dir_all(&args.out)?;
    let mut reports: Vec<(String, GenerationReport)> = Vec::new();
    for name in &args.modes {
        let mode = crate::generate::parse_mode(name, args.guidance_weight)?;
        let options = GenerationEvalOptions {
            cases: args.cases,
            clip_seconds: args.clip_seconds,
            settings: pipeline.spec.sampler(SamplerSettings {
                steps: args.steps.max(1),
                eta: args.eta,
                guidance: Guidance { text: args.text_guidance, context: args.context_guidance },
                mode,
                self_conditioning: args.self_conditioning,
            }),
            layout: ContextLayout { frames: args.context, anchors: args.anchors, anchor_every: args.anchor_every },
            drift_minutes: args.drift_minutes,
            switch_cases: args.switch_cases,
            switch_at: 3.0,
            switch_after: 6.0,
            batch: args.batch,
            seed: args.seed,
            split: args.split,
            phrasing: args.phrasing.unwrap_or(args.split),
            continued: args.continued,
            image_first: args.image_first,
        };
        eprintln!("measuring mode {name}…");
        let report = evaluate_generation(&pipeline, &evaluator, &|p: &str| text.embed(p), &options, device);
        let path = args.out.join(format!("report-{name}.json"));
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
        eprintln!("wrote {}", path.display());
        reports.push((name.clone(), report));
    }
    println!(
        "| mode | adherence (VAE ceiling) | FWD (real vs real; VAE) | boundary jump (real) | camera direction | camera speed error | pan share (real; VAE) | switch s | drift: adherence, FWD change | × real time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in &reports {
        let change = |k: &str| {
            r.drift_change.iter().find(|(n, _)| n == k).map_or("–".into(), |(_, v)| format!("{:+.0} %", 100.0 * v))
        };
        println!(
            "| {name} | {:.1} % ({:.1} %) | {:.2} ({:.2}; {:.2}) | {:.2} ({:.2}) | {:.0} % | {:.3} | {:.0} % ({:.0} %; {:.0} %) | {} | {}, {} | {:.2} |",
            100.0 * r.generated.adherence_mean,
            100.0 * r.reconstructed.adherence_mean,
            r.fwd,
            r.fwd_real_vs_real,
            r.fwd_reconstructed,
            r.generated.boundary_jump,
            r.real.boundary_jump,
            100.0 * r.generated.camera_direction,
            r.generated.camera_speed_error,
            100.0 * r.generated.pan_share,
            100.0 * r.real.pan_share,
            100.0 * r.reconstructed.pan_share,
            r.switch_seconds_mean.map_or("none".into(), |s| format!("{s:.2}")),
            change("adherence"),
            change("fwd"),
            r.realtime_factor
        );
    }
    for (name, r) in &reports {
        for (set, metrics) in [("generated", &r.generated), ("through the VAE", &r.reconstructed)] {
            let misses: Vec<String> = metrics
                .confusion
                .iter()
                .filter_map(|c| {
                    let top: Vec<String> =
                        c.mistakes().iter().take(3).map(|(want, read, n)| format!("{want} → {read} {n}")).collect();
                    (!top.is_empty()).then(|| format!("{}: {}", c.attribute, top.join(", ")))
                })
                .collect();
            println!(
                "{name}, {set}, most frequent misreadings (wanted → read, frames; camera: clips): {}",
                misses.join("; ")
            );
        }
    }
    for (name, r) in &reports {
        if let Some(c) = &r.continued {
            let per: Vec<String> = c.adherence.iter().map(|(_, a)| format!("{:.0}", 100.0 * a)).collect();
            println!(
                "{name}, continuing world clips: adherence {:.1} % ({}), boundary jump {:.2}, pan share {:.0} %",
                100.0 * c.adherence_mean,
                per.join(" / "),
                c.boundary_jump,
                100.0 * c.pan_share
            );
        }
    }
    let colours = [[20, 60, 160], [220, 110, 20], [30, 150, 60], [160, 30, 140]];
    let plot = |file: &str, f: &dyn Fn(&endless_model::eval::generation::MinuteMetrics) -> f64| -> Result<()> {
        let series: Vec<endless_model::train::Series> = reports
            .iter()
            .enumerate()
            .map(|(i, (_, r))| (colours[i % colours.len()], r.drift.iter().map(|m| (m.minute as f64, f(m))).collect()))
            .collect();
        write_series_plot(&series, &args.out.join(file), 480, 240)
    };
    plot("drift-adherence.png", &|m| m.metrics.adherence_mean)?;
    plot("drift-fwd.png", &|m| m.fwd)?;
    plot("drift-boundary-jump.png", &|m| m.metrics.boundary_jump)?;
    let summary: Vec<serde_json::Value> = reports
        .iter()
        .enumerate()
        .map(|(i, (name, r))| {
            serde_json::json!({
                "mode": name, "plot_colour": colours[i % colours.len()],
                "adherence": r.generated.adherence_mean, "fwd": r.fwd, "fwd_real_vs_real": r.fwd_real_vs_real,
                "adherence_reconstructed": r.reconstructed.adherence, "fwd_reconstructed": r.fwd_reconstructed,
                "boundary_jump": r.generated.boundary_jump, "boundary_jump_real": r.real.boundary_jump,
                "camera_direction": r.generated.camera_direction, "camera_speed_error": r.generated.camera_speed_error,
                "pan_share": r.generated.pan_share, "pan_share_real": r.real.pan_share,
                "pan_share_reconstructed": r.reconstructed.pan_share,
                "switch_seconds_mean": r.switch_seconds_mean, "drift_change": r.drift_change,
                "realtime_factor": r.realtime_factor,
            })
        })
        .collect();
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("wrote {}", args.out.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalLossArgs {
    /// A pipeline folder; repeatable, to compare pipelines of one size on the same clips.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Test prompts, one world clip of a window's length each.
    #[arg(long, default_value_t = 24)]
    cases: usize,
    /// Whose combinations of attributes: "held-out" or "train".
    #[arg(long, default_value = "held-out", value_parser = parse_split)]
    split: Split,
    /// The words of the prompts: "held-out" or "train" (default: --split's).
    #[arg(long, value_parser = parse_split)]
    phrasing: Option<Split>,
    /// log SNR of each level.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true, default_values_t = endless_model::eval::loss::DEFAULT_LEVELS)]
    levels: Vec<f64>,
    /// Clips per forward pass.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use the raw weights instead of the EMA.
    #[arg(long)]
    no_ema: bool,
    /// all-MiniLM-L6-v2 folder (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
    #[arg(long)]
    text: Option<PathBuf>,
    /// JSON: each pipeline's report.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long, default_value = "auto")]
    device: DeviceKind,
}

pub fn eval_loss(args: EvalLossArgs) -> Result<()> {
    on_device!(args.device, eval_loss_on, &args)
}

fn eval_loss_on<B: Backend>(device: &B::Device, args: &EvalLossArgs) -> Result<()> {
    use endless_model::eval::{LossEvalOptions, evaluate_loss};
    use endless_model::pipeline::Pipeline;
    let text = crate::generate::load_text::<B>(&args.text, device)?;
    let o = LossEvalOptions {
        cases: args.cases,
        split: args.split,
        phrasing: args.phrasing.unwrap_or(args.split),
        levels: args.levels.clone(),
        batch: args.batch,
        seed: args.seed,
    };
    let mut reports = Vec::new();
    for model in &args.model {
        let pipeline = Pipeline::<B>::load(model, !args.no_ema, device)?;
        let started = std::time::Instant::now();
        let report = evaluate_loss(&pipeline, &text, &o, device);
        eprintln!("{}: {:.1} s", model.display(), started.elapsed().as_secs_f64());
        reports.push((model.display().to_string(), report));
    }
    let Some((_, first)) = reports.first() else { return Ok(()) };
    println!(
        "v-prediction MSE on {} world clips of {} latent frames ({} combinations, {} words, seed {}); \
         continued: {} frames given",
        first.clips,
        first.latent_frames,
        split_name(o.split),
        split_name(o.phrasing),
        o.seed,
        endless_model::eval::loss::CONTINUED_GIVEN
    );
    let mut header = String::from("| log SNR |");
    let mut rule = String::from("|---|");
    for (name, _) in &reports {
        header += &format!(" {name}: text / self-conditioned / no text / continued |");
        rule += "---|";
    }
    println!("{header}\n{rule}");
    for (k, lambda) in o.levels.iter().enumerate() {
        let cells: Vec<String> = reports
            .iter()
            .map(|(_, r)| {
                format!(
                    " {:.4} / {:.4} / {:.4} / {:.4} |",
                    r.text[k], r.self_conditioned[k], r.no_text[k], r.continued[k]
                )
            })
            .collect();
        println!("| {lambda} |{}", cells.concat());
    }
    let means: Vec<String> = reports
        .iter()
        .map(|(_, r)| {
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            format!(
                " {:.4} / {:.4} / {:.4} / {:.4} |",
                mean(&r.text),
                mean(&r.self_conditioned),
                mean(&r.no_text),
                mean(&r.continued)
            )
        })
        .collect();
    println!("| mean |{}", means.concat());
    if let Some(p) = &args.json {
        let json: serde_json::Map<String, serde_json::Value> =
            reports.iter().map(|(name, r)| Ok((name.clone(), serde_json::to_value(r)?))).collect::<Result<_>>()?;
        std::fs::write(p, serde_json::to_string_pretty(&json)?).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

fn split_name(s: Split) -> &'static str {
    match s {
        Split::HeldOut => "held-out",
        Split::Train => "train",
    }
}

fn parse_split(s: &str) -> Result<Split, String> {
    match s {
        "held-out" => Ok(Split::HeldOut),
        "train" => Ok(Split::Train),
        _ => Err(format!("{s:?} is not a split: held-out or train")),
    }
}
