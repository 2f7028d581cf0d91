//! Measuring what a pipeline generates, on prompts and phrasings training never saw: prompt
//! adherence, FWD against real world clips (with the real-vs-real baseline), the jump across
//! chunk boundaries, camera motion, drift over one long stream, and how fast a steer shows.
//!
//! Streams are generated exactly as the service does (chunk by chunk, the last K latents as
//! context, the VAE decoding causally), several at a time in one batch. Every comparison with
//! the world uses clips of the same attributes rendered by the world itself.

use super::classifier::{Confusion, Evaluator, HEADS, Reading, label_indices};
use super::frechet::frechet_distance;
use super::motion::{camera_velocity, pan_along};
use crate::data::{video_frames, video_tensor};
use crate::pipeline::{ChunkRequest, Pipeline, SamplerSettings};
use crate::rolling::{ContextLayout, RollingContext};
use crate::text::TextEmbedding;
use crate::vae::StreamState;
use crate::world::{
    Attributes, Camera, Clip, HELD_OUT_COMBINATIONS, Phrasing, Scenery, Split, TimeOfDay, Timeline, Weather, World,
    noise_hash,
};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// One test prompt: held-out attributes in a held-out phrasing.
#[derive(Debug, Clone, Serialize)]
pub struct Case {
    pub prompt: String,
    pub attributes: Attributes,
    pub seed: u64,
}

/// `n` cases cycling through the held-out combinations and the three cameras.
pub fn held_out_cases(n: usize, seed: u64) -> Vec<Case> {
    cases_of(Split::HeldOut, Split::HeldOut, n, seed)
}

/// `n` test prompts: combinations of attributes of `split`, each in a phrasing of `phrasing`'s
/// split.
/// - [`Split::HeldOut`]: cycling through the held-out combinations and the three cameras.
/// - [`Split::Train`]: combinations that training draws, spread over all of them (a stride
///   coprime to their number).
///
/// Set against the held-out cases, the training ones tell a gap in generalisation (to unseen
/// combinations, or to unseen words) from one in fitting.
pub fn cases_of(split: Split, phrasing: Split, n: usize, seed: u64) -> Vec<Case> {
    let combinations: Vec<(TimeOfDay, Weather, Scenery)> = match split {
        Split::HeldOut => HELD_OUT_COMBINATIONS.to_vec(),
        Split::Train => {
            let all = TimeOfDay::ALL
                .iter()
                .flat_map(|&t| Weather::ALL.iter().flat_map(move |&w| Scenery::ALL.iter().map(move |&s| (t, w, s))));
            let train: Vec<_> = all.filter(|c| !HELD_OUT_COMBINATIONS.contains(c)).collect();
            (0..train.len()).map(|i| train[i * TRAIN_STRIDE % train.len()]).collect()
        }
    };
    (0..n)
        .map(|i| {
            let (time, weather, scenery) = combinations[i % combinations.len()];
            let camera = Camera::ALL[(i + i / combinations.len()) % Camera::COUNT];
            let attributes = Attributes { time, weather, scenery, camera };
            let words = Phrasing::sample(phrasing, noise_hash(seed, i as i64, 1));
            Case { prompt: words.caption(&attributes), attributes, seed: noise_hash(seed, i as i64, 2) }
        })
        .collect()
}

/// Coprime to the 108 training combinations: the first 108 training cases are each of them
/// once, and consecutive ones lie far apart in their time-major order.
const TRAIN_STRIDE: usize = 37;

/// One stream being generated.
struct Stream<B: Backend> {
    seed: u64,
    chunk: u64,
    rolling: RollingContext<B>,
    decoder: StreamState<B>,
    text: Arc<TextEmbedding>,
    frames: usize,
    /// Index of the first frame of every chunk after the first.
    boundaries: Vec<usize>,
}

/// Streams generated together, one chunk each per batch, as the service's scheduler does.
pub struct Streams<'a, B: Backend> {
    pipeline: &'a Pipeline<B>,
    settings: SamplerSettings,
    streams: Vec<Stream<B>>,
}

impl<'a, B: Backend> Streams<'a, B> {
    /// Streams conditioned as `layout` says (its context clamped to the window, its anchors
    /// dropped when the pipeline was not trained with them).
    pub fn new(
        pipeline: &'a Pipeline<B>,
        settings: SamplerSettings,
        layout: ContextLayout,
        starts: Vec<(u64, Arc<TextEmbedding>)>,
    ) -> Self {
        let layout = layout.fit(pipeline.spec.window, pipeline.spec.anchors);
        let streams = starts
            .into_iter()
            .map(|(seed, text)| Stream {
                seed,
                chunk: 0,
                rolling: RollingContext::new(layout),
                decoder: StreamState::default(),
                text,
                frames: 0,
                boundaries: Vec::new(),
            })
            .collect();
        Streams { pipeline, settings, streams }
    }

    /// From the next chunk on, stream `i` follows `text` (its anchors, of the old prompt, go).
    /// Returns the frame it takes effect at.
    pub fn steer(&mut self, i: usize, text: Arc<TextEmbedding>) -> usize {
        let s = &mut self.streams[i];
        s.text = text;
        s.rolling.set_prompt_epoch(s.rolling.prompt_epoch() + 1);
        s.frames
    }

    /// Starts stream `i`, before its first chunk, from the normalised latents `[c, n, h, w]` of
    /// real video: its context holds them and its decoder has decoded them (their frames are
    /// not returned), so what it makes next continues that video. Frames count from there.
    pub fn prime(&mut self, i: usize, latents: Tensor<B, 4>) {
        let s = &mut self.streams[i];
        assert_eq!(s.chunk, 0, "a stream is primed before its first chunk");
        self.pipeline.decode_stream(latents.clone().unsqueeze_dim(0), &mut s.decoder);
        s.rolling.push(latents);
        s.chunk = 1;
    }

    /// Starts every stream, before its first chunk, from a still image the denoiser makes for
    /// its prompt (one latent frame, [`Pipeline::generate_image`]), which the stream then
    /// continues as it would a real video's first frame ([`Streams::prime`]).
    pub fn start_from_images(&mut self) {
        let requests: Vec<ChunkRequest<B>> =
            self.streams.iter().map(|s| s.rolling.request(s.seed, s.chunk, s.text.clone())).collect();
        for (i, image) in self.pipeline.generate_image(&requests, &self.settings).into_iter().enumerate() {
            self.prime(i, image);
        }
    }

    /// Frames generated so far by stream `i`, and its chunk boundaries.
    pub fn position(&self, i: usize) -> (usize, &[usize]) {
        (self.streams[i].frames, &self.streams[i].boundaries)
    }

    /// One more chunk of every stream: the new RGB8 frames of each.
    pub fn next_chunk(&mut self) -> Vec<Vec<Vec<u8>>> {
        let requests: Vec<ChunkRequest<B>> =
            self.streams.iter().map(|s| s.rolling.request(s.seed, s.chunk, s.text.clone())).collect();
        let latents = self.pipeline.generate(&requests, &self.settings);
        self.streams
            .iter_mut()
            .zip(latents)
            .map(|(s, new)| {
                let video = self.pipeline.decode_stream(new.clone().unsqueeze_dim(0), &mut s.decoder);
                let frames = video_frames(video).remove(0);
                if s.chunk > 0 {
                    s.boundaries.push(s.frames);
                }
                s.frames += frames.len();
                s.chunk += 1;
                s.rolling.push(new);
                frames
            })
            .collect()
    }

    /// At least `frames` frames of every stream, truncated to exactly that.
    pub fn run(&mut self, frames: usize) -> Vec<Vec<Vec<u8>>> {
        let mut out: Vec<Vec<Vec<u8>>> = vec![Vec::new(); self.streams.len()];
        while out.iter().any(|o| o.len() < frames) {
            for (o, new) in out.iter_mut().zip(self.next_chunk()) {
                o.extend(new);
            }
        }
        for o in &mut out {
            o.truncate(frames);
        }
        out
    }
}

/// A world clip of fixed attributes.
pub fn real_clip(attributes: Attributes, seed: u64, width: usize, height: usize, fps: f64, frames: usize) -> Clip {
    Clip {
        world: World::new(seed),
        timeline: Timeline::new(attributes),
        phrasing: Phrasing::sample(Split::HeldOut, seed),
        start: (seed % 3600) as f64,
        fps,
        frames,
        width,
        height,
    }
}

/// Mean absolute difference of two RGB8 frames.
fn frame_mae(a: &[u8], b: &[u8]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).abs()).sum::<f64>() / a.len() as f64
}

/// Mean frame difference across chunk boundaries ÷ within chunks (1: seamless).
pub fn boundary_jump(frames: &[Vec<u8>], boundaries: &[usize]) -> Option<f64> {
    let (mut at, mut within) = ((0.0, 0usize), (0.0, 0usize));
    for i in 1..frames.len() {
        let d = frame_mae(&frames[i - 1], &frames[i]);
        let slot = if boundaries.contains(&i) { &mut at } else { &mut within };
        slot.0 += d;
        slot.1 += 1;
    }
    (at.1 > 0 && within.1 > 0 && within.0 > 0.0).then(|| (at.0 / at.1 as f64) / (within.0 / within.1 as f64))
}

/// The evaluator's readings of every frame of a clip after its warm-up, in pieces of at most
/// `piece` frames (each piece starts its own warm-up).
pub fn read_frames<B: Backend>(
    evaluator: &Evaluator<B>,
    frames: &[Vec<u8>],
    width: usize,
    height: usize,
    piece: usize,
    device: &B::Device,
) -> Vec<Reading> {
    frames
        .chunks(piece.max(evaluator.warmup_frames + 1))
        .filter(|c| c.len() > evaluator.warmup_frames)
        .flat_map(|c| evaluator.read(video_tensor::<B>(&[c.to_vec()], width, height, device)).remove(0))
        .collect()
}

/// Fraction of readings that give each attribute of `want`, in head order; each reading also
/// goes into `confusion`, one table per head, for the heads it has (the metrics read the
/// camera off the pixels instead).
fn adherence(readings: &[Reading], want: &Attributes, confusion: &mut [Confusion]) -> [f64; 4] {
    let want = label_indices(want);
    let mut right = [0usize; 4];
    for r in readings {
        let got = label_indices(&r.attributes);
        for k in 0..4 {
            right[k] += (got[k] == want[k]) as usize;
            if let Some(table) = confusion.get_mut(k) {
                table.record(want[k], got[k]);
            }
        }
    }
    right.map(|r| r as f64 / readings.len().max(1) as f64)
}

fn named(values: [f64; 4]) -> Vec<(String, f64)> {
    HEADS.iter().zip(values).map(|(&(n, _), v)| (n.to_string(), v)).collect()
}

/// The mean, NaN for none.
pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// What to measure and how long.
#[derive(Debug, Clone)]
pub struct GenerationEvalOptions {
    pub cases: usize,
    pub clip_seconds: f64,
    pub settings: SamplerSettings,
    /// Recent latents and anchors each chunk is conditioned on.
    pub layout: ContextLayout,
    /// Length of the drift stream (0: none).
    pub drift_minutes: f64,
    pub switch_cases: usize,
    /// The steer comes after this many seconds…
    pub switch_at: f64,
    /// …and the stream goes on this long after it.
    pub switch_after: f64,
    /// Streams per batch.
    pub batch: usize,
    pub seed: u64,
    /// Whose prompts: held-out combinations of attributes (the measure), or those training
    /// draws (how well the model fits what it saw)…
    pub split: Split,
    /// …in the words of this split.
    pub phrasing: Split,
    /// Also continue world clips: every case's stream starts from the latents of a world clip
    /// of its attributes (as many latent frames as the context holds) and is measured on what
    /// it makes after them ([`GenerationReport::continued`]).
    pub continued: bool,
    /// Start every measured clip from a still image the denoiser makes first
    /// ([`Streams::start_from_images`]) instead of from a whole window of noise.
    pub image_first: bool,
}

/// Metrics over a set of clips, generated or real.
#[derive(Debug, Clone, Serialize)]
pub struct ClipMetrics {
    /// Per attribute: fraction of frames where the evaluator reads the prompt's value; for the
    /// camera, fraction of clips whose measured pan has the prompt's direction.
    pub adherence: Vec<(String, f64)>,
    pub adherence_mean: f64,
    /// Mean frame difference across chunk boundaries ÷ within chunks.
    pub boundary_jump: f64,
    /// Fraction of clips whose measured pan has the prompt's direction (or is still).
    pub camera_direction: f64,
    /// Mean |measured − prompted| camera speed, screen heights per second.
    pub camera_speed_error: f64,
    /// Share of the prompted pan that the panning clips' frames move by, read by least
    /// squares between frames half a second apart along the pan's direction (1: all of it,
    /// 0: none, negative: the wrong way). Phase correlation reads a blurred picture as still,
    /// so [`ClipMetrics::camera_direction`] says nothing of a pan too faint to be called one;
    /// this says how much of it there is. NaN without panning clips.
    pub pan_share: f64,
    /// Per clip, in order, the adherence of each attribute (time, weather, scenery: fractions
    /// of frames; camera: 1 when the pan has the prompt's direction): which prompts fail.
    pub per_clip: Vec<[f64; 4]>,
    /// Per attribute, what was read against what the prompt wanted: frames by the evaluator for
    /// time, weather and scenery, clips by the pan read off the pixels for the camera (as
    /// `adherence` scores them), so a miss says what was made instead.
    pub confusion: Vec<Confusion>,
}

/// One minute of the drift stream.
#[derive(Debug, Clone, Serialize)]
pub struct MinuteMetrics {
    pub minute: usize,
    pub metrics: ClipMetrics,
    /// FWD of this minute's frames against a real clip of the same attributes.
    pub fwd: f64,
}

/// One prompt switch.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchCase {
    pub from: String,
    pub to: String,
    pub attribute: String,
    /// Seconds of video from the steer until the evaluator reads the new value on 8 frames in a
    /// row; `None`: not within the run.
    pub seconds: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerationReport {
    /// The splits the cases' combinations and words come from.
    pub split: Split,
    pub phrasing: Split,
    pub cases: Vec<Case>,
    pub clip_seconds: f64,
    pub generated: ClipMetrics,
    /// The same metrics on world clips of the same attributes (the chunk grid of the
    /// generated clips laid over them): the evaluator's ceiling.
    pub real: ClipMetrics,
    /// The same world clips encoded and decoded by the pipeline's VAE: the most the denoiser
    /// can reach through this VAE.
    pub reconstructed: ClipMetrics,
    /// The same metrics on streams that continue world clips of the same attributes (only what
    /// they make after the clip's latents): whether the denoiser carries on what a real video
    /// does, such as its pan, apart from whether it starts it. `None` unless asked for.
    pub continued: Option<ClipMetrics>,
    /// Fréchet distance of the evaluator's per-frame features, generated against real.
    pub fwd: f64,
    /// The same between two independent real sets.
    pub fwd_real_vs_real: f64,
    /// The same, reconstructed against real.
    pub fwd_reconstructed: f64,
    pub drift: Vec<MinuteMetrics>,
    /// Per metric, (last minute − first minute) ÷ first minute.
    pub drift_change: Vec<(String, f64)>,
    pub switches: Vec<SwitchCase>,
    pub switch_seconds_mean: Option<f64>,
    /// Seconds of video generated ÷ seconds it took.
    pub realtime_factor: f64,
}

/// A clip's frames, its chunk boundaries and the attributes it should show.
type LabelledClip = (Vec<Vec<u8>>, Vec<usize>, Attributes);

fn clip_metrics<B: Backend>(
    evaluator: &Evaluator<B>,
    clips: &[LabelledClip],
    size: (usize, usize, f64),
    device: &B::Device,
) -> (ClipMetrics, Vec<Vec<f32>>) {
    let (w, h, fps) = size;
    let (mut adh, mut jumps, mut dirs, mut speed) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut moved, mut expected) = (0.0, 0.0);
    let step = (fps / 2.0).round().max(1.0) as usize;
    let mut features = Vec::new();
    let mut confusion = Confusion::of_heads();
    let camera = 3;
    for (frames, boundaries, want) in clips {
        let readings = read_frames(evaluator, frames, w, h, 480, device);
        adh.push(adherence(&readings, want, &mut confusion[..camera]));
        features.extend(readings.into_iter().map(|r| r.features));
        jumps.extend(boundary_jump(frames, boundaries));
        let v = camera_velocity(frames, w, h, fps);
        let read = Camera::from_velocity(v);
        confusion[camera].record(want.camera.index(), read.index());
        dirs.push((read == want.camera) as u8 as f64);
        speed.push((v - want.camera.velocity()).abs());
        let (m, e) = pan_along(frames, (0..frames.len()).step_by(step), step, want.camera, size);
        (moved, expected) = (moved + m, expected + e);
    }
    // The camera is read off the pixels (phase correlation), once per clip, as it has been since
    // the first evaluator, whose camera was at chance on held-out clips; the evaluator reads it
    // per frame since v6 (docs/MODEL_CARD.md), but a prompt's camera does not change within a
    // generated clip, and the figures stay comparable with every earlier one.
    let per: [f64; 4] = std::array::from_fn(|k| {
        if k == camera { mean(&dirs) } else { mean(&adh.iter().map(|a| a[k]).collect::<Vec<_>>()) }
    });
    let metrics = ClipMetrics {
        adherence: named(per),
        adherence_mean: mean(&per),
        boundary_jump: mean(&jumps),
        camera_direction: mean(&dirs),
        camera_speed_error: mean(&speed),
        pan_share: moved / expected,
        per_clip: adh.iter().zip(&dirs).map(|(a, &d)| [a[0], a[1], a[2], d]).collect(),
        confusion,
    };
    (metrics, features)
}

/// `frames` through the pipeline's VAE (posterior mean), with the last frame repeated up to a
/// length it encodes (`1 + 4k`) and cut back after.
fn reconstruct<B: Backend>(pipeline: &Pipeline<B>, mut frames: Vec<Vec<u8>>, device: &B::Device) -> Vec<Vec<u8>> {
    let (n, f) = (frames.len(), pipeline.temporal_factor());
    let padded = 1 + (n.max(1) - 1).div_ceil(f) * f;
    let last = frames.last().expect("a clip has frames").clone();
    frames.resize(padded, last);
    let (w, h) = (pipeline.spec.width, pipeline.spec.height);
    let video = video_tensor::<B>(&[frames], w, h, device);
    let mut out = video_frames(pipeline.decode(pipeline.encode(video))).remove(0);
    out.truncate(n);
    out
}

/// Runs every measurement. `embed` gives the text embedding of a prompt.
pub fn evaluate_generation<B: Backend>(
    pipeline: &Pipeline<B>,
    evaluator: &Evaluator<B>,
    embed: &dyn Fn(&str) -> Arc<TextEmbedding>,
    o: &GenerationEvalOptions,
    device: &B::Device,
) -> GenerationReport {
    let spec = &pipeline.spec;
    let (w, h, fps) = (spec.width, spec.height, spec.fps);
    let size = (w, h, fps);
    let started = Instant::now();
    let mut generated_frames = 0usize;
    let cases = cases_of(o.split, o.phrasing, o.cases, o.seed);
    let frames = (o.clip_seconds * fps).round().max(evaluator.warmup_frames as f64 + 2.0) as usize;

    // Clips: every case, `batch` streams at a time.
    let mut generated = Vec::new();
    for group in cases.chunks(o.batch.max(1)) {
        let starts = group.iter().map(|c| (c.seed, embed(&c.prompt))).collect();
        let mut streams = Streams::new(pipeline, o.settings, o.layout, starts);
        if o.image_first {
            streams.start_from_images();
        }
        let clips = streams.run(frames);
        generated_frames += clips.len() * frames;
        for (i, (clip, case)) in clips.into_iter().zip(group).enumerate() {
            let boundaries: Vec<usize> =
                streams.position(i).1.iter().copied().filter(|&b| b > 0 && b < frames).collect();
            generated.push((clip, boundaries, case.attributes));
        }
    }
    let real_set = |salt: i64| -> Vec<LabelledClip> {
        cases
            .iter()
            .zip(&generated)
            .map(|(c, g)| {
                let clip = real_clip(c.attributes, noise_hash(c.seed, salt, 3), w, h, fps, frames);
                (clip.render(true), g.1.clone(), c.attributes)
            })
            .collect()
    };
    let (gen_metrics, gen_features) = clip_metrics(evaluator, &generated, size, device);
    let real = real_set(1);
    let (real_metrics, real_features) = clip_metrics(evaluator, &real, size, device);
    let (_, real_features_2) = clip_metrics(evaluator, &real_set(2), size, device);
    let reconstructed: Vec<LabelledClip> = real
        .into_iter()
        .map(|(frames, boundaries, attributes)| (reconstruct(pipeline, frames, device), boundaries, attributes))
        .collect();
    let (rec_metrics, rec_features) = clip_metrics(evaluator, &reconstructed, size, device);
    let fwd = frechet_distance(&gen_features, &real_features);
    let fwd_real_vs_real = frechet_distance(&real_features_2, &real_features);
    let fwd_reconstructed = frechet_distance(&rec_features, &real_features);

    // Continuations of world clips: the first 1 + 4(k − 1) frames, k the context's latent
    // frames, encoded, then `frames` more generated.
    let continued = o.continued.then(|| {
        let context = o.layout.fit(spec.window, spec.anchors).frames.max(1);
        let given = 1 + (context - 1) * pipeline.temporal_factor();
        let mut clips = Vec::new();
        for group in cases.chunks(o.batch.max(1)) {
            let starts = group.iter().map(|c| (c.seed, embed(&c.prompt))).collect();
            let mut streams = Streams::new(pipeline, o.settings, o.layout, starts);
            for (i, c) in group.iter().enumerate() {
                let clip = real_clip(c.attributes, noise_hash(c.seed, 4, 3), w, h, fps, given).render(true);
                streams.prime(i, pipeline.encode(video_tensor::<B>(&[clip], w, h, device)).squeeze_dim(0));
            }
            let made = streams.run(frames);
            generated_frames += made.len() * frames;
            for (i, (clip, case)) in made.into_iter().zip(group).enumerate() {
                let boundaries = streams.position(i).1.iter().copied().filter(|&b| b > 0 && b < frames).collect();
                clips.push((clip, boundaries, case.attributes));
            }
        }
        clip_metrics(evaluator, &clips, size, device).0
    });

    // Drift: one stream of the first case, measured minute by minute.
    let mut drift = Vec::new();
    if o.drift_minutes > 0.0 && !cases.is_empty() {
        let case = &cases[0];
        let per_minute = (60.0 * fps).round() as usize;
        let minutes = (o.drift_minutes.ceil() as usize).max(1);
        let reference = real_clip(case.attributes, noise_hash(case.seed, 9, 3), w, h, fps, per_minute).render(true);
        // Only its features are needed (not the camera's pan over a whole minute).
        let reference: Vec<Vec<f32>> =
            read_frames(evaluator, &reference, w, h, 480, device).into_iter().map(|r| r.features).collect();
        let mut streams = Streams::new(pipeline, o.settings, o.layout, vec![(case.seed, embed(&case.prompt))]);
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut start = 0;
        for minute in 1..=minutes {
            let want = ((o.drift_minutes * 60.0 * fps).round() as usize).min(minute * per_minute) - start;
            while pending.len() < want {
                pending.extend(streams.next_chunk().remove(0));
            }
            let frames: Vec<Vec<u8>> = pending.drain(..want).collect();
            generated_frames += frames.len();
            let boundaries: Vec<usize> =
                streams.position(0).1.iter().filter(|&&b| b > start && b < start + want).map(|&b| b - start).collect();
            let (metrics, features) = clip_metrics(evaluator, &[(frames, boundaries, case.attributes)], size, device);
            let fwd = if features.len() >= 2 { frechet_distance(&features, &reference) } else { f64::NAN };
            drift.push(MinuteMetrics { minute, metrics, fwd });
            start += want;
        }
    }
    let drift_change = match (drift.first(), drift.last()) {
        (Some(a), Some(b)) if drift.len() > 1 => {
            let change = |x: f64, y: f64| (y - x) / x.abs().max(1e-9);
            vec![
                ("adherence".into(), change(a.metrics.adherence_mean, b.metrics.adherence_mean)),
                ("fwd".into(), change(a.fwd, b.fwd)),
                ("boundary_jump".into(), change(a.metrics.boundary_jump, b.metrics.boundary_jump)),
                ("camera_speed_error".into(), change(a.metrics.camera_speed_error, b.metrics.camera_speed_error)),
            ]
        }
        _ => Vec::new(),
    };

    // Prompt switches: one attribute changes mid-stream.
    let switch_cases: Vec<(Case, Case, usize)> = cases_of(o.split, o.phrasing, o.switch_cases, o.seed ^ 0x5157)
        .into_iter()
        .enumerate()
        .map(|(i, from)| {
            // Each attribute in turn, as the evaluator reads it frame by frame (the camera only
            // with a head of its own, v6 on: the shared head's camera misses at transitions).
            let k = i % if evaluator.camera.is_some() { 4 } else { 3 };
            let mut to = from.attributes;
            match k {
                0 => to.time = TimeOfDay::from_index((to.time.index() + 2) % TimeOfDay::COUNT),
                1 => to.weather = Weather::from_index((to.weather.index() + 1) % Weather::COUNT),
                2 => to.scenery = Scenery::from_index((to.scenery.index() + 3) % Scenery::COUNT),
                _ => to.camera = Camera::from_index((to.camera.index() + 1) % Camera::COUNT),
            }
            let prompt = Phrasing::sample(o.phrasing, from.seed).caption(&to);
            (from.clone(), Case { prompt, attributes: to, seed: from.seed }, k)
        })
        .collect();
    let mut switches = Vec::new();
    for group in switch_cases.chunks(o.batch.max(1)) {
        let starts = group.iter().map(|(from, _, _)| (from.seed, embed(&from.prompt))).collect();
        let mut streams = Streams::new(pipeline, o.settings, o.layout, starts);
        let before = (o.switch_at * fps).round() as usize;
        let after = (o.switch_after * fps).round() as usize;
        let mut clips = streams.run(before);
        // Steering lands on the next chunk: frames generated beyond `before` are kept.
        let steered_at: Vec<usize> =
            group.iter().enumerate().map(|(i, (_, to, _))| streams.steer(i, embed(&to.prompt))).collect();
        for (clip, rest) in clips.iter_mut().zip(streams.run(after)) {
            clip.extend(rest);
        }
        for (i, (from, to, k)) in group.iter().enumerate() {
            let clip = &clips[i];
            generated_frames += clip.len();
            // The first full run of 8 frames reading the new value, counted from the steer.
            let readings = read_frames(evaluator, clip, w, h, 480, device);
            let skip = evaluator.warmup_frames;
            let want = label_indices(&to.attributes)[*k];
            let mut run = 0;
            let mut seconds = None;
            for (j, r) in readings.iter().enumerate() {
                let frame = j + skip;
                if frame < steered_at[i] {
                    continue;
                }
                run = if label_indices(&r.attributes)[*k] == want { run + 1 } else { 0 };
                if run == 8 {
                    seconds = Some((frame + 1 - 8 - steered_at[i]) as f64 / fps);
                    break;
                }
            }
            switches.push(SwitchCase {
                from: from.prompt.clone(),
                to: to.prompt.clone(),
                attribute: HEADS[*k].0.to_string(),
                seconds,
            });
        }
    }
    let answered: Vec<f64> = switches.iter().filter_map(|s| s.seconds).collect();
    GenerationReport {
        split: o.split,
        phrasing: o.phrasing,
        cases,
        clip_seconds: o.clip_seconds,
        generated: gen_metrics,
        real: real_metrics,
        reconstructed: rec_metrics,
        continued,
        fwd,
        fwd_real_vs_real,
        fwd_reconstructed,
        drift,
        drift_change,
        switch_seconds_mean: (!answered.is_empty()).then(|| mean(&answered)),
        switches,
        realtime_factor: generated_frames as f64 / fps / started.elapsed().as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::split_of;

    #[test]
    fn cases_are_held_out_and_cover_every_camera() {
        let cases = held_out_cases(24, 1);
        assert!(cases.iter().all(|c| split_of(&c.attributes) == Split::HeldOut));
        for camera in Camera::ALL {
            assert!(cases.iter().any(|c| c.attributes.camera == *camera));
        }
        assert_eq!(held_out_cases(24, 1)[5].prompt, cases[5].prompt);
    }

    /// Training cases are what training draws, the first 108 of them every training
    /// combination once.
    #[test]
    fn training_cases_cover_every_training_combination() {
        let cases = cases_of(Split::Train, Split::Train, 108, 1);
        assert!(cases.iter().all(|c| split_of(&c.attributes) == Split::Train));
        let combinations: std::collections::HashSet<_> =
            cases.iter().map(|c| (c.attributes.time, c.attributes.weather, c.attributes.scenery)).collect();
        assert_eq!(combinations.len(), 108);
    }

    #[test]
    fn boundary_jump_of_a_seam() {
        // Frames that drift by 1 per frame, with a jump of 5 at frame 4.
        let frames: Vec<Vec<u8>> = (0..8u8).map(|i| vec![i + if i >= 4 { 4 } else { 0 }; 12]).collect();
        assert_eq!(boundary_jump(&frames, &[4]), Some(5.0));
        // At frame 2 a step of 1 against (1 + 5 + 4·1) / 6 elsewhere.
        assert!((boundary_jump(&frames, &[2]).unwrap() - 0.6).abs() < 1e-12);
        assert_eq!(boundary_jump(&frames, &[]), None);
    }

    /// Each reading scores against the prompt and lands in its head's table at (wanted, read);
    /// heads without a table (the camera, read off the pixels) are scored but not tabled.
    #[test]
    fn adherence_tables_what_was_read() {
        let want = Attributes { time: TimeOfDay::Night, weather: Weather::Fog, ..Attributes::default() };
        let read = |weather| Reading { attributes: Attributes { weather, ..want }, features: vec![] };
        let readings = [read(Weather::Fog), read(Weather::Snow), read(Weather::Snow)];
        let mut confusion = Confusion::of_heads();
        let scores = adherence(&readings, &want, &mut confusion[..3]);
        assert_eq!(scores[0], 1.0);
        assert!((scores[1] - 1.0 / 3.0).abs() < 1e-12);
        let (fog, snow, night) = (Weather::Fog.index(), Weather::Snow.index(), TimeOfDay::Night.index());
        assert_eq!(confusion[1].counts[fog][fog], 1);
        assert_eq!(confusion[1].counts[fog][snow], 2);
        assert_eq!(confusion[1].mistakes(), vec![("fog", "snow", 2)]);
        assert_eq!(confusion[0].counts[night][night], 3);
        assert!(confusion[3].counts.iter().flatten().all(|&n| n == 0));
    }

    #[test]
    fn real_clips_keep_their_attributes() {
        let a = Attributes { time: TimeOfDay::Night, weather: Weather::Snow, ..Attributes::default() };
        let clip = real_clip(a, 3, 32, 32, 8.0, 6);
        assert!(clip.labels().iter().all(|l| *l == a));
    }
}
