//! Training the VAE: a few steps lower the loss, and a resumed run equals a straight one.
//!
//! In their own test binary because burn's random number generator is global to the
//! backend: tests elsewhere in the library drawing from it in parallel would make the
//! resume comparison flaky. The two tests here take turns.

use burn::backend::{Autodiff, Flex};
use endless_model::checkpoint;
use endless_model::train::{Optimisation, TrainVaeOptions, read_loss_csv, train_vae};
use endless_model::vae::VaeConfig;
use std::path::PathBuf;
use std::sync::Mutex;

mod common;
use common::max_weight_diff;

type B = Autodiff<Flex>;

/// burn's RNG is global to the backend: the tests that train take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("endless-train-vae-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    d
}

fn options(out: PathBuf) -> TrainVaeOptions {
    TrainVaeOptions {
        width: 32,
        height: 32,
        frames: 5,
        batch: 2,
        log_every: 0,
        checkpoint_every: 0,
        image_fraction: 0.5,
        ..TrainVaeOptions::new(VaeConfig::tiny(), out)
    }
    .with_optim(|o| Optimisation { warmup: 0, lr: 2e-3, ema_decay: Some(0.9), ..o })
}

#[test]
fn a_time_limit_stops_early_with_a_checkpoint() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = dir("limit");
    let o = TrainVaeOptions { steps: 1000, time_limit: Some(std::time::Duration::ZERO), ..options(out.clone()) };
    let summary = train_vae::<B>(&o, &Default::default()).unwrap();
    assert_eq!((summary.start_step, summary.end_step), (0, 1), "one step, then the limit");
    assert_eq!(checkpoint::read_info(&out.join("vae.safetensors")).unwrap().meta["step"], 1);
    let resumed = train_vae::<B>(&TrainVaeOptions { steps: 3, resume: true, ..o }, &Default::default()).unwrap();
    assert_eq!((resumed.start_step, resumed.end_step), (1, 2), "a resumed leg continues, one step again");
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn train_a_few_steps_lower_the_loss() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = dir("lower");
    // The options' lr (2e-3): at 5e-3 this tiny run was on the edge of diverging, and a change
    // of summation order in the convolutions made it spike (loss 4.3 at step 51).
    let o = TrainVaeOptions { steps: 60, ..options(out.clone()) };
    let summary = train_vae::<B>(&o, &Default::default()).unwrap();
    let losses: Vec<f64> = summary.rows.iter().map(|r| r.loss).collect();
    assert_eq!(losses.len(), 60);
    // Every step draws new clips, half of them images: means over 20 steps.
    let first = losses[..20].iter().sum::<f64>() / 20.0;
    let last = losses[40..].iter().sum::<f64>() / 20.0;
    assert!(last < 0.85 * first, "loss {first:.4} → {last:.4}");
    for f in ["vae.safetensors", "vae.json", "vae-ema.safetensors", "optim.bin", "loss.csv", "loss.png"] {
        assert!(out.join(f).exists(), "{f} written");
    }
    assert_eq!(checkpoint::read_info(&out.join("vae.safetensors")).unwrap().meta["samples_seen"], 120);
    std::fs::remove_dir_all(&out).ok();
}

#[test]
fn train_resume_gives_the_weights_of_a_straight_run() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let straight = dir("straight");
    let o = TrainVaeOptions { steps: 6, ..options(straight.clone()) };
    let a = train_vae::<B>(&o, &device).unwrap();
    let split = dir("split");
    let o = TrainVaeOptions { steps: 3, ..options(split.clone()) };
    train_vae::<B>(&o, &device).unwrap();
    let o = TrainVaeOptions { steps: 6, resume: true, ..options(split.clone()) };
    let b = train_vae::<B>(&o, &device).unwrap();
    assert_eq!(b.start_step, 3);
    assert_eq!(a.rows[3..], b.rows[..], "the resumed steps see the same batches and losses");
    for f in ["vae.safetensors", "vae-ema.safetensors"] {
        let d = max_weight_diff(&straight.join(f), &split.join(f));
        assert!(d <= 1e-6, "{f}: resumed weights differ by {d}");
    }
    assert_eq!(read_loss_csv(&split.join("loss.csv")).unwrap(), a.rows);
    std::fs::remove_dir_all(&straight).ok();
    std::fs::remove_dir_all(&split).ok();
}

/// Fine-tuning the decoder alone, from a trained VAE: the encoder (model and EMA) stays bit for
/// bit, the decoder moves, and resuming it end to end is refused.
#[test]
fn decoder_only_fine_tuning_keeps_the_encoder() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let base = dir("base");
    train_vae::<B>(&TrainVaeOptions { steps: 3, ..options(base.clone()) }, &device).unwrap();
    let from = base.join("vae-ema.safetensors");
    let tuned = dir("decoder");
    let o = TrainVaeOptions {
        steps: 4,
        init_from: Some(from.clone()),
        decoder_only: true,
        // A config that is not the checkpoint's: the checkpoint's wins.
        config: VaeConfig::cpu(),
        ..options(tuned.clone())
    };
    train_vae::<B>(&o, &device).unwrap();
    let before = common::tensors(&from);
    for file in ["vae.safetensors", "vae-ema.safetensors"] {
        let after = common::tensors(&tuned.join(file));
        assert_eq!(after.len(), before.len(), "{file}: the same model");
        let (mut encoder, mut decoder_moved) = (0, false);
        for ((name, a), (other, b)) in before.iter().zip(&after) {
            assert_eq!(name, other);
            if name.starts_with("encoder.") {
                assert!(a == b, "{file}: {name} changed");
                encoder += 1;
            } else {
                decoder_moved |= a != b;
            }
        }
        assert!(encoder > 10, "{file}: {encoder} encoder tensors");
        assert!(decoder_moved, "{file}: the decoder was trained");
    }
    let info = checkpoint::read_info(&tuned.join("vae.safetensors")).unwrap();
    assert_eq!(info.meta["decoder_only"], true);
    let end_to_end = TrainVaeOptions { steps: 5, resume: true, decoder_only: false, ..o.clone() };
    assert!(train_vae::<B>(&end_to_end, &device).is_err(), "a decoder-only run does not resume end to end");
    let fresh = TrainVaeOptions { init_from: None, resume: false, ..o.clone() };
    assert!(train_vae::<B>(&fresh, &device).is_err(), "decoder-only needs a trained encoder");

    // A new decoder, wider and without norms, on the same encoder.
    let rebuilt = dir("fresh-decoder");
    let widths = vec![8, 16, 32, 48];
    let o = TrainVaeOptions {
        fresh_decoder: true,
        config: VaeConfig::tiny().with_decoder_channels(Some(widths.clone())).with_decoder_norm_groups(Some(0)),
        ..TrainVaeOptions { out: rebuilt.clone(), ..o }
    };
    train_vae::<B>(&o, &device).unwrap();
    let config: VaeConfig = checkpoint::read_config(&rebuilt.join("vae.safetensors")).unwrap();
    assert_eq!((config.decoder_widths(), config.decoder_groups()), (&widths[..], 0));
    assert_eq!(config.channels, VaeConfig::tiny().channels, "the encoder's shape is the checkpoint's");
    let after = common::tensors(&rebuilt.join("vae.safetensors"));
    let encoder =
        |t: &[(String, Vec<f32>)]| t.iter().filter(|(n, _)| n.starts_with("encoder.")).cloned().collect::<Vec<_>>();
    assert!(encoder(&before) == encoder(&after), "the encoder stays bit for bit");
    assert!(after.iter().all(|(n, _)| !(n.starts_with("decoder.") && n.contains("norm"))), "no norm in the decoder");
    let info = checkpoint::read_info(&rebuilt.join("vae.safetensors")).unwrap();
    assert_eq!(info.meta["fresh_decoder"], true);
    let nothing_to_replace = TrainVaeOptions { init_from: None, decoder_only: false, resume: false, ..o };
    assert!(train_vae::<B>(&nothing_to_replace, &device).is_err(), "a fresh decoder needs a trained VAE");
    for d in [base, tuned, rebuilt] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// The adversarial term: a critic is trained and checkpointed beside the decoder, the term
/// changes the decoder's training, a resumed run (critic and its optimiser included) equals a
/// straight one, and the term needs a decoder-only run.
#[test]
fn adversarial_fine_tuning_resumes_bit_for_bit() {
    use endless_model::train::Adversarial;
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let base = dir("adv-base");
    train_vae::<B>(&TrainVaeOptions { steps: 3, ..options(base.clone()) }, &device).unwrap();
    let adversarial = Some(Adversarial { weight: 0.5, critic_start: 1, critic_lr_scale: 4.0 });
    let tuned = |out: PathBuf, steps: usize, resume: bool, adversarial: Option<Adversarial>| TrainVaeOptions {
        steps,
        resume,
        adversarial,
        image_fraction: 0.0,
        init_from: Some(base.join("vae-ema.safetensors")),
        decoder_only: true,
        ..options(out)
    };
    let straight = dir("adv-straight");
    let a = train_vae::<B>(&tuned(straight.clone(), 4, false, adversarial), &device).unwrap();
    let split = dir("adv-split");
    train_vae::<B>(&tuned(split.clone(), 2, false, adversarial), &device).unwrap();
    let b = train_vae::<B>(&tuned(split.clone(), 4, true, adversarial), &device).unwrap();
    assert_eq!(a.rows[2..], b.rows[..], "the resumed steps see the same batches and losses");
    for f in ["vae.safetensors", "vae-ema.safetensors", "critic.safetensors"] {
        let d = max_weight_diff(&straight.join(f), &split.join(f));
        assert!(d <= 1e-6, "{f}: resumed weights differ by {d}");
    }
    let info = checkpoint::read_info(&straight.join("vae.safetensors")).unwrap();
    assert_eq!(info.meta["adversarial_weight"], 0.5);

    // Without the term the same batches train another decoder (step 0 is the critic's alone).
    let plain = dir("adv-plain");
    let c = train_vae::<B>(&tuned(plain.clone(), 4, false, None), &device).unwrap();
    assert_eq!(a.rows[..2], c.rows[..2], "the same batches and decoder until the term starts");
    assert_ne!(a.rows[2..], c.rows[2..], "the term changes the decoder's training");
    assert!(!plain.join("critic.safetensors").exists());
    let other = TrainVaeOptions { resume: true, steps: 5, ..tuned(plain.clone(), 5, true, adversarial) };
    assert!(train_vae::<B>(&other, &device).is_err(), "a run keeps its term when resumed");
    let end_to_end =
        TrainVaeOptions { decoder_only: false, init_from: None, ..tuned(dir("adv-e2e"), 2, false, adversarial) };
    assert!(train_vae::<B>(&end_to_end, &device).is_err(), "the term is for decoder-only runs");
    for d in [base, straight, split, plain] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// The decoder fine-tuned on the latents a pipeline's denoiser makes of the clips: the batches
/// decode from them (the losses differ from those of the same run on the encoder's latents),
/// the encoder stays bit for bit, and a VAE whose encoder is not the pipeline's is refused.
#[test]
fn decoder_fine_tuning_on_denoised_latents() {
    use endless_model::train::{DenoisedLatents, micro_pipeline};
    let Some(text) = endless_model::text::dir_for_tests() else { return };
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let device = Default::default();
    let pipeline = dir("pipeline");
    micro_pipeline(&pipeline, &text, 2).unwrap();
    let from = pipeline.join("vae.safetensors");
    // The micro pipeline: 32×32, windows of 3 latent frames, so clips of 1 + 4·2 frames.
    let denoised = DenoisedLatents {
        fraction: 1.0,
        steps: 2,
        first_step: 1,
        context: 1,
        guidance: 2.0,
        ..DenoisedLatents::new(&pipeline, &text)
    };
    let plain = TrainVaeOptions {
        steps: 3,
        frames: 9,
        image_fraction: 0.0,
        init_from: Some(from.clone()),
        decoder_only: true,
        ..options(dir("plain"))
    };
    let o = TrainVaeOptions {
        denoised: Some(denoised.clone()),
        ..TrainVaeOptions { out: dir("denoised"), ..plain.clone() }
    };
    let a = train_vae::<B>(&plain, &device).unwrap();
    let b = train_vae::<B>(&o, &device).unwrap();
    assert_eq!(b.rows.len(), 3);
    for (x, y) in a.rows.iter().zip(&b.rows) {
        assert!(y.loss.is_finite() && x.recon != y.recon, "step {}: the same loss from other latents", x.step);
        assert_eq!(x.kl, y.kl, "step {}: the same clips and posterior", x.step);
    }
    let before = common::tensors(&from);
    let after = common::tensors(&o.out.join("vae.safetensors"));
    for ((name, x), (_, y)) in before.iter().zip(&after) {
        assert!(!name.starts_with("encoder.") || x == y, "{name} changed");
    }
    assert!(before != after, "the decoder was trained");
    let info = checkpoint::read_info(&o.out.join("vae.safetensors")).unwrap();
    assert_eq!(info.meta["denoised_by"], pipeline.display().to_string());

    // Another encoder: the denoiser's latents would mean nothing to it.
    let other = dir("other");
    train_vae::<B>(&TrainVaeOptions { steps: 1, ..options(other.clone()) }, &device).unwrap();
    let wrong = TrainVaeOptions { init_from: Some(other.join("vae.safetensors")), out: dir("wrong"), ..o.clone() };
    let err = train_vae::<B>(&wrong, &device).unwrap_err().to_string();
    assert!(err.contains("encodes differently"), "{err}");
    // Clips of another length than the denoiser's window, and end-to-end training: refused.
    assert!(train_vae::<B>(&TrainVaeOptions { frames: 13, out: dir("frames"), ..o.clone() }, &device).is_err());
    assert!(train_vae::<B>(&TrainVaeOptions { decoder_only: false, out: dir("e2e"), ..o.clone() }, &device).is_err());
    for d in [pipeline, plain.out, o.out, other, wrong.out, dir("frames"), dir("e2e")] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// A folder of real videos as a second data source: batches decode from it (here every one).
#[cfg(feature = "gst")]
#[test]
fn train_on_a_folder_of_videos() {
    use endless_model::media::{Size, write_mp4};
    use endless_model::world::{ClipOptions, ClipSampler, Split};
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let videos = dir("videos");
    std::fs::create_dir_all(&videos).unwrap();
    let o = ClipOptions { width: 48, height: 32, fps: 8.0, frames: 40, transition_probability: 0.0 };
    let clip = ClipSampler::new(Split::Train, 4).next_clip(&o);
    write_mp4(&videos.join("a.mp4"), Size::new(48, 32), 8.0, clip.render(true).into_iter()).unwrap();
    let out = dir("from-videos");
    let o = TrainVaeOptions { steps: 3, videos: Some(videos.clone()), video_fraction: 1.0, ..options(out.clone()) };
    let summary = train_vae::<B>(&o, &Default::default()).unwrap();
    assert_eq!(summary.rows.len(), 3);
    assert!(summary.rows.iter().all(|r| r.loss.is_finite()));
    let missing = TrainVaeOptions { videos: Some(videos.join("nope")), ..o };
    assert!(train_vae::<B>(&missing, &Default::default()).is_err(), "a missing folder is an error");
    std::fs::remove_dir_all(&videos).ok();
    std::fs::remove_dir_all(&out).ok();
}
