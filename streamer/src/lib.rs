//! The endless service: configuration, and (as it lands) the HTTP and WebSocket server,
//! GStreamer encoding and fan-out to viewers.

pub mod config;
