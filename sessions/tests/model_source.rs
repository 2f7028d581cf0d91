//! The model as a frame source, on a micro pipeline trained for a few steps in the test: the
//! context stays bounded over 1000 chunks, sessions sharing the device get the frames they get
//! alone, a steer changes the stream from the chunk it names and no earlier, forks continue
//! exactly and diverge only when steered apart, a prompt timeline replays bit for bit, and a
//! distilled pipeline streams in its own steps.
//!
//! Needs all-MiniLM-L6-v2 (scripts/fetch-minilm.sh); skipped with a message without it unless
//! ENDLESS_REQUIRE_MINILM is set.

use endless_model::device::DeviceKind;
use endless_model::pipeline::SamplerSettings;
use endless_model::text::dir_for_tests;
use endless_sessions::{FrameSource, ModelSettings, ModelSource, Scheduler};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

/// One micro pipeline for every test of this binary.
fn pipeline_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        let text = dir_for_tests()?;
        let dir = std::env::temp_dir().join(format!("endless-model-source-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        endless_model::train::micro_pipeline(&dir, &text, 4).expect("the micro pipeline trains");
        Some(dir)
    })
    .clone()
}

fn scheduler(max_batch: usize) -> Option<Arc<Scheduler>> {
    scheduler_decoding(max_batch, true)
}

/// [`scheduler`], decoding on a thread of its own or in the worker.
fn scheduler_decoding(max_batch: usize, decode_thread: bool) -> Option<Arc<Scheduler>> {
    let dir = pipeline_dir()?;
    let settings = ModelSettings {
        dir,
        text_dir: dir_for_tests()?,
        device: DeviceKind::Cpu,
        sampler: SamplerSettings { steps: 3, ..SamplerSettings::default() },
        min_steps: 1,
        context_frames: 2,
        anchors: 1,
        anchor_every: 2,
        max_batch,
        decode_thread,
        decode_threads: 1,
        parallel_passes: decode_thread,
        ema: true,
        history_frames: 64,
    };
    Some(Scheduler::start(settings).expect("the scheduler starts"))
}

#[test]
fn the_context_stays_bounded_over_a_thousand_chunks() {
    let Some(s) = scheduler(4) else { return };
    let mut source = ModelSource::new(s.clone(), "snowy mountains at night", 1);
    let per_chunk = s.chunk_frames;
    assert_eq!(s.first_chunk_frames, 9, "window 3: 1 + 4·2 frames");
    assert_eq!(per_chunk, 4, "window 3, context 2: one new latent, 4 frames");
    let mut bytes_after_warmup = 0;
    for i in 0..1000 {
        let frames = source.next_chunk(per_chunk).unwrap();
        assert_eq!(frames.len(), per_chunk);
        assert!(frames.iter().all(|f| f.len() == 32 * 32 * 3));
        // Steady once the anchor candidates are full and every snapshot (the last 8 chunks)
        // was taken after that.
        if i == 20 {
            bytes_after_warmup = s.stats.stream_bytes_max.load(Ordering::SeqCst);
        }
    }
    // Two recent latents and at most three anchor candidates (one usable anchor, one latent in
    // two a candidate, the two still among the recent latents).
    assert_eq!(s.stats.context_frames_max.load(Ordering::SeqCst), 5);
    // Every chunk from the fourth on has an anchor: latent 2, 4, … once two newer latents exist.
    let anchored = s.stats.anchored_chunks.load(Ordering::SeqCst);
    assert!((990..1000).contains(&anchored), "{anchored} of 1000 chunks had an anchor");
    let bytes = s.stats.stream_bytes_max.load(Ordering::SeqCst);
    assert!(bytes > 0 && bytes == bytes_after_warmup, "device state grew from {bytes_after_warmup} to {bytes} bytes");
    assert_eq!(source.next_frame(), 4000);
}

/// Frames of `n` chunks of `per` frames.
fn run(source: &mut dyn FrameSource, chunks: usize, per: usize) -> Vec<Vec<u8>> {
    (0..chunks).flat_map(|_| source.next_chunk(per).unwrap()).collect()
}

/// Three sessions run on one scheduler at once, with the decoder on its own thread and the
/// guided passes side by side (the CPU's way) and with both in the worker's one batch (a
/// GPU's), get the frames each gets alone.
#[test]
fn sessions_sharing_the_device_get_the_frames_they_get_alone() {
    let Some(alone) = scheduler(1) else { return };
    let prompts = ["a foggy morning at sea", "a desert at sunset", "a city at night in the rain"];
    let expected: Vec<Vec<Vec<u8>>> =
        prompts.iter().enumerate().map(|(i, p)| run(&mut ModelSource::new(alone.clone(), p, i as u64), 6, 5)).collect();
    for decode_thread in [true, false] {
        let shared = scheduler_decoding(8, decode_thread).unwrap();
        let threads: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut source = ModelSource::new(shared.clone(), p, i as u64);
                std::thread::spawn(move || run(&mut source, 6, 5))
            })
            .collect();
        for (i, t) in threads.into_iter().enumerate() {
            assert!(
                t.join().unwrap() == expected[i],
                "session {i} differs when it shares the device ({decode_thread})"
            );
        }
        let (batches, chunks) =
            (shared.stats.batches.load(Ordering::SeqCst), shared.stats.chunks.load(Ordering::SeqCst));
        eprintln!("shared scheduler, decoder thread {decode_thread}: {chunks} chunks in {batches} batches");
        // Decoding in place, the worker is busy while the other sessions ask, so their chunks
        // queue and share a batch. With a decoder thread this micro pipeline's decoder, not its
        // denoiser, is the slower stage, and chunks reach the worker one at a time.
        if !decode_thread {
            assert!(
                batches < chunks,
                "three concurrent sessions were never batched ({chunks} chunks, {batches} batches)"
            );
        }
    }
}

#[test]
fn a_steer_changes_the_stream_from_the_chunk_it_names_and_replays_exactly() {
    let Some(s) = scheduler(4) else { return };
    let plain = run(&mut ModelSource::new(s.clone(), "green hills on a clear day", 5), 8, 4);

    let mut steered = ModelSource::new(s.clone(), "green hills on a clear day", 5);
    let mut frames = run(&mut steered, 3, 4);
    // Asked for frame 14; the model changes at its next chunk boundary: 9 + 4k.
    let at = steered.steer(14, "a city at night in heavy snow", 0.0).unwrap();
    assert_eq!(at, 17);
    frames.extend(run(&mut steered, 5, 4));
    assert!(frames[..at as usize] == plain[..at as usize], "frames before the steer changed");
    assert!(frames[at as usize..at as usize + 4] != plain[at as usize..at as usize + 4], "the steer changed nothing");

    // Replay: a fresh source steered at the recorded frame before it gets there.
    let mut replay = ModelSource::new(s.clone(), "green hills on a clear day", 5);
    assert_eq!(replay.steer(at, "a city at night in heavy snow", 0.0).unwrap(), at);
    assert!(run(&mut replay, 8, 4) == frames, "the replay differs");
}

#[test]
fn forks_continue_exactly_and_diverge_only_when_steered_apart() {
    let Some(s) = scheduler(4) else { return };
    let mut parent = ModelSource::new(s.clone(), "a lake in the mountains", 9);
    let reference = run(&mut ModelSource::new(s.clone(), "a lake in the mountains", 9), 10, 4);
    run(&mut parent, 5, 4); // frames 0..20 returned
    let mut fork = parent.fork_at(14);
    assert_eq!(fork.next_frame(), 14);
    let forked = run(fork.as_mut(), 4, 4); // frames 14..30
    assert!(forked[..] == reference[14..30], "an unsteered fork is the same stream");
    let at = fork.steer(30, "a stormy sea", 0.0).unwrap();
    let fork_tail = run(fork.as_mut(), 2, 4);
    let parent_tail = run(&mut parent, 5, 4); // frames 20..40
    assert!(parent_tail[..] == reference[20..40], "forking changed the parent");
    let from = (at - 30) as usize;
    assert!(fork_tail[from..8] != parent_tail[10 + from..18], "the steered fork did not diverge");
}

#[test]
fn under_overload_chunks_get_fewer_steps_and_say_so_and_replay_exactly() {
    let Some(s) = scheduler(4) else { return };
    let mut source = ModelSource::new(s.clone(), "rain over the hills", 2);
    let mut frames = run(&mut source, 3, 4); // no deadline: full steps, and the worker learns its speed
    assert_eq!(source.stats()["steps"], 3);
    assert_eq!(s.stats.reduced_chunks.load(Ordering::SeqCst), 0);
    for _ in 0..3 {
        // The buffer is already dry: every chunk is late at full steps.
        source.set_due(std::time::Instant::now());
        frames.extend(source.next_chunk(4).unwrap());
    }
    assert_eq!(source.stats()["steps"], 1, "a chunk already late gets the fewest steps");
    assert!(s.stats.reduced_chunks.load(Ordering::SeqCst) >= 1);
    source.set_due(std::time::Instant::now() + std::time::Duration::from_secs(3600));
    frames.extend(run(&mut source, 2, 4)); // plenty of time again: full steps
    assert_eq!(source.stats()["steps"], 3);

    // The recording's description says which chunks got fewer steps; a replay gives them
    // those steps again, and so the same frames — which a replay at full steps does not.
    let description = source.describe();
    assert!(!description["steps_log"].as_array().unwrap().is_empty(), "{description}");
    let mut replay =
        endless_sessions::replay_source(&description, "rain over the hills", dir_for_tests().unwrap(), DeviceKind::Cpu)
            .expect("the replay source starts");
    assert!(run(&mut replay, 8, 4) == frames, "the replay differs from the stream made under overload");
    let mut full = ModelSource::new(s.clone(), "rain over the hills", 2);
    assert!(run(&mut full, 8, 4) != frames, "fewer steps changed nothing");
}

/// A steer into frames already generated (and even returned) rolls generation back to the
/// first chunk it can regenerate: the frames before it stay, the chunks after it are made
/// again with the new prompt — exactly what a replay with the steer at that frame makes.
#[test]
fn a_steer_rolls_back_the_buffered_chunks_and_equals_its_replay() {
    let Some(s) = scheduler(4) else { return };
    let mut source = ModelSource::new(s.clone(), "green hills on a clear day", 7);
    let first = run(&mut source, 1, 24); // frames 0..24 returned; chunks start at 0, 9, 13, 17, 21
    let at = source.steer(14, "a city at night in heavy snow", 0.0).unwrap();
    assert_eq!(at, 17, "the first chunk boundary after frame 14");
    assert!(source.rewind_to(14), "frames 14.. come again");
    assert_eq!(source.next_frame(), 14);
    let again = run(&mut source, 4, 4); // frames 14..30
    assert!(again[..3] == first[14..17], "frames before the steer's chunk are kept");
    assert!(again[3..7] != first[17..21], "the steer changed nothing");

    let mut replay = ModelSource::new(s.clone(), "green hills on a clear day", 7);
    assert_eq!(replay.steer(17, "a city at night in heavy snow", 0.0).unwrap(), 17);
    let replayed = run(&mut replay, 1, 30);
    assert!(replayed[..14] == first[..14] && replayed[14..30] == again[..], "the rolled-back stream is not its replay");
}

/// A distilled pipeline is served in the steps it was distilled to, with one pass per step (its
/// guidance built in), whatever the configured steps and guidance.
#[test]
fn a_distilled_pipeline_streams_in_its_own_steps_without_guidance() {
    use endless_model::diffusion::Guidance;
    use endless_model::train::{DistillFrom, TrainDenoiserOptions, train_denoiser};
    let (Some(teacher), Some(text)) = (pipeline_dir(), dir_for_tests()) else { return };
    let dir = std::env::temp_dir().join(format!("endless-model-source-distilled-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    let from =
        DistillFrom { teacher, teacher_steps: 4, guidance: Guidance { text: 2.0, context: 1.0 }, guidance_only: false };
    let options = TrainDenoiserOptions {
        batch: 2,
        steps: 2,
        log_every: 0,
        checkpoint_every: 0,
        ..TrainDenoiserOptions::distilling(from, &text, &dir).unwrap()
    };
    train_denoiser::<burn::backend::Autodiff<burn::backend::Flex>>(&options, &Default::default()).unwrap();
    let s = Scheduler::start(ModelSettings {
        dir: dir.clone(),
        text_dir: text,
        device: DeviceKind::Cpu,
        sampler: SamplerSettings { steps: 8, ..SamplerSettings::default() },
        min_steps: 1,
        context_frames: 2,
        anchors: 1,
        anchor_every: 2,
        max_batch: 2,
        decode_thread: true,
        decode_threads: 1,
        parallel_passes: true,
        ema: true,
        history_frames: 64,
    })
    .expect("the scheduler starts");
    assert_eq!(s.settings.sampler.steps, 2);
    assert_eq!(s.settings.sampler.guidance, Guidance::NONE);
    let mut source = ModelSource::new(s.clone(), "snowy mountains at night", 1);
    let frames = run(&mut source, 3, s.chunk_frames);
    assert_eq!(frames.len(), 3 * s.chunk_frames);
    let stats = source.stats();
    assert_eq!((stats["steps"].as_u64(), stats["full_steps"].as_u64()), (Some(2), Some(2)), "{stats}");
    std::fs::remove_dir_all(&dir).ok();
}
