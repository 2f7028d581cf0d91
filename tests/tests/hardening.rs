//! Hardening, end to end against the real `endless serve`: hostile clients, access control,
//! slow viewers, recording limits and shutdown. (Hostile *input* is also fuzzed without sockets in
//! `streamer/tests/decode_fuzz.rs`; source faults in `streamer/tests/faults.rs`.)

use endless_tests::client::{Client, Event, Media, Rng, metric};
use endless_tests::{TestServer, http, http_get};
use futures_util::SinkExt;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// The tests here load both cores of a CI machine and two of them look at timing; they run
/// one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How the server must answer one hostile message.
#[derive(Debug, Clone)]
enum Answer {
    /// An `error` reply for this `request`, its message containing this text.
    Error(&'static str, &'static str),
    /// The connection closed with this code.
    Close(u16),
}

const OWNER_ONLY: [(&str, &str); 7] = [
    ("steer", r#"{"type":"steer","prompt":"snow"}"#),
    ("pause", r#"{"type":"pause"}"#),
    ("resume", r#"{"type":"resume"}"#),
    ("record", r#"{"type":"record","on":true}"#),
    ("record", r#"{"type":"record","on":false}"#),
    ("fork", r#"{"type":"fork"}"#),
    ("close", r#"{"type":"close"}"#),
];

fn hex(r: &mut Rng) -> String {
    format!("{:016x}{:016x}", r.next_u64(), r.next_u64())
}

/// One message a hostile client sends before it watches anything, and its answer.
fn hostile(r: &mut Rng) -> (Message, Answer) {
    let text = |s: String| Message::Text(s.into());
    match r.below(12) {
        0 => {
            // Printable noise, or a valid request cut short.
            let s: String = (0..r.below(60)).map(|_| (b' ' + r.below(95) as u8) as char).collect();
            let cut = r#"{"type":"steer","prompt":"night over the hills""#;
            let s = if r.below(2) == 0 { s } else { cut[..r.below(cut.len() as u64) as usize].to_string() };
            (text(s), Answer::Error("unknown", "not a valid request"))
        }
        1 => (text(format!(r#"{{"type":"launch_{}"}}"#, r.next_u64())), Answer::Error("unknown", "unknown variant")),
        2 => {
            let (request, m) = *[
                ("steer", r#"{"type":"steer","prompt":7}"#),
                ("record", r#"{"type":"record","on":"yes"}"#),
                ("ping", r#"{"type":"ping","t":"now"}"#),
                ("pause", r#"{"type":"pause","evil":true}"#),
                ("watch", r#"{"type":"watch","session":["a"]}"#),
                ("create", r#"{"type":"create","prompt":"hills","seed":-1}"#),
            ]
            .get(r.below(6) as usize)
            .unwrap();
            (text(m.into()), Answer::Error(request, "not a valid request"))
        }
        3 => {
            // Binary garbage, sometimes with a well-formed media header in front.
            let mut b: Vec<u8> = (0..r.below(300)).map(|_| r.next_u64() as u8).collect();
            if r.below(2) == 0 {
                b.splice(0..0, [1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
            }
            (Message::Binary(b.into()), Answer::Error("binary", "binary messages are not accepted"))
        }
        4 | 5 => {
            // Out of order: owner-only requests on a socket that watches nothing.
            let (request, m) = OWNER_ONLY[r.below(7) as usize];
            (text(m.into()), Answer::Error(request, "watch a session first"))
        }
        6 => {
            let session = match r.below(3) {
                0 => hex(r),
                1 => "../../etc/passwd".into(),
                _ => "A".repeat(32),
            };
            (
                text(json!({"type": "watch", "session": session, "token": hex(r)}).to_string()),
                Answer::Error("watch", "no such session"),
            )
        }
        7 => {
            let (m, why) = [
                (json!({"type": "create", "prompt": "   "}), "empty"),
                (json!({"type": "create", "prompt": "hills", "size": "65x64"}), "even"),
                (json!({"type": "create", "prompt": "hills", "size": "4096x4096"}), "at most"),
                (json!({"type": "create", "prompt": "hills", "fps": 1000}), "fps"),
                (json!({"type": "create", "prompt": "a sunset ".repeat(60)}), "longer than 500 characters"),
            ]
            .get(r.below(5) as usize)
            .unwrap()
            .clone();
            (text(m.to_string()), Answer::Error("create", why))
        }
        8 => {
            let depth = 200 + r.below(5000) as usize;
            let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
            let m = format!(r#"{{"type":"steer","prompt":{nested}}}"#);
            (text(m), Answer::Error("unknown", "recursion limit"))
        }
        9 => (
            text(r#"{"type":"steer","prompt":"snow","type":"pause"}"#.into()),
            Answer::Error("pause", "duplicate field"),
        ),
        10 => (text(String::new()), Answer::Error("unknown", "EOF")),
        _ => (text("null".into()), Answer::Error("unknown", "not a valid request")),
    }
}

/// A last message that must close the connection, and its close code.
fn fatal(r: &mut Rng) -> (Message, Answer) {
    match r.below(4) {
        0 => (
            Message::Text(format!(r#"{{"type":"steer","prompt":"{}"}}"#, "a".repeat(70_000)).into()),
            Answer::Close(1009),
        ),
        1 => (Message::Binary(vec![7u8; 65_537 + r.below(60_000) as usize].into()), Answer::Close(1009)),
        2 => (
            Message::Frame(Frame::message(vec![b'{', 0xff, 0xfe, 0x80, b'}'], OpCode::Data(Data::Text), true)),
            Answer::Close(1007),
        ),
        _ => {
            (Message::Frame(Frame::message(b"?".to_vec(), OpCode::Data(Data::Reserved(3)), true)), Answer::Close(1002))
        }
    }
}

/// Sends `probes` pipelined on a new connection, then checks every answer in order.
/// Returns how many messages were answered.
async fn run_batch(addr: SocketAddr, probes: Vec<(Message, Answer)>, watch: Option<(&str, Option<String>)>) -> usize {
    let mut c = Client::connect(addr).await;
    if let Some((session, token)) = watch {
        let w = c.watch(session, token.as_deref()).await;
        assert_eq!(w["owner"], false, "a wrong token made an owner");
    }
    for (m, _) in &probes {
        // The server may close while a fatal message is still being written: that is its
        // answer, read below.
        if c.ws.feed(m.clone()).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
    for (i, (_, answer)) in probes.iter().enumerate() {
        let ev = loop {
            match c.next().await {
                Event::Media(_) => {}
                Event::Json(v) if v["type"] == "stats" => {}
                ev => break ev,
            }
        };
        match (answer, ev) {
            (Answer::Error(request, text), Event::Json(v)) => {
                assert_eq!(
                    (v["type"].as_str(), v["request"].as_str()),
                    (Some("error"), Some(*request)),
                    "probe {i}: {v}"
                );
                let message = v["message"].as_str().unwrap();
                assert!(message.contains(text), "probe {i} ({request}): {message:?} does not say {text:?}");
            }
            (Answer::Close(code), Event::Closed(Some((got, reason)))) => {
                assert_eq!(got, *code, "probe {i}: closed with {got} ({reason})");
                assert!(!reason.is_empty());
                assert_eq!(i, probes.len() - 1, "only the last probe closes");
            }
            (answer, ev) => panic!("probe {i}: expected {answer:?}, got {ev:?}"),
        }
    }
    probes.len()
}

/// Media of the honest session: (pts µs, arrival) of every access unit.
async fn honest_viewer(mut c: Client, stop: Arc<AtomicBool>) -> Vec<(u64, Instant)> {
    let mut got = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        match c.next_within(Duration::from_millis(500)).await {
            Some(Event::Media(Media { track: 1, pts_us, .. })) => got.push((pts_us, Instant::now())),
            Some(Event::Closed(c)) => panic!("the honest owner was closed: {c:?}"),
            Some(Event::Json(v)) => assert_ne!(v["type"], "ended", "the honest session ended: {v}"),
            _ => {}
        }
    }
    got
}

/// Consecutive frames at `fps` and no arrival gap over `max_gap`.
fn assert_steady(got: &[(u64, Instant)], fps: f64, max_gap: Duration) {
    let frame = 1e6 / fps;
    for w in got.windows(2) {
        let step = w[1].0 as f64 - w[0].0 as f64;
        assert!((step - frame).abs() < 1000.0, "PTS step {step} µs at {fps} fps: frames were skipped");
        let gap = w[1].1 - w[0].1;
        assert!(gap < max_gap, "{gap:?} without a frame");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_flood_is_answered_and_the_honest_stream_goes_on() {
    let _one = SERIAL.lock().await;
    let mut server = TestServer::start(&[]);
    let addr = server.addr;
    let mut owner = Client::connect(addr).await;
    let (session, token) = owner.create("rolling hills on a clear day, camera panning left").await;
    owner.watch(&session, Some(&token)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let honest = tokio::spawn(honest_viewer(owner, stop.clone()));
    let started = Instant::now();

    // Workers pipeline batches of 190 hostile messages on fresh connections (under the error
    // budget of 256), every other batch ending in a message that must close the connection.
    // Some impostors watch the honest session with a wrong token and try to control it.
    const TOTAL: usize = 100_000;
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..6u64 {
        let (sent, session) = (sent.clone(), session.clone());
        workers.push(tokio::spawn(async move {
            let mut r = Rng(0xbad_c11e_0000 + w);
            let mut batches = 0;
            while sent.load(Ordering::Relaxed) < TOTAL {
                batches += 1;
                let impostor = batches % 10 == 0;
                let mut probes: Vec<(Message, Answer)> = if impostor {
                    (0..190)
                        .map(|_| {
                            let (request, m) = OWNER_ONLY[r.below(7) as usize];
                            (Message::Text(m.into()), Answer::Error(request, "only the session's owner"))
                        })
                        .collect()
                } else {
                    (0..190).map(|_| hostile(&mut r)).collect()
                };
                if r.below(2) == 0 {
                    probes.push(fatal(&mut r));
                }
                let token = [None, Some(hex(&mut r)), Some(session.clone())][r.below(3) as usize].clone();
                let watch = impostor.then_some((session.as_str(), token));
                let n = run_batch(addr, probes, watch).await;
                sent.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await.expect("a hostile worker's checks hold");
    }
    let flood = started.elapsed();
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent >= TOTAL);

    // A client that floods without pause is cut off with 1008 once its error budget is spent.
    let mut c = Client::connect(addr).await;
    for i in 0..2000 {
        if c.ws.feed(Message::Text(format!(r#"{{"type":"launch_{i}"}}"#).into())).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
    let mut errors = 0;
    let closed = loop {
        match c.next().await {
            Event::Json(v) if v["type"] == "error" => errors += 1,
            Event::Closed(close) => break close,
            ev => panic!("unexpected {ev:?}"),
        }
    };
    assert_eq!(closed.map(|c| c.0), Some(1008), "after {errors} errors");
    assert!((256..2000).contains(&errors), "{errors} errors answered before the cut-off");

    // The server is alive, and the honest session streamed steadily all along.
    assert!(server.child.try_wait().unwrap().is_none(), "the server exited");
    assert_eq!(http_get(addr, "/healthz"), (200, b"ok".to_vec()));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let media = honest.await.expect("the honest owner's checks hold");
    let watched = started.elapsed().as_secs_f64();
    assert!(media.len() as f64 >= watched * 12.0 * 0.8, "{} frames in {watched:.1} s", media.len());
    assert_steady(&media, 12.0, Duration::from_secs(2));
    let list: Value = serde_json::from_slice(&http_get(addr, "/api/sessions").1).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "impostors created, forked or closed nothing: {list}");
    assert_eq!((list[0]["paused"].as_bool(), list[0]["recording"].as_bool()), (Some(false), Some(false)));
    let metrics = String::from_utf8(http_get(addr, "/metrics").1).unwrap();
    assert!(metric(&metrics, "endless_client_errors_total").unwrap() >= sent as f64);
    eprintln!("{sent} hostile messages in {flood:.1?}, all answered; {} honest frames, steady", media.len());
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steering_is_rate_limited_and_prompts_and_messages_are_bounded() {
    let _one = SERIAL.lock().await;
    let server = TestServer::start(&["--set", "sessions.steer_min_interval_ms=1000"]);
    let mut c = Client::connect(server.addr).await;
    let (session, token) = c.create("hills at dawn").await;
    c.watch(&session, Some(&token)).await;
    c.send(json!({"type": "steer", "prompt": "snow"})).await;
    assert_eq!(c.expect("prompt").await["prompt"], "snow");
    c.send(json!({"type": "steer", "prompt": "night"})).await;
    let e = c.expect_error().await;
    assert_eq!(e["request"], "steer");
    let message = e["message"].as_str().unwrap();
    assert!(message.starts_with("steering too fast: wait ") && message.ends_with(" ms between steers"), "{message}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send(json!({"type": "steer", "prompt": "night"})).await;
    assert_eq!(c.expect("prompt").await["prompt"], "night");

    // Prompts: at most 500 characters (not bytes: 500 snowmen pass, 501 do not).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send(json!({"type": "steer", "prompt": "☃".repeat(501)})).await;
    assert!(c.expect_error().await["message"].as_str().unwrap().contains("longer than 500 characters"));
    c.send(json!({"type": "create", "prompt": format!("snow {}", "x".repeat(500))})).await;
    assert!(c.expect_error().await["message"].as_str().unwrap().contains("longer than 500 characters"));
    let (status, body) =
        http(server.addr, "POST", "/api/sessions", Some(&json!({"prompt": "y".repeat(501)}).to_string()));
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("longer than 500 characters"));

    // Messages: at most server.max_message_bytes (64 KiB); one byte more closes with 1009.
    let exactly = format!(r#"{{"type":"steer","prompt":"{}"}}"#, "a".repeat(65_536 - 28));
    assert_eq!(exactly.len(), 65_536);
    c.ws.send(Message::Text(exactly.into())).await.unwrap();
    assert!(c.expect_error().await["message"].as_str().unwrap().contains("longer than 500"));
    let over = format!(r#"{{"type":"steer","prompt":"{}"}}"#, "a".repeat(65_537 - 28));
    let _ = c.ws.send(Message::Text(over.into())).await;
    loop {
        match c.next().await {
            Event::Closed(close) => {
                let (code, reason) = close.expect("a close frame");
                assert_eq!(code, 1009);
                assert!(reason.contains("65536 bytes"), "{reason}");
                break;
            }
            Event::Json(v) => assert_ne!(v["type"], "error", "{v}"),
            Event::Media(_) => {}
        }
    }
    // Beyond twice the limit the WebSocket layer stops reading mid-message: the connection
    // ends (a close frame is sent, which a reset may overtake), and the server is unharmed.
    let mut c = Client::connect(server.addr).await;
    let _ = c.ws.send(Message::Binary(vec![0u8; 300_000].into())).await;
    match c.next().await {
        Event::Closed(close) => assert!(close.as_ref().is_none_or(|(code, _)| *code == 1009), "{close:?}"),
        ev => panic!("expected the connection to end, got {ev:?}"),
    }
    assert_eq!(http_get(server.addr, "/healthz"), (200, b"ok".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_controls_a_session_and_an_api_key_guards_creation() {
    let _one = SERIAL.lock().await;
    let key = "k3y-0f-th1s-s3rv1c3-9f2c41d7";
    let server = TestServer::start(&["--set", &format!("server.api_key=\"{key}\"")]);
    let addr = server.addr;

    // Creation needs the key, over the WebSocket and over HTTP (body or header).
    let mut owner = Client::connect(addr).await;
    for bad in [None, Some(""), Some("wrong"), Some("k3y-0f-th1s-s3rv1c3-9f2c41d8")] {
        owner.send(json!({"type": "create", "prompt": "hills", "api_key": bad})).await;
        let e = owner.expect_error().await;
        assert_eq!(e["request"], "create");
        assert!(e["message"].as_str().unwrap().contains("API key"), "{e}");
        let body = json!({"prompt": "hills", "api_key": bad}).to_string();
        let (status, body) = http(addr, "POST", "/api/sessions", Some(&body));
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    }
    let (status, _) =
        http(addr, "POST", "/api/sessions", Some(&json!({"prompt": "hills", "api_key": key}).to_string()));
    assert_eq!(status, 200);
    let with_header = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let body = r#"{"prompt":"hills"}"#;
        write!(
            s,
            "POST /api/sessions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nx-api-key: {key}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(with_header.starts_with("HTTP/1.1 200"), "{with_header}");
    owner.send(json!({"type": "create", "prompt": "rolling hills at dawn", "api_key": key})).await;
    let created = owner.expect("created").await;
    let (session, token) =
        (created["session"].as_str().unwrap().to_string(), created["token"].as_str().unwrap().to_string());
    // Ids and tokens: 128 random bits each, as 32 lowercase hex digits.
    for s in [&session, &token] {
        assert!(s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{s}");
    }
    assert_ne!(session, token);
    owner.watch(&session, Some(&token)).await;

    // Viewers — no token, a wrong one, the session id, the owner's token with a byte
    // changed, or another session's token — watch but control nothing.
    owner.send(json!({"type": "create", "prompt": "snowy mountains", "api_key": key})).await;
    let other_token = owner.expect("created").await["token"].as_str().unwrap().to_string();
    let mut flipped = token.clone().into_bytes();
    flipped[31] = if flipped[31] == b'0' { b'1' } else { b'0' };
    let flipped = String::from_utf8(flipped).unwrap();
    for t in [
        None,
        Some("0".repeat(32)),
        Some(session.clone()),
        Some(flipped),
        Some(other_token),
        Some(token[..31].to_string()),
    ] {
        let mut viewer = Client::connect(addr).await;
        assert_eq!(viewer.watch(&session, t.as_deref()).await["owner"], false);
        for (request, m) in OWNER_ONLY {
            viewer.ws.send(Message::Text(m.into())).await.unwrap();
            let e = viewer.expect_error().await;
            assert_eq!(e["request"], request);
            assert_eq!(e["message"], "only the session's owner may do that");
        }
    }
    let list: Value = serde_json::from_slice(&http_get(addr, "/api/sessions").1).unwrap();
    let ours = list.as_array().unwrap().iter().find(|s| s["id"] == session.as_str()).expect("the session lives");
    assert_eq!((ours["paused"].as_bool(), ours["recording"].as_bool()), (Some(false), Some(false)));
    let (status, body) = http_get(addr, "/api/recordings");
    assert_eq!((status, &body[..]), (200, &b"[]"[..]), "a viewer started no recording");

    // The owner can; a fork gets a new id and token, and that token controls only the fork.
    owner.send(json!({"type": "fork"})).await;
    let forked = owner.expect("forked").await;
    let (fork, fork_token) = (forked["session"].as_str().unwrap(), forked["token"].as_str().unwrap());
    assert!(fork != session && fork_token != token);
    let mut fork_owner = Client::connect(addr).await;
    assert_eq!(fork_owner.watch(fork, Some(fork_token)).await["owner"], true);
    assert_eq!(fork_owner.watch(&session, Some(fork_token)).await["owner"], false);
    fork_owner.send(json!({"type": "steer", "prompt": "night"})).await;
    assert_eq!(fork_owner.expect_error().await["message"], "only the session's owner may do that");
    owner.send(json!({"type": "steer", "prompt": "rolling hills at night"})).await;
    assert_eq!(owner.expect("prompt").await["prompt"], "rolling hills at night");
    owner.send(json!({"type": "close"})).await;
    assert_eq!(owner.expect("ended").await["reason"], "closed by its owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_stops_reading_is_skipped_to_a_keyframe_and_slows_nobody() {
    let _one = SERIAL.lock().await;
    // 30 fps of 256x256: the stalled viewer's socket buffers and its queue on the server
    // fill within seconds.
    let fps = 30.0;
    let server = TestServer::start(&["--set", "sessions.fps=30", "--set", "sessions.size=\"256x256\""]);
    let addr = server.addr;
    let mut owner = Client::connect(addr).await;
    let (session, token) = owner.create("a city skyline at night, panning left").await;
    owner.watch(&session, Some(&token)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let owner_media = tokio::spawn(honest_viewer(owner, stop.clone()));
    let mut fast = Client::connect(addr).await;
    fast.watch(&session, None).await;
    let fast_media = tokio::spawn(honest_viewer(fast, stop.clone()));

    // The slow viewer: a tiny receive buffer, and it stops reading right after `watching`.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/ws"), tokio_tungstenite::MaybeTlsStream::Plain(tcp))
            .await
            .unwrap();
    let mut slow = Client { ws };
    slow.watch(&session, None).await;
    let stalled = Instant::now();
    let dropped = || {
        let page = String::from_utf8(http_get(addr, "/metrics").1).unwrap();
        metric(&page, "endless_media_messages_dropped_total").unwrap()
    };
    while dropped() == 0.0 {
        assert!(stalled.elapsed() < Duration::from_secs(60), "the stalled viewer was never skipped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let skipped_after = stalled.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The slow viewer reads again: what was queued, then a jump that lands on a keyframe,
    // then the live stream.
    let frame_us = 1e6 / fps;
    let mut got: Vec<Media> = Vec::new();
    let mut jumped_at = None;
    while jumped_at.is_none_or(|at| got.len() < at + 2 * fps as usize) {
        assert!(got.len() < 2000, "no skip in {} frames", got.len());
        if let Event::Media(m) = slow.next().await {
            if let Some(prev) = got.last() {
                let step = m.pts_us as f64 - prev.pts_us as f64;
                if (step - frame_us).abs() > 1000.0 {
                    assert!(step > 0.0, "PTS went back");
                    assert!(m.keyframe, "a skip of {step} µs landed on a delta frame");
                    jumped_at.get_or_insert(got.len());
                }
            }
            got.push(m);
        }
    }
    eprintln!("stalled viewer: skipped after {skipped_after:?}; it read {} frames, a jump, then live", got.len());

    // Meanwhile the others got every frame as the stream made it: consecutive PTS, no wait
    // of a keyframe interval, and both up to the live edge at the end.
    stop.store(true, Ordering::Relaxed);
    let owner_media = owner_media.await.expect("the owner's checks hold");
    let fast_media = fast_media.await.expect("the fast viewer's checks hold");
    for media in [&owner_media, &fast_media] {
        assert_steady(media, fps, Duration::from_secs(2));
    }
    let (a, b) = (owner_media.last().unwrap().0, fast_media.last().unwrap().0);
    assert!(a.abs_diff(b) as f64 <= 0.5e6, "owner at {a} µs, the fast viewer at {b} µs: one fell behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finalises_every_recording_within_the_grace_time() {
    let _one = SERIAL.lock().await;
    let grace = 5;
    let mut server = TestServer::start(&["--set", &format!("server.shutdown_grace_secs={grace}")]);
    let mut names = Vec::new();
    let mut clients = Vec::new();
    for prompt in ["ocean waves at sunset", "a forest in thick fog", "desert dunes at noon"] {
        let mut c = Client::connect(server.addr).await;
        let (session, token) = c.create(prompt).await;
        c.watch(&session, Some(&token)).await;
        c.send(json!({"type": "record", "on": true})).await;
        names.push(c.expect("recording").await["name"].as_str().unwrap().to_string());
        clients.push(c);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let asked = Instant::now();
    let status = server.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(grace + 3), "shutdown took {took:?} with a grace of {grace} s");
    for name in &names {
        let path = server.recordings.path().join(name);
        let timeline: Value = serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
        assert_eq!(timeline["finished"], true, "{name} was finalised");
        let frames = endless_tests::decode_file(&path);
        assert!(frames.len() >= 24, "{name}: {} frames", frames.len());
    }
    // Every client was told, with a close code saying the server is going away.
    for mut c in clients {
        let close = loop {
            if let Event::Closed(close) = c.next().await {
                break close;
            }
        };
        assert_eq!(close.map(|c| c.0), Some(1001));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_stop_at_their_maximum_length_and_the_quota_refuses_new_ones() {
    let _one = SERIAL.lock().await;
    let server = TestServer::start(&["--set", "recording.max_secs=2", "--set", "recording.quota_mib=1"]);
    let mut c = Client::connect(server.addr).await;
    let (session, token) = c.create("ocean waves at sunset").await;
    c.watch(&session, Some(&token)).await;

    // The maximum length: the recording stops by itself, finalised, at 2 s.
    c.send(json!({"type": "record", "on": true})).await;
    let name = c.expect("recording").await["name"].as_str().unwrap().to_string();
    let stopped = c.expect("recording").await;
    assert_eq!((stopped["on"].as_bool(), stopped["name"].as_str()), (Some(false), Some(name.as_str())));
    let path = server.recordings.path().join(&name);
    let timeline: Value = serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap();
    assert_eq!(timeline["finished"], true);
    let frames = endless_tests::decode_file(&path).len();
    assert!((20..=30).contains(&frames), "{frames} frames in a recording limited to 2 s at 12 fps");

    // The quota: with the folder over 1 MiB, a new recording is refused with the reason.
    std::fs::write(server.recordings.path().join("filler.bin"), vec![0u8; 1 << 20]).unwrap();
    c.send(json!({"type": "record", "on": true})).await;
    let e = c.expect_error().await;
    assert_eq!(e["request"], "record");
    assert_eq!(e["message"], "the recordings folder is over its quota (1 MiB)");
    let (_, list) = http_get(server.addr, "/api/recordings");
    assert_eq!(serde_json::from_slice::<Value>(&list).unwrap().as_array().unwrap().len(), 1, "no second recording");
}
