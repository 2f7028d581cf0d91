//! A live session: a frame source generating ahead of playback into a buffer, and a playout
//! clock that releases frames in real time to whoever encodes them.
//!
//! ```text
//!  generator thread ──chunks──▶ [Buffer] ──▶ pacer task ──frames──▶ output
//!  (FrameSource under a lock)              (real-time clock)      (encoder)
//!   waits while buffer_chunks × chunk valid frames are ahead
//! ```
//!
//! Generation waits while `buffer_chunks` chunks' worth of frames are ahead of playback;
//! playback stops while paused or while nobody watches or records, and with it generation. A
//! steer changes the source from a frame just ahead of playback — far enough ahead that the
//! chunk there can be made in time ([`STEER_MARGIN`] times the recent time of a chunk) — and,
//! when the source can rewind, throws away the buffered frames after it, so the new prompt
//! shows within about a chunk's generation time (and the chunk in flight) rather than after
//! the buffer.
//!
//! The backpressure counts the frames still valid, not queued chunks: a rewind frees the
//! buffer at once, so the steer's chunk starts as soon as the chunk in flight is done. (Counted
//! in chunk slots, the generator could sit on a chunk the rewind had made useless, waiting for
//! playback to free a slot, and start the steer's chunk too late: a stall.)
//!
//! The source's lock is held for a whole chunk (a model source waits for its device), so the
//! pacer never takes it: which buffered frames a rewind threw away is kept apart
//! ([`Epochs`]), and the generator asks for the source's own chunk size
//! ([`FrameSource::chunk_hint`]), so that a steer waits for one chunk at most.

use crate::id::{OwnerToken, SessionId};
use crate::source::{FrameSource, PromptEvent, SourceError};
use bytes::Bytes;
use endless_model::media::Size;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

/// A steer lands this many recent chunk-times ahead of playback, so that its chunk is ready
/// in time. With 1.25 the margin was a quarter of a chunk-time (0.1 s for a 0.4 s chunk), and
/// a loaded machine's jitter ate it: a stall now and then after a steer.
pub const STEER_MARGIN: f64 = 1.5;

/// Per-session limits and sizes, from the service configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub chunk_frames: usize,
    pub buffer_chunks: usize,
    pub max_prompt_chars: usize,
    pub steer_min_interval: Duration,
    pub transition_secs: f64,
    /// How far ahead of playback a steer starts, in seconds: enough to generate one chunk.
    pub steer_lead_secs: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            chunk_frames: 12,
            buffer_chunks: 2,
            max_prompt_chars: 500,
            steer_min_interval: Duration::from_millis(250),
            transition_secs: 2.0,
            steer_lead_secs: 0.2,
        }
    }
}

/// One frame on its way to the encoder.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Frame number since the session started.
    pub index: u64,
    /// Presentation time in nanoseconds (index / fps).
    pub pts_ns: u64,
    pub duration_ns: u64,
    pub size: Size,
    /// RGB8, `size.rgb_bytes()` long.
    pub rgb: Bytes,
}

/// What a session's output carries.
#[derive(Debug, Clone)]
pub enum Output {
    Frame(Frame),
    /// Generation failed; no more frames will come.
    Failed(String),
}

/// Why a session refused a request. The messages are meant for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("only the session's owner may do that")]
    NotOwner,
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt is longer than {0} characters")]
    PromptTooLong(usize),
    #[error("steering too fast: wait {0} ms between steers")]
    TooFast(u128),
    #[error("the session has ended")]
    Closed,
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// What the source lock protects.
struct Control {
    source: Box<dyn FrameSource>,
}

/// Which buffered frames are still valid after rewinds. Changed only under the source's lock
/// too, so the generator reads the epoch its chunk belongs to consistently; the pacer reads it
/// alone.
#[derive(Default)]
struct Epochs {
    /// Current generation epoch: bumped by every rewind.
    current: u64,
    /// `(epoch, end)`: frames of `epoch` from `end` on were thrown away by a rewind.
    ends: VecDeque<(u64, u64)>,
}

impl Epochs {
    /// Whether frame `index` generated in `epoch` is still part of the stream.
    fn valid(&self, epoch: u64, index: u64) -> bool {
        epoch == self.current || self.ends.iter().find(|(e, _)| *e == epoch).is_some_and(|(_, end)| index < *end)
    }
}

struct Chunk {
    epoch: u64,
    first: u64,
    frames: Vec<Vec<u8>>,
}

/// The chunks made and not yet taken by the pacer, in order; a rewind cuts the frames it threw
/// away out of them, so what is queued never exceeds the frames ahead of playback.
#[derive(Default)]
struct Buffer {
    queue: Mutex<VecDeque<Result<Chunk, String>>>,
    /// Wakes the pacer when a chunk (or the failure) is queued.
    ready: Notify,
    /// Set when the pacer has ended: the generator stops.
    pacer_gone: AtomicBool,
    /// Set when the generator thread has ended, whether it returned or panicked: once the
    /// queue is empty, playback ends.
    generator_gone: AtomicBool,
}

impl Buffer {
    fn push(&self, chunk: Result<Chunk, String>) {
        lock(&self.queue).push_back(chunk);
        self.ready.notify_one();
    }

    /// Drops the queued frames from `end` on (a rewind to `end`).
    fn cut(&self, end: u64) {
        let mut queue = lock(&self.queue);
        for chunk in queue.iter_mut().flatten() {
            chunk.frames.truncate(end.saturating_sub(chunk.first) as usize);
        }
        queue.retain(|c| c.as_ref().map_or(true, |c| !c.frames.is_empty()));
    }

    /// The next chunk; `None` once the generator has ended and everything it made is taken.
    async fn pop(&self) -> Option<Result<Chunk, String>> {
        loop {
            if let Some(chunk) = lock(&self.queue).pop_front() {
                return Some(chunk);
            }
            if self.generator_gone.load(Ordering::SeqCst) {
                return None;
            }
            self.ready.notified().await;
        }
    }
}

/// Tells the pacer that the generator thread has ended, also when it unwinds from a panic in
/// the source (the session then ends as "generation stopped unexpectedly").
struct GeneratorGone(Arc<Buffer>);

impl Drop for GeneratorGone {
    fn drop(&mut self) {
        self.0.generator_gone.store(true, Ordering::SeqCst);
        self.0.ready.notify_one();
    }
}

/// Counters shared by the tasks of a session.
#[derive(Default)]
struct Counters {
    /// Next frame to show.
    played: AtomicU64,
    /// Next frame the source will generate.
    generated: AtomicU64,
    viewers: AtomicUsize,
    recording: AtomicBool,
    paused: AtomicBool,
    closed: AtomicBool,
    /// Times playback ran dry and had to wait for generation.
    stalls: AtomicU64,
    /// Nanoseconds spent generating and frames generated, for the generation rate.
    generate_ns: AtomicU64,
    generate_frames: AtomicU64,
    /// Nanoseconds per frame of the last chunks (a running mean), for the steer's lead.
    recent_frame_ns: AtomicU64,
    /// Signalled when `played` or `generated` moves, or the session closes: the generator
    /// waits on it for room ahead of playback.
    progress_lock: Mutex<()>,
    progress: Condvar,
}

impl Counters {
    fn notify_progress(&self) {
        let _guard = lock(&self.progress_lock);
        self.progress.notify_all();
    }
}

/// A snapshot of a session for lists and stats.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub id: SessionId,
    pub prompt: String,
    pub size: String,
    pub fps: f64,
    pub viewers: usize,
    pub paused: bool,
    pub recording: bool,
    /// Frames shown so far.
    pub shown_frames: u64,
    /// Frames generated ahead of playback.
    pub buffered_frames: u64,
    /// Frames per second the source generates when it runs (the real-time margin is this ÷ fps).
    pub generated_fps: f64,
    pub stalls: u64,
    /// Seconds since the session was created.
    pub age_secs: f64,
    /// The source's own figures (the model's steps per chunk, say); `null` for the world.
    pub source: serde_json::Value,
}

/// What a fork starts from: the source, the prompt showing, and the prompt timeline so far.
pub type Fork = (Box<dyn FrameSource>, String, Vec<PromptEvent>);

/// A live session. Cheap to share (`Arc`); closing it stops its tasks.
pub struct Session {
    pub id: SessionId,
    owner: OwnerToken,
    pub seed: u64,
    size: Size,
    fps: f64,
    settings: Settings,
    created: Instant,
    pub created_at: SystemTime,
    control: Arc<Mutex<Control>>,
    epochs: Arc<Mutex<Epochs>>,
    buffer: Arc<Buffer>,
    counters: Arc<Counters>,
    /// Wakes the pacer when pause, viewers or recording change.
    wake: watch::Sender<()>,
    cancel: CancellationToken,
    output: Mutex<Option<mpsc::Receiver<Output>>>,
    prompt: Mutex<String>,
    history: Mutex<Vec<PromptEvent>>,
    last_steer: Mutex<Option<Instant>>,
    /// When the last viewer left (or the session was created), for idle eviction.
    idle_since: Mutex<Option<Instant>>,
    /// The source's own figures after its last chunk (read without the source's lock, which
    /// a model source holds for a whole chunk).
    source_stats: Arc<Mutex<serde_json::Value>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep serving.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Session {
    /// Starts a session over `source`: its generator thread and its pacer task (on the
    /// current tokio runtime). `history` is the prompt timeline so far (a fork's parent's).
    pub fn start(
        source: Box<dyn FrameSource>,
        prompt: &str,
        seed: u64,
        settings: Settings,
        history: Vec<PromptEvent>,
    ) -> (Arc<Session>, OwnerToken) {
        let owner = OwnerToken::random();
        let (size, fps) = (source.size(), source.fps());
        let first = source.next_frame();
        let counters = Arc::new(Counters::default());
        counters.played.store(first, Ordering::SeqCst);
        counters.generated.store(first, Ordering::SeqCst);
        let ahead =
            (settings.buffer_chunks.max(1) * source.chunk_hint().unwrap_or(settings.chunk_frames).max(1)) as u64;
        let (out_tx, out_rx) = mpsc::channel(settings.chunk_frames.max(2));
        let (wake, wake_rx) = watch::channel(());
        let session = Arc::new(Session {
            id: SessionId::random(),
            owner: owner.clone(),
            seed,
            size,
            fps,
            settings,
            created: Instant::now(),
            created_at: SystemTime::now(),
            control: Arc::new(Mutex::new(Control { source })),
            epochs: Arc::new(Mutex::new(Epochs::default())),
            buffer: Arc::new(Buffer::default()),
            counters,
            wake,
            cancel: CancellationToken::new(),
            output: Mutex::new(Some(out_rx)),
            prompt: Mutex::new(prompt.to_string()),
            history: Mutex::new(history),
            last_steer: Mutex::new(None),
            idle_since: Mutex::new(Some(Instant::now())),
            source_stats: Arc::new(Mutex::new(serde_json::Value::Null)),
        });
        let generator = Generator {
            control: session.control.clone(),
            epochs: session.epochs.clone(),
            buffer: session.buffer.clone(),
            counters: session.counters.clone(),
            source_stats: session.source_stats.clone(),
            n: session.settings.chunk_frames,
            ahead,
            fps,
        };
        std::thread::Builder::new()
            .name(format!("gen-{}", &session.id.as_str()[..8]))
            .spawn(move || generator.run())
            .expect("the OS can start a generator thread");
        let pacer = Pacer {
            epochs: session.epochs.clone(),
            buffer: session.buffer.clone(),
            counters: session.counters.clone(),
            size,
            fps,
            wake: wake_rx,
            cancel: session.cancel.clone(),
        };
        tokio::spawn(pacer.run(out_tx));
        (session, owner)
    }

    /// The frames, in real time, for the one encoder of this session. `None` after the
    /// first call.
    pub fn take_output(&self) -> Option<mpsc::Receiver<Output>> {
        lock(&self.output).take()
    }

    pub fn size(&self) -> Size {
        self.size
    }

    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// Whether `token` is this session's owner token.
    pub fn is_owner(&self, token: &str) -> bool {
        self.owner.verify(token)
    }

    fn check_owner(&self, token: &str) -> Result<(), SessionError> {
        if self.counters.closed.load(Ordering::SeqCst) {
            return Err(SessionError::Closed);
        }
        if self.is_owner(token) { Ok(()) } else { Err(SessionError::NotOwner) }
    }

    /// The current prompt.
    pub fn prompt(&self) -> String {
        lock(&self.prompt).clone()
    }

    /// Every prompt change so far, the first prompt at frame 0.
    pub fn history(&self) -> Vec<PromptEvent> {
        lock(&self.history).clone()
    }

    /// What a recording needs to reproduce this session's source.
    pub fn describe_source(&self) -> serde_json::Value {
        lock(&self.control).source.describe()
    }

    /// The next frame the source will generate (after a steer that rolled generation back:
    /// the steer's frame until its chunk is made).
    pub fn generated(&self) -> u64 {
        self.counters.generated.load(Ordering::SeqCst)
    }

    /// The next frame to be shown.
    pub fn played(&self) -> u64 {
        self.counters.played.load(Ordering::SeqCst)
    }

    /// Changes the prompt. It shows from a frame just ahead of playback, blending over
    /// `transition_secs` (the configured default when `None`).
    pub fn steer(&self, token: &str, prompt: &str, transition_secs: Option<f64>) -> Result<u64, SessionError> {
        self.check_owner(token)?;
        let prompt = prompt.trim();
        if prompt.is_empty() {
            return Err(SessionError::EmptyPrompt);
        }
        if prompt.chars().count() > self.settings.max_prompt_chars {
            return Err(SessionError::PromptTooLong(self.settings.max_prompt_chars));
        }
        {
            let mut last = lock(&self.last_steer);
            if let Some(t) = *last {
                let wait = self.settings.steer_min_interval.saturating_sub(t.elapsed());
                if !wait.is_zero() {
                    return Err(SessionError::TooFast(wait.as_millis().max(1)));
                }
            }
            *last = Some(Instant::now());
        }
        let transition = transition_secs.unwrap_or(self.settings.transition_secs).clamp(0.0, 60.0);
        let mut c = lock(&self.control);
        let at = self.played() + self.steer_lead(c.source.chunk_hint());
        let at = c.source.steer(at, prompt, transition)?;
        if at < c.source.next_frame() && c.source.rewind_to(at) {
            let mut e = lock(&self.epochs);
            let (epoch, end) = (e.current, c.source.next_frame());
            e.ends.push_back((epoch, end));
            if e.ends.len() > 64 {
                e.ends.pop_front();
            }
            e.current += 1;
            // `end` is the steer's frame: what was generated from there on is thrown away.
            self.buffer.cut(end);
            self.counters.generated.store(end, Ordering::SeqCst);
            drop(e);
            self.counters.notify_progress();
        }
        drop(c);
        *lock(&self.prompt) = prompt.to_string();
        lock(&self.history).push(PromptEvent { frame: at, prompt: prompt.to_string(), transition_secs: transition });
        Ok(at)
    }

    /// Frames between playback and a steer (taken once the chunk in flight is done): the
    /// configured lead, or [`STEER_MARGIN`] times the recent time of a chunk of `chunk` frames
    /// (`None`: the session's) when that is longer, so that the steer's chunk is ready before
    /// playback gets there.
    fn steer_lead(&self, chunk: Option<usize>) -> u64 {
        let frame_ns = self.counters.recent_frame_ns.load(Ordering::SeqCst) as f64;
        let chunk_secs = frame_ns / 1e9 * chunk.unwrap_or(self.settings.chunk_frames) as f64;
        (self.fps * self.settings.steer_lead_secs.max(STEER_MARGIN * chunk_secs)).ceil() as u64
    }

    /// Pauses or resumes playback (and so generation).
    pub fn set_paused(&self, token: &str, paused: bool) -> Result<(), SessionError> {
        self.check_owner(token)?;
        self.counters.paused.store(paused, Ordering::SeqCst);
        self.wake.send_replace(());
        Ok(())
    }

    /// Marks the session as being recorded: it plays even with no viewer.
    pub fn set_recording(&self, recording: bool) {
        self.counters.recording.store(recording, Ordering::SeqCst);
        self.wake.send_replace(());
    }

    /// A new viewer: playback runs while the guard lives.
    pub fn watch(self: &Arc<Self>) -> ViewerGuard {
        self.counters.viewers.fetch_add(1, Ordering::SeqCst);
        *lock(&self.idle_since) = None;
        self.wake.send_replace(());
        ViewerGuard { session: self.clone() }
    }

    /// How long the session has had no viewer and no recording (`None` while it has).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.counters.recording.load(Ordering::SeqCst) {
            return None;
        }
        lock(&self.idle_since).map(|t| t.elapsed())
    }

    /// An independent source continuing from the frame now showing, and the prompt
    /// timeline up to it, for a fork.
    pub fn fork_source(&self, token: &str) -> Result<Fork, SessionError> {
        self.check_owner(token)?;
        let at = self.played();
        let source = lock(&self.control).source.fork_at(at);
        let history = self.history().into_iter().filter(|e| e.frame <= at).collect();
        Ok((source, self.prompt(), history))
    }

    /// Stops the session's tasks. Idempotent.
    pub fn close(&self) {
        self.counters.closed.store(true, Ordering::SeqCst);
        self.cancel.cancel();
        self.counters.notify_progress();
    }

    pub fn is_closed(&self) -> bool {
        self.counters.closed.load(Ordering::SeqCst)
    }

    /// A snapshot for lists and stats.
    pub fn info(&self) -> SessionInfo {
        let c = &self.counters;
        let played = c.played.load(Ordering::SeqCst);
        let (ns, frames) = (c.generate_ns.load(Ordering::SeqCst), c.generate_frames.load(Ordering::SeqCst));
        SessionInfo {
            id: self.id.clone(),
            prompt: self.prompt(),
            size: self.size.to_string(),
            fps: self.fps,
            viewers: c.viewers.load(Ordering::SeqCst),
            paused: c.paused.load(Ordering::SeqCst),
            recording: c.recording.load(Ordering::SeqCst),
            shown_frames: played,
            buffered_frames: c.generated.load(Ordering::SeqCst).saturating_sub(played),
            generated_fps: if ns > 0 { frames as f64 / (ns as f64 * 1e-9) } else { 0.0 },
            stalls: c.stalls.load(Ordering::SeqCst),
            age_secs: self.created.elapsed().as_secs_f64(),
            source: lock(&self.source_stats).clone(),
        }
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("size", &self.size).field("fps", &self.fps).finish()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Keeps a session playing for one viewer; dropping it lets the session idle.
pub struct ViewerGuard {
    session: Arc<Session>,
}

impl Drop for ViewerGuard {
    fn drop(&mut self) {
        let s = &self.session;
        if s.counters.viewers.fetch_sub(1, Ordering::SeqCst) == 1 {
            *lock(&s.idle_since) = Some(Instant::now());
        }
        s.wake.send_replace(());
    }
}

/// The generator thread's state.
struct Generator {
    control: Arc<Mutex<Control>>,
    epochs: Arc<Mutex<Epochs>>,
    buffer: Arc<Buffer>,
    counters: Arc<Counters>,
    source_stats: Arc<Mutex<serde_json::Value>>,
    /// Frames per chunk, unless the source has its own size.
    n: usize,
    /// Generation waits while this many frames are ahead of playback.
    ahead: u64,
    fps: f64,
}

impl Generator {
    /// Chunk after chunk into the buffer, while there is room ahead of playback, until the
    /// session ends or the source fails (the failure travels behind the frames before it).
    fn run(self) {
        let _gone = GeneratorGone(self.buffer.clone());
        let counters = &self.counters;
        while self.wait_for_room() {
            let started = Instant::now();
            let mut chunk = {
                let mut c = lock(&self.control);
                let (epoch, first) = (lock(&self.epochs).current, c.source.next_frame());
                let n = c.source.chunk_hint().unwrap_or(self.n);
                // Due when playback reaches the first frame of this chunk.
                let buffered = first.saturating_sub(counters.played.load(Ordering::SeqCst));
                c.source.set_due(Instant::now() + Duration::from_secs_f64(buffered as f64 / self.fps));
                let result = c.source.next_chunk(n);
                *lock(&self.source_stats) = c.source.stats();
                match result {
                    Ok(frames) => Chunk { epoch, first, frames },
                    Err(e) => {
                        tracing::error!(cause = %e, "generation failed");
                        self.buffer.push(Err(e.to_string()));
                        return;
                    }
                }
            };
            let n = chunk.frames.len() as u64;
            let ns = started.elapsed().as_nanos() as u64;
            let per_frame = ns / n.max(1);
            let recent = counters.recent_frame_ns.load(Ordering::SeqCst);
            let mixed = if recent == 0 { per_frame } else { (recent * 7 + per_frame * 3) / 10 };
            counters.recent_frame_ns.store(mixed, Ordering::SeqCst);
            counters.generate_ns.fetch_add(ns, Ordering::SeqCst);
            counters.generate_frames.fetch_add(n, Ordering::SeqCst);
            // Under the epochs' lock, so that a steer's rewind either comes before (and this
            // chunk is cut here) or after (and it cuts the queued chunk).
            let e = lock(&self.epochs);
            if chunk.epoch != e.current {
                // A steer rewound while this chunk was made: keep the frames before its end.
                let end = e.ends.iter().find(|(old, _)| *old == chunk.epoch).map_or(0, |(_, end)| *end);
                chunk.frames.truncate(end.saturating_sub(chunk.first) as usize);
            } else {
                counters.generated.fetch_max(chunk.first + n, Ordering::SeqCst);
            }
            if !chunk.frames.is_empty() {
                self.buffer.push(Ok(chunk));
            }
        }
    }

    /// Waits until fewer than `ahead` frames are generated ahead of playback; false once the
    /// session has ended.
    fn wait_for_room(&self) -> bool {
        let c = &self.counters;
        let mut guard = lock(&c.progress_lock);
        loop {
            if c.closed.load(Ordering::SeqCst) || self.buffer.pacer_gone.load(Ordering::SeqCst) {
                return false;
            }
            let ahead = c.generated.load(Ordering::SeqCst).saturating_sub(c.played.load(Ordering::SeqCst));
            if ahead < self.ahead {
                return true;
            }
            // The timeout only bounds a missed wake-up; progress is signalled.
            guard = c
                .progress
                .wait_timeout(guard, Duration::from_millis(250))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }
}

/// The playout clock.
struct Pacer {
    epochs: Arc<Mutex<Epochs>>,
    buffer: Arc<Buffer>,
    counters: Arc<Counters>,
    size: Size,
    fps: f64,
    wake: watch::Receiver<()>,
    cancel: CancellationToken,
}

impl Pacer {
    fn should_play(&self) -> bool {
        let c = &self.counters;
        !c.paused.load(Ordering::SeqCst) && (c.viewers.load(Ordering::SeqCst) > 0 || c.recording.load(Ordering::SeqCst))
    }

    async fn run(self, out: mpsc::Sender<Output>) {
        let (buffer, counters) = (self.buffer.clone(), self.counters.clone());
        self.play(out).await;
        // The generator stops once nobody plays what it makes.
        buffer.pacer_gone.store(true, Ordering::SeqCst);
        counters.notify_progress();
    }

    async fn play(mut self, out: mpsc::Sender<Output>) {
        let frame_time = Duration::from_secs_f64(1.0 / self.fps);
        // (instant, frame index) the clock counts from; reset after every pause or stall.
        let mut clock: Option<(Instant, u64)> = None;
        loop {
            let chunk = tokio::select! {
                c = self.buffer.pop() => c,
                _ = self.cancel.cancelled() => return,
            };
            let chunk = match chunk {
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => {
                    let _ = out.send(Output::Failed(e)).await;
                    return;
                }
                None => return,
            };
            for (i, rgb) in chunk.frames.into_iter().enumerate() {
                let index = chunk.first + i as u64;
                let wanted = self.counters.played.load(Ordering::SeqCst);
                if index != wanted || !lock(&self.epochs).valid(chunk.epoch, index) {
                    continue; // thrown away by a steer's rewind, or already shown
                }
                while !self.should_play() {
                    clock = None;
                    tokio::select! {
                        r = self.wake.changed() => if r.is_err() { return },
                        _ = self.cancel.cancelled() => return,
                    }
                }
                let now = Instant::now();
                let (base, base_index) = *clock.get_or_insert((now, index));
                let due = base + frame_time.mul_f64((index - base_index) as f64);
                if due > now {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                } else if now - due > frame_time * 2 {
                    // Generation fell behind: restart the clock instead of bursting.
                    self.counters.stalls.fetch_add(1, Ordering::SeqCst);
                    clock = Some((now, index));
                }
                let frame = Frame {
                    index,
                    pts_ns: (index as f64 * 1e9 / self.fps).round() as u64,
                    duration_ns: frame_time.as_nanos() as u64,
                    size: self.size,
                    rgb: Bytes::from(rgb),
                };
                // Counted as shown before it is handed over, so whoever receives frame n sees
                // `played` past it.
                self.counters.played.store(index + 1, Ordering::SeqCst);
                self.counters.notify_progress();
                tokio::select! {
                    r = out.send(Output::Frame(frame)) => if r.is_err() { return },
                    _ = self.cancel.cancelled() => return,
                }
            }
        }
    }
}
