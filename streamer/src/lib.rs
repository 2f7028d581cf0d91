//! The endless service: configuration, the HTTP and WebSocket server, GStreamer encoding,
//! fan-out to viewers and recordings.

pub mod bench;
pub mod config;
pub mod encoder;
pub mod metrics;
pub mod protocol;
pub mod recording;
pub mod replay;
pub mod server;
pub mod stream;
