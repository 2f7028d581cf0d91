//! Many viewers of one stream on loopback: the server's resident memory before, during and
//! after, and what every viewer received.
//!
//! ```text
//! cargo build --release -p endless-streamer -p endless-tests
//! MALLOC_ARENA_MAX=2 $CARGO_TARGET_DIR/release/load_viewers [VIEWERS=200] [SECONDS=60] [SIZE=256x256]
//! ```
//!
//! Starts `endless serve` (the one beside this binary, or `ENDLESS_BIN`), creates one
//! session, connects the viewers, lets them watch, then prints a table. A viewer's frame
//! rate counts the H.264 access units it received per second of the run; "gaps" are places
//! where its presentation times jump by more than one frame (it was skipped ahead to a
//! keyframe because it fell behind).

use endless_tests::client::{Client, Event, metric, rss_kib};
use endless_tests::{TestServer, http_get};
use std::time::{Duration, Instant};

const FPS: f64 = 12.0;

#[derive(Default, Clone)]
struct Received {
    frames: u64,
    bytes: u64,
    gaps: u64,
    max_gap_ms: f64,
    /// Seconds from `watch` to the first keyframe.
    first_key_s: f64,
}

async fn viewer(addr: std::net::SocketAddr, session: String, until: Instant) -> Received {
    let mut c = Client::connect(addr).await;
    let asked = Instant::now();
    c.watch(&session, None).await;
    let mut r = Received::default();
    let mut last: Option<u64> = None;
    let frame_us = 1e6 / FPS;
    while let Some(ev) = c.next_within(until.saturating_duration_since(Instant::now())).await {
        match ev {
            Event::Media(m) if m.track == 1 => {
                if last.is_none() {
                    r.first_key_s = asked.elapsed().as_secs_f64();
                }
                if let Some(prev) = last {
                    let step = m.pts_us.saturating_sub(prev) as f64;
                    if step > 1.5 * frame_us {
                        r.gaps += 1;
                        r.max_gap_ms = r.max_gap_ms.max(step / 1000.0);
                    }
                }
                last = Some(m.pts_us);
                r.frames += 1;
                r.bytes += m.payload.len() as u64;
            }
            Event::Closed(c) => panic!("a viewer was closed: {c:?}"),
            _ => {}
        }
        if Instant::now() >= until {
            break;
        }
    }
    r
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let viewers: usize = args.first().map_or(200, |a| a.parse().expect("VIEWERS is a number"));
    let secs: u64 = args.get(1).map_or(60, |a| a.parse().expect("SECONDS is a number"));
    let size = args.get(2).cloned().unwrap_or_else(|| "256x256".into());
    let server =
        TestServer::start(&["--set", &format!("sessions.size=\"{size}\""), "--set", "sessions.max_sessions=4"]);
    let pid = server.child.id();
    let rss = || rss_kib(pid).unwrap_or(0) as f64 / 1024.0;
    println!("endless {} (pid {pid}), one {size} session at {FPS} fps, {viewers} viewers for {secs} s", server.addr);
    println!("MALLOC_ARENA_MAX={}", std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "(unset)".into()));
    let rss_idle = rss();

    let mut owner = Client::connect(server.addr).await;
    let (session, token) = owner.create("rolling hills on a clear day, camera panning left").await;
    owner.watch(&session, Some(&token)).await;
    // The owner keeps reading in the background so that it is never the slow one.
    let owner_task = tokio::spawn(async move {
        while let Some(ev) = owner.next_within(Duration::from_secs(5)).await {
            if matches!(ev, Event::Closed(_)) {
                break;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_one_session = rss();

    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..viewers {
        tasks.push(tokio::spawn(viewer(server.addr, session.clone(), until)));
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut peak: f64 = 0.0;
    let mut samples = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let r = rss();
        peak = peak.max(r);
        samples.push(r);
    }
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.expect("a viewer task"));
    }
    let metrics = String::from_utf8(http_get(server.addr, "/metrics").1).unwrap_or_default();
    let dropped = metric(&metrics, "endless_media_messages_dropped_total").unwrap_or(f64::NAN);
    let sent = metric(&metrics, "endless_media_bytes_sent_total").unwrap_or(f64::NAN);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_after = rss();
    owner_task.abort();

    // A viewer's rate over the time it watched (from its first keyframe to the end).
    let mut rates: Vec<f64> = got.iter().map(|r| r.frames as f64 / (secs as f64 - r.first_key_s)).collect();
    rates.sort_by(f64::total_cmp);
    let mut joins: Vec<f64> = got.iter().map(|r| r.first_key_s).collect();
    joins.sort_by(f64::total_cmp);
    let gappy = got.iter().filter(|r| r.gaps > 0).count();
    let max_gap = got.iter().map(|r| r.max_gap_ms).fold(0.0, f64::max);
    let mbit = got.iter().map(|r| r.bytes).sum::<u64>() as f64 * 8.0 / secs as f64 / 1e6;
    let steady = &samples[samples.len() / 2..];
    println!();
    println!("| what | value |");
    println!("|---|---|");
    println!("| RSS, server idle | {rss_idle:.0} MiB |");
    println!("| RSS, one session, its owner watching | {rss_one_session:.0} MiB |");
    println!("| RSS, {viewers} viewers, peak | {peak:.0} MiB |");
    println!(
        "| RSS, {viewers} viewers, second half of the run | {:.0}–{:.0} MiB |",
        steady.iter().cloned().fold(f64::MAX, f64::min),
        steady.iter().cloned().fold(0.0, f64::max)
    );
    println!("| RSS, 3 s after the viewers left | {rss_after:.0} MiB |");
    println!(
        "| frames/s per viewer: min / median / max | {:.2} / {:.2} / {:.2} (stream: {FPS}) |",
        rates[0],
        pct(&rates, 0.5),
        rates[rates.len() - 1]
    );
    println!("| watch → first keyframe: median / max | {:.2} s / {:.2} s |", pct(&joins, 0.5), joins[joins.len() - 1]);
    println!("| viewers skipped ahead at least once | {gappy} of {viewers} (longest jump {max_gap:.0} ms) |");
    println!("| media messages dropped for slow viewers (/metrics) | {dropped} |");
    println!("| media received, all viewers | {mbit:.1} Mbit/s ({:.1} MB queued by the server) |", sent / 1e6);
}
