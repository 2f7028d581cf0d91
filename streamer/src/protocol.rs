//! The wire protocol, version 1 (docs/protocol.md): JSON control messages and binary media
//! messages with a 20-byte header. `web/protocol.js` mirrors this module.

use serde::{Deserialize, Serialize};

/// Protocol version, first byte of every media message.
pub const VERSION: u8 = 1;
/// Bytes of the media header.
pub const HEADER_LEN: usize = 20;

/// Which codec path a viewer wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Raw H.264 access units for WebCodecs.
    #[default]
    H264,
    /// Fragmented MP4 for Media Source Extensions.
    Fmp4,
}

/// What a client asks for when it creates a session: the `create` message, and the body
/// of `POST /api/sessions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Create {
    pub prompt: String,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub size: Option<String>,
    #[serde(default)]
    pub fps: Option<f64>,
    /// Over HTTP the `x-api-key` header may carry it instead.
    #[serde(default)]
    pub api_key: Option<String>,
}

/// Messages from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    Create(Create),
    Watch {
        session: String,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        codec: Codec,
    },
    Steer {
        prompt: String,
        #[serde(default)]
        transition_secs: Option<f64>,
    },
    // The field-less requests are empty struct variants, not unit variants: serde lets an
    // internally tagged unit variant carry any extra fields, `deny_unknown_fields` or not
    // (found by tests/decode_fuzz.rs), and a request with fields it does not have is a
    // client bug to report, like for every other request.
    Pause {},
    Resume {},
    Record {
        on: bool,
    },
    Fork {},
    Close {},
    Ping {
        t: f64,
    },
}

impl ClientMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("client messages always serialise")
    }

    /// The message's `type`, for error replies.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Create(_) => "create",
            ClientMessage::Watch { .. } => "watch",
            ClientMessage::Steer { .. } => "steer",
            ClientMessage::Pause {} => "pause",
            ClientMessage::Resume {} => "resume",
            ClientMessage::Record { .. } => "record",
            ClientMessage::Fork {} => "fork",
            ClientMessage::Close {} => "close",
            ClientMessage::Ping { .. } => "ping",
        }
    }
}

/// A message as it came off the WebSocket, before it is understood.
#[derive(Debug, Clone, Copy)]
pub enum Incoming<'a> {
    /// A text message, already checked to be UTF-8 by the WebSocket layer.
    Text(&'a str),
    /// A binary message: clients never send media, so this is always refused.
    Binary(&'a [u8]),
}

/// WebSocket close codes the server uses (RFC 6455 §7.4.1).
pub mod close {
    /// The server is going away (shutting down).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol itself (bad framing).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The client keeps sending invalid requests: it is cut off.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over `server.max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
}

/// Why a client message was refused: the text of the `error` reply, the request it answers,
/// and the close code when the connection cannot go on after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub message: String,
    /// The request's `type` when it had a known one, else `"unknown"` (or `"binary"`).
    pub request: &'static str,
    /// `Some(code)`: close the connection with this code instead of answering.
    pub close: Option<u16>,
}

impl ProtocolError {
    fn reply(request: &'static str, message: String) -> ProtocolError {
        ProtocolError { message, request, close: None }
    }
}

/// The `type` of every client message, for error replies to requests that name one.
const CLIENT_KINDS: [&str; 9] = ["create", "watch", "steer", "pause", "resume", "record", "fork", "close", "ping"];

/// Understands one client message. This is the only way the server reads client input, so
/// the fuzz tests (here and in `fuzz/`) cover exactly what a hostile client reaches.
///
/// Never panics. A message over `max_bytes` is refused with close code 1009 (the server
/// lets the WebSocket layer read messages up to twice the limit so that it can close
/// cleanly); every other refusal is an `error` reply naming what was wrong, and the
/// connection goes on.
pub fn decode_client(input: Incoming<'_>, max_bytes: usize) -> Result<ClientMessage, ProtocolError> {
    let (len, request) = match input {
        Incoming::Text(t) => (t.len(), "unknown"),
        Incoming::Binary(b) => (b.len(), "binary"),
    };
    if len > max_bytes {
        return Err(ProtocolError {
            message: format!("message of {len} bytes is over the limit of {max_bytes} bytes"),
            request,
            close: Some(close::TOO_BIG),
        });
    }
    let text = match input {
        Incoming::Binary(_) => {
            return Err(ProtocolError::reply("binary", "binary messages are not accepted; send JSON text".into()));
        }
        Incoming::Text(t) => t,
    };
    serde_json::from_str::<ClientMessage>(text).map_err(|e| {
        // Name the request in the reply when its `type` is one we know, so a client can tell
        // which of its pipelined requests failed. A second, shallow parse: it only runs for
        // refused messages, and serde_json's depth limit bounds it as it bounds the first.
        let request = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text)
            .ok()
            .and_then(|m| m.get("type").and_then(|t| t.as_str()).and_then(|t| CLIENT_KINDS.iter().find(|k| **k == t)))
            .copied()
            .unwrap_or("unknown");
        ProtocolError::reply(request, format!("not a valid request: {}", clip(&e.to_string(), MAX_ERROR_CHARS)))
    })
}

/// Longest part of a parser error quoted back to the client: serde quotes the offending
/// input (an unknown `type`, say), and a reply must not echo a client's 64 KiB back at it.
const MAX_ERROR_CHARS: usize = 200;

/// `s` cut to at most `max` characters, with `…` when cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// The property every accepted message must have, for the fuzz tests (`tests/decode_fuzz.rs`
/// and `fuzz/`): `text` is a JSON object whose `type` is the message's, whose every field is
/// one of that message's with the value it decoded to, and the message round-trips. An
/// `Err` says what broke.
#[doc(hidden)]
pub fn check_accepted(text: &str, m: &ClientMessage) -> Result<(), String> {
    let obj: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|e| format!("accepted input is not a JSON object: {e}"))?;
    if obj.get("type").and_then(|t| t.as_str()) != Some(m.kind()) {
        return Err(format!("accepted as {} but its type is {:?}", m.kind(), obj.get("type")));
    }
    let canon = match serde_json::to_value(m).map_err(|e| e.to_string())? {
        serde_json::Value::Object(o) => o,
        other => return Err(format!("serialised to a non-object {other}")),
    };
    // serde_json parses long decimals to within an ulp or so of the nearest double (it is
    // built without `float_roundtrip`); numbers compare as doubles to that precision.
    let same = |a: &serde_json::Value, b: &serde_json::Value| match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) if a.is_f64() || b.is_f64() => (x - y).abs() <= 1e-15 * x.abs().max(y.abs()),
        _ => a == b,
    };
    for (k, v) in &obj {
        let Some(c) = canon.get(k) else { return Err(format!("accepted an unknown field {k:?}")) };
        if !same(v, c) {
            return Err(format!("field {k:?} is {v} in the input but decoded as {c}"));
        }
    }
    let again = decode_client(Incoming::Text(&m.to_json()), usize::MAX).map_err(|e| e.message)?;
    let again = serde_json::to_value(&again).map_err(|e| e.to_string())?;
    if canon.iter().any(|(k, v)| !again.get(k).is_some_and(|a| same(a, v))) {
        return Err(format!("does not round-trip: {canon:?} → {again}"));
    }
    Ok(())
}

/// Messages to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Created {
        session: String,
        token: String,
    },
    Watching {
        session: String,
        owner: bool,
        width: usize,
        height: usize,
        fps: f64,
        codec: Codec,
        codec_string: String,
        prompt: String,
    },
    Prompt {
        prompt: String,
        frame: u64,
    },
    State {
        paused: bool,
    },
    Recording {
        on: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Forked {
        session: String,
        token: String,
    },
    Stats {
        generated_fps: f64,
        buffered_frames: u64,
        shown_frames: u64,
        viewers: usize,
        stalls: u64,
        recording: bool,
        paused: bool,
        /// The source's own figures: for the model, `steps` per chunk (fewer than
        /// `full_steps` under overload), `chunks` and `device`; `null` for the world.
        #[serde(default)]
        source: serde_json::Value,
    },
    Pong {
        t: f64,
        server_ms: f64,
    },
    Error {
        message: String,
        request: String,
    },
    Ended {
        reason: String,
    },
}

impl ServerMessage {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialise")
    }
}

/// Media tracks of binary messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Track {
    /// An H.264 access unit, Annex B.
    H264 = 1,
    /// fMP4 initialisation segment.
    Fmp4Init = 2,
    /// fMP4 media segment.
    Fmp4Media = 3,
}

impl Track {
    pub fn from_u8(v: u8) -> Option<Track> {
        match v {
            1 => Some(Track::H264),
            2 => Some(Track::Fmp4Init),
            3 => Some(Track::Fmp4Media),
            _ => None,
        }
    }
}

/// The header of a binary media message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaHeader {
    pub track: Track,
    pub keyframe: bool,
    /// Presentation time, microseconds.
    pub pts_us: u64,
    /// Server wall clock at push, microseconds since the Unix epoch.
    pub push_us: u64,
}

impl MediaHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0] = VERSION;
        h[1] = self.track as u8;
        h[2] = self.keyframe as u8;
        h[4..12].copy_from_slice(&self.pts_us.to_be_bytes());
        h[12..20].copy_from_slice(&self.push_us.to_be_bytes());
        h
    }

    /// Parses the header of a media message; `None` when it is not one of version 1.
    pub fn decode(bytes: &[u8]) -> Option<(MediaHeader, &[u8])> {
        if bytes.len() < HEADER_LEN || bytes[0] != VERSION || bytes[3] != 0 || bytes[2] > 1 {
            return None;
        }
        let track = Track::from_u8(bytes[1])?;
        let u64_at = |i: usize| u64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes by construction"));
        Some((
            MediaHeader { track, keyframe: bytes[2] == 1, pts_us: u64_at(4), push_us: u64_at(12) },
            &bytes[HEADER_LEN..],
        ))
    }
}

/// Microseconds since the Unix epoch now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_parse_from_the_documented_json() {
        let m: ClientMessage = serde_json::from_str(r#"{"type":"create","prompt":"hills","size":"256x144"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Create(Create {
                prompt: "hills".into(),
                seed: None,
                size: Some("256x144".into()),
                fps: None,
                api_key: None
            })
        );
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"create","prompt":"x","evil":1}"#).is_err());
        let m: ClientMessage = serde_json::from_str(r#"{"type":"watch","session":"ab","codec":"fmp4"}"#).unwrap();
        assert_eq!(m, ClientMessage::Watch { session: "ab".into(), token: None, codec: Codec::Fmp4 });
        let m: ClientMessage = serde_json::from_str(r#"{"type":"record","on":true}"#).unwrap();
        assert_eq!(m.kind(), "record");
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"steer","prompt":"x","evil":1}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"launch"}"#).is_err());
        assert_eq!(serde_json::from_str::<ClientMessage>(r#"{"type":"pause"}"#).unwrap(), ClientMessage::Pause {});
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"pause","evil":1}"#).is_err());
        assert_eq!(ClientMessage::Close {}.to_json(), r#"{"type":"close"}"#);
    }

    #[test]
    fn server_messages_carry_their_type() {
        let j = ServerMessage::Prompt { prompt: "snow".into(), frame: 7 }.to_json();
        assert_eq!(j, r#"{"type":"prompt","prompt":"snow","frame":7}"#);
    }

    #[test]
    fn media_headers_round_trip_and_reject_garbage() {
        let h = MediaHeader { track: Track::H264, keyframe: true, pts_us: 1_234_567, push_us: 99 };
        let mut msg = h.encode().to_vec();
        msg.extend_from_slice(b"payload");
        let (back, payload) = MediaHeader::decode(&msg).unwrap();
        assert_eq!(back, h);
        assert_eq!(payload, b"payload");
        assert!(MediaHeader::decode(&msg[..10]).is_none());
        let mut bad = msg.clone();
        bad[1] = 9;
        assert!(MediaHeader::decode(&bad).is_none());
    }
}
