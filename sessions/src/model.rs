//! The latent diffusion model as a frame source, and the scheduler that batches the chunks of
//! every session on one device.
//!
//! ```text
//!  ModelSource (per session) ──Job{key, seed, chunk, prompt, due}──▶ Scheduler worker (per device)
//!        ▲                                                              │ pending jobs, earliest due first
//!        │                                                              │ one batched denoise
//!        └──────────── frames (RGB8) of the chunk ◀── decoder ◀─ latents ┘ (its own thread on the CPU)
//! ```
//!
//! The worker owns everything that lives on the device: the pipeline and, per stream, the rolling
//! latent context ([`RollingContext`]: `context_frames` latents, `anchors` of them long-range
//! anchors once the stream has some — bounded, whatever the stream's length); its decoder
//! stage owns each stream's VAE decoder causal state. On the CPU the decoder stage is a thread
//! of its own (`decode_thread`), which decodes one batch while the worker denoises the next:
//! the denoiser keeps about one core busy, and this gives the decoder the other. Its parallel
//! work runs on a thread pool of its own (`decode_threads`), not queued behind the denoiser's.
//! Every change to a stream (fork, drop, rewind) reaches the decoder stage in order after the
//! chunks before it. A steer starts a new prompt epoch: the old prompt's anchors go.
//! Sessions only hold a key. Each loop the worker takes every pending job (up to `max_batch`),
//! earliest deadline first — the deadline is when the session's buffer runs dry — and denoises
//! them as one batch; if the batch would finish after the most urgent deadline at full steps,
//! it lowers the steps (not below `min_steps`) so that no stream stalls, and the chunk reports
//! the steps it got. Noise is drawn per stream and chunk, so a chunk is the same whatever
//! shares its batch.
//!
//! **Steering** takes effect at the first chunk boundary at or after the steer's frame. When
//! that chunk was already generated (it sits in a buffer), generation rolls back to it: the
//! worker keeps the stream's state before each of its last [`SNAPSHOTS`] chunks and the source
//! its frames, so the frames before the boundary stay and the chunks after it are made again —
//! the new prompt shows a chunk after the steer, not after the buffer. The boundary is returned,
//! so a recording's prompt timeline replays exactly. The pooled prompt embedding — which drives
//! every block's adaLN — blends linearly from the old prompt to the new over the chunks of the
//! transition; the tokens of cross-attention switch at the blend's midpoint.

use crate::source::{FrameSource, SourceError};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use endless_model::device::{DeviceKind, Resolved, resolve};
use endless_model::media::Size;
use endless_model::pipeline::{ChunkRequest, Pipeline, PipelineSpec, SamplerSettings};
use endless_model::rolling::{ContextLayout, RollingContext};
use endless_model::text::{TextEmbedding, TextEncoder};
use endless_model::vae::StreamState;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Instant;

/// How the model streams, from the service configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ModelSettings {
    /// The pipeline folder (what `endless-model train` writes), or a folder of tiers (`cpu/`,
    /// `gpu/`) of which the device picks one ([`endless_model::pipeline::tier_dir`]).
    pub dir: PathBuf,
    /// The all-MiniLM-L6-v2 folder.
    pub text_dir: PathBuf,
    pub device: DeviceKind,
    /// Sampling at full quality.
    pub sampler: SamplerSettings,
    /// The fewest steps the scheduler lowers an at-risk chunk to.
    pub min_steps: usize,
    /// Latent frames each chunk is conditioned on (less than the pipeline's window), anchors
    /// included.
    pub context_frames: usize,
    /// How many of them are long-range anchors once the stream has some (when the pipeline was
    /// trained with anchors; fewer than `context_frames`).
    pub anchors: usize,
    /// Latent frames between anchor candidates.
    pub anchor_every: usize,
    /// Most chunks denoised in one batch.
    pub max_batch: usize,
    /// On the CPU, decode on a thread of its own, beside the denoiser: one batch's chunks are
    /// decoded while the next batch is denoised. On a GPU the worker decodes in place.
    pub decode_thread: bool,
    /// Threads of the decoder's own pool (with `decode_thread`); 0: one per core.
    pub decode_threads: usize,
    /// On the CPU, run the guided passes of each denoising step side by side
    /// ([`Pipeline::parallel_passes`]). On a GPU they stay one batch.
    pub parallel_passes: bool,
    /// Use the EMA weights when the folder has them.
    pub ema: bool,
    /// Frames a source keeps after generating them, so a fork continues from the frame shown.
    pub history_frames: usize,
}

/// What a worker reports, for `/metrics` and the stats.
#[derive(Debug, Default)]
pub struct SchedulerStats {
    pub batches: AtomicU64,
    pub chunks: AtomicU64,
    /// Chunks generated with fewer steps than configured (overload).
    pub reduced_chunks: AtomicU64,
    /// Chunks conditioned on long-range anchors.
    pub anchored_chunks: AtomicU64,
    /// Microseconds of the last batch's denoising, and its size.
    pub last_batch_us: AtomicU64,
    pub last_batch_size: AtomicU64,
    /// The most latent frames any stream's context has held (recent latents and anchor
    /// candidates), and the most bytes any stream's device state (context, decoder state and
    /// snapshots) has taken: bounded whatever the stream length.
    pub context_frames_max: AtomicU64,
    pub stream_bytes_max: AtomicU64,
    /// Totals since the start: microseconds in the denoiser (every step of every chunk, with
    /// the transfer of its inputs), microseconds in the VAE decoder (with the frames' copy to
    /// the host), and MFLOPs of the denoiser's matrix products (`Pipeline::chunk_gflops`).
    pub denoise_us: AtomicU64,
    pub decode_us: AtomicU64,
    pub denoise_mflop: AtomicU64,
    /// Microseconds of decoding one chunk: a running mean, for the deadlines.
    pub decode_chunk_us: AtomicU64,
}

/// One chunk's frames.
#[derive(Debug)]
struct ChunkOut {
    frames: Vec<Vec<u8>>,
    steps: usize,
    /// Long-range anchors it was conditioned on.
    anchors: usize,
}

struct Job {
    key: u64,
    seed: u64,
    chunk: u64,
    text: Arc<TextEmbedding>,
    /// Steers applied so far: anchors of an earlier epoch are forgotten.
    prompt_epoch: u64,
    /// When the session's buffer runs dry; `None`: no deadline (full steps).
    due: Option<Instant>,
    /// Steps this chunk must get (a replay of a chunk that was made under overload): it is
    /// then batched alone.
    steps: Option<usize>,
    reply: mpsc::SyncSender<Result<ChunkOut, String>>,
}

enum Command {
    Generate(Job),
    Change(Change),
}

/// A change to a stream's state on the device, which the worker makes to the stream's context
/// and then hands to the decoder stage for its decoder state.
#[derive(Debug, Clone, Copy)]
enum Change {
    /// Copies the context and decoder state of stream `from` to stream `to`.
    Fork {
        from: u64,
        to: u64,
    },
    Drop(u64),
    /// Restores stream `key` to its state before chunk `chunk` (one of its last [`SNAPSHOTS`]).
    Rewind {
        key: u64,
        chunk: u64,
    },
}

/// Keeps `value`, the state before chunk `chunk`, among the last [`SNAPSHOTS`].
fn remember<T>(snapshots: &mut VecDeque<(u64, T)>, chunk: u64, value: T) {
    snapshots.push_back((chunk, value));
    if snapshots.len() > SNAPSHOTS {
        snapshots.pop_front();
    }
}

/// The state before chunk `chunk`, forgetting it and every later one; `None` without it.
fn restore<T: Clone>(snapshots: &mut VecDeque<(u64, T)>, chunk: u64) -> Option<T> {
    let i = snapshots.iter().position(|(c, _)| *c == chunk)?;
    let value = snapshots[i].1.clone();
    snapshots.truncate(i);
    Some(value)
}

/// A stream's state on the device for the denoiser: its rolling context.
struct Slot<B: Backend> {
    context: RollingContext<B>,
    /// `(chunk, context)` before each of the last [`SNAPSHOTS`] chunks, so that a steer can
    /// regenerate the chunks still buffered.
    snapshots: VecDeque<(u64, RollingContext<B>)>,
}

impl<B: Backend> Slot<B> {
    fn new(layout: ContextLayout) -> Self {
        Slot { context: RollingContext::new(layout), snapshots: VecDeque::new() }
    }

    fn bytes(&self) -> usize {
        self.context.bytes() + self.snapshots.iter().map(|(_, c)| c.bytes()).sum::<usize>()
    }
}

impl<B: Backend> Clone for Slot<B> {
    fn clone(&self) -> Self {
        Slot { context: self.context.clone(), snapshots: self.snapshots.clone() }
    }
}

/// What the decoder stage is given, in the order the worker gives it: a chunk's latents to
/// decode (and send to its session), or a change to a stream that the worker has made to its
/// context.
enum Decode<B: Backend> {
    Chunk {
        job: Job,
        latents: Tensor<B, 4>,
        steps: usize,
        anchors: usize,
        /// The bytes of the stream's context and its snapshots, for `stream_bytes_max`.
        context_bytes: usize,
    },
    Change(Change),
}

/// A stream's VAE decoder state, and `(chunk, state)` before each of its last [`SNAPSHOTS`]
/// chunks.
#[derive(Clone, Default)]
struct DecoderStream<B: Backend> {
    state: StreamState<B>,
    snapshots: VecDeque<(u64, StreamState<B>)>,
}

/// The decoder stage: the pipeline's VAE and every stream's decoder state.
struct Decoder<B: Backend> {
    pipeline: Pipeline<B>,
    stats: Arc<SchedulerStats>,
    streams: HashMap<u64, DecoderStream<B>>,
}

impl<B: Backend> Decoder<B> {
    fn handle(&mut self, message: Decode<B>) {
        match message {
            Decode::Chunk { job, latents, steps, anchors, context_bytes } => {
                let started = Instant::now();
                let stream = self.streams.entry(job.key).or_default();
                remember(&mut stream.snapshots, job.chunk, stream.state.clone());
                let video = self.pipeline.decode_stream(latents.unsqueeze_dim(0), &mut stream.state);
                let frames = endless_model::data::video_frames(video).remove(0);
                let decoder_bytes: usize = stream.snapshots.iter().map(|(_, d)| d.bytes()).sum();
                let bytes = context_bytes + stream.state.bytes() + decoder_bytes;
                let stats = &self.stats;
                stats.stream_bytes_max.fetch_max(bytes as u64, Ordering::Relaxed);
                let decoded = started.elapsed().as_micros() as u64;
                stats.decode_us.fetch_add(decoded, Ordering::Relaxed);
                // A running mean per chunk, for the worker's deadlines.
                let mean = stats.decode_chunk_us.load(Ordering::Relaxed);
                let mean = if mean == 0 { decoded } else { (4 * mean + decoded) / 5 };
                stats.decode_chunk_us.store(mean, Ordering::Relaxed);
                let _ = job.reply.send(Ok(ChunkOut { frames, steps, anchors }));
            }
            Decode::Change(Change::Fork { from, to }) => {
                if let Some(stream) = self.streams.get(&from).cloned() {
                    self.streams.insert(to, stream);
                }
            }
            Decode::Change(Change::Drop(key)) => {
                self.streams.remove(&key);
            }
            Decode::Change(Change::Rewind { key, chunk }) => {
                if let Some(stream) = self.streams.get_mut(&key)
                    && let Some(state) = restore(&mut stream.snapshots, chunk)
                {
                    stream.state = state;
                }
            }
        }
    }
}

/// Where the worker's decoding goes: to a thread of its own, which decodes one batch's chunks
/// while the worker denoises the next (on the CPU the denoiser keeps about one core busy, so
/// the decoder gets the other), or done in place.
enum DecodeStage<B: Backend> {
    Thread(mpsc::Sender<Decode<B>>),
    Inline(Box<Decoder<B>>),
}

impl<B: Backend> DecodeStage<B> {
    fn send(&mut self, message: Decode<B>) {
        match self {
            DecodeStage::Thread(tx) => {
                // Only a panic ends the thread before this sender goes; the chunk's session then
                // hears that its chunk was dropped.
                if tx.send(message).is_err() {
                    tracing::error!("the decoder thread has stopped");
                }
            }
            DecodeStage::Inline(decoder) => decoder.handle(message),
        }
    }
}

/// Chunks a stream can be rolled back over: more than a session buffers (the server's
/// default buffers 24 frames, three chunks of the cpu tier).
pub const SNAPSHOTS: usize = 8;

/// The handle to one device's worker.
pub struct Scheduler {
    tx: Mutex<mpsc::Sender<Command>>,
    pub spec: PipelineSpec,
    pub settings: ModelSettings,
    /// Frames of the first chunk, and of every later one.
    pub first_chunk_frames: usize,
    pub chunk_frames: usize,
    pub stats: Arc<SchedulerStats>,
    pub device: Resolved,
    text: Arc<TextEncoder<burn::backend::Flex>>,
    next_key: AtomicU64,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").field("spec", &self.spec).field("device", &self.device).finish_non_exhaustive()
    }
}

impl Scheduler {
    /// Loads the pipeline on the configured device in a new worker thread.
    ///
    /// # Errors
    /// When the device, the pipeline or the text encoder cannot be loaded.
    pub fn start(settings: ModelSettings) -> Result<Arc<Scheduler>, String> {
        let device = resolve(settings.device)?;
        // A folder of tiers: the one for this device.
        let dir = endless_model::pipeline::tier_dir(&settings.dir, device).map_err(|e| format!("{e:#}"))?;
        let settings = ModelSettings { dir, ..settings };
        let text = TextEncoder::<burn::backend::Flex>::load(&settings.text_dir, &Default::default())
            .map_err(|e| format!("loading the text encoder from {}: {e}", settings.text_dir.display()))?;
        let stats = Arc::new(SchedulerStats::default());
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (worker_settings, worker_stats) = (settings.clone(), stats.clone());
        std::thread::Builder::new()
            .name("model-worker".into())
            .spawn(move || match device {
                Resolved::Cpu => run::<burn::backend::Flex>(worker_settings, worker_stats, rx, ready_tx),
                // One thread feeds the GPU (decoding beside the denoiser there is not measured).
                #[cfg(feature = "cuda")]
                Resolved::Cuda => {
                    let settings = ModelSettings { decode_thread: false, parallel_passes: false, ..worker_settings };
                    run::<burn::backend::Cuda>(settings, worker_stats, rx, ready_tx)
                }
                #[cfg(not(feature = "cuda"))]
                Resolved::Cuda => {
                    let _ = ready_tx.send(Err("this build has no CUDA support".into()));
                }
            })
            .map_err(|e| format!("starting the model worker: {e}"))?;
        let (spec, layout, factor) =
            ready_rx.recv().map_err(|_| "the model worker died while loading".to_string())??;
        let window = spec.window;
        tracing::info!(
            dir = %settings.dir.display(),
            size = %Size { width: spec.width, height: spec.height },
            fps = spec.fps,
            ?device,
            context = layout.frames,
            anchors = layout.anchors,
            distilled_to_steps = spec.distilled.map(|d| d.steps),
            "model loaded"
        );
        if settings.anchors > layout.anchors {
            tracing::warn!(
                asked = settings.anchors,
                used = layout.anchors,
                trained_with_anchors = spec.anchors,
                "fewer anchors than configured: the pipeline was not trained with them, or the context is too short"
            );
        }
        let sampler = spec.sampler(settings.sampler);
        Ok(Arc::new(Scheduler {
            tx: Mutex::new(tx),
            first_chunk_frames: 1 + factor * (window - 1),
            chunk_frames: factor * layout.new_frames(window),
            spec,
            settings: ModelSettings { sampler, context_frames: layout.frames, anchors: layout.anchors, ..settings },
            stats,
            device,
            text: Arc::new(text),
            next_key: AtomicU64::new(1),
        }))
    }

    pub fn size(&self) -> Size {
        Size { width: self.spec.width, height: self.spec.height }
    }

    fn send(&self, command: Command) -> Result<(), SourceError> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        tx.send(command).map_err(|_| SourceError::Failed("the model worker has stopped".into()))
    }

    fn key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::SeqCst)
    }

    /// Embeds a prompt (cached).
    pub fn embed(&self, prompt: &str) -> Arc<TextEmbedding> {
        self.text.embed(prompt)
    }
}

/// The worker loop on backend `B`.
fn run<B: Backend>(
    settings: ModelSettings,
    stats: Arc<SchedulerStats>,
    rx: mpsc::Receiver<Command>,
    ready: mpsc::SyncSender<Result<(PipelineSpec, ContextLayout, usize), String>>,
) {
    let device = B::Device::default();
    let pipeline = match Pipeline::<B>::load(&settings.dir, settings.ema, &device) {
        Ok(p) => p.with_parallel_passes(settings.parallel_passes),
        Err(e) => {
            let _ = ready.send(Err(format!("loading the pipeline from {}: {e:#}", settings.dir.display())));
            return;
        }
    };
    // A distilled denoiser samples in its own steps, without guidance on top of its own.
    let settings = ModelSettings { sampler: pipeline.spec.sampler(settings.sampler), ..settings };
    let window = pipeline.spec.window;
    let layout = ContextLayout {
        frames: settings.context_frames,
        anchors: settings.anchors,
        anchor_every: settings.anchor_every,
    }
    .fit(window, pipeline.spec.anchors);
    if let Err(why) = layout.validate(window) {
        let _ = ready.send(Err(why));
        return;
    }
    let _ = ready.send(Ok((pipeline.spec.clone(), layout, pipeline.temporal_factor())));
    let decoder = Decoder { pipeline: pipeline.clone(), stats: stats.clone(), streams: HashMap::new() };
    let mut decode = if settings.decode_thread {
        let (tx, rx) = mpsc::channel::<Decode<B>>();
        let mut decoder = decoder;
        let threads = settings.decode_threads;
        let spawned = std::thread::Builder::new().name("model-decoder".into()).spawn(move || {
            // A pool of the decoder's own, this thread its first worker: on the global pool the
            // decoder's parallel work queued behind the denoiser's passes, and with two or more
            // streams the decoder was busy 95-98 % of the time (BENCHMARKS.md).
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("model-decoder-{i}"))
                .use_current_thread()
                .build();
            let pool = match pool {
                Ok(pool) => pool,
                Err(e) => {
                    tracing::error!(cause = %e, "starting the decoder's thread pool");
                    return;
                }
            };
            while let Ok(message) = rx.recv() {
                pool.install(|| decoder.handle(message));
            }
        });
        if let Err(e) = spawned {
            tracing::error!(cause = %e, "starting the decoder thread");
            return;
        }
        DecodeStage::Thread(tx)
    } else {
        DecodeStage::Inline(Box::new(decoder))
    };
    let mut slots: HashMap<u64, Slot<B>> = HashMap::new();
    let mut pending: Vec<Job> = Vec::new();
    // Seconds per denoising step per chunk: a running mean.
    let mut step_secs = 0.0f64;
    loop {
        let mut handle = |command, pending: &mut Vec<Job>, slots: &mut HashMap<u64, Slot<B>>| match command {
            Command::Generate(job) => pending.push(job),
            Command::Change(change) => {
                let made = match change {
                    Change::Fork { from, to } => slots.get(&from).cloned().map(|slot| slots.insert(to, slot)).is_some(),
                    Change::Drop(key) => {
                        pending.retain(|j| j.key != key);
                        slots.remove(&key).is_some()
                    }
                    Change::Rewind { key, chunk } => match slots.get_mut(&key) {
                        Some(slot) => match restore(&mut slot.snapshots, chunk) {
                            Some(context) => {
                                slot.context = context;
                                true
                            }
                            None => {
                                tracing::error!(key, chunk, "rewind to a chunk without a snapshot");
                                false
                            }
                        },
                        None => false,
                    },
                };
                if made {
                    decode.send(Decode::Change(change));
                }
            }
        };
        if pending.is_empty() {
            match rx.recv() {
                Ok(command) => handle(command, &mut pending, &mut slots),
                Err(_) => return, // every handle is gone
            }
        }
        while let Ok(command) = rx.try_recv() {
            handle(command, &mut pending, &mut slots);
        }
        if pending.is_empty() {
            continue;
        }
        // Earliest deadline first; chunks without one after every chunk with one.
        pending.sort_by_key(|j| (j.due.is_none(), j.due));
        // A chunk with its steps given goes alone; the others share the batch's steps.
        let batch: Vec<Job> = if pending[0].steps.is_some() {
            vec![pending.remove(0)]
        } else {
            let (mut taken, mut kept) = (Vec::new(), Vec::new());
            for job in pending.drain(..) {
                if job.steps.is_none() && taken.len() < settings.max_batch.max(1) {
                    taken.push(job);
                } else {
                    kept.push(job);
                }
            }
            pending = kept;
            taken
        };
        let b = batch.len() as f64;
        // Deadline-aware steps: the most urgent chunk must be ready when its buffer runs dry.
        let full = settings.sampler.steps.max(1);
        let slack = batch[0].due.map(|due| due.saturating_duration_since(Instant::now()).as_secs_f64());
        let decode_secs = stats.decode_chunk_us.load(Ordering::Relaxed) as f64 / 1e6;
        let steps = if let Some(forced) = batch[0].steps {
            forced.clamp(1, full)
        } else if let Some(slack) = slack
            && step_secs > 0.0
            && b * (full as f64 * step_secs + decode_secs) > slack
        {
            let affordable = ((slack / b - decode_secs) / step_secs).floor().max(0.0) as usize;
            affordable.clamp(settings.min_steps.clamp(1, full), full)
        } else {
            full
        };
        let started = Instant::now();
        let requests: Vec<ChunkRequest<B>> = batch
            .iter()
            .map(|j| {
                let slot = slots.entry(j.key).or_insert_with(|| Slot::new(layout));
                slot.context.set_prompt_epoch(j.prompt_epoch);
                slot.context.request(j.seed, j.chunk, j.text.clone())
            })
            .collect();
        let anchors: Vec<usize> = requests.iter().map(|r| r.anchors.as_ref().map_or(0, |a| a.len())).collect();
        let anchored = anchors.iter().filter(|&&a| a > 0).count();
        stats.anchored_chunks.fetch_add(anchored as u64, Ordering::Relaxed);
        let sampler = SamplerSettings { steps, ..settings.sampler };
        let attempt = |requests: &[ChunkRequest<B>]| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pipeline.generate(requests, &sampler))).map_err(
                |panic| {
                    panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "the denoiser panicked".into())
                },
            )
        };
        // A failed batch is retried chunk by chunk, so that only the chunk that fails alone
        // fails (and its session ends with the error); the others go on.
        let results: Vec<Result<Tensor<B, 4>, String>> = match attempt(&requests) {
            Ok(latents) => latents.into_iter().map(Ok).collect(),
            Err(why) if requests.len() == 1 => vec![Err(why)],
            Err(_) => requests.iter().map(|r| attempt(std::slice::from_ref(r)).map(|mut l| l.remove(0))).collect(),
        };
        let denoised = started.elapsed().as_secs_f64();
        let mflop: f64 = batch.iter().map(|j| 1e3 * pipeline.chunk_gflops(&sampler, j.text.num_tokens())).sum();
        stats.denoise_us.fetch_add((denoised * 1e6) as u64, Ordering::Relaxed);
        stats.denoise_mflop.fetch_add(mflop as u64, Ordering::Relaxed);
        for ((job, result), anchors) in batch.into_iter().zip(results).zip(anchors) {
            match result {
                Ok(latents) => {
                    let slot = slots.entry(job.key).or_insert_with(|| Slot::new(layout));
                    remember(&mut slot.snapshots, job.chunk, slot.context.clone());
                    slot.context.push(latents.clone());
                    stats.context_frames_max.fetch_max(slot.context.frames() as u64, Ordering::Relaxed);
                    let context_bytes = slot.bytes();
                    decode.send(Decode::Chunk { job, latents, steps, anchors, context_bytes });
                }
                Err(why) => {
                    tracing::error!(cause = %why, "a chunk failed");
                    slots.remove(&job.key);
                    decode.send(Decode::Change(Change::Drop(job.key)));
                    let _ = job.reply.send(Err(why));
                }
            }
        }
        // A running mean, per step and chunk.
        let per_step = denoised / (b * steps as f64);
        step_secs = if step_secs == 0.0 { per_step } else { 0.8 * step_secs + 0.2 * per_step };
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats.chunks.fetch_add(b as u64, Ordering::Relaxed);
        if steps < full {
            stats.reduced_chunks.fetch_add(b as u64, Ordering::Relaxed);
        }
        stats.last_batch_us.store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.last_batch_size.store(b as u64, Ordering::Relaxed);
    }
}

/// A prompt change waiting for its chunk.
#[derive(Debug, Clone)]
struct Steer {
    /// The first frame it shows in: a chunk boundary.
    at: u64,
    embedding: Arc<TextEmbedding>,
    /// Chunks the blend from the previous prompt takes.
    blend_chunks: u64,
}

/// The blend in progress.
#[derive(Debug, Clone)]
struct Blend {
    from: Arc<TextEmbedding>,
    /// Chunk at which it started, and its length in chunks.
    start: u64,
    chunks: u64,
}

/// A session's stream from the model.
pub struct ModelSource {
    scheduler: Arc<Scheduler>,
    key: u64,
    seed: u64,
    /// Next frame [`FrameSource::next_chunk`] returns.
    next: u64,
    /// Next model chunk, and its first frame.
    chunk: u64,
    head: u64,
    prompt: Arc<TextEmbedding>,
    blend: Option<Blend>,
    steers: Vec<Steer>,
    /// Steers applied so far (the worker forgets the anchors of earlier epochs).
    prompt_epoch: u64,
    /// Frames generated and not yet returned, from `next` on.
    ahead: VecDeque<Vec<u8>>,
    /// Frames returned lately, from frame `behind_from` on (for forks and rewinds).
    behind: VecDeque<Vec<u8>>,
    behind_from: u64,
    due: Option<Instant>,
    last_steps: usize,
    last_anchors: usize,
    /// `(chunk, steps)`: from that chunk on, chunks got these steps (until the next entry;
    /// before the first, full steps). Changes only, so it stays short unless the device is
    /// overloaded on and off; a recording's timeline carries it, so a replay gives every chunk
    /// the steps it got.
    steps_log: Vec<(u64, usize)>,
    /// The steps log of the stream being replayed: its chunks get exactly those steps.
    replaying: Option<Vec<(u64, usize)>>,
    /// Where a steer can roll generation back to: the state before each of the last
    /// [`SNAPSHOTS`] chunks.
    starts: VecDeque<ChunkStart>,
}

/// A [`ModelSource`]'s generation state before a chunk.
#[derive(Debug, Clone)]
struct ChunkStart {
    chunk: u64,
    /// Its first frame.
    head: u64,
    prompt: Arc<TextEmbedding>,
    blend: Option<Blend>,
    prompt_epoch: u64,
}

impl ModelSource {
    /// A new stream of `prompt`.
    pub fn new(scheduler: Arc<Scheduler>, prompt: &str, seed: u64) -> ModelSource {
        let key = scheduler.key();
        ModelSource {
            prompt: scheduler.embed(prompt),
            scheduler,
            key,
            seed,
            next: 0,
            chunk: 0,
            head: 0,
            blend: None,
            steers: Vec::new(),
            prompt_epoch: 0,
            ahead: VecDeque::new(),
            behind: VecDeque::new(),
            behind_from: 0,
            due: None,
            last_steps: 0,
            last_anchors: 0,
            steps_log: Vec::new(),
            replaying: None,
            starts: VecDeque::new(),
        }
    }

    /// Frames of model chunk `chunk`.
    fn frames_of(&self, chunk: u64) -> u64 {
        if chunk == 0 { self.scheduler.first_chunk_frames as u64 } else { self.scheduler.chunk_frames as u64 }
    }

    /// The first chunk boundary at or after both `at` and the generation head.
    fn boundary_from(&self, at: u64) -> u64 {
        if at <= self.head {
            return self.head;
        }
        let (mut boundary, mut chunk) = (self.head, self.chunk);
        while boundary < at {
            boundary += self.frames_of(chunk);
            chunk += 1;
        }
        boundary
    }

    /// The prompt embedding of the next chunk, applying the steers due at it.
    fn embedding_for_next_chunk(&mut self) -> Arc<TextEmbedding> {
        let due: Vec<Steer> = self.steers.iter().filter(|s| s.at <= self.head).cloned().collect();
        self.steers.retain(|s| s.at > self.head);
        if let Some(steer) = due.into_iter().last() {
            let from = self.current_embedding();
            self.prompt = steer.embedding;
            self.prompt_epoch += 1;
            self.blend =
                (steer.blend_chunks > 0).then_some(Blend { from, start: self.chunk, chunks: steer.blend_chunks });
        }
        self.current_embedding()
    }

    /// The embedding of chunk `self.chunk`: the prompt, or the blend towards it.
    fn current_embedding(&self) -> Arc<TextEmbedding> {
        let Some(blend) = &self.blend else { return self.prompt.clone() };
        let done = self.chunk.saturating_sub(blend.start) + 1;
        if done > blend.chunks {
            return self.prompt.clone();
        }
        let w = done as f32 / (blend.chunks + 1) as f32;
        Arc::new(blended(&blend.from, &self.prompt, w))
    }

    fn generate_chunk(&mut self) -> Result<(), SourceError> {
        self.starts.push_back(ChunkStart {
            chunk: self.chunk,
            head: self.head,
            prompt: self.prompt.clone(),
            blend: self.blend.clone(),
            prompt_epoch: self.prompt_epoch,
        });
        if self.starts.len() > SNAPSHOTS {
            self.starts.pop_front();
        }
        let text = self.embedding_for_next_chunk();
        let (reply, answer) = mpsc::sync_channel(1);
        self.scheduler.send(Command::Generate(Job {
            key: self.key,
            seed: self.seed,
            chunk: self.chunk,
            text,
            prompt_epoch: self.prompt_epoch,
            due: self.due,
            steps: self.replaying.as_ref().map(|log| steps_of(log, self.chunk, self.scheduler.settings.sampler.steps)),
            reply,
        }))?;
        let out = answer
            .recv()
            .map_err(|_| SourceError::Failed("the model worker dropped the chunk".into()))?
            .map_err(SourceError::Failed)?;
        let full = self.scheduler.settings.sampler.steps;
        if steps_of(&self.steps_log, self.chunk, full) != out.steps {
            self.steps_log.push((self.chunk, out.steps));
        }
        self.head += out.frames.len() as u64;
        self.chunk += 1;
        self.last_steps = out.steps;
        self.last_anchors = out.anchors;
        self.ahead.extend(out.frames);
        if let Some(b) = &self.blend
            && self.chunk > b.start + b.chunks
        {
            self.blend = None;
        }
        Ok(())
    }
}

/// The steps chunk `chunk` got according to `log` (see [`ModelSource`]'s `steps_log`).
fn steps_of(log: &[(u64, usize)], chunk: u64, full: usize) -> usize {
    log.iter().rev().find(|&&(from, _)| from <= chunk).map_or(full, |&(_, steps)| steps)
}

/// `from` blended towards `to` by `w`: the pooled embedding interpolated and renormalised, the
/// tokens of whichever weighs more.
fn blended(from: &TextEmbedding, to: &TextEmbedding, w: f32) -> TextEmbedding {
    let pooled: Vec<f32> = from.pooled().iter().zip(to.pooled()).map(|(a, b)| (1.0 - w) * a + w * b).collect();
    let norm = pooled.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    let tokens = if w < 0.5 { from } else { to };
    TextEmbedding::from_parts(
        tokens.ids().to_vec(),
        tokens.hidden().to_vec(),
        pooled.iter().map(|v| v / norm).collect(),
    )
}

impl Drop for ModelSource {
    fn drop(&mut self) {
        let _ = self.scheduler.send(Command::Change(Change::Drop(self.key)));
    }
}

impl FrameSource for ModelSource {
    fn size(&self) -> Size {
        self.scheduler.size()
    }

    fn fps(&self) -> f64 {
        self.scheduler.spec.fps
    }

    fn next_frame(&self) -> u64 {
        self.next
    }

    fn set_due(&mut self, due: Instant) {
        self.due = Some(due);
    }

    fn chunk_hint(&self) -> Option<usize> {
        Some(self.scheduler.chunk_frames)
    }

    fn next_chunk(&mut self, n: usize) -> Result<Vec<Vec<u8>>, SourceError> {
        while self.ahead.len() < n {
            self.generate_chunk()?;
        }
        let frames: Vec<Vec<u8>> = self.ahead.drain(..n).collect();
        self.next += n as u64;
        self.behind.extend(frames.iter().cloned());
        while self.behind.len() > self.scheduler.settings.history_frames {
            self.behind.pop_front();
        }
        self.behind_from = self.next - self.behind.len() as u64;
        Ok(frames)
    }

    fn steer(&mut self, at: u64, prompt: &str, transition_secs: f64) -> Result<u64, SourceError> {
        let embedding = self.scheduler.embed(prompt);
        // The first chunk from `at` on that can still be regenerated: frames before it and
        // from `at` must still be in memory (returned frames only back to `behind`).
        let oldest = self.behind_from;
        let restorable = self.starts.iter().position(|s| s.head >= at && at >= oldest);
        let at = match restorable {
            Some(i) => {
                let ChunkStart { chunk, head: start, prompt, blend, prompt_epoch } = self.starts[i].clone();
                self.starts.truncate(i);
                self.scheduler.send(Command::Change(Change::Rewind { key: self.key, chunk }))?;
                self.steps_log.retain(|&(from, _)| from < chunk);
                (self.chunk, self.head, self.prompt, self.blend) = (chunk, start, prompt, blend);
                self.prompt_epoch = prompt_epoch;
                // Frames from `start` on are regenerated: forget them.
                if start >= self.next {
                    self.ahead.truncate((start - self.next) as usize);
                } else {
                    self.ahead.clear();
                    self.behind.truncate((start - oldest) as usize);
                }
                start
            }
            None => self.boundary_from(at),
        };
        let per_chunk = self.scheduler.chunk_frames as f64 / self.scheduler.spec.fps;
        let blend_chunks = (transition_secs.max(0.0) / per_chunk).round() as u64;
        self.steers.retain(|s| s.at < at);
        self.steers.push(Steer { at, embedding, blend_chunks });
        Ok(at)
    }

    fn rewind_to(&mut self, frame: u64) -> bool {
        // Frames returned from `frame` on come again: those before the steer's chunk from
        // memory, the rest regenerated (the steer rolled generation back to its chunk).
        let oldest = self.behind_from;
        if frame < oldest || frame >= self.next {
            return frame == self.next;
        }
        let mut again = self.behind.split_off((frame - oldest) as usize);
        again.extend(self.ahead.drain(..));
        self.ahead = again;
        self.next = frame;
        true
    }

    fn fork_at(&self, frame: u64) -> Box<dyn FrameSource> {
        let key = self.scheduler.key();
        // Frames from `frame` to the generation head come from this source's memory of them;
        // the device state is copied at the head. (Sent before any chunk of the fork.)
        let _ = self.scheduler.send(Command::Change(Change::Fork { from: self.key, to: key }));
        let start = frame.clamp(self.behind_from, self.next);
        let skip = (start - self.behind_from) as usize;
        let ahead: VecDeque<Vec<u8>> = self.behind.iter().skip(skip).chain(self.ahead.iter()).cloned().collect();
        Box::new(ModelSource {
            scheduler: self.scheduler.clone(),
            key,
            seed: self.seed,
            next: start,
            chunk: self.chunk,
            head: self.head,
            prompt: self.prompt.clone(),
            blend: self.blend.clone(),
            steers: self.steers.clone(),
            prompt_epoch: self.prompt_epoch,
            ahead,
            behind: VecDeque::new(),
            behind_from: start,
            due: self.due,
            last_steps: self.last_steps,
            last_anchors: self.last_anchors,
            steps_log: self.steps_log.clone(),
            replaying: self.replaying.clone(),
            starts: self.starts.clone(),
        })
    }

    fn describe(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "model",
            "seed": self.seed,
            "size": self.size().to_string(),
            "fps": self.fps(),
            "pipeline": self.scheduler.settings.dir,
            "sampler": self.scheduler.settings.sampler,
            "context_frames": self.scheduler.settings.context_frames,
            "anchors": self.scheduler.settings.anchors,
            "anchor_every": self.scheduler.settings.anchor_every,
            "steps_log": self.steps_log,
            "ema": self.scheduler.settings.ema,
        })
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::json!({
            "steps": self.last_steps,
            "full_steps": self.scheduler.settings.sampler.steps,
            "anchors": self.last_anchors,
            "chunks": self.chunk,
            "device": format!("{:?}", self.scheduler.device).to_lowercase(),
        })
    }
}

/// Makes a [`ModelSource`] per session; the size and rate are the pipeline's.
pub struct ModelFactory {
    pub scheduler: Arc<Scheduler>,
}

impl crate::registry::SourceFactory for ModelFactory {
    fn create(&self, prompt: &str, seed: u64, size: Size, fps: f64) -> Result<Box<dyn FrameSource>, SourceError> {
        let s = &self.scheduler;
        if size != s.size() || (fps - s.spec.fps).abs() > 1e-9 {
            return Err(SourceError::Unsupported(format!(
                "this model streams {} at {} fps (asked for {size} at {fps})",
                s.size(),
                s.spec.fps
            )));
        }
        Ok(Box::new(ModelSource::new(s.clone(), prompt, seed)))
    }
}

/// A fresh model source as `description` (what [`FrameSource::describe`] wrote into a
/// recording's timeline) says, for a replay: the same pipeline, sampler and seed, on its own
/// worker, every chunk with the steps it got (full steps but where the recorded stream's
/// device was overloaded), so the stream is regenerated exactly.
pub fn replay_source(
    description: &serde_json::Value,
    prompt: &str,
    text_dir: PathBuf,
    device: DeviceKind,
) -> Result<ModelSource, String> {
    let field = |key: &str| description.get(key).ok_or_else(|| format!("the source description has no {key:?}"));
    let dir: PathBuf = serde_json::from_value(field("pipeline")?.clone()).map_err(|e| e.to_string())?;
    let sampler: SamplerSettings = serde_json::from_value(field("sampler")?.clone()).map_err(|e| e.to_string())?;
    let context_frames = field("context_frames")?.as_u64().ok_or("context_frames is not a number")? as usize;
    // Recordings made before anchors existed have none.
    let anchors = description.get("anchors").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
    let anchor_every = description.get("anchor_every").and_then(|v| v.as_u64()).unwrap_or(1) as usize;
    let seed = field("seed")?.as_u64().ok_or("seed is not a number")?;
    let ema = description.get("ema").and_then(|v| v.as_bool()).unwrap_or(true);
    // Chunks made with fewer steps under overload get those steps again.
    let steps_log: Vec<(u64, usize)> = match description.get("steps_log") {
        Some(log) => serde_json::from_value(log.clone()).map_err(|e| format!("steps_log: {e}"))?,
        None => Vec::new(),
    };
    let scheduler = Scheduler::start(ModelSettings {
        dir,
        text_dir,
        device,
        sampler,
        min_steps: sampler.steps,
        context_frames,
        anchors,
        anchor_every,
        max_batch: 1,
        decode_thread: true,
        decode_threads: 1,
        parallel_passes: true,
        ema,
        history_frames: 0,
    })?;
    let mut source = ModelSource::new(scheduler, prompt, seed);
    source.replaying = Some(steps_log);
    Ok(source)
}
