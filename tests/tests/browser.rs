//! The player in a real headless Chromium (Debian's), driven over WebDriver by chromedriver:
//! open the page, start a stream, see the canvas move, steer from the page, see it change.

use endless_tests::TestServer;
use endless_tests::browser::{Browser, CANVAS};
use serde_json::json;
use std::time::Duration;

#[test]
fn the_page_starts_a_stream_and_steers_it() {
    let server = TestServer::start(&[]);
    let browser = Browser::start();
    browser.cmd("POST", "/url", Some(json!({"url": format!("http://{}/", server.addr)})));
    // The page offers the size and rate the server streams by default (`GET /api/source`).
    browser.wait_for(
        "the server's default size",
        "return !!window.endlessStats && window.endlessStats.source === 'world' \
         && document.querySelector('#size').value === '128x128' \
         && document.querySelector('#fps').value === '12'",
        Duration::from_secs(30),
    );
    browser.type_into("#prompt", "rolling hills on a clear day, camera drifting right");
    browser.click("#start");
    browser.wait_for(
        "frames on the canvas",
        "return !!(window.endlessStats && window.endlessStats.framesDrawn > 24)",
        Duration::from_secs(30),
    );
    assert_eq!(browser.js("return window.endlessStats.codec"), "h264", "WebCodecs in use");
    let a = browser.js(CANVAS);
    std::thread::sleep(Duration::from_millis(1500));
    let b = browser.js(CANVAS);
    assert!(a["mean"].as_f64().unwrap() > 90.0, "a bright day: {a}");
    let moved: f64 = (0..16).map(|i| (a["cells"][i].as_f64().unwrap() - b["cells"][i].as_f64().unwrap()).abs()).sum();
    assert!(moved > 1.0, "the canvas changes over time (pan): {a} vs {b}");

    // Steer from the page.
    browser.type_into("#prompt", "night");
    browser.click("#steer");
    browser.wait_for(
        "the steer to show",
        &format!("return (() => {{ {CANVAS} }})().mean < 45"),
        Duration::from_secs(15),
    );
    let stats = browser.js("return window.endlessStats");
    assert!(stats["shownFps"].as_f64().unwrap() > 6.0, "{stats}");
    let latency = stats["latencyMs"].as_f64().unwrap_or(f64::NAN);
    assert!((0.0..2000.0).contains(&latency), "push→display latency {latency} ms");
    // The page timed its steer from the click to the first frame made with it on the canvas.
    assert_eq!(stats["switches"], 1, "{stats}");
    let switch = stats["switchMs"].as_f64().unwrap_or(f64::NAN);
    assert!((0.0..15_000.0).contains(&switch), "steer → shown {switch} ms");

    // A screenshot as a test artifact.
    use base64::Engine;
    let png = browser.cmd("GET", "/screenshot", None);
    let png = base64::engine::general_purpose::STANDARD.decode(png.as_str().expect("base64 PNG")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

/// The page as `scripts/serve.sh` serves it: the shipped model is the source, the page offers
/// only its size and rate, plays what it generates and shows a steer to night.
#[test]
fn the_page_plays_the_shipped_model() {
    if endless_model::text::dir_for_tests().is_none() {
        return;
    }
    let server = TestServer::shipped(&["--set", "model.device=cpu"]);
    let browser = Browser::start();
    browser.cmd("POST", "/url", Some(json!({"url": format!("http://{}/", server.addr)})));
    browser.wait_for(
        "the model's one size and rate",
        "return !!window.endlessStats && window.endlessStats.source === 'model' \
         && document.querySelector('#size').value === '128x128' && document.querySelector('#size').disabled \
         && document.querySelector('#fps').value === '8'",
        Duration::from_secs(30),
    );
    browser.type_into("#prompt", "rolling hills on a clear day, static camera");
    browser.click("#start");
    browser.wait_for(
        "frames on the canvas",
        "return !!(window.endlessStats && window.endlessStats.framesDrawn > 16)",
        Duration::from_secs(60),
    );
    assert_eq!(browser.js("return window.endlessStats.codec"), "h264", "WebCodecs in use");
    let day = browser.js(CANVAS)["mean"].as_f64().unwrap();
    browser.type_into("#prompt", "a clear night over rolling hills, static camera");
    browser.click("#steer");
    browser.wait_for(
        "the night to show",
        &format!("return (() => {{ {CANVAS} }})().mean < {}", day * 0.6),
        Duration::from_secs(30),
    );
    let stats = browser.js("return window.endlessStats");
    assert_eq!(stats["switches"], 1, "{stats}");
}
