//! Training the denoiser and generating with the pipeline folder it writes: a few steps lower
//! the loss, a resumed run equals a straight one, chunks are deterministic, independent of the
//! batch they share, and decode into the stream's frames.
//!
//! Needs all-MiniLM-L6-v2 (scripts/fetch-minilm.sh); skipped with a message without it unless
//! ENDLESS_REQUIRE_MINILM is set. In its own binary because burn's random number generator (the
//! initialisation) is global to the backend; the tests take turns.

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Distribution, Tensor};
use endless_model::checkpoint;
use endless_model::diffusion::Guidance;
use endless_model::pipeline::{ChunkRequest, ExtendMode, Pipeline, SamplerSettings};
use endless_model::pipeline::{Distilled, PipelineSpec};
use endless_model::rolling::Anchors;
use endless_model::text::{TextEncoder, dir_for_tests};
use endless_model::train::{
    DistillFrom, Optimisation, TrainDenoiserOptions, TrainVaeOptions, agreement, micro_options, micro_pipeline,
    micro_vae, read_loss_csv, train_denoiser, train_vae,
};
use endless_model::vae::{StreamState, Vae, VaeConfig};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

mod common;
use common::max_weight_diff;

type B = Autodiff<Flex>;

static SERIAL: Mutex<()> = Mutex::new(());

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("endless-train-denoiser-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn vae_checkpoint(dir: &Path) -> PathBuf {
    micro_vae(dir).unwrap()
}

fn options(vae: &Path, text: &Path, out: PathBuf) -> TrainDenoiserOptions {
    micro_options(vae, text, &out)
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

    // Reusing clips keeps a resumed run equal to a straight one: it renders again the clips
    // of the steps before the one it resumes at.
    let reusing = |out: PathBuf, steps| TrainDenoiserOptions { steps, reuse: 2, ..options(&vae, &text, out) };
    let (straight, split) = (root.join("reuse-straight"), root.join("reuse-split"));
    let a = train_denoiser::<B>(&reusing(straight.clone(), 6), &device).unwrap();
    train_denoiser::<B>(&reusing(split.clone(), 3), &device).unwrap();
    let b = train_denoiser::<B>(&TrainDenoiserOptions { resume: true, ..reusing(split.clone(), 6) }, &device).unwrap();
    assert_eq!(a.rows[3..], b.rows[..], "with --reuse 2 too");
    let d = max_weight_diff(&straight.join("denoiser.safetensors"), &split.join("denoiser.safetensors"));
    assert!(d <= 1e-6, "resumed weights with reuse differ by {d}");
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
    let first = |seed| ChunkRequest {
        seed,
        chunk: 0,
        context: None,
        anchors: None,
        text: text.embed("a foggy morning at sea"),
    };

    // The first chunk of a stream fills the window.
    let alone = pipeline.generate(&[first(1)], &settings).remove(0);
    assert_eq!(alone.dims(), [c, window, h, w]);
    assert_eq!(max_diff(&alone, &pipeline.generate(&[first(1)], &settings)[0]), 0.0, "deterministic");
    assert!(max_diff(&alone, &pipeline.generate(&[first(2)], &settings)[0]) > 1e-3, "the seed matters");

    // A continuation: two context frames, one new frame; batched with a first chunk of
    // another stream, each equals what it gives alone.
    let context = alone.clone().narrow(1, window - 2, 2);
    let next =
        ChunkRequest { seed: 1, chunk: 1, context: Some(context), anchors: None, text: text.embed("a city at night") };
    let next_alone = pipeline.generate(std::slice::from_ref(&next), &settings).remove(0);
    assert_eq!(next_alone.dims(), [c, window - 2, h, w]);
    let batched = pipeline.generate(&[first(2), next.clone()], &settings);
    let other_alone = pipeline.generate(&[first(2)], &settings).remove(0);
    let (d1, d2) = (max_diff(&batched[0], &other_alone), max_diff(&batched[1], &next_alone));
    assert!(d1 <= 1e-5 && d2 <= 1e-5, "batched differs from alone by {d1}, {d2}");

    // An anchor (trained for: a quarter of the batches have one) in place of the older context
    // frame: one new frame still, batched like alone, and the anchor and its distance matter.
    assert!(pipeline.spec.anchors);
    let anchored = |distance| ChunkRequest {
        context: Some(alone.clone().narrow(1, window - 1, 1)),
        anchors: Some(Anchors { latents: alone.clone().narrow(1, 0, 1), distances: vec![distance] }),
        ..next.clone()
    };
    let near = pipeline.generate(&[anchored(2)], &settings).remove(0);
    assert_eq!(near.dims(), [c, window - 2, h, w]);
    let batched = pipeline.generate(&[first(2), anchored(2)], &settings);
    assert!(max_diff(&batched[1], &near) <= 1e-5, "anchored: batched differs from alone");
    assert!(max_diff(&near, &next_alone) > 1e-4, "an anchor equals a context frame");
    let far = pipeline.generate(&[anchored(100)], &settings).remove(0);
    // Exactly 0 if the distance never reached the model; small after 4 steps (the dit tests
    // show its size on a perturbed model).
    let d = max_diff(&near, &far);
    assert!(d > 0.0, "the anchor's distance does not matter: {d}");

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
    let whole = pipeline.decode(Tensor::cat(vec![alone.clone(), next_alone], 1).unsqueeze_dim::<5>(0));
    let seam = (Tensor::cat(vec![head, tail], 2) - whole).abs().max().into_scalar();
    assert!(seam < 1e-5, "chunked decoding differs from one decode by {seam}");

    // Exported as the service ships it: f16, the EMA as the only denoiser, the same chunks
    // up to f16 rounding of the weights.
    let shipped = root.join("shipped");
    pipeline.export(&out, &shipped, checkpoint::Precision::F16).unwrap();
    let mut files: Vec<String> =
        std::fs::read_dir(&shipped).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    assert_eq!(files, ["denoiser.json", "denoiser.safetensors", "pipeline.json", "vae.json", "vae.safetensors"]);
    let info = checkpoint::read_info(&shipped.join("denoiser.safetensors")).unwrap();
    assert_eq!(info.precision, checkpoint::Precision::F16);
    assert_eq!(info.meta["step"], 4, "the training metadata travels");
    let reloaded = Pipeline::<Flex>::load(&shipped, true, &device).unwrap();
    assert_eq!(reloaded.spec, pipeline.spec);
    let again = reloaded.generate(&[first(1)], &settings).remove(0);
    let d = max_diff(&again, &alone);
    assert!(d > 0.0 && d < 0.05, "the f16 pipeline's chunk differs by {d}");
    std::fs::remove_dir_all(&root).ok();
}

/// Progressive distillation: the student samples in half the teacher's steps, one pass each
/// (guidance built in), and follows the teacher's many-step chunks more closely than the teacher
/// does with as few steps; a second round halves again; one step cannot be halved. Distilled
/// alone, the guidance keeps the teacher's steps at one pass each.
#[test]
fn distillation_halves_the_steps_and_follows_the_teacher() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(text_dir) = dir_for_tests() else { return };
    let root = dir("distill");
    let vae = vae_checkpoint(&root);
    let device = Default::default();
    let teacher = root.join("teacher");
    train_denoiser::<B>(
        &TrainDenoiserOptions { steps: 30, ..options(&vae, &text_dir, teacher.clone()) }
            .with_optim(|o| Optimisation { lr: 5e-3, ..o }),
        &device,
    )
    .unwrap();
    let guidance = Guidance { text: 2.0, context: 1.0 };
    let distil_with = |from: &Path, to: &Path, steps: usize, guidance: Guidance, guidance_only: bool, lr: f64| {
        let from = DistillFrom { teacher: from.to_path_buf(), teacher_steps: 4, guidance, guidance_only };
        let o = TrainDenoiserOptions {
            batch: 2,
            steps,
            log_every: 0,
            checkpoint_every: 0,
            ..TrainDenoiserOptions::distilling(from, &text_dir, to).unwrap()
        }
        .with_optim(|o| Optimisation { lr, ema_decay: None, ..o });
        train_denoiser::<B>(&o, &device)
    };
    let distil = |from: &Path, to: &Path, steps: usize, guidance_only: bool| {
        distil_with(from, to, steps, guidance, guidance_only, 3e-3)
    };
    let student = root.join("student");
    let summary = distil(&teacher, &student, 120, false).unwrap();
    let losses: Vec<f64> = summary.rows.iter().map(|r| r.loss).collect();
    let (first, last) = (losses[..10].iter().sum::<f64>() / 10.0, losses[110..].iter().sum::<f64>() / 10.0);
    assert!(last < first, "distillation loss {first:.5} → {last:.5}");
    assert_eq!(PipelineSpec::load(&student).unwrap().distilled, Some(Distilled { steps: 2, from_steps: 4, guidance }));

    let teacher_pipeline = Pipeline::<Flex>::load(&teacher, true, &device).unwrap();
    let student_pipeline = Pipeline::<Flex>::load(&student, true, &device).unwrap();
    let text = TextEncoder::<Flex>::load(&text_dir, &device).unwrap();
    let prompts: Vec<_> =
        endless_model::eval::held_out_cases(4, 1).iter().map(|case| text.embed(&case.prompt)).collect();
    let reference = SamplerSettings { steps: 4, guidance, ..SamplerSettings::default() };
    let a = agreement(&student_pipeline, &teacher_pipeline, &reference, &prompts, 1);
    assert_eq!((a.student_steps, a.teacher_steps), (2, 4));
    assert!(
        a.student_mse < 0.75 * a.teacher_few_steps_mse,
        "the student (2 steps) is {:.5} from the teacher's 4 steps; the teacher with 2 steps {:.5}",
        a.student_mse,
        a.teacher_few_steps_mse
    );
    // One pass per step: half the teacher's cost at the same steps, a quarter at its own.
    let two = SamplerSettings { steps: 2, ..reference };
    let ratio = teacher_pipeline.chunk_gflops(&two, 8) / student_pipeline.chunk_gflops(&two, 8);
    assert!((ratio - 2.0).abs() < 1e-9, "cost ratio {ratio}");
    assert_eq!(student_pipeline.spec.sampler(reference).guidance, Guidance::NONE);

    let again = root.join("again");
    distil(&student, &again, 2, false).unwrap();
    assert_eq!(PipelineSpec::load(&again).unwrap().distilled, Some(Distilled { steps: 1, from_steps: 4, guidance }));
    let err = distil(&again, &root.join("none"), 2, false).unwrap_err();
    assert!(format!("{err:#}").contains("cannot be halved"), "{err:#}");

    // Guidance alone: the teacher's 4 steps, one pass each, against the teacher in as many
    // passes (2 guided steps). The micro teacher's guidance barely moves its chunks, so this is
    // the plumbing; what it makes of a real tier is `eval`'s to say (docs/MODEL_CARD.md).
    let strong = Guidance { text: 5.0, context: 1.0 };
    let guided = root.join("guided");
    distil_with(&teacher, &guided, 120, strong, true, 5e-4).unwrap();
    let spec = PipelineSpec::load(&guided).unwrap();
    assert_eq!(spec.distilled, Some(Distilled { steps: 4, from_steps: 4, guidance: strong }));
    let guided = Pipeline::<Flex>::load(&guided, true, &device).unwrap();
    let reference = SamplerSettings { guidance: strong, ..reference };
    assert_eq!(guided.passes_per_step(&reference) * 2, teacher_pipeline.passes_per_step(&reference));
    let a = agreement(&guided, &teacher_pipeline, &reference, &prompts, 1);
    assert_eq!((a.student_steps, a.same_passes_steps), (4, 2), "4 passes: the guided teacher's 2 steps");
    assert!(
        a.student_mse < 0.5 * a.teacher_same_passes_mse,
        "the student (4 steps, 4 passes) is {:.5} from the guided teacher's 4 steps; the teacher in 4 passes {:.5}",
        a.student_mse,
        a.teacher_same_passes_mse
    );
    assert!(distil(&again, &root.join("none"), 2, true).is_err(), "a distilled teacher's guidance is built in");
    std::fs::remove_dir_all(&root).ok();
}

/// A run goes on from an exported pipeline (f16, no optimiser state): it starts from the
/// shipped weights, keeps their latent statistics and VAE, and trains on from there; a
/// distilled pipeline is refused.
#[test]
fn training_goes_on_from_an_exported_pipeline() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(text_dir) = dir_for_tests() else { return };
    let root = dir("continue");
    let vae = vae_checkpoint(&root);
    let device = Default::default();
    let trained = root.join("trained");
    train_denoiser::<B>(&TrainDenoiserOptions { steps: 3, ..options(&vae, &text_dir, trained.clone()) }, &device)
        .unwrap();
    let shipped = root.join("shipped");
    Pipeline::<Flex>::load(&trained, true, &device)
        .unwrap()
        .export(&trained, &shipped, checkpoint::Precision::F16)
        .unwrap();

    let go_on = |out: &Path, steps: usize, lr: f64| {
        let o = TrainDenoiserOptions {
            batch: 2,
            lead: 1,
            steps,
            seed: 2,
            log_every: 0,
            ..TrainDenoiserOptions::continuing(&shipped, &text_dir, out).unwrap()
        }
        .with_optim(|o| Optimisation { lr, warmup: 0, ..o });
        train_denoiser::<B>(&o, &device).unwrap()
    };
    // One step at a learning rate of 1e-20, far below the weights' rounding: the shipped
    // pipeline, chunk for chunk.
    let still = root.join("still");
    go_on(&still, 1, 1e-20);
    let (a, b) = (
        Pipeline::<Flex>::load(&shipped, true, &device).unwrap(),
        Pipeline::<Flex>::load(&still, false, &device).unwrap(),
    );
    assert_eq!(a.spec, b.spec, "the latent statistics are the shipped ones, not measured again");
    let text = TextEncoder::<Flex>::load(&text_dir, &device).unwrap();
    let request =
        || ChunkRequest { seed: 7, chunk: 0, context: None, anchors: None, text: text.embed("a foggy morning at sea") };
    let settings = SamplerSettings { steps: 4, ..SamplerSettings::default() };
    let (x, y) = (a.generate(&[request()], &settings).remove(0), b.generate(&[request()], &settings).remove(0));
    let d = max_diff(&x, &y);
    assert!(d < 1e-6, "the run starts from the shipped weights: chunks differ by {d}");
    let meta = checkpoint::read_info(&still.join("denoiser.safetensors")).unwrap().meta;
    assert_eq!(meta["init_from"], shipped.display().to_string());

    // And it trains on from there.
    let on = root.join("on");
    let summary = go_on(&on, 3, 2e-3);
    assert_eq!((summary.start_step, summary.end_step), (0, 3));
    let moved = Pipeline::<Flex>::load(&on, false, &device).unwrap().generate(&[request()], &settings).remove(0);
    assert!(max_diff(&x, &moved) > 0.0, "the weights moved");

    // A distilled pipeline goes on by distillation.
    let mut spec = PipelineSpec::load(&shipped).unwrap();
    spec.distilled = Some(Distilled { steps: 2, from_steps: 4, guidance: Guidance { text: 2.0, context: 1.0 } });
    spec.save(&shipped).unwrap();
    let err = TrainDenoiserOptions::continuing(&shipped, &text_dir, root.join("refused")).unwrap_err();
    assert!(format!("{err:#}").contains("distilled"), "{err:#}");
    std::fs::remove_dir_all(&root).ok();
}

/// A pipeline goes on onto a VAE whose latent grew (`train-vae --init-from --latent-channels`):
/// the grown VAE encodes the old channels as before, the denoiser grows to the new width, the
/// latent statistics are measured afresh for every channel, and the pipeline generates and
/// decodes chunks of the new width. A VAE of fewer channels is refused.
#[test]
fn training_goes_on_onto_a_grown_latent() {
    let _guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(text_dir) = dir_for_tests() else { return };
    let root = dir("grown");
    let trained = root.join("trained");
    micro_pipeline(&trained, &text_dir, 2).unwrap();
    let vae = trained.join("vae.safetensors");
    let device = Default::default();
    let old: VaeConfig = checkpoint::read_config(&vae).unwrap();
    let c = old.latent_channels;

    // The VAE grows by 4 channels in one step of a learning rate far below the weights' rounding.
    let grown_dir = root.join("vae-grown");
    let grow = TrainVaeOptions {
        width: 32,
        height: 32,
        frames: 5,
        batch: 1,
        steps: 1,
        init_from: Some(vae.clone()),
        latent_channels: Some(c + 4),
        checkpoint_every: 0,
        log_every: 0,
        ..TrainVaeOptions::new(old.clone(), &grown_dir)
    }
    .with_optim(|o| Optimisation { lr: 1e-20, warmup: 0, ema_decay: None, ..o });
    train_vae::<B>(&grow, &device).unwrap();
    let grown_vae = grown_dir.join("vae.safetensors");
    let (a, b): (Vae<Flex>, Vae<Flex>) = (
        checkpoint::load(old.init(&device), &vae, &device).unwrap(),
        checkpoint::load(checkpoint::read_config::<VaeConfig>(&grown_vae).unwrap().init(&device), &grown_vae, &device)
            .unwrap(),
    );
    let clip = Tensor::<Flex, 5>::random([1, 3, 5, 32, 32], Distribution::Uniform(-1.0, 1.0), &device);
    let (before, after) = (a.encode(clip.clone()).0, b.encode(clip).0);
    assert_eq!(after.dims()[1], c + 4);
    let moved = (after.narrow(1, 0, c) - before).abs().max().into_scalar();
    assert!(moved < 1e-6, "the old channels' latents move by {moved}");

    let go_on = |vae: &Path, out: &Path| {
        let o = TrainDenoiserOptions {
            vae: vae.to_path_buf(),
            batch: 2,
            lead: 1,
            steps: 1,
            seed: 2,
            stats_batches: 1,
            log_every: 0,
            ..TrainDenoiserOptions::continuing(&trained, &text_dir, out).unwrap()
        };
        train_denoiser::<B>(&o, &device)
    };
    let on = root.join("on");
    go_on(&grown_vae, &on).unwrap();
    let pipeline = Pipeline::<Flex>::load(&on, true, &device).unwrap();
    assert_eq!(pipeline.latent_frame()[0], c + 4);
    let channels = pipeline.spec.channels.as_ref().expect("per-channel statistics");
    assert_eq!(channels.mean.len(), c + 4, "every channel's statistics are measured");
    let text = TextEncoder::<Flex>::load(&text_dir, &device).unwrap();
    let request = ChunkRequest { seed: 1, chunk: 0, context: None, anchors: None, text: text.embed("dawn over hills") };
    let chunk = pipeline.generate(&[request], &SamplerSettings { steps: 2, ..SamplerSettings::default() }).remove(0);
    assert_eq!(chunk.dims()[0], c + 4);
    let frames = pipeline.decode(chunk.unsqueeze_dim::<5>(0));
    assert_eq!(frames.dims()[3..], [32, 32]);

    // A latent does not shrink.
    let narrow_dir = root.join("vae-narrow");
    std::fs::create_dir_all(&narrow_dir).unwrap();
    let narrow = narrow_dir.join("vae.safetensors");
    let config = old.clone().with_latent_channels(c - 4);
    checkpoint::save(
        &config.init::<Flex>(&device),
        &config,
        &serde_json::json!({}),
        &narrow,
        checkpoint::Precision::F32,
    )
    .unwrap();
    let err = go_on(&narrow, &root.join("refused")).unwrap_err();
    assert!(format!("{err:#}").contains("only grows"), "{err:#}");
    std::fs::remove_dir_all(&root).ok();
}
