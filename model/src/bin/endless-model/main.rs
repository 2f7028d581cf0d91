//! `endless-model`: the model crate's command line — world previews now, training and
//! sampling as they land.

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use endless_model::media::{Size, contact_sheet, write_mp4, write_png};
use endless_model::world::{Attributes, Clip, ClipOptions, ClipSampler, Phrasing, Split, Timeline, World, parse};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[macro_use]
mod generate;
mod eval;

#[derive(Parser)]
#[command(name = "endless-model", version, about = "endless: the world, the models, training")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Renders a clip of the procedural world from a prompt, as MP4 and/or a contact sheet.
    World(WorldArgs),
    /// Renders one frame of each of twelve captions into one PNG (the docs' contact sheet).
    WorldSheet {
        /// Output PNG.
        #[arg(long, default_value = "docs/world-contact-sheet.png")]
        out: PathBuf,
        /// Size of each frame.
        #[arg(long, default_value = "256x144")]
        size: Size,
        /// World seed.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Measures how fast the world renders, single- and multi-threaded; prints a table.
    WorldBench {
        /// Frame sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "128x128,256x256,512x288")]
        sizes: Vec<Size>,
        /// Frames rendered per measurement.
        #[arg(long, default_value_t = 240)]
        frames: usize,
    },
    /// Prints the parameter count and GFLOPs per forward of every VAE and denoiser preset.
    Presets {
        /// Video size the VAE sees (the denoiser sees its latents), WIDTHxHEIGHT.
        #[arg(long, value_delimiter = ',', default_value = "128x128,256x256")]
        sizes: Vec<Size>,
        /// Video frames per clip (1 + 4k).
        #[arg(long, default_value_t = 17)]
        frames: usize,
    },
    /// Encodes prompts with the text encoder (all-MiniLM-L6-v2): token ids, first values, norm
    /// and the cosine similarities between the prompts.
    Embed {
        /// A prompt; repeatable.
        #[arg(long, required = true)]
        prompt: Vec<String>,
        /// Model directory (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measures the text encoder on the CPU: load time, cold and cached latency per prompt.
    TextBench {
        /// Model directory (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Cold encodes of each of the twelve sheet captions.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// How far the text encoder itself carries the held-out words: for every held-out phrase,
    /// the training phrase nearest to it (cosine of all-MiniLM-L6-v2 embeddings) and whether
    /// that names the same attribute value; prints a table.
    TextCeiling {
        /// Model directory (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Writes a copy of the text encoder for the world's captions alone, half the size: f16
    /// weights, and zero rows for every token no caption uses (for the GPU machine's 64 MiB
    /// working tree). Checks it against the encoder on captions of both splits; prints a table.
    PackText {
        /// Model directory (default: $ENDLESS_MINILM_DIR, else ~/.cache/endless/minilm).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where to write vocab.txt, config.json and model.safetensors.
        #[arg(long)]
        out: PathBuf,
        /// Captions (of random attributes and phrasings, both splits) to check it on.
        #[arg(long, default_value_t = 240)]
        check: usize,
    },
    /// Trains the denoiser on latents of a trained VAE (`--vae`); --out becomes a pipeline
    /// folder for `sample` and the service.
    Train(Box<generate::TrainArgs>),
    /// Progressive distillation: trains a student that samples in half its teacher's DDIM steps
    /// (its guidance built in; with --guidance-only in the same steps, one pass each instead of
    /// two), then reports how closely it follows the teacher; --out becomes a pipeline folder,
    /// and the teacher of the next round.
    Distill(Box<generate::DistillArgs>),
    /// Writes a trained pipeline folder as the service ships it: the denoiser's EMA weights (or
    /// its weights without an EMA) and the VAE in f16, and pipeline.json.
    Export {
        /// The training output (a pipeline folder).
        #[arg(long)]
        model: PathBuf,
        /// The folder to write (e.g. models/cpu).
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes a pipeline for another frame size (e.g. the cpu tier for 256², to start the gpu
    /// tier from): the denoiser's position table and relative position biases resampled from
    /// the size it was trained at; f32, so that a run can go on from it (`train --init-from`).
    Resize {
        /// The pipeline folder.
        #[arg(long)]
        model: PathBuf,
        /// The new frame size, WIDTHxHEIGHT.
        #[arg(long)]
        size: Size,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Generates a video from a prompt with a pipeline folder, chunk by chunk as a stream.
    Sample(Box<generate::SampleArgs>),
    /// Measures a pipeline's VAE decoder as the service runs it, one stream decoded chunk by
    /// chunk: time per chunk and per stage; prints a table.
    DecodeBench(generate::DecodeBenchArgs),
    /// Reconstruction PSNR of a VAE checkpoint on held-out clips; JSON and a contact sheet.
    EvalVae(eval::EvalVaeArgs),
    /// Trains the evaluator (a small 3D CNN reading the world's attributes off every frame) and
    /// reports its accuracy on clips of held-out combinations.
    TrainEvaluator(eval::TrainEvaluatorArgs),
    /// A trained evaluator's per-frame accuracy on clips of held-out combinations, with what
    /// it mistakes each value for.
    EvalEvaluator(eval::EvalEvaluatorArgs),
    /// Measures a pipeline on held-out prompts with a trained evaluator: adherence, FWD,
    /// chunk-boundary jump, camera motion, drift per minute, prompt-switch response; one
    /// report per extension mode (the ablation). JSON and PNG plots in --out.
    Eval(Box<eval::EvalArgs>),
    /// The denoiser's v-prediction loss on world clips of test prompts, at fixed log-SNR
    /// levels, from noise with and without the prompt and continuing given frames; the same
    /// clips and noise for every pipeline of a size, so checkpoints compare level by level.
    /// Prints a table; JSON with --json.
    EvalLoss(eval::EvalLossArgs),
    /// Trains the video VAE on the procedural world, on the device chosen with --device:
    /// checkpoints, loss.csv and loss.png in --out.
    TrainVae(Box<TrainVaeArgs>),
}

#[derive(clap::Args)]
struct TrainVaeArgs {
    /// Model preset: cpu, tiny or small.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Frame size, WIDTHxHEIGHT (multiples of 8).
    #[arg(long, default_value = "64x64")]
    size: Size,
    /// Frames per video batch (1 + 4k).
    #[arg(long, default_value_t = 9)]
    frames: usize,
    /// Clips per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// The step to stop at.
    #[arg(long, default_value_t = 1000)]
    steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Steps of linear warm-up.
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// Cosine decay to a tenth of the peak after the warm-up (default: constant).
    #[arg(long)]
    cosine: bool,
    /// Fraction of batches that are single-frame images.
    #[arg(long, default_value_t = 0.25)]
    image_fraction: f64,
    /// Chance that a world clip changes one or two attributes part-way through (within a
    /// short clip such a change is abrupt, as a cut is).
    #[arg(long, default_value_t = 0.3)]
    transition_probability: f64,
    /// A folder of real videos (mp4, mkv, webm, mov…; captions in same-named .txt files):
    /// a second data source. Needs the `gst` feature.
    #[arg(long)]
    videos: Option<PathBuf>,
    /// Fraction of batches drawn from --videos.
    #[arg(long, default_value_t = 0.5)]
    video_fraction: f64,
    /// Decay of the EMA of the weights; 0 turns the EMA off.
    #[arg(long, default_value_t = 0.999)]
    ema: f64,
    /// Output folder.
    #[arg(long, default_value = "runs/vae-tiny")]
    out: PathBuf,
    /// Start from this trained VAE checkpoint (weights and config; --preset is ignored)
    /// instead of a fresh initialisation. A resumed run ignores it.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Fine-tune the decoder alone: the encoder (from --init-from) stays bit for bit, so a
    /// denoiser trained on its latents can take the new decoder.
    #[arg(long)]
    decoder_only: bool,
    /// Widths of the levels, full resolution first, in place of the preset's (each step
    /// between levels halves height and width).
    #[arg(long, value_delimiter = ',')]
    channels: Option<Vec<usize>>,
    /// Channels of the latent, in place of the preset's. With --init-from: grow its latent to
    /// this many, the trained channels kept and the decoder's output unchanged at the start.
    #[arg(long)]
    latent_channels: Option<usize>,
    /// Groups of the group norms, in place of the preset's; 0: no norms.
    #[arg(long)]
    norm_groups: Option<usize>,
    /// Widths of the decoder's levels, full resolution first (default: the encoder's).
    #[arg(long, value_delimiter = ',')]
    decoder_channels: Option<Vec<usize>>,
    /// A decoder without group norms.
    #[arg(long)]
    no_decoder_norm: bool,
    /// With --init-from: keep its encoder and train a new decoder (--decoder-channels,
    /// --no-decoder-norm) from a fresh initialisation.
    #[arg(long)]
    fresh_decoder: bool,
    /// Weight of the motion term of the loss: the L1 error of the frame-to-frame changes
    /// (default: the preset's or --init-from's, 0 unless set).
    #[arg(long)]
    motion_weight: Option<f64>,
    /// Up-sample time in the decoder by depth to time (MAGVIT-v2) instead of by repeating
    /// frames. With --init-from alone, its decoder is grown to it from the output it gives.
    #[arg(long)]
    depth_to_time: bool,
    /// Residual blocks of each decoder level, full resolution first (default: one each).
    /// With --init-from, its decoder grows to them, each new block starting as the identity.
    #[arg(long, value_delimiter = ',')]
    decoder_blocks: Option<Vec<usize>>,
    /// With --decoder-only: decode part of the video batches from latents this pipeline's
    /// denoiser makes of them (noised to a late step of its DDIM grid, denoised from there with
    /// the clip's caption), as a stream's decoder sees them. --frames must be its window's.
    #[arg(long)]
    denoised_by: Option<PathBuf>,
    /// Fraction of the video batches decoded from denoised latents.
    #[arg(long, default_value_t = 0.5)]
    denoised_fraction: f64,
    /// The denoiser's DDIM steps (the service's) and the earliest step a batch starts from:
    /// each starts from one drawn evenly from FIRST..STEPS.
    #[arg(long, value_name = "FIRST..STEPS", default_value = "2..4")]
    denoised_steps: String,
    /// Latent frames given clean as the chunk's context.
    #[arg(long, default_value_t = 2)]
    denoised_context: usize,
    /// The denoiser's text guidance.
    #[arg(long, default_value_t = 8.0)]
    denoised_guidance: f64,
    /// With --decoder-only: an adversarial term, from a patch critic trained beside the decoder
    /// on frames and their changes; its gradient on the reconstruction has this many times the
    /// norm of the L1 term's (off unless set).
    #[arg(long)]
    adversarial_weight: Option<f64>,
    /// Steps at the start in which the critic trains alone, before the decoder gets the term.
    #[arg(long, default_value_t = 100)]
    critic_start: usize,
    /// The critic's learning rate as a multiple of the decoder's.
    #[arg(long, default_value_t = 4.0)]
    critic_lr_scale: f64,
    /// all-MiniLM-L6-v2 folder for --denoised-by (default: $ENDLESS_MINILM_DIR, else
    /// ~/.cache/endless/minilm).
    #[arg(long)]
    text: Option<PathBuf>,
    #[command(flatten)]
    run: generate::RunArgs,
    /// auto, cpu or cuda.
    #[arg(long, default_value = "auto")]
    device: endless_model::device::DeviceKind,
}

#[derive(clap::Args)]
struct WorldArgs {
    /// What to show, in free words: "a snowy night over the mountains, camera drifting left".
    /// Attributes it does not mention take their defaults (day, clear, hills, pan right).
    #[arg(long)]
    prompt: String,
    /// A later prompt, as SECONDS:PROMPT ("6:sunset over the sea"); repeatable. Only the
    /// attributes it mentions change.
    #[arg(long = "then", value_name = "SECONDS:PROMPT")]
    then: Vec<String>,
    /// Length of each transition, in seconds.
    #[arg(long, default_value_t = 2.0)]
    transition: f64,
    /// Clip length in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Frame size, WIDTHxHEIGHT.
    #[arg(long, default_value = "256x256")]
    size: Size,
    /// Frames per second.
    #[arg(long, default_value_t = 12.0)]
    fps: f64,
    /// World seed: the same seed and prompts give the same frames, bit for bit.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// MP4 output (needs the `gst` feature).
    #[arg(long)]
    out: Option<PathBuf>,
    /// PNG contact sheet of 12 frames spread over the clip.
    #[arg(long)]
    contact_sheet: Option<PathBuf>,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::World(args) => world(args),
        Command::WorldSheet { out, size, seed } => world_sheet(&out, size, seed),
        Command::WorldBench { sizes, frames } => {
            world_bench(&sizes, frames);
            Ok(())
        }
        Command::Presets { sizes, frames } => presets(&sizes, frames),
        Command::Embed { prompt, dir } => text_embed(&prompt, dir),
        Command::TextBench { dir, rounds } => text_bench(dir, rounds),
        Command::TextCeiling { dir } => text_ceiling(dir),
        Command::PackText { dir, out, check } => pack_text(dir, &out, check),
        Command::Train(args) => generate::train(*args),
        Command::Distill(args) => generate::distill(*args),
        Command::Sample(args) => generate::sample(*args),
        Command::DecodeBench(args) => generate::decode_bench(args),
        Command::Export { model, out } => export(&model, &out),
        Command::Resize { model, size, out } => resize(&model, size, &out),
        Command::EvalVae(args) => eval::eval_vae(args),
        Command::TrainEvaluator(args) => eval::train_evaluator(args),
        Command::EvalEvaluator(args) => eval::eval_evaluator(args),
        Command::Eval(args) => eval::eval(*args),
        Command::EvalLoss(args) => eval::eval_loss(args),
        Command::TrainVae(args) => {
            let TrainVaeArgs {
                preset,
                size,
                frames,
                batch,
                steps,
                lr,
                warmup,
                cosine,
                image_fraction,
                transition_probability,
                videos,
                video_fraction,
                ema,
                out,
                init_from,
                decoder_only,
                channels,
                latent_channels,
                norm_groups,
                decoder_channels,
                no_decoder_norm,
                fresh_decoder,
                motion_weight,
                depth_to_time,
                decoder_blocks,
                denoised_by,
                denoised_fraction,
                denoised_steps,
                denoised_context,
                denoised_guidance,
                adversarial_weight,
                critic_start,
                critic_lr_scale,
                text,
                run,
                device,
            } = *args;
            use endless_model::train::{LrSchedule, Optimisation, TrainVaeOptions};
            use endless_model::vae::VaeConfig;
            let config = match preset.as_str() {
                "cpu" => VaeConfig::cpu(),
                "tiny" => VaeConfig::tiny(),
                "small" => VaeConfig::small(),
                other => bail!("unknown --preset {other:?}: cpu, tiny or small"),
            };
            if !(0.0..=1.0).contains(&transition_probability) {
                bail!("--transition-probability {transition_probability} is not a probability (0 to 1)");
            }
            if init_from.is_some() && !fresh_decoder && (decoder_channels.is_some() || no_decoder_norm) {
                bail!("--init-from keeps its decoder's shape; add --fresh-decoder to train a new one");
            }
            if init_from.is_some() && (channels.is_some() || norm_groups.is_some()) {
                bail!("--init-from keeps its encoder's shape: --channels and --norm-groups are for fresh runs");
            }
            // A fresh run's latent width, or how far --init-from's latent grows.
            let grow_latent = latent_channels.filter(|_| init_from.is_some());
            let config = VaeConfig {
                channels: channels.unwrap_or(config.channels),
                latent_channels: latent_channels.filter(|_| grow_latent.is_none()).unwrap_or(config.latent_channels),
                norm_groups: norm_groups.unwrap_or(config.norm_groups),
                decoder_channels,
                decoder_norm_groups: no_decoder_norm.then_some(0),
                decoder_blocks,
                ..config
            };
            let denoised = match denoised_by {
                Some(pipeline) => {
                    let (first, steps) = denoised_steps
                        .split_once("..")
                        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                        .with_context(|| {
                            format!("--denoised-steps {denoised_steps:?}: expected FIRST..STEPS, e.g. 2..4")
                        })?;
                    let text = text.unwrap_or_else(endless_model::text::default_dir);
                    Some(endless_model::train::DenoisedLatents {
                        fraction: denoised_fraction,
                        steps,
                        first_step: first,
                        context: denoised_context,
                        guidance: denoised_guidance,
                        ..endless_model::train::DenoisedLatents::new(pipeline, text)
                    })
                }
                None => None,
            };
            let options = TrainVaeOptions {
                width: size.width,
                height: size.height,
                frames,
                batch,
                steps,
                image_fraction,
                transition_probability,
                videos,
                video_fraction,
                seed: run.seed,
                resume: run.resume,
                init_from,
                decoder_only,
                denoised,
                adversarial: adversarial_weight.map(|weight| endless_model::train::Adversarial {
                    weight,
                    critic_start,
                    critic_lr_scale,
                }),
                fresh_decoder,
                motion_weight,
                latent_channels: grow_latent,
                depth_to_time,
                checkpoint_every: run.checkpoint_every,
                log_every: run.log_every,
                time_limit: run.time_limit(),
                ..TrainVaeOptions::new(config, out)
            }
            .with_optim(|o| Optimisation {
                lr,
                warmup,
                schedule: if cosine { LrSchedule::Cosine } else { LrSchedule::Constant },
                ema_decay: (ema > 0.0).then_some(ema),
                ..o
            });
            generate::train_vae(device, &options)
        }
    }
}

fn world(args: WorldArgs) -> Result<()> {
    if args.out.is_none() && args.contact_sheet.is_none() {
        bail!("nothing to write: give --out clip.mp4 and/or --contact-sheet sheet.png");
    }
    if args.fps <= 0.0
        || args.fps > 240.0
        || args.seconds <= 0.0
        || args.seconds > 86_400.0
        || args.fps.is_nan()
        || args.seconds.is_nan()
    {
        bail!("--fps must be in (0, 240] and --seconds in (0, 86400]");
    }
    let first = parse(&args.prompt).over(Attributes::default());
    let mut timeline = Timeline::new(first);
    println!("0.0 s: {first}  ({})", args.prompt);
    for then in &args.then {
        let (at, prompt) = then
            .split_once(':')
            .and_then(|(at, p)| Some((at.trim().parse::<f64>().ok()?, p)))
            .with_context(|| format!("--then {then:?}: expected SECONDS:PROMPT"))?;
        let target = parse(prompt).over(timeline.target());
        println!("{at:.1} s: {target}  ({prompt})");
        timeline.push(at, args.transition, target);
    }
    let clip = Clip {
        world: World::new(args.seed),
        timeline,
        phrasing: Phrasing::sample(Split::Train, args.seed),
        start: 0.0,
        fps: args.fps,
        frames: (args.seconds * args.fps).round().max(1.0) as usize,
        width: args.size.width,
        height: args.size.height,
    };
    if let Some(path) = &args.contact_sheet {
        let picks: Vec<usize> = (0..12).map(|k| k * (clip.frames - 1) / 11).collect();
        let frames: Vec<Vec<u8>> = picks.iter().map(|&i| clip.render_frame(i, true)).collect();
        let (sheet, rgb) = contact_sheet(&frames, args.size, 4, 4);
        write_png(path, sheet, &rgb).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} ({} frames of {})", path.display(), frames.len(), args.size);
    }
    if let Some(path) = &args.out {
        let started = Instant::now();
        let n = write_mp4(path, args.size, args.fps, (0..clip.frames).map(|i| clip.render_frame(i, true)))
            .with_context(|| format!("writing {}", path.display()))?;
        println!(
            "wrote {} ({n} frames, {:.1} s, in {:.1} s)",
            path.display(),
            n as f64 / args.fps,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// Twelve captions that between them show every value of every attribute.
const SHEET_CAPTIONS: [&str; 12] = [
    "rolling hills on a clear day, camera drifting right",
    "a snowy night over the mountains, camera drifting left",
    "sunset over the ocean, static camera",
    "the desert at dawn under a clear sky, slow pan to the right",
    "a forest in thick fog at dawn, panning left",
    "a city skyline at night while it rains, static camera",
    "mountains at sunset with clouds rolling by, panning right",
    "ocean waves at night under the stars, camera drifting left",
    "pine trees while it snows during the day, fixed shot",
    "sand dunes at sunset, hazy, panning left",
    "the city during the day under heavy clouds, panning right",
    "green hills in the evening while it rains, static camera",
];

fn world_sheet(out: &std::path::Path, size: Size, seed: u64) -> Result<()> {
    let frames: Vec<Vec<u8>> = SHEET_CAPTIONS
        .iter()
        .enumerate()
        .map(|(k, caption)| {
            let a = parse(caption).over(Attributes::default());
            let state = Timeline::new(a).state_at(20.0 + 7.0 * k as f64);
            World::new(seed + k as u64).frame(&state, size.width, size.height)
        })
        .collect();
    let (sheet, rgb) = contact_sheet(&frames, size, 4, 4);
    write_png(out, sheet, &rgb).with_context(|| format!("writing {}", out.display()))?;
    println!("wrote {} — row by row:", out.display());
    for (k, c) in SHEET_CAPTIONS.iter().enumerate() {
        println!("{:>2}. {c}  → {}", k + 1, parse(c).over(Attributes::default()));
    }
    Ok(())
}

fn world_bench(sizes: &[Size], frames: usize) {
    let threads = rayon::current_num_threads();
    println!("| size | threads | frames/s | ms/frame |");
    println!("|---|---|---|---|");
    for &size in sizes {
        let o = ClipOptions { width: size.width, height: size.height, fps: 8.0, frames, transition_probability: 0.5 };
        // A mix of every attribute: clips of 8 frames from the training sampler.
        let clips: Vec<Clip> = {
            let mut s = ClipSampler::new(Split::Train, 1);
            (0..frames.div_ceil(8)).map(|_| s.next_clip(&ClipOptions { frames: 8, ..o })).collect()
        };
        let started = Instant::now();
        for clip in &clips {
            std::hint::black_box(clip.render(false));
        }
        let one = clips.len() * 8;
        let single = one as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        {
            use rayon::prelude::*;
            clips.par_iter().for_each(|clip| {
                std::hint::black_box(clip.render(false));
            });
        }
        let multi = one as f64 / started.elapsed().as_secs_f64();
        println!("| {size} | 1 | {single:.0} | {:.2} |", 1000.0 / single);
        println!("| {size} | {threads} | {multi:.0} | {:.2} |", 1000.0 / multi);
    }
}

fn text_embed(prompts: &[String], dir: Option<PathBuf>) -> Result<()> {
    use endless_model::text::{TextEncoder, default_dir};
    let dir = dir.unwrap_or_else(default_dir);
    let encoder = TextEncoder::<burn::backend::Flex>::load(&dir, &Default::default())?;
    let embeddings: Vec<_> = prompts.iter().map(|p| encoder.embed(p)).collect();
    for (k, (p, e)) in prompts.iter().zip(&embeddings).enumerate() {
        let first: Vec<String> = e.pooled()[..8].iter().map(|v| format!("{v:+.5}")).collect();
        let norm = e.pooled().iter().map(|v| v * v).sum::<f32>().sqrt();
        println!("{k}: {p:?}\n   {} tokens {:?}", e.num_tokens(), e.ids());
        println!("   embedding[..8] = [{}], norm {norm:.6}", first.join(", "));
    }
    for i in 0..embeddings.len() {
        for j in i + 1..embeddings.len() {
            println!("cos({i}, {j}) = {:.4}", embeddings[i].similarity(&embeddings[j]));
        }
    }
    Ok(())
}

fn text_ceiling(dir: Option<PathBuf>) -> Result<()> {
    use endless_model::text::{TextEncoder, default_dir};
    use endless_model::world::slot_phrases;
    let dir = dir.unwrap_or_else(default_dir);
    let encoder = TextEncoder::<burn::backend::Flex>::load(&dir, &Default::default())?;
    let phrases = slot_phrases();
    let embeddings: Vec<_> = phrases.iter().map(|p| encoder.embed(p.phrase)).collect();
    println!("| attribute | held-out phrase | means | nearest training phrase | it means | cosine | margin |");
    println!("|---|---|---|---|---|---|---|");
    let mut tally: Vec<(&str, usize, usize)> = Vec::new();
    for (held, e) in phrases.iter().zip(&embeddings).filter(|(p, _)| p.split == Split::HeldOut) {
        let training =
            phrases.iter().zip(&embeddings).filter(|(p, _)| p.split == Split::Train && p.attribute == held.attribute);
        let scored: Vec<(f32, &str, &str)> = training.map(|(p, t)| (e.similarity(t), p.phrase, p.value)).collect();
        let (cos, nearest, means) =
            scored.iter().copied().max_by(|a, b| a.0.total_cmp(&b.0)).context("no training phrase")?;
        // How far the nearest phrase of the right value is behind (0 when it is the nearest).
        let right = scored.iter().filter(|s| s.2 == held.value).map(|s| s.0).fold(f32::MIN, f32::max);
        println!(
            "| {} | {} | {} | {nearest} | {means} | {cos:.3} | {:+.3} |",
            held.attribute,
            held.phrase,
            held.value,
            right - cos
        );
        match tally.iter_mut().find(|t| t.0 == held.attribute) {
            Some(t) => (t.1, t.2) = (t.1 + usize::from(means == held.value), t.2 + 1),
            None => tally.push((held.attribute, usize::from(means == held.value), 1)),
        }
    }
    println!();
    println!("| attribute | held-out phrases nearest to a training phrase of their own value |");
    println!("|---|---|");
    for (attribute, right, total) in tally {
        println!("| {attribute} | {right} of {total} |");
    }
    whole_captions(&encoder);
    Ok(())
}

/// What a linear read-out of the pooled embedding of a whole caption can tell of each
/// attribute, the path by which the denoiser's adaLN sees the prompt: the mean embedding of each
/// value over 600 training captions, and the share of fresh captions, in training words and in
/// held-out words, nearest to their own value's mean. Prints a table.
fn whole_captions(encoder: &endless_model::text::TextEncoder<burn::backend::Flex>) {
    use endless_model::world::{Camera, Scenery, TimeOfDay, Weather};
    let draw = |split: Split, n: u64| {
        let a = drawn_attributes(n, 93);
        let values = [a.time.index(), a.weather.index(), a.scenery.index(), a.camera.index()];
        (values, encoder.embed(&Phrasing::sample(split, n).caption(&a)).pooled().to_vec())
    };
    let counts = [TimeOfDay::COUNT, Weather::COUNT, Scenery::COUNT, Camera::COUNT];
    let training: Vec<_> = (0..600).map(|n| draw(Split::Train, n)).collect();
    let dim = training[0].1.len();
    // means[k][v]: the mean pooled embedding of attribute k's value v.
    let means: Vec<Vec<Vec<f32>>> = (0..4)
        .map(|k| {
            (0..counts[k])
                .map(|v| {
                    let of: Vec<&Vec<f32>> = training.iter().filter(|t| t.0[k] == v).map(|t| &t.1).collect();
                    (0..dim).map(|d| of.iter().map(|e| e[d]).sum::<f32>() / of.len().max(1) as f32).collect()
                })
                .collect()
        })
        .collect();
    let nearest = |k: usize, e: &[f32]| -> usize {
        let distance = |m: &Vec<f32>| m.iter().zip(e).map(|(a, b)| (a - b) * (a - b)).sum::<f32>();
        (0..counts[k]).min_by(|&a, &b| distance(&means[k][a]).total_cmp(&distance(&means[k][b]))).unwrap_or(0)
    };
    println!();
    println!("| whole captions, nearest value mean of the pooled embedding | time | weather | scenery | camera |");
    println!("|---|---|---|---|---|");
    for (words, split) in [("training words", Split::Train), ("held-out words", Split::HeldOut)] {
        let tests: Vec<_> = (10_000..10_300).map(|n| draw(split, n)).collect();
        let share =
            |k: usize| tests.iter().filter(|t| nearest(k, &t.1) == t.0[k]).count() as f64 / tests.len() as f64 * 100.0;
        println!("| {words} (300) | {:.0} % | {:.0} % | {:.0} % | {:.0} % |", share(0), share(1), share(2), share(3));
    }
}

/// Attributes drawn uniformly, each of its own counter-based hash of `(n, stream)`: any
/// combination, of either split.
fn drawn_attributes(n: u64, stream: i64) -> Attributes {
    use endless_model::world::{Camera, Scenery, TimeOfDay, Weather, noise_hash};
    let pick = |k: i64, count: usize| noise_hash(n, k, stream) as usize % count;
    Attributes {
        time: TimeOfDay::from_index(pick(1, TimeOfDay::COUNT)),
        weather: Weather::from_index(pick(2, Weather::COUNT)),
        scenery: Scenery::from_index(pick(3, Scenery::COUNT)),
        camera: Camera::from_index(pick(4, Camera::COUNT)),
    }
}

fn pack_text(dir: Option<PathBuf>, out: &std::path::Path, check: usize) -> Result<()> {
    use endless_model::text::{TextEncoder, default_dir, pack_for_texts};
    use endless_model::world::caption_pieces;
    let dir = dir.unwrap_or_else(default_dir);
    let pieces = caption_pieces();
    let packed = pack_for_texts(&dir, out, &pieces.iter().map(String::as_str).collect::<Vec<_>>())?;
    type B = burn::backend::Flex;
    let device = Default::default();
    let (full, small) = (TextEncoder::<B>::load(&dir, &device)?, TextEncoder::<B>::load(out, &device)?);
    let unk = full.tokenizer().token_id("[UNK]");
    let (mut min_cosine, mut max_diff, mut unseen) = (1.0f32, 0.0f32, 0usize);
    for n in 0..check as u64 {
        let split = if n % 2 == 0 { Split::Train } else { Split::HeldOut };
        let caption = Phrasing::sample(split, n).caption(&drawn_attributes(n, 91));
        unseen += full.tokenizer().encode(&caption).iter().any(|&id| Some(id) == unk) as usize;
        let (a, b) = (full.embed(&caption), small.embed(&caption));
        min_cosine = min_cosine.min(a.similarity(&b));
        let rms = (a.hidden().iter().map(|v| v * v).sum::<f32>() / a.hidden().len() as f32).sqrt();
        let diff = a.hidden().iter().zip(b.hidden()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
        max_diff = max_diff.max(diff / rms);
    }
    println!(
        "| packed encoder | tokens kept | model.safetensors | captions checked | pooled cosine (min) | token states, max error ÷ RMS |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} of {} | {:.1} MB | {check} ({unseen} with [UNK]) | {min_cosine:.6} | {max_diff:.4} |",
        out.display(),
        packed.tokens_kept,
        packed.vocab_size,
        packed.bytes as f64 / 1e6
    );
    if min_cosine < 0.9999 {
        bail!("the packed encoder departs from the model on a caption (cosine {min_cosine})");
    }
    Ok(())
}

fn text_bench(dir: Option<PathBuf>, rounds: usize) -> Result<()> {
    use endless_model::text::{TextEncoder, default_dir};
    let dir = dir.unwrap_or_else(default_dir);
    let started = Instant::now();
    let encoder = TextEncoder::<burn::backend::Flex>::load(&dir, &Default::default())?.with_cache_capacity(0);
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let ms = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64() * 1e3
    };
    let tokens: Vec<usize> = SHEET_CAPTIONS.iter().map(|c| encoder.tokenizer().encode(c).len()).collect();
    encoder.embed(SHEET_CAPTIONS[0]); // warm-up
    let mut cold: Vec<f64> = (0..rounds.max(1))
        .flat_map(|_| SHEET_CAPTIONS.map(|c| ms(&mut || drop(std::hint::black_box(encoder.embed(c))))))
        .collect();
    cold.sort_by(f64::total_cmp);
    let long = SHEET_CAPTIONS.join(" then ").repeat(2);
    let long_ms = ms(&mut || drop(encoder.embed(&long)));
    let batch_ms = ms(&mut || drop(encoder.encode(&SHEET_CAPTIONS).pooled.into_data()));
    let encoder = encoder.with_cache_capacity(64);
    for c in SHEET_CAPTIONS {
        encoder.embed(c);
    }
    let calls = 100_000;
    let cached_ms = ms(&mut || {
        for i in 0..calls {
            std::hint::black_box(encoder.embed(SHEET_CAPTIONS[i % SHEET_CAPTIONS.len()]));
        }
    });
    println!(
        "all-MiniLM-L6-v2 on the CPU (burn Flex, {} threads), loaded in {load_ms:.0} ms",
        rayon::current_num_threads()
    );
    println!("| what | tokens | latency |");
    println!("|---|---|---|");
    let (lo, hi) = (tokens.iter().min().unwrap_or(&0), tokens.iter().max().unwrap_or(&0));
    let pct = |q: f64| cold[((cold.len() - 1) as f64 * q).round() as usize];
    println!(
        "| one caption, cold (median of {}) | {lo}–{hi} | {:.2} ms (p90 {:.2} ms) |",
        cold.len(),
        pct(0.5),
        pct(0.9)
    );
    println!("| one long prompt, cold | {} | {long_ms:.1} ms |", encoder.tokenizer().encode(&long).len());
    println!("| twelve captions in one batch | {hi} padded | {batch_ms:.1} ms ({:.2} ms each) |", batch_ms / 12.0);
    println!("| one caption, cached | {lo}–{hi} | {:.0} ns |", cached_ms * 1e6 / calls as f64);
    Ok(())
}

fn presets(sizes: &[Size], frames: usize) -> Result<()> {
    use endless_model::dit::DenoiserConfig;
    use endless_model::vae::VaeConfig;
    let device = Default::default();
    let vaes = [("cpu", VaeConfig::cpu()), ("tiny", VaeConfig::tiny()), ("small", VaeConfig::small())];
    let dits = [
        ("tiny", DenoiserConfig::tiny()),
        ("medium", DenoiserConfig::medium()),
        ("small", DenoiserConfig::small()),
        ("base", DenoiserConfig::base()),
    ];
    if frames == 0 || !(frames - 1).is_multiple_of(4) {
        bail!("--frames must be 1 + 4k");
    }
    println!("| model | preset | video | latent | params | GFLOPs per forward |");
    println!("|---|---|---|---|---|---|");
    for size in sizes {
        for (name, config) in &vaes {
            let cost = config.init::<burn::backend::Flex>(&device).cost(frames, size.height, size.width);
            println!(
                "| VAE | {name} | {frames}×{size} | {}×{}×{} | {:.2} M | encode {:.1}, decode {:.1} |",
                cost.latent.t,
                cost.latent.h,
                cost.latent.w,
                (cost.encoder_params + cost.decoder_params) as f64 / 1e6,
                cost.encode_gflops,
                cost.decode_gflops
            );
        }
        let latent = (1 + (frames - 1) / 4, size.height / 8, size.width / 8);
        for (name, config) in &dits {
            if latent.1 > config.max_latent_size || latent.2 > config.max_latent_size {
                continue;
            }
            println!(
                "| denoiser | {name} | {frames}×{size} | {}×{}×{} | {:.2} M | {:.2} (16 text tokens) |",
                latent.0,
                latent.1,
                latent.2,
                config.num_params() as f64 / 1e6,
                config.gflops(latent.0, latent.1, latent.2, 16)
            );
        }
    }
    let s2 = DenoiserConfig::dit_s2();
    println!(
        "| DiT-S/2 (reference) | – | image | 1×32×32 | {:.2} M | {:.2} |",
        s2.num_params() as f64 / 1e6,
        s2.gflops(1, 32, 32, 0)
    );
    Ok(())
}

fn export(model: &std::path::Path, out: &std::path::Path) -> Result<()> {
    type B = burn::backend::Flex;
    let device = Default::default();
    let pipeline = endless_model::pipeline::Pipeline::<B>::load(model, true, &device)?;
    pipeline.export(model, out, endless_model::checkpoint::Precision::F16)?;
    let bytes: u64 = std::fs::read_dir(out)?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
    println!("wrote {} ({:.1} MB)", out.display(), bytes as f64 / 1e6);
    Ok(())
}

fn resize(model: &std::path::Path, size: Size, out: &std::path::Path) -> Result<()> {
    type B = burn::backend::Flex;
    let device = Default::default();
    let pipeline = endless_model::pipeline::Pipeline::<B>::load(model, true, &device)?;
    let from = (pipeline.spec.width, pipeline.spec.height);
    let pipeline = pipeline.resized(size.width, size.height)?;
    pipeline.export(model, out, endless_model::checkpoint::Precision::F32)?;
    println!("wrote {}: {}x{} from {}x{}", out.display(), size.width, size.height, from.0, from.1);
    Ok(())
}
