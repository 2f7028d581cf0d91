//! A WebSocket client of the endless protocol for the end-to-end tests and the load and soak
//! runs (`src/bin/`): JSON requests out; JSON events and media messages in.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One media message: its header fields and payload.
#[derive(Debug, Clone)]
pub struct Media {
    pub track: u8,
    pub keyframe: bool,
    pub pts_us: u64,
    pub payload: Vec<u8>,
}

/// What arrived on a socket.
#[derive(Debug)]
pub enum Event {
    Json(Value),
    Media(Media),
    /// The server closed the connection: the close code and reason, if it sent a frame.
    Closed(Option<(u16, String)>),
}

/// Parses a binary media message (`docs/protocol.md`); `None` if it is not one.
pub fn parse_media(b: &[u8]) -> Option<Media> {
    if b.len() < 20 || b[0] != 1 || b[3] != 0 {
        return None;
    }
    Some(Media {
        track: b[1],
        keyframe: b[2] == 1,
        pts_us: u64::from_be_bytes(b[4..12].try_into().ok()?),
        payload: b[20..].to_vec(),
    })
}

pub struct Client {
    pub ws: Ws,
}

impl Client {
    /// Opens a WebSocket to `ws://addr/ws`. Large messages from the server are accepted.
    pub async fn connect(addr: std::net::SocketAddr) -> Client {
        let config = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(format!("ws://{addr}/ws"), Some(config), true)
            .await
            .expect("the WebSocket opens");
        Client { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("sent");
    }

    /// Sends without insisting: false when the connection is gone (long runs, where the
    /// server may end a session at any time).
    pub async fn try_send(&mut self, v: Value) -> bool {
        self.ws.send(Message::Text(v.to_string().into())).await.is_ok()
    }

    /// The next event within `timeout`; `None` if nothing came.
    pub async fn next_within(&mut self, timeout: Duration) -> Option<Event> {
        loop {
            let m = match tokio::time::timeout(timeout, self.ws.next()).await {
                Err(_) => return None,
                Ok(None) => return Some(Event::Closed(None)),
                Ok(Some(Err(_))) => return Some(Event::Closed(None)),
                Ok(Some(Ok(m))) => m,
            };
            return Some(match m {
                Message::Text(t) => Event::Json(serde_json::from_str(&t).expect("the server sends JSON text")),
                Message::Binary(b) => Event::Media(parse_media(&b).expect("binary messages are media")),
                Message::Close(f) => Event::Closed(f.map(|f| (u16::from(f.code), f.reason.to_string()))),
                _ => continue,
            });
        }
    }

    /// The next event, within 15 s.
    pub async fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(15)).await.expect("an event within 15 s")
    }

    /// The next JSON message of `kind`, skipping media and other messages; panics on an
    /// `error` or a close.
    pub async fn expect(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Event::Json(v) if v["type"] == kind => return v,
                Event::Json(v) => assert_ne!(v["type"], "error", "unexpected error while waiting for {kind}: {v}"),
                Event::Closed(c) => panic!("closed ({c:?}) while waiting for {kind}"),
                Event::Media(_) => {}
            }
        }
    }

    /// The next `error` reply, skipping media and other messages; panics on a close.
    pub async fn expect_error(&mut self) -> Value {
        loop {
            match self.next().await {
                Event::Json(v) if v["type"] == "error" => return v,
                Event::Closed(c) => panic!("closed ({c:?}) while waiting for an error"),
                _ => {}
            }
        }
    }

    /// Creates a session: (session id, owner token).
    pub async fn create(&mut self, prompt: &str) -> (String, String) {
        self.send(json!({"type": "create", "prompt": prompt})).await;
        let created = self.expect("created").await;
        (created["session"].as_str().unwrap().to_string(), created["token"].as_str().unwrap().to_string())
    }

    /// Watches `session` (as its owner with `token`); the `watching` reply.
    pub async fn watch(&mut self, session: &str, token: Option<&str>) -> Value {
        self.send(json!({"type": "watch", "session": session, "token": token})).await;
        self.expect("watching").await
    }
}

/// Resident memory of process `pid` in KiB (Linux: `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One value of a Prometheus text page, e.g. `endless_viewers`.
pub fn metric(page: &str, name: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A small seedable generator (splitmix64) for reproducible runs.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// A float in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}
