//! Training the denoiser and generating with the pipeline folder it writes: a few steps lower
//! the loss, a resumed run equals a straight one, chunks are deterministic, independent of the
//! batch they share, and decode into the stream's frames.
//!
//! Needs all-MiniLM-L6-v2 (scripts/fetch-minilm.sh); skipped with a message without it unless
//! ENDLESS_REQUIRE_MINILM is set. In its own binary because burn's random number generator (the
//! initialisation) is global to the backend; the tests take turns.

use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use endless_model::checkpoint::{self, Precision};
use endless_model::dit::DenoiserConfig;
use endless_model::pipeline::{ChunkRequest, ExtendMode, Pipeline, SamplerSettings};
use endless_model::text::{TextEncoder, dir_for_tests};
use endless_model::train::{Optimisation, TrainDenoiserOptions, read_loss_csv, train_denoiser};
use endless_model::vae::{StreamState, VaeConfig};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

type B = Autodiff<Flex>;

static SERIAL: Mutex<()> = Mutex::new(());

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("endless-train-denoiser-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A tiny VAE with its initial weights, saved as a checkpoint: a fixed encoder is all the
/// denoiser's training needs.
fn vae_checkpoint(dir: &Path) -> PathBuf {
    let path = dir.join("vae-init.safetensors");
    let config = VaeConfig::tiny().with_channels(vec![8, 16, 16, 16]);
    <Flex as burn::tensor::backend::Backend>::seed(&Default::default(), 3);
    let vae = config.init::<Flex>(&Default::default());
    checkpoint::save(&vae, &config, &serde_json::json!({}), &path, Precision::F32).unwrap();
    path
}

fn options(vae: &Path, text: &Path, out: PathBuf) -> TrainDenoiserOptions {
    let config = DenoiserConfig::tiny().with_hidden_size(64).with_depth(2).with_num_heads(2).with_frequency_dim(64);
    TrainDenoiserOptions {
        width: 32,
        height: 32,
        window: 3,
        lead: 1,
        batch: 2,
        log_every: 0,
        checkpoint_every: 0,
        stats_batches: 1,
        ..TrainDenoiserOptions::new(config, vae, text, out)
    }
    .with_optim(|o| Optimisation { warmup: 0, lr: 2e-3, ema_decay: Some(0.9), ..o })
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn max_weight_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).flat_map(|((_, va), (_, vb))| va.iter().zip(vb).map(|(x, y)| (x - y).abs())).fold(0.0, f32::max)
}

fn max_diff(a: &Tensor<Flex, 4>, b: &Tensor<Flex, 4>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a.clone() - b.clone()).abs().max().into_scalar()
}

#[test]
fn training_lowers_the_loss_and_resumes_exactly() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(text) = dir_for_tests() else { return };
    let root = dir("train");
    let vae = vae_checkpoint(&root);
    let device = Default::default();

    let out = root.join("long");
    let o = TrainDenoiserOptions { steps: 80, ..options(&vae, &text, out.clone()) }
        .with_optim(|o| Optimisation { lr: 5e-3, ..o });
    let summary = train_denoiser::<B>(&o, &device).unwrap();
    let losses: Vec<f64> = summary.rows.iter().map(|r| r.loss).collect();
    assert_eq!(losses.len(), 80);
    let first = losses[..10].iter().sum::<f64>() / 10.0;
    let last = losses[70..].iter().sum::<f64>() / 10.0;
    // Fresh clips every step and a 2-block model: the loss falls slowly but surely (the
    // denoiser overfitting one batch ≥ 10× is a unit test of the network).
    assert!(last < 0.9 * first, "loss {first:.4} → {last:.4}");
    for f in ["denoiser.safetensors", "denoiser-ema.safetensors", "vae.safetensors", "pipeline.json", "loss.png"] {
        assert!(out.join(f).exists(), "{f} written");
    }

    let straight = root.join("straight");
    let a = train_denoiser::<B>(&TrainDenoiserOptions { steps: 6, ..options(&vae, &text, straight.clone()) }, &device)
        .unwrap();
    let split = root.join("split");
    train_denoiser::<B>(&TrainDenoiserOptions { steps: 3, ..options(&vae, &text, split.clone()) }, &device).unwrap();
    let b = train_denoiser::<B>(
        &TrainDenoiserOptions { steps: 6, resume: true, ..options(&vae, &text, split.clone()) },
        &device,
    )
    .unwrap();
    assert_eq!(b.start_step, 3);
    assert_eq!(a.rows[3..], b.rows[..], "the resumed steps see the same batches and losses");
    for f in ["denoiser.safetensors", "denoiser-ema.safetensors"] {
        let d = max_weight_diff(&straight.join(f), &split.join(f));
        assert!(d <= 1e-6, "{f}: resumed weights differ by {d}");
    }
    assert_eq!(read_loss_csv(&split.join("loss.csv")).unwrap(), a.rows);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn chunks_are_deterministic_batch_independent_and_decode_into_frames() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(text_dir) = dir_for_tests() else { return };
    let root = dir("pipeline");
    let vae = vae_checkpoint(&root);
    let out = root.join("pipeline");
    train_denoiser::<B>(
        &TrainDenoiserOptions { steps: 4, ..options(&vae, &text_dir, out.clone()) },
        &Default::default(),
    )
    .unwrap();

    let device = Default::default();
    let pipeline = Pipeline::<Flex>::load(&out, true, &device).unwrap();
    let text = TextEncoder::<Flex>::load(&text_dir, &device).unwrap();
    let [c, h, w] = pipeline.latent_frame();
    assert_eq!([h, w], [4, 4]);
    let window = pipeline.spec.window;
    let settings = SamplerSettings { steps: 4, ..SamplerSettings::default() };
    let first = |seed| ChunkRequest { seed, chunk: 0, context: None, text: text.embed("a foggy morning at sea") };

    // The first chunk of a stream fills the window.
    let alone = pipeline.generate(&[first(1)], &settings).remove(0);
    assert_eq!(alone.dims(), [c, window, h, w]);
    assert_eq!(max_diff(&alone, &pipeline.generate(&[first(1)], &settings)[0]), 0.0, "deterministic");
    assert!(max_diff(&alone, &pipeline.generate(&[first(2)], &settings)[0]) > 1e-3, "the seed matters");

    // A continuation: two context frames, one new frame; batched with a first chunk of
    // another stream, each equals what it gives alone.
    let context = alone.clone().narrow(1, window - 2, 2);
    let next = ChunkRequest { seed: 1, chunk: 1, context: Some(context), text: text.embed("a city at night") };
    let next_alone = pipeline.generate(std::slice::from_ref(&next), &settings).remove(0);
    assert_eq!(next_alone.dims(), [c, window - 2, h, w]);
    let batched = pipeline.generate(&[first(2), next.clone()], &settings);
    let other_alone = pipeline.generate(&[first(2)], &settings).remove(0);
    let (d1, d2) = (max_diff(&batched[0], &other_alone), max_diff(&batched[1], &next_alone));
    assert!(d1 <= 1e-5 && d2 <= 1e-5, "batched differs from alone by {d1}, {d2}");

    // The modes differ: the context channels matter.
    let replaced =
        pipeline.generate(std::slice::from_ref(&next), &SamplerSettings { mode: ExtendMode::Replacement, ..settings });
    assert!(max_diff(&replaced[0], &next_alone) > 1e-4, "replacement equals conditioning");
    // Reconstruction guidance: weight 0 is plain conditioning; a weight moves the new frames.
    let guided = |weight| {
        let s = SamplerSettings { mode: ExtendMode::Guided { weight }, ..settings };
        pipeline.generate(std::slice::from_ref(&next), &s).remove(0)
    };
    assert!(max_diff(&guided(0.0), &next_alone) <= 1e-5, "guidance of weight 0 changes the chunk");
    assert!(max_diff(&guided(5.0), &next_alone) > 1e-4, "reconstruction guidance does nothing");

    // Decoding chunk by chunk: 1 + 4(window − 1) frames, then 4 per latent, together the
    // frames of one decode of the whole stream.
    let mut state = StreamState::default();
    let head = pipeline.decode_stream(alone.clone().unsqueeze_dim(0), &mut state);
    assert_eq!(head.dims(), [1, 3, 1 + 4 * (window - 1), 32, 32]);
    let tail = pipeline.decode_stream(next_alone.clone().unsqueeze_dim(0), &mut state);
    assert_eq!(tail.dims(), [1, 3, 4 * (window - 2), 32, 32]);
    let whole = pipeline.decode(Tensor::cat(vec![alone, next_alone], 1).unsqueeze_dim::<5>(0));
    let seam = (Tensor::cat(vec![head, tail], 2) - whole).abs().max().into_scalar();
    assert!(seam < 1e-5, "chunked decoding differs from one decode by {seam}");
    std::fs::remove_dir_all(&root).ok();
}
