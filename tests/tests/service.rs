//! The service end to end: a real `endless serve` on a free port, a real WebSocket client,
//! real GStreamer decoding of what it streams and records.

use endless_tests::{TestServer, decode_file, decode_h264, http, http_get, mean_rgb};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const FPS: u64 = 12;

struct Client {
    ws: Ws,
}

/// A media message: (keyframe, pts µs, payload).
type Media = (bool, u64, Vec<u8>);

impl Client {
    async fn connect(server: &TestServer) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(server.ws_url()).await.expect("the WebSocket opens");
        Client { ws }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("sent");
    }

    /// The next message of any kind, within 15 s.
    async fn next(&mut self) -> Message {
        tokio::time::timeout(Duration::from_secs(15), self.ws.next())
            .await
            .expect("a message within 15 s")
            .expect("the socket is open")
            .expect("a valid message")
    }

    /// The next JSON message of `kind`, skipping media and other messages.
    async fn expect(&mut self, kind: &str) -> Value {
        loop {
            if let Message::Text(t) = self.next().await {
                let v: Value = serde_json::from_str(&t).expect("JSON");
                if v["type"] == kind {
                    return v;
                }
                assert_ne!(v["type"], "error", "unexpected error while waiting for {kind}: {v}");
            }
        }
    }

    /// Media messages until `n` are collected; text messages are kept aside.
    async fn media(&mut self, n: usize, texts: &mut Vec<Value>) -> Vec<Media> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next().await {
                Message::Binary(b) => {
                    assert!(b.len() > 20 && b[0] == 1 && b[1] == 1, "an H.264 media message");
                    let pts = u64::from_be_bytes(b[4..12].try_into().unwrap());
                    out.push((b[2] == 1, pts, b[20..].to_vec()));
                }
                Message::Text(t) => texts.push(serde_json::from_str(&t).unwrap()),
                _ => {}
            }
        }
        out
    }

    async fn create_and_watch(&mut self, prompt: &str) -> (String, String) {
        self.send(json!({"type": "create", "prompt": prompt, "seed": 5})).await;
        let created = self.expect("created").await;
        let (session, token) =
            (created["session"].as_str().unwrap().to_string(), created["token"].as_str().unwrap().to_string());
        self.send(json!({"type": "watch", "session": session, "token": token})).await;
        let watching = self.expect("watching").await;
        assert_eq!(watching["owner"], true);
        assert_eq!((watching["width"].as_u64(), watching["height"].as_u64()), (Some(128), Some(128)));
        assert!(watching["codec_string"].as_str().unwrap().starts_with("avc1.42"), "{watching}");
        (session, token)
    }
}

fn brightness(frames: &[endless_tests::DecodedFrame]) -> f64 {
    frames.iter().map(|f| mean_rgb(&f.rgb).iter().sum::<f64>() / 3.0).sum::<f64>() / frames.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_creates_watches_and_steers_a_stream() {
    let server = TestServer::start(&[]);
    let mut c = Client::connect(&server).await;
    let (_session, _token) = c.create_and_watch("rolling hills on a clear day, static camera").await;
    let mut texts = Vec::new();
    // Five seconds of media.
    let started = Instant::now();
    let media = c.media(5 * FPS as usize + 1, &mut texts).await;
    assert!(started.elapsed() >= Duration::from_millis(4500), "5 s of video arrived in {:?}", started.elapsed());
    assert!(media[0].0, "the first access unit is a keyframe");
    for w in media.windows(2) {
        let step = w[1].1 - w[0].1;
        assert!((83_000..=83_700).contains(&step), "PTS step {step} µs at 12 fps");
    }
    let aus: Vec<Vec<u8>> = media.iter().map(|m| m.2.clone()).collect();
    let decoded = decode_h264(&aus, FPS as u32);
    assert_eq!(decoded.len(), aus.len(), "every access unit decodes to a frame");
    assert!(decoded.iter().all(|f| (f.width, f.height) == (128, 128)));
    assert!(texts.iter().any(|t| t["type"] == "stats"), "stats arrive every second");

    // Steer to night: the picture darkens within a couple of seconds.
    let day = brightness(&decoded[decoded.len() - 6..]);
    c.send(json!({"type": "steer", "prompt": "night", "transition_secs": 0.5})).await;
    let prompt = c.expect("prompt").await;
    assert_eq!(prompt["prompt"], "night");
    let after = c.media(4 * FPS as usize, &mut texts).await;
    let all: Vec<Vec<u8>> = media.iter().chain(&after).map(|m| m.2.clone()).collect();
    let decoded = decode_h264(&all, FPS as u32);
    let night = brightness(&decoded[decoded.len() - 6..]);
    assert!(night < day * 0.5, "brightness {day:.0} → {night:.0} after the steer");

    // Requests that are wrong get a clear error, and the stream goes on.
    c.send(json!({"type": "steer", "prompt": ""})).await;
    assert_eq!(c.expect("error").await["request"], "steer");
    c.ws.send(Message::Text("{not json".into())).await.unwrap();
    assert!(c.expect("error").await["message"].as_str().unwrap().contains("not a valid request"));
    c.media(3, &mut texts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_and_a_late_joiner_get_decodable_video_and_cannot_steer() {
    let server = TestServer::start(&[]);
    let mut owner = Client::connect(&server).await;
    let (session, _) = owner.create_and_watch("a city skyline at night, panning left").await;
    let mut viewer = Client::connect(&server).await;
    viewer.send(json!({"type": "watch", "session": session})).await;
    assert_eq!(viewer.expect("watching").await["owner"], false);
    let mut texts = Vec::new();
    let first = viewer.media(FPS as usize, &mut texts).await;
    assert!(first[0].0);
    viewer.send(json!({"type": "steer", "prompt": "snow"})).await;
    assert!(viewer.expect("error").await["message"].as_str().unwrap().contains("owner"));
    owner.media(2 * FPS as usize, &mut texts).await;

    let mut late = Client::connect(&server).await;
    late.send(json!({"type": "watch", "session": session, "codec": "h264"})).await;
    late.expect("watching").await;
    let joined = Instant::now();
    let media = late.media(6, &mut texts).await;
    assert!(media[0].0, "a late joiner starts at a keyframe");
    assert!(joined.elapsed() < Duration::from_secs(2), "the join forced a keyframe (waited {:?})", joined.elapsed());
    let decoded = decode_h264(&media.iter().map(|m| m.2.clone()).collect::<Vec<_>>(), FPS as u32);
    assert_eq!(decoded.len(), 6);

    let (status, body) = http_get(server.addr, "/api/sessions");
    assert_eq!(status, 200);
    let list: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(list[0]["viewers"], 3, "{list}");
    // The world renders any size; the page offers the configured default first.
    let source: Value = serde_json::from_slice(&http_get(server.addr, "/api/source").1).unwrap();
    assert_eq!(source, json!({"source": "world", "size": "128x128", "fps": 12, "fixed": false}));

    // Sessions can be created over HTTP too; bad bodies are refused with a reason.
    let (status, body) =
        http(server.addr, "POST", "/api/sessions", Some(r#"{"prompt":"sunset over the sea","size":"64x64"}"#));
    let created: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, created["size"].as_str()), (200, Some("64x64")), "{created}");
    assert_eq!(created["token"].as_str().map(str::len), Some(32));
    let (status, body) = http(server.addr, "POST", "/api/sessions", Some(r#"{"prompt":"hills","size":"65x64"}"#));
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("even"));
    assert!(http(server.addr, "POST", "/api/sessions", Some(r#"{"prompt":"hills","evil":1}"#)).0 >= 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_are_playable_listed_and_safe_to_download() {
    let mut server = TestServer::start(&[]);
    let mut c = Client::connect(&server).await;
    c.create_and_watch("ocean waves at sunset, camera drifting right").await;
    c.send(json!({"type": "record", "on": true})).await;
    let name = c.expect("recording").await["name"].as_str().unwrap().to_string();
    let mut texts = Vec::new();
    c.media(4 * FPS as usize, &mut texts).await;
    c.send(json!({"type": "record", "on": false})).await;
    let stopped = loop {
        let r = c.expect("recording").await;
        if r["on"] == false {
            break r;
        }
    };
    assert_eq!(stopped["name"], name.as_str());
    let path = server.recordings.path().join(&name);
    let frames = decode_file(&path);
    assert!((40..=56).contains(&frames.len()), "{} frames in a ~4 s recording", frames.len());
    assert_eq!(frames[0].pts, 0);
    for w in frames.windows(2) {
        assert!((83_000_000..=83_700_000).contains(&(w[1].pts - w[0].pts)));
    }
    let timeline: Value = serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
    assert_eq!(timeline["finished"], true);
    assert_eq!(timeline["seed"], 5);
    assert_eq!(timeline["source"]["kind"], "world");
    assert_eq!(timeline["prompts"][0]["prompt"], "ocean waves at sunset, camera drifting right");

    // Listed and downloadable; nothing else in or outside the folder is.
    let (status, body) = http_get(server.addr, "/api/recordings");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains(&name));
    let (status, body) = http_get(server.addr, &format!("/recordings/{name}"));
    assert_eq!((status, body.len() as u64), (200, std::fs::metadata(&path).unwrap().len()));
    std::fs::write(server.recordings.path().join("secret.txt"), "no").unwrap();
    for bad in [
        "/recordings/secret.txt",
        "/recordings/..%2f..%2fetc%2fpasswd",
        "/recordings/%2e%2e%2fCargo.toml",
        "/recordings/..%252fCargo.toml",
    ] {
        assert_eq!(http_get(server.addr, bad).0, 404, "{bad}");
    }
    assert_eq!(http_get(server.addr, "/healthz"), (200, b"ok".to_vec()));
    let metrics = String::from_utf8(http_get(server.addr, "/metrics").1).unwrap();
    assert!(metrics.contains("endless_recordings_started_total 1"), "{metrics}");

    // A recording killed with SIGKILL mid-way still plays up to its last fragment.
    c.send(json!({"type": "record", "on": true})).await;
    let name = c.expect("recording").await["name"].as_str().unwrap().to_string();
    c.media(4 * FPS as usize, &mut texts).await;
    server.kill();
    let frames = decode_file(&server.recordings.path().join(&name));
    assert!(frames.len() >= 2 * FPS as usize, "only {} frames survived SIGKILL", frames.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finalises_recordings() {
    let mut server = TestServer::start(&[]);
    let mut c = Client::connect(&server).await;
    c.create_and_watch("a forest in thick fog at dawn").await;
    c.send(json!({"type": "record", "on": true})).await;
    let name = c.expect("recording").await["name"].as_str().unwrap().to_string();
    let mut texts = Vec::new();
    c.media(3 * FPS as usize, &mut texts).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    let path = server.recordings.path().join(&name);
    let timeline: Value = serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
    assert_eq!(timeline["finished"], true, "SIGTERM finalised the recording");
    assert!(decode_file(&path).len() >= 2 * FPS as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mse_viewers_get_an_init_segment_then_fragments_from_a_keyframe() {
    let server = TestServer::start(&[]);
    let mut owner = Client::connect(&server).await;
    let (session, _) = owner.create_and_watch("desert dunes at dawn").await;
    let mut mse = Client::connect(&server).await;
    mse.send(json!({"type": "watch", "session": session, "codec": "fmp4"})).await;
    assert_eq!(mse.expect("watching").await["codec"], "fmp4");
    let mut messages = Vec::new();
    while messages.len() < 2 * FPS as usize {
        if let Message::Binary(b) = mse.next().await {
            messages.push(b.to_vec());
        }
    }
    assert_eq!(messages[0][1], 2, "the init segment comes first");
    assert_eq!(&messages[0][24..28], b"ftyp");
    assert_eq!((messages[1][1], messages[1][2]), (3, 1), "then a media segment starting at a keyframe");
    assert!(messages[1..].iter().all(|m| m[1] == 3 && &m[24..28] == b"moof"));
    // The segments form a playable fragmented MP4.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), messages.iter().flat_map(|m| m[20..].to_vec()).collect::<Vec<u8>>()).unwrap();
    let frames = decode_file(file.path());
    assert!(frames.len() >= messages.len() - 2, "{} frames from {} segments", frames.len(), messages.len() - 1);
}

/// The model as the source (a micro pipeline trained here for a few steps): sessions take the
/// pipeline's size and rate, every access unit decodes at exact PTS steps, the stats carry the
/// steps per chunk, a steer is acknowledged at a model chunk boundary, and a size the model
/// does not make is refused clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_source_streams_its_pipeline() {
    let Some(text) = endless_model::text::dir_for_tests() else { return };
    let pipeline = tempfile::tempdir().unwrap();
    endless_model::train::micro_pipeline(pipeline.path(), &text, 2).unwrap();
    let dir = format!("model.dir={}", pipeline.path().display());
    let server = TestServer::start(&[
        "--set",
        "sessions.source=model",
        "--set",
        &dir,
        "--set",
        "model.device=cpu",
        "--set",
        "model.steps=2",
    ]);
    // The page learns the one size and rate the model streams.
    let (status, body) = http_get(server.addr, "/api/source");
    assert_eq!(status, 200);
    let source: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(source, json!({"source": "model", "size": "32x32", "fps": 8.0, "fixed": true}));

    let mut c = Client::connect(&server).await;
    c.send(json!({"type": "create", "prompt": "a lake in the mountains", "size": "64x64"})).await;
    let refused = c.expect("error").await;
    assert!(refused["message"].as_str().unwrap().contains("32x32 at 8 fps"), "{refused}");

    c.send(json!({"type": "create", "prompt": "a lake in the mountains", "seed": 3})).await;
    let created = c.expect("created").await;
    let (session, token) = (created["session"].as_str().unwrap(), created["token"].as_str().unwrap());
    c.send(json!({"type": "watch", "session": session, "token": token})).await;
    let watching = c.expect("watching").await;
    assert_eq!((watching["width"].as_u64(), watching["height"].as_u64()), (Some(32), Some(32)));
    let mut texts = Vec::new();
    let media = c.media(24, &mut texts).await;
    assert!(media[0].0, "the first access unit is a keyframe");
    for w in media.windows(2) {
        assert_eq!(w[1].1 - w[0].1, 125_000, "PTS steps of 1/8 s");
    }
    let aus: Vec<Vec<u8>> = media.iter().map(|m| m.2.clone()).collect();
    assert_eq!(decode_h264(&aus, 8).len(), aus.len(), "every access unit decodes");
    let stats = match texts.iter().find(|t| t["type"] == "stats") {
        Some(s) => s.clone(),
        None => c.expect("stats").await,
    };
    assert_eq!(stats["source"]["full_steps"], 2, "{stats}");
    assert_eq!(stats["source"]["device"], "cpu", "{stats}");

    c.send(json!({"type": "steer", "prompt": "a stormy sea", "transition_secs": 0})).await;
    let steered = c.expect("prompt").await;
    let frame = steered["frame"].as_u64().unwrap();
    assert!(frame >= 9 && (frame - 9).is_multiple_of(4), "the steer lands on a chunk boundary: {steered}");
    c.media(8, &mut texts).await;
}

/// What `scripts/serve.sh` serves: the shipped config.toml streams from the model, its cpu
/// tier in `models/` at the tier's size and rate, and a steer from day to night darkens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_configuration_streams_the_shipped_model() {
    if endless_model::text::dir_for_tests().is_none() {
        return;
    }
    let server = TestServer::shipped(&["--set", "model.device=cpu"]);
    let source: Value = serde_json::from_slice(&http_get(server.addr, "/api/source").1).unwrap();
    assert_eq!(source, json!({"source": "model", "size": "128x128", "fps": 8.0, "fixed": true}));

    let mut c = Client::connect(&server).await;
    c.create_and_watch("rolling hills on a clear day, static camera").await;
    let mut texts = Vec::new();
    let media = c.media(24, &mut texts).await;
    for w in media.windows(2) {
        assert_eq!(w[1].1 - w[0].1, 125_000, "PTS steps of 1/8 s");
    }
    let aus: Vec<Vec<u8>> = media.iter().map(|m| m.2.clone()).collect();
    let decoded = decode_h264(&aus, 8);
    assert_eq!(decoded.len(), aus.len(), "every access unit decodes to a frame");
    let stats = match texts.iter().find(|t| t["type"] == "stats") {
        Some(s) => s.clone(),
        None => c.expect("stats").await,
    };
    assert_eq!(stats["source"]["device"], "cpu", "{stats}");

    let day = brightness(&decoded[decoded.len() - 8..]);
    c.send(json!({"type": "steer", "prompt": "a clear night over rolling hills, static camera", "transition_secs": 0}))
        .await;
    c.expect("prompt").await;
    let after = c.media(32, &mut texts).await;
    let all: Vec<Vec<u8>> = media.iter().chain(&after).map(|m| m.2.clone()).collect();
    let decoded = decode_h264(&all, 8);
    let night = brightness(&decoded[decoded.len() - 8..]);
    eprintln!("shipped model: brightness {day:.1} by day, {night:.1} at night");
    assert!(night < day * 0.6, "brightness {day:.0} → {night:.0} after the steer to night");
}

/// `endless replay` regenerates a recording with a steer in it from its timeline, bit for bit
/// (checked against the digest of the recorded raw frames), and says so when it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_replays_bit_exactly_from_its_timeline() {
    let server = TestServer::start(&[]);
    let mut c = Client::connect(&server).await;
    c.create_and_watch("a forest on a cloudy day, camera drifting left").await;
    let mut texts = Vec::new();
    c.media(FPS as usize, &mut texts).await;
    c.send(json!({"type": "record", "on": true})).await;
    let name = c.expect("recording").await["name"].as_str().unwrap().to_string();
    c.media(2 * FPS as usize, &mut texts).await;
    c.send(json!({"type": "steer", "prompt": "heavy snow at night", "transition_secs": 0.5})).await;
    c.expect("prompt").await;
    c.media(2 * FPS as usize, &mut texts).await;
    c.send(json!({"type": "record", "on": false})).await;
    while c.expect("recording").await["on"] != false {}
    let timeline_path = server.recordings.path().join(&name).with_extension("json");
    let timeline: Value = serde_json::from_slice(&std::fs::read(&timeline_path).unwrap()).unwrap();
    assert_eq!(timeline["prompts"].as_array().unwrap().len(), 2, "{timeline}");
    assert!(timeline["frames_digest"].as_str().unwrap().starts_with("fnv1a64:"), "{timeline}");

    let out = server.recordings.path().join("replay.mp4");
    let replay = |timeline: &std::path::Path| {
        std::process::Command::new(endless_tests::binary("endless"))
            .arg("replay")
            .arg(timeline)
            .arg("--out")
            .arg(&out)
            .env("RUST_LOG", "warn")
            .output()
            .expect("endless replay runs")
    };
    let result = replay(&timeline_path);
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success() && stdout.contains("bit-exact"),
        "{stdout}{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let frames = decode_file(&out);
    assert_eq!(frames.len() as u64, timeline["frames"].as_u64().unwrap());

    // Another seed is another stream: the replay says it is not the recording.
    let mut other = timeline.clone();
    other["seed"] = json!(6);
    let other_path = server.recordings.path().join("other.json");
    std::fs::write(&other_path, other.to_string()).unwrap();
    let result = replay(&other_path);
    assert!(!result.status.success(), "a different stream passed as exact");
    assert!(String::from_utf8_lossy(&result.stdout).contains("NOT exact"));
}
