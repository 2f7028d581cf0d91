//! The generation measurements on a micro pipeline: streams generated in a batch equal streams
//! generated alone, chunk boundaries fall where the chunk sizes say, and every measurement of
//! the report comes out, for every mode of the ablation.

use burn::backend::Flex;
use endless_model::diffusion::Guidance;
use endless_model::eval::{EvaluatorConfig, GenerationEvalOptions, Streams, evaluate_generation, held_out_cases};
use endless_model::pipeline::{ExtendMode, Pipeline, SamplerSettings, SelfConditioning};
use endless_model::rolling::{ContextLayout, RollingContext};
use endless_model::text::{TextEncoder, dir_for_tests};
use endless_model::train::micro_pipeline;
use endless_model::world::Split;
use std::path::PathBuf;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("endless-eval-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A micro pipeline trained `steps` steps in a fresh folder, loaded, with the text encoder;
/// `None` without the text encoder.
fn micro(name: &str, steps: usize) -> Option<(PathBuf, Pipeline<Flex>, TextEncoder<Flex>)> {
    let text_dir = dir_for_tests()?;
    let out = dir(name);
    micro_pipeline(&out, &text_dir, steps).unwrap();
    let device = Default::default();
    let pipeline = Pipeline::<Flex>::load(&out, true, &device).unwrap();
    Some((out, pipeline, TextEncoder::<Flex>::load(&text_dir, &device).unwrap()))
}

fn settings(mode: ExtendMode) -> SamplerSettings {
    SamplerSettings { steps: 2, eta: 0.0, guidance: Guidance { text: 2.0, context: 1.0 }, mode, ..Default::default() }
}

#[test]
fn streams_batch_like_alone_and_every_measurement_comes_out() {
    let Some(text_dir) = dir_for_tests() else { return };
    let out = dir("gen");
    micro_pipeline(&out, &text_dir, 2).unwrap();
    let device = Default::default();
    let pipeline = Pipeline::<Flex>::load(&out, true, &device).unwrap();
    let text = TextEncoder::<Flex>::load(&text_dir, &device).unwrap();
    let cases = held_out_cases(2, 1);
    let starts: Vec<_> = cases.iter().map(|c| (c.seed, text.embed(&c.prompt))).collect();
    let conditioned = settings(ExtendMode::Conditioned);

    // Window 3, context 1: the first chunk is 1 + 4·2 = 9 frames, then 4·2 = 8 per chunk.
    let mut together = Streams::new(&pipeline, conditioned, ContextLayout::recent(1), starts.clone());
    let both = together.run(30);
    assert_eq!(together.position(0), (33, &[9, 17, 25][..]));
    for (i, start) in starts.iter().cloned().enumerate() {
        let alone = Streams::new(&pipeline, conditioned, ContextLayout::recent(1), vec![start]).run(30).remove(0);
        let worst = alone.iter().flatten().zip(both[i].iter().flatten()).map(|(a, b)| a.abs_diff(*b)).max();
        assert!(worst <= Some(1), "stream {i}: batched and alone differ by {worst:?}");
    }

    // A stream primed with the latents of another's first chunk makes that one's second chunk:
    // its context, its decoder's state, its chunk count and so its noise are the same.
    let first = pipeline.generate(
        &[RollingContext::new(ContextLayout::recent(1)).request(starts[0].0, 0, starts[0].1.clone())],
        &conditioned,
    );
    let mut unprimed = Streams::new(&pipeline, conditioned, ContextLayout::recent(1), vec![starts[0].clone()]);
    unprimed.next_chunk();
    let second = unprimed.next_chunk().remove(0);
    let mut primed = Streams::new(&pipeline, conditioned, ContextLayout::recent(1), vec![starts[0].clone()]);
    primed.prime(0, first[0].clone());
    assert_eq!(primed.next_chunk().remove(0), second);
    assert_eq!(primed.position(0), (8, &[0][..]), "frames count from the end of the given latents");

    // Started from still images: each stream holds its one latent frame as context and goes on
    // 4·2 = 8 frames a chunk.
    let mut imaged = Streams::new(&pipeline, conditioned, ContextLayout::recent(1), starts.clone());
    imaged.start_from_images();
    let clips = imaged.run(16);
    assert_eq!((clips[1].len(), imaged.position(1)), (16, (16, &[0, 8][..])));

    // With anchors (the micro pipeline trains with them): two latents of context, one an
    // anchor once the stream has one, so still 4·1 = 4 frames per chunk after the first; the
    // anchors are per stream, so batching still changes nothing.
    assert!(pipeline.spec.anchors);
    let anchored = ContextLayout { frames: 2, anchors: 1, anchor_every: 2 };
    let mut together = Streams::new(&pipeline, conditioned, anchored, starts.clone());
    let both = together.run(30);
    assert_eq!(together.position(0), (33, &[9, 13, 17, 21, 25, 29][..]));
    let alone = Streams::new(&pipeline, conditioned, anchored, vec![starts[1].clone()]).run(30).remove(0);
    let worst = alone.iter().flatten().zip(both[1].iter().flatten()).map(|(a, b)| a.abs_diff(*b)).max();
    assert!(worst <= Some(1), "anchored: batched and alone differ by {worst:?}");

    let plain = EvaluatorConfig::new().with_input_size(32).init::<Flex>(&device);
    // With a camera head of its own (v6 on), every fourth switch changes the camera.
    let with_camera = plain.clone().with_camera_head(3, &device);
    for mode in [ExtendMode::Replacement, ExtendMode::Guided { weight: 1.0 }] {
        let (evaluator, switched) = match mode {
            ExtendMode::Replacement => (&plain, &["time", "weather"][..]),
            _ => (&with_camera, &["time", "weather", "scenery", "camera"][..]),
        };
        let o = GenerationEvalOptions {
            cases: 2,
            clip_seconds: 2.0,
            settings: settings(mode),
            layout: ContextLayout::recent(1),
            drift_minutes: 0.25,
            switch_cases: switched.len(),
            switch_at: 1.0,
            switch_after: 2.0,
            batch: 2,
            seed: 1,
            split: Split::HeldOut,
            phrasing: Split::HeldOut,
            continued: mode == ExtendMode::Replacement,
            image_first: mode != ExtendMode::Replacement,
        };
        let r = evaluate_generation(&pipeline, evaluator, &|p: &str| text.embed(p), &o, &device);
        assert_eq!((r.cases.len(), r.drift.len()), (2, 1));
        assert_eq!(r.switches.iter().map(|s| s.attribute.as_str()).collect::<Vec<_>>(), switched);
        assert_eq!(r.continued.is_some(), o.continued);
        if let Some(c) = &r.continued {
            assert_eq!(c.per_clip.len(), 2);
            assert!(c.adherence.iter().all(|(_, a)| (0.0..=1.0).contains(a)) && c.boundary_jump.is_finite());
        }
        let adherence =
            r.generated.adherence.iter().chain(&r.real.adherence).chain(&r.reconstructed.adherence).map(|(_, a)| *a);
        assert!(adherence.into_iter().all(|a| (0.0..=1.0).contains(&a)));
        assert!(r.fwd.is_finite() && r.fwd >= 0.0 && r.fwd_real_vs_real.is_finite());
        assert!(r.fwd_reconstructed.is_finite() && r.fwd_reconstructed >= 0.0);
        // Real clips have no seams: their frame differences are the same across the grid.
        assert!((r.real.boundary_jump - 1.0).abs() < 0.5, "{}", r.real.boundary_jump);
        assert!(r.generated.boundary_jump.is_finite() && r.drift[0].fwd.is_finite());
        assert!(r.realtime_factor > 0.0);
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn the_evaluator_trains_saves_and_reloads() {
    use burn::backend::Autodiff;
    use endless_model::train::{TrainEvaluatorOptions, load_evaluator, train_evaluator};
    use endless_model::world::{ClipOptions, Split};
    let out = dir("evaluator");
    let options = TrainEvaluatorOptions {
        width: 32,
        height: 32,
        frames: 6,
        batch: 2,
        steps: 3,
        eval_clips: 4,
        log_every: 0,
        ..TrainEvaluatorOptions::new(EvaluatorConfig::new().with_input_size(32), &out)
    };
    let device = Default::default();
    let report = train_evaluator::<Autodiff<Flex>>(&options, &device).unwrap();
    // Frames 4 and 5 of each of the 4 held-out clips are judged.
    assert_eq!((report.clips, report.frames, report.accuracy.len()), (4, 8, 4));
    assert!(report.accuracy.iter().all(|(_, a)| (0.0..=1.0).contains(a)));
    for file in ["evaluator.safetensors", "evaluator.json", "loss.csv", "loss.png", "accuracy.json"] {
        assert!(out.join(file).exists(), "{file}");
    }
    // The saved evaluator (f16) loads and judges clips.
    let evaluator = load_evaluator::<Flex>(&out, &device).unwrap();
    let o = ClipOptions { width: 32, height: 32, frames: 6, ..ClipOptions::default() };
    let again = endless_model::train::evaluator::accuracy(&evaluator, &o, Split::HeldOut, 4, 7, &device);
    assert_eq!(again.frames, 8);

    // A camera head of its own, trained onto it, changes nothing else: same features (FWD),
    // same readings of time, weather and scenery, the base's config and meta kept beside it.
    let camera_out = dir("evaluator-camera");
    let camera_options = TrainEvaluatorOptions {
        camera_head_on: Some(out.clone()),
        config: options.config.clone().with_camera_motion_iterations(Some(2)),
        out: camera_out.clone(),
        ..options.clone()
    };
    train_evaluator::<Autodiff<Flex>>(&camera_options, &device).unwrap();
    let with_camera = load_evaluator::<Flex>(&camera_out, &device).unwrap();
    assert!(with_camera.camera.is_some() && evaluator.camera.is_none());
    let clips: Vec<_> = {
        let mut sampler = endless_model::world::ClipSampler::new(Split::HeldOut, 3);
        (0..2).map(|_| sampler.next_clip(&o).render(false)).collect()
    };
    let video = || endless_model::data::video_tensor::<Flex>(&clips, 32, 32, &device);
    let (a, b) = (evaluator.read(video()), with_camera.read(video()));
    for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
        assert_eq!(x.features, y.features);
        assert_eq!(
            (x.attributes.time, x.attributes.weather, x.attributes.scenery),
            (y.attributes.time, y.attributes.weather, y.attributes.scenery)
        );
    }
    let info = endless_model::checkpoint::read_info(&camera_out.join("evaluator.safetensors")).unwrap();
    assert_eq!(info.config["camera_motion_iterations"], 2);
    assert_eq!(info.meta["camera_head_on"]["meta"]["step"], 3, "the base's own meta");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_dir_all(&camera_out);
}

/// The evaluator the repository ships (models/evaluator) loads with today's code and still reads
/// fresh clips of the held-out combinations (128², 16 frames at 8 fps, half with a transition)
/// as its model card says: time, weather and scenery ≥ 95 % of the frames, the camera ≥ 95 % on
/// clips without a transition and, read one frame ahead by its own head (v6), ≥ 95 % with them.
#[test]
fn the_shipped_evaluator_reads_held_out_clips() {
    use endless_model::train::load_evaluator;
    use endless_model::world::{ClipOptions, Split};
    // At run time (cargo sets it for tests): a shared target directory may hold this binary
    // from another checkout.
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    let dir = manifest.join("../models/evaluator");
    let device = Default::default();
    let evaluator = load_evaluator::<Flex>(&dir, &device).unwrap();
    let o = ClipOptions { width: 128, height: 128, frames: 16, fps: 8.0, transition_probability: 0.5 };
    let report = endless_model::train::evaluator::accuracy(&evaluator, &o, Split::HeldOut, 12, 99, &device);
    let get = |list: &[(String, f64)], name: &str| list.iter().find(|(n, _)| n == name).unwrap().1;
    for name in ["time", "weather", "scenery"] {
        assert!(get(&report.accuracy, name) >= 0.95, "{name}: {:?}", report.accuracy);
    }
    assert!(get(&report.accuracy_steady, "camera") >= 0.95, "camera: {:?}", report.accuracy_steady);
    assert!(evaluator.camera.is_some(), "v6 reads the camera with a head of its own");
    assert!(get(&report.accuracy, "camera") >= 0.95, "camera, transitions included: {:?}", report.accuracy);
}

#[test]
fn the_loss_by_noise_level_does_not_depend_on_the_batch() {
    use endless_model::eval::{LossEvalOptions, evaluate_loss};
    let Some((out, pipeline, text)) = micro("loss", 2) else { return };
    let device = Default::default();
    let o = LossEvalOptions {
        cases: 3,
        split: Split::HeldOut,
        phrasing: Split::HeldOut,
        levels: vec![-6.0, 0.0, 6.0],
        batch: 3,
        seed: 4,
    };
    let together = evaluate_loss(&pipeline, &text, &o, &device);
    let alone = evaluate_loss(&pipeline, &text, &LossEvalOptions { batch: 1, ..o.clone() }, &device);
    assert_eq!((together.clips, together.logsnr.len(), together.time.len()), (3, 3, 3));
    for (name, a, b) in [
        ("text", &together.text, &alone.text),
        ("no text", &together.no_text, &alone.no_text),
        ("continued", &together.continued, &alone.continued),
    ] {
        for (x, y) in a.iter().zip(b.iter()) {
            assert!(x.is_finite() && *x > 0.0, "{name}: {a:?}");
            assert!((x - y).abs() <= 1e-4 * x, "{name}: batched {a:?}, alone {b:?}");
        }
    }
    // Later times are noisier.
    assert!(together.time.windows(2).all(|w| w[0] > w[1]), "{:?}", together.time);
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn context_noise_reaches_the_context_and_nothing_else() {
    // Trained past its first steps, so that its output follows its context channels (the
    // output layer starts at zero).
    let Some((out, clean, text)) = micro("context-noise", 16) else { return };
    assert_eq!(clean.spec.context_noise, 0.0, "trained without it, a pipeline samples without it");
    let mut noisy = clean.clone();
    noisy.spec.context_noise = 0.3;
    let case = &held_out_cases(1, 2)[0];
    let conditioned = settings(ExtendMode::Conditioned);
    let first = |p: &Pipeline<Flex>| {
        let request = RollingContext::new(ContextLayout::recent(1)).request(case.seed, 0, text.embed(&case.prompt));
        p.generate(&[request], &conditioned).remove(0)
    };
    // A first chunk has no context: the same with and without.
    let (a, b) = (first(&clean), first(&noisy));
    assert_eq!(a.to_data(), b.to_data());
    // A chunk that goes on from it is conditioned on noised latents, so it differs, and the
    // noise is the chunk's own: the same again.
    let next = |p: &Pipeline<Flex>| {
        let mut rolling = RollingContext::new(ContextLayout::recent(1));
        rolling.push(a.clone());
        p.generate(&[rolling.request(case.seed, 1, text.embed(&case.prompt))], &conditioned).remove(0)
    };
    let (c, d) = (next(&clean), next(&noisy));
    // Sampling is deterministic, so without the noise the chunks would be equal bit for bit.
    let moved = (c - d.clone()).abs().max().into_scalar();
    assert!(moved > 0.0, "the context noise did not move the chunk");
    assert_eq!(next(&noisy).to_data(), d.to_data());
    // Replacement does not condition on the context: the noise does not reach it.
    let replacement = settings(ExtendMode::Replacement);
    let replaced = |p: &Pipeline<Flex>| {
        let mut rolling = RollingContext::new(ContextLayout::recent(1));
        rolling.push(a.clone());
        p.generate(&[rolling.request(case.seed, 1, text.embed(&case.prompt))], &replacement).remove(0)
    };
    assert_eq!(replaced(&clean).to_data(), replaced(&noisy).to_data());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn self_conditioning_feeds_each_pass_its_own_estimate() {
    let Some((out, pipeline, text)) = micro("self-conditioning", 16) else { return };
    let case = &held_out_cases(1, 3)[0];
    let sample = |text_guidance: f64, self_conditioning: SelfConditioning| {
        let settings = SamplerSettings {
            steps: 3,
            guidance: Guidance { text: text_guidance, context: 1.0 },
            self_conditioning,
            ..settings(ExtendMode::Conditioned)
        };
        let request = RollingContext::new(ContextLayout::recent(1)).request(case.seed, 0, text.embed(&case.prompt));
        pipeline.generate(&[request], &settings).remove(0)
    };
    let differ = |a: &burn::tensor::Tensor<Flex, 4>, b: &burn::tensor::Tensor<Flex, 4>| {
        (a.clone() - b.clone()).abs().max().into_scalar() > 0.0
    };
    // Unguided, one pass: its own estimate is the guided one, bit for bit.
    let (own, guided, off) = (
        sample(1.0, SelfConditioning::PerPass),
        sample(1.0, SelfConditioning::Guided),
        sample(1.0, SelfConditioning::Off),
    );
    assert_eq!(own.to_data(), guided.to_data());
    assert!(differ(&own, &off), "the estimate fed back changes nothing: the test cannot tell the ways apart");
    // Guided, the passes' own estimates are not the guided one.
    let (own, guided) = (sample(4.0, SelfConditioning::PerPass), sample(4.0, SelfConditioning::Guided));
    assert!(differ(&own, &guided));
    assert_eq!(sample(4.0, SelfConditioning::PerPass).to_data(), own.to_data(), "deterministic");
    let _ = std::fs::remove_dir_all(&out);
}
