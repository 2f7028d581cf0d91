//! A long run with sessions and viewers joining and leaving, recordings now and then, and
//! the server's resident memory sampled throughout.
//!
//! ```text
//! cargo build --release -p endless-streamer -p endless-tests
//! MALLOC_ARENA_MAX=2 $CARGO_TARGET_DIR/release/soak [MINUTES=30] [SIZE=128x128] [SEED=1]
//! ```
//!
//! Four owners and sixteen viewers at all times, each replaced by a newcomer when it leaves:
//! an owner creates a session, steers it now and then and records 5–25 s of it now and
//! then, stays 1–6 minutes, then closes it (four times in five) or just disconnects (idle
//! eviction, 5 s, ends it once its viewers are gone); a viewer watches a random live session
//! for 5 s to 3 minutes. Every 5 s the server's RSS, sessions and viewers
//! are sampled; a table per minute follows, and the drift of the resident memory after the
//! warm-up (the first 5 minutes): the mean of the last 5 minutes against the mean of
//! minutes 5–10, and the spread of every sample after warm-up.

use endless_tests::TestServer;
use endless_tests::client::{Client, Event, Rng, metric, rss_kib};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Owners (each with a live session) and viewers at any moment.
const OWNERS: usize = 4;
const VIEWERS: usize = 16;

const PROMPTS: [&str; 6] = [
    "rolling hills on a clear day, camera panning left",
    "a city skyline at night",
    "ocean waves at sunset, camera drifting right",
    "a forest in thick fog at dawn",
    "desert dunes at noon",
    "snowy mountains under a grey sky",
];

#[derive(Default)]
struct Counts {
    sessions_created: AtomicU64,
    viewers_joined: AtomicU64,
    recordings: AtomicU64,
    frames: AtomicU64,
    errors: AtomicU64,
}

/// Reads until `until` (or the session ends); counts the frames.
async fn read_until(c: &mut Client, until: Instant, counts: &Counts) {
    while let Some(ev) = c.next_within(until.saturating_duration_since(Instant::now())).await {
        match ev {
            Event::Media(_) => {
                counts.frames.fetch_add(1, Ordering::Relaxed);
            }
            Event::Json(v) if v["type"] == "ended" => return,
            Event::Json(v) if v["type"] == "error" => {
                counts.errors.fetch_add(1, Ordering::Relaxed);
            }
            Event::Closed(_) => return,
            Event::Json(_) => {}
        }
        if Instant::now() >= until {
            return;
        }
    }
}

async fn owner(addr: std::net::SocketAddr, seed: u64, live: Arc<std::sync::Mutex<Vec<String>>>, counts: Arc<Counts>) {
    let mut r = Rng(seed);
    let mut c = Client::connect(addr).await;
    c.try_send(json!({"type": "create", "prompt": PROMPTS[r.below(6) as usize], "seed": seed})).await;
    let created = loop {
        match c.next().await {
            Event::Json(v) if v["type"] == "created" => break v,
            Event::Json(v) if v["type"] == "error" => return, // the server is full: fine
            _ => {}
        }
    };
    counts.sessions_created.fetch_add(1, Ordering::Relaxed);
    let (session, token) =
        (created["session"].as_str().unwrap().to_string(), created["token"].as_str().unwrap().to_string());
    c.watch(&session, Some(&token)).await;
    live.lock().unwrap().push(session.clone());
    let end = Instant::now() + Duration::from_secs(60 + r.below(300));
    while Instant::now() < end {
        let step = Instant::now() + Duration::from_secs(5 + r.below(20));
        match r.below(4) {
            0 => {
                c.try_send(json!({"type": "steer", "prompt": PROMPTS[r.below(6) as usize], "transition_secs": 1}))
                    .await;
            }
            1 if r.below(3) == 0 => {
                c.try_send(json!({"type": "record", "on": true})).await;
                counts.recordings.fetch_add(1, Ordering::Relaxed);
                read_until(&mut c, step.min(end), &counts).await;
                c.try_send(json!({"type": "record", "on": false})).await;
            }
            _ => {}
        }
        read_until(&mut c, step.min(end), &counts).await;
    }
    live.lock().unwrap().retain(|s| *s != session);
    // Most owners close their session; the others just leave, and idle eviction ends it
    // once its last viewer has gone.
    if r.below(5) != 0 {
        c.try_send(json!({"type": "close"})).await;
        read_until(&mut c, Instant::now() + Duration::from_secs(5), &counts).await;
    }
}

async fn viewer(addr: std::net::SocketAddr, session: String, secs: u64, counts: Arc<Counts>) {
    let mut c = Client::connect(addr).await;
    if !c.try_send(json!({"type": "watch", "session": session})).await {
        return;
    }
    counts.viewers_joined.fetch_add(1, Ordering::Relaxed);
    read_until(&mut c, Instant::now() + Duration::from_secs(secs), &counts).await;
}

/// Counts a participant out when its task ends, however it ends.
struct Leaves(Arc<AtomicUsize>);

impl Drop for Leaves {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minutes: u64 = args.first().map_or(30, |a| a.parse().expect("MINUTES is a number"));
    let size = args.get(1).cloned().unwrap_or_else(|| "128x128".into());
    let seed: u64 = args.get(2).map_or(1, |a| a.parse().expect("SEED is a number"));
    let server = TestServer::start(&[
        "--set",
        &format!("sessions.size=\"{size}\""),
        "--set",
        "sessions.idle_timeout_secs=5",
        "--set",
        "sessions.max_sessions=8",
        "--set",
        "recording.quota_mib=512",
    ]);
    let pid = server.child.id();
    println!("soak: endless {} (pid {pid}), {size}, {minutes} min, seed {seed}", server.addr);
    println!("MALLOC_ARENA_MAX={}", std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "(unset)".into()));
    let live = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let counts = Arc::new(Counts::default());
    let mut r = Rng(seed);
    let (owners_now, viewers_now) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let server_addr = server.addr;
    let started = Instant::now();
    let end = started + Duration::from_secs(minutes * 60);
    let mut samples: Vec<(f64, f64, f64, f64)> = Vec::new(); // (minute, RSS MiB, sessions, viewers)
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n = 0u64;
    println!(
        "| minute | RSS MiB | sessions | viewers | sessions created | viewers joined | recordings | frames received |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut printed = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        n += 1;
        // A steady population that churns: OWNERS owners and VIEWERS viewers at all times, each
        // replaced by a newcomer when it leaves, so that minutes compare with each other.
        if owners_now.load(Ordering::Relaxed) < OWNERS && r.below(2) == 0 {
            owners_now.fetch_add(1, Ordering::Relaxed);
            let (live, counts, now) = (live.clone(), counts.clone(), owners_now.clone());
            let seed = r.next_u64() >> 12;
            tokio::spawn(async move {
                let _leaves = Leaves(now);
                owner(server_addr, seed, live, counts).await;
            });
        }
        let pick = {
            let l = live.lock().unwrap();
            (!l.is_empty()).then(|| l[r.below(l.len() as u64) as usize].clone())
        };
        if let Some(session) = pick.filter(|_| viewers_now.load(Ordering::Relaxed) < VIEWERS) {
            viewers_now.fetch_add(1, Ordering::Relaxed);
            let (counts, now, secs) = (counts.clone(), viewers_now.clone(), 5 + r.below(175));
            tokio::spawn(async move {
                let _leaves = Leaves(now);
                viewer(server_addr, session, secs, counts).await;
            });
        }
        if n.is_multiple_of(5) {
            let page = tokio::task::spawn_blocking({
                let addr = server.addr;
                move || String::from_utf8_lossy(&endless_tests::http_get(addr, "/metrics").1).into_owned()
            })
            .await
            .unwrap_or_default();
            let rss = rss_kib(pid).expect("the server is alive") as f64 / 1024.0;
            let minute = started.elapsed().as_secs_f64() / 60.0;
            let g = |name| metric(&page, name).unwrap_or(f64::NAN);
            samples.push((minute, rss, g("endless_sessions"), g("endless_viewers")));
        }
        let minute = started.elapsed().as_secs() / 60;
        if minute > printed {
            printed = minute;
            let last: Vec<_> = samples.iter().filter(|s| s.0 >= (minute - 1) as f64).collect();
            let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
            println!(
                "| {minute} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {} |",
                mean(&last.iter().map(|s| s.1).collect::<Vec<_>>()),
                mean(&last.iter().map(|s| s.2).collect::<Vec<_>>()),
                mean(&last.iter().map(|s| s.3).collect::<Vec<_>>()),
                c(&counts.sessions_created),
                c(&counts.viewers_joined),
                c(&counts.recordings),
                c(&counts.frames),
            );
        }
    }
    let warm = 5.0;
    let after: Vec<f64> = samples.iter().filter(|s| s.0 >= warm).map(|s| s.1).collect();
    let early: Vec<f64> = samples.iter().filter(|s| s.0 >= warm && s.0 < warm + 5.0).map(|s| s.1).collect();
    let late: Vec<f64> = samples.iter().filter(|s| s.0 >= minutes as f64 - 5.0).map(|s| s.1).collect();
    if after.is_empty() || early.is_empty() || late.is_empty() {
        println!("too short for a drift figure: run at least 10 minutes");
        return;
    }
    let (lo, hi) = (after.iter().cloned().fold(f64::MAX, f64::min), after.iter().cloned().fold(0.0, f64::max));
    println!();
    println!(
        "RSS after warm-up ({warm} min): min {lo:.1} MiB, max {hi:.1} MiB, spread {:.1} % of the min",
        (hi - lo) / lo * 100.0
    );
    println!(
        "drift: mean of the last 5 min {:.1} MiB vs minutes 5–10 {:.1} MiB: {:+.1} %",
        mean(&late),
        mean(&early),
        (mean(&late) - mean(&early)) / mean(&early) * 100.0
    );
    println!(
        "errors answered to the soak's own requests: {} (steers refused for speed, a full server)",
        counts.errors.load(Ordering::Relaxed)
    );
}
