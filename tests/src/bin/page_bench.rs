//! The page's own figures in headless Chromium, on whatever source the server runs: time to
//! the first frame on the canvas, push→display latency, frames shown per second, stalls, and
//! steer → shown (from the click on Steer to the first frame made with the new prompt on the
//! canvas). Prints markdown tables for BENCHMARKS.md.
//!
//! ```text
//! bash scripts/test.sh        # or: cargo build --release --workspace --features endless-model/gst
//! $CARGO_TARGET_DIR/release/page_bench [SECONDS=30] [SWITCHES=3] [-- endless flags…]
//! page_bench 60 5 -- --set sessions.source=model --set model.dir=models --set model.device=cpu
//! ```
//!
//! The server starts as the end-to-end tests start it (`TestServer`: 128×128 at 12 fps for
//! the world, with the flags given after `--` on top); the page takes the size and rate the
//! server offers (`GET /api/source`).

use endless_tests::TestServer;
use endless_tests::browser::Browser;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const PROMPTS: [&str; 6] = [
    "snowy mountains at night",
    "ocean waves at sunset, camera drifting right",
    "a city skyline on a foggy day",
    "desert dunes at dawn, camera panning left",
    "a forest in the rain",
    "rolling hills on a clear day",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let number = |i: usize, default: f64| args[..split].get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (seconds, switches) = (number(0, 30.0), number(1, 3.0) as usize);
    let extra: Vec<&str> = args.iter().skip(split + 1).map(String::as_str).collect();

    let server = TestServer::start(&extra);
    let browser = Browser::start();
    browser.cmd("POST", "/url", Some(json!({"url": format!("http://{}/", server.addr)})));
    let source = browser.wait_for(
        "the server's source",
        "return window.endlessStats.source && {source: window.endlessStats.source, \
         size: document.querySelector('#size').value, fps: document.querySelector('#fps').value}",
        Duration::from_secs(20),
    );
    println!("source: {source}");

    browser.type_into("#prompt", "rolling hills on a clear day, camera drifting right");
    let clicked = Instant::now();
    browser.click("#start");
    browser.wait_for("the first frame", "return window.endlessStats.framesDrawn > 0", Duration::from_secs(300));
    let first_frame = clicked.elapsed().as_secs_f64();

    // Steady playback, sampled every second.
    let stats = || browser.js("return window.endlessStats");
    let number = |v: &Value, key: &str| v[key].as_f64().unwrap_or(f64::NAN);
    let start = stats();
    let mut samples = Vec::new();
    let began = Instant::now();
    while began.elapsed().as_secs_f64() < seconds {
        std::thread::sleep(Duration::from_secs(1));
        samples.push(stats());
    }
    let end = stats();
    let drawn = number(&end, "framesDrawn") - number(&start, "framesDrawn");
    let mut latencies: Vec<f64> = samples.iter().map(|s| number(s, "latencyMs")).filter(|l| l.is_finite()).collect();
    latencies.sort_by(f64::total_cmp);
    let pick =
        |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    println!(
        "\n| first frame (s) | push→display median (ms) | p10–p90 (ms) | shown fps | stream fps | stalls | buffer (s) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {first_frame:.2} | {:.0} | {:.0}–{:.0} | {:.2} | {} | {} | {:.2} |",
        pick(0.5),
        pick(0.1),
        pick(0.9),
        drawn / began.elapsed().as_secs_f64(),
        end["fps"],
        number(&end, "stalls") - number(&start, "stalls"),
        number(&end, "bufferSeconds"),
    );

    // Prompt switches from the page.
    if switches > 0 {
        println!("\n| switch | prompt | steer → shown in the page (s) | stalls |");
        println!("|---|---|---|---|");
    }
    for (i, prompt) in PROMPTS.iter().cycle().take(switches).enumerate() {
        let before = stats();
        browser.type_into("#prompt", prompt);
        browser.click("#steer");
        let done = browser.wait_for(
            "the steer to show",
            &format!("return window.endlessStats.switches > {i} && window.endlessStats"),
            Duration::from_secs(120),
        );
        println!(
            "| {} | {prompt} | {:.2} | {} |",
            i + 1,
            number(&done, "switchMs") / 1000.0,
            number(&done, "stalls") - number(&before, "stalls")
        );
        std::thread::sleep(Duration::from_secs(3));
    }
}
