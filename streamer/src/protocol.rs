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
    Pause,
    Resume,
    Record {
        on: bool,
    },
    Fork,
    Close,
    Ping {
        t: f64,
    },
}

impl ClientMessage {
    /// The message's `type`, for error replies.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Create(_) => "create",
            ClientMessage::Watch { .. } => "watch",
            ClientMessage::Steer { .. } => "steer",
            ClientMessage::Pause => "pause",
            ClientMessage::Resume => "resume",
            ClientMessage::Record { .. } => "record",
            ClientMessage::Fork => "fork",
            ClientMessage::Close => "close",
            ClientMessage::Ping { .. } => "ping",
        }
    }
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
