//! `endless bench`: how many model streams one device holds in real time.
//!
//! For 1, 2, 4, … concurrent sessions on one scheduler (the service's own worker: batching,
//! deadlines), every session generates the same length of video as fast as it can; the table
//! gives the time to the first frame, the per-session generation rate and its real-time
//! factor (generated seconds of video per second), until a session no longer keeps up.

use crate::config::Config;
use anyhow::Result;
use endless_sessions::{FrameSource, ModelSource, Scheduler};
use serde::Serialize;
use std::sync::Arc;
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

/// Runs the benchmark with the `[model]` settings of `config`; `seconds` of video per session.
/// Stops after the first row below real time unless `past_realtime` (to see how batching
/// scales the total rate on a device that is too slow for even one stream).
pub fn run(config: &Config, seconds: f64, max_sessions: usize, past_realtime: bool) -> Result<Vec<Row>> {
    let scheduler = Scheduler::start(crate::server::model_settings(config)).map_err(anyhow::Error::msg)?;
    let fps = scheduler.spec.fps;
    let peak = endless_model::device::peak_gflops(scheduler.device);
    println!("device {:?}: peak {peak:.0} GFLOP/s (f32 matmul)\n", scheduler.device);
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
        let row = measure(&scheduler, n, frames, fps, peak)?;
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
