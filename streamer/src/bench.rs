//! `endless bench`: how many model streams one device holds in real time, how fast a stream
//! follows a new prompt, and how much memory streaming holds over time.
//!
//! - **Sessions**: for 1, 2, 4, … concurrent sessions on one scheduler (the service's own
//!   worker: batching, deadlines), every session generates the same length of video as fast as
//!   it can; the table gives the time to the first frame, the per-session generation rate and
//!   its real-time factor (generated seconds of video per second), until a session no longer
//!   keeps up.
//! - **Prompt switches**: one session of the service (its buffer, its pacer, its steering)
//!   played in real time and steered: seconds from the steer to the first frame generated
//!   with the new prompt, and to that frame leaving the session for the encoder.
//! - **Encoding**: the service's H.264 encoder (x264, the `[encoder]` settings) on a stream's
//!   frames as fast as it goes: seconds of encoding per second of video, and the bitrate every
//!   viewer's connection carries.
//! - **Memory**: sessions streaming in real time for an hour (or as long as asked), the
//!   process's resident memory at given minutes.

use crate::config::Config;
use anyhow::Result;
use endless_sessions::{FrameSource, ModelSource, Output, OwnerToken, Scheduler, Session, Settings, ViewerGuard};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub sessions: usize,
    /// Seconds from the start to each session's first frame: mean and worst.
    pub first_frame_mean_s: f64,
    pub first_frame_max_s: f64,
    /// Frames per second each session got (the slowest session's), and all together.
    pub session_fps: f64,
    pub total_fps: f64,
    /// `session_fps / stream fps`: ≥ 1 is real time.
    pub realtime_factor: f64,
    /// Mean chunks per batch the worker formed.
    pub mean_batch: f64,
    /// Shares of the wall time the worker spent in the denoiser and in the VAE decoder (the
    /// rest: waiting for work, scheduling, the sessions' threads).
    pub denoise_share: f64,
    pub decode_share: f64,
    /// Model FLOP utilisation: the denoiser's counted FLOPs ÷ its time ÷ the device's peak.
    pub mfu: f64,
}

/// What `endless bench` measures besides the sessions table.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Seconds of video per session per row.
    pub seconds: f64,
    pub max_sessions: usize,
    /// Keep doubling the sessions after real time breaks.
    pub past_realtime: bool,
    /// Prompt switches to time (0: none).
    pub switches: usize,
    /// Minutes at which to read memory while `memory_sessions` stream (empty: none).
    pub memory_minutes: Vec<f64>,
    pub memory_sessions: usize,
}

/// The encoder on a stream's frames.
#[derive(Debug, Clone, Serialize)]
pub struct EncodeRow {
    pub frames: usize,
    /// Wall seconds to encode them ÷ their seconds of video: the share of one stream's real
    /// time that encoding takes (GStreamer's threads, beside the model's).
    pub share_of_realtime: f64,
    /// H.264 bitrate, kbit/s: what each viewer's WebSocket carries.
    pub kbps: f64,
}

/// Everything `endless bench` measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub device: String,
    pub peak_gflops: f64,
    pub sessions: Vec<Row>,
    pub encoding: Option<EncodeRow>,
    pub switches: Vec<SwitchRow>,
    pub memory: Vec<MemoryRow>,
}

/// Runs the benchmark with the `[model]` and `[sessions]` settings of `config`, printing its
/// tables.
pub fn run(config: &Config, o: &BenchOptions) -> Result<BenchReport> {
    let scheduler = Scheduler::start(crate::server::model_settings(config)).map_err(anyhow::Error::msg)?;
    let peak = endless_model::device::peak_gflops(scheduler.device);
    println!("device {:?}: peak {peak:.0} GFLOP/s (f32 matmul)\n", scheduler.device);
    let sessions = sessions_table(&scheduler, peak, o)?;
    let encoding = encoding(config, &scheduler, o.seconds)?;
    println!(
        "\nencoding ({} frames of one stream, x264 {:?}): {:.1} % of real time, {:.0} kbit/s per viewer",
        encoding.frames,
        config.encoder.speed_preset,
        100.0 * encoding.share_of_realtime,
        encoding.kbps
    );
    let runtime = tokio::runtime::Runtime::new()?;
    let settings = crate::server::session_settings(config);
    let mut switches = Vec::new();
    if o.switches > 0 {
        println!(
            "\nprompt switches (one session in real time, {} s buffered):\n",
            settings.buffer_chunks as f64 * settings.chunk_frames as f64 / scheduler.spec.fps
        );
        println!("| switch | frames ahead | steer → generated (s) | steer → pushed (s) | stalls |");
        println!("|---|---|---|---|---|");
        switches = runtime.block_on(self::switches(&scheduler, settings.clone(), o.switches))?;
        for (i, r) in switches.iter().enumerate() {
            println!("| {} | {} | {:.2} | {:.2} | {} |", i + 1, r.frames_ahead, r.generated_s, r.pushed_s, r.stalls);
        }
    }
    let mut memory = Vec::new();
    if !o.memory_minutes.is_empty() {
        println!("\nresident memory while {} session(s) stream in real time:\n", o.memory_sessions);
        println!("| minute | RSS (MiB) | sessions | frames shown | stalls |");
        println!("|---|---|---|---|---|");
        memory = runtime.block_on(self::memory(&scheduler, settings, o.memory_sessions, &o.memory_minutes))?;
    }
    Ok(BenchReport {
        device: format!("{:?}", scheduler.device).to_lowercase(),
        peak_gflops: peak,
        sessions,
        encoding: Some(encoding),
        switches,
        memory,
    })
}

/// The sessions table: `seconds` of video per session. Stops after the first row below real
/// time unless `past_realtime` (to see how batching scales the total rate on a device that is
/// too slow for even one stream).
fn sessions_table(scheduler: &Arc<Scheduler>, peak: f64, o: &BenchOptions) -> Result<Vec<Row>> {
    let BenchOptions { seconds, max_sessions, past_realtime, .. } = *o;
    let fps = scheduler.spec.fps;
    println!(
        "| sessions | first frame mean (s) | first frame worst (s) | fps per session | fps total | real-time factor | chunks per batch | denoiser share | decoder share | MFU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let frames = (seconds * fps).ceil() as usize;
    // Warm-up: one stream's first chunks (allocation, caches), not measured.
    ModelSource::new(scheduler.clone(), "warm-up", 0).next_chunk(scheduler.first_chunk_frames)?;
    let mut rows = Vec::new();
    let mut n = 1;
    while n <= max_sessions {
        let row = measure(scheduler, n, frames, fps, peak)?;
        println!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} % | {:.0} % | {:.1} % |",
            row.sessions,
            row.first_frame_mean_s,
            row.first_frame_max_s,
            row.session_fps,
            row.total_fps,
            row.realtime_factor,
            row.mean_batch,
            100.0 * row.denoise_share,
            100.0 * row.decode_share,
            100.0 * row.mfu
        );
        let keeps_up = row.realtime_factor >= 1.0;
        rows.push(row);
        if !keeps_up && !past_realtime {
            break;
        }
        n *= 2;
    }
    Ok(rows)
}

fn measure(scheduler: &Arc<Scheduler>, n: usize, frames: usize, fps: f64, peak: f64) -> Result<Row> {
    use std::sync::atomic::Ordering::SeqCst;
    let prompts = ["snowy mountains at night", "a desert at sunset", "a foggy morning at sea", "a city in the rain"];
    let s = &scheduler.stats;
    let counters =
        || [&s.batches, &s.chunks, &s.denoise_us, &s.decode_us, &s.denoise_mflop].map(|c| c.load(SeqCst) as f64);
    // Let chunks still in flight for the previous row's sessions finish first.
    let mut last = s.chunks.load(SeqCst);
    loop {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = s.chunks.load(SeqCst);
        if now == last {
            break;
        }
        last = now;
    }
    let before = counters();
    let started = Instant::now();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let mut source = ModelSource::new(scheduler.clone(), prompts[i % prompts.len()], i as u64 + 1);
            std::thread::spawn(move || -> Result<(f64, f64), String> {
                let mut first = None;
                let mut made = 0;
                while made < frames {
                    let got = source.next_chunk(4.min(frames - made)).map_err(|e| e.to_string())?;
                    first.get_or_insert(started.elapsed().as_secs_f64());
                    made += got.len();
                }
                Ok((first.unwrap_or(0.0), started.elapsed().as_secs_f64()))
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in threads {
        results.push(t.join().map_err(|_| anyhow::anyhow!("a bench session panicked"))?.map_err(anyhow::Error::msg)?);
    }
    let wall = results.iter().map(|r| r.1).fold(0.0, f64::max);
    let after = counters();
    let [batches, chunks, denoise_us, decode_us, mflop] = std::array::from_fn(|i| after[i] - before[i]);
    let session_fps = frames as f64 / wall;
    Ok(Row {
        sessions: n,
        first_frame_mean_s: results.iter().map(|r| r.0).sum::<f64>() / n as f64,
        first_frame_max_s: results.iter().map(|r| r.0).fold(0.0, f64::max),
        session_fps,
        total_fps: session_fps * n as f64,
        realtime_factor: session_fps / fps,
        mean_batch: chunks / batches.max(1.0),
        denoise_share: denoise_us / 1e6 / wall,
        decode_share: decode_us / 1e6 / wall,
        mfu: if denoise_us > 0.0 { mflop / 1e3 / (denoise_us / 1e6) / peak } else { 0.0 },
    })
}

/// One prompt switch on a session played in real time.
#[derive(Debug, Clone, Serialize)]
pub struct SwitchRow {
    /// Frames from the one showing when the steer came to the first frame of the new prompt.
    pub frames_ahead: u64,
    /// Seconds from the steer until that frame is generated with the new conditioning…
    pub generated_s: f64,
    /// …and until the session pushes it to its encoder (the page shows it one push→display
    /// latency later).
    pub pushed_s: f64,
    /// Playback stalls during the switch.
    pub stalls: u64,
}

/// Resident memory while sessions stream.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    pub minute: f64,
    pub rss_mib: f64,
    pub sessions: usize,
    /// Frames shown by all sessions so far, and their stalls.
    pub shown_frames: u64,
    pub stalls: u64,
}

/// `seconds` of one model stream through the service's encoder, pushed as fast as it takes
/// them; timed from the first frame in to the last access unit out.
fn encoding(config: &Config, scheduler: &Arc<Scheduler>, seconds: f64) -> Result<EncodeRow> {
    use crate::encoder::{Encoder, Packet};
    use crate::protocol::Track;
    let fps = scheduler.spec.fps;
    let n = (seconds * fps).ceil().max(1.0) as usize;
    let frames = ModelSource::new(scheduler.clone(), "a city in the rain", 3).next_chunk(n)?;
    let (tx, rx) = std::sync::mpsc::channel::<usize>();
    let size = scheduler.size();
    let encoder = Encoder::start(size, fps, &config.encoder, move |p: Packet| {
        if p.track == Track::H264 {
            let _ = tx.send(p.data.len());
        }
    })?;
    let started = Instant::now();
    let frame_ns = (1e9 / fps) as u64;
    for (i, rgb) in frames.iter().enumerate() {
        encoder.push(rgb, i as u64 * frame_ns, frame_ns)?;
    }
    let mut bytes = 0;
    for _ in 0..n {
        bytes += rx.recv_timeout(std::time::Duration::from_secs(30))?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    encoder.stop();
    let video_seconds = n as f64 / fps;
    Ok(EncodeRow {
        frames: n,
        share_of_realtime: elapsed / video_seconds,
        kbps: bytes as f64 * 8.0 / 1e3 / video_seconds,
    })
}

/// Resident set size of this process, in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    kib / 1024.0
}

/// A session of the service over a model source, watched, its frames drained as an encoder
/// would take them; returns the session, its owner token and the index of the latest frame
/// pushed (with `u64::MAX` before the first).
fn watched_session(
    scheduler: &Arc<Scheduler>,
    settings: Settings,
    prompt: &str,
    seed: u64,
) -> (Arc<Session>, OwnerToken, ViewerGuard, Arc<AtomicU64>) {
    let source = ModelSource::new(scheduler.clone(), prompt, seed);
    let (session, owner) = Session::start(Box::new(source), prompt, seed, settings, Vec::new());
    let viewer = session.watch();
    let mut output = session.take_output().expect("a new session's output");
    let latest = Arc::new(AtomicU64::new(u64::MAX));
    let pushed = latest.clone();
    tokio::spawn(async move {
        while let Some(Output::Frame(frame)) = output.recv().await {
            pushed.store(frame.index, Ordering::SeqCst);
        }
    });
    (session, owner, viewer, latest)
}

/// Waits (polling every 5 ms) until `done` holds; the seconds it took from `since`.
async fn until(since: Instant, done: impl Fn() -> bool) -> f64 {
    while !done() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    since.elapsed().as_secs_f64()
}

/// Prompt-switch latency: one session played in real time (the service's buffering and
/// steering: the steer lands a little ahead of playback and rolls back the buffered chunks
/// after it), steered `count` times, 3 s of video apart.
pub async fn switches(scheduler: &Arc<Scheduler>, settings: Settings, count: usize) -> Result<Vec<SwitchRow>> {
    let prompts = ["a city at night in the rain", "a desert at sunset", "snowy mountains at night", "a foggy sea"];
    let (session, owner, _viewer, pushed) = watched_session(scheduler, settings, "green hills on a clear day", 7);
    let fps = session.fps();
    let shown = |frames: u64| {
        let pushed = pushed.clone();
        move || pushed.load(Ordering::SeqCst).wrapping_add(1) >= frames
    };
    until(Instant::now(), shown((3.0 * fps) as u64)).await;
    let mut rows = Vec::new();
    for i in 0..count {
        let stalls = session.info().stalls;
        let showing = session.played();
        let steered = Instant::now();
        let at = session.steer(owner.as_str(), prompts[i % prompts.len()], Some(0.0))?;
        let generated_s = until(steered, || session.generated() > at).await;
        let pushed_s = until(steered, shown(at + 1)).await;
        rows.push(SwitchRow {
            frames_ahead: at.saturating_sub(showing),
            generated_s,
            pushed_s,
            stalls: session.info().stalls - stalls,
        });
        until(Instant::now(), shown(at + (3.0 * fps) as u64)).await;
    }
    session.close();
    Ok(rows)
}

/// Resident memory with `sessions` sessions streaming in real time, read at each of
/// `minutes`.
pub async fn memory(
    scheduler: &Arc<Scheduler>,
    settings: Settings,
    sessions: usize,
    minutes: &[f64],
) -> Result<Vec<MemoryRow>> {
    let prompts = ["snowy mountains at night", "a desert at sunset", "a foggy morning at sea", "a city in the rain"];
    let started = Instant::now();
    let live: Vec<_> = (0..sessions)
        .map(|i| watched_session(scheduler, settings.clone(), prompts[i % prompts.len()], 100 + i as u64))
        .collect();
    let mut rows = Vec::new();
    for &minute in minutes {
        let wait = std::time::Duration::from_secs_f64(minute * 60.0).saturating_sub(started.elapsed());
        tokio::time::sleep(wait).await;
        let infos: Vec<_> = live.iter().map(|(s, ..)| s.info()).collect();
        let row = MemoryRow {
            minute,
            rss_mib: rss_mib(),
            sessions,
            shown_frames: infos.iter().map(|i| i.shown_frames).sum(),
            stalls: infos.iter().map(|i| i.stalls).sum(),
        };
        println!(
            "| {:.0} | {:.1} | {} | {} | {} |",
            row.minute, row.rss_mib, row.sessions, row.shown_frames, row.stalls
        );
        rows.push(row);
    }
    for (session, ..) in &live {
        session.close();
    }
    Ok(rows)
}
