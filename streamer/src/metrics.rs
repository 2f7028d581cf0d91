//! Counters for `/metrics`, in the Prometheus text format.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Service-wide counters. Gauges that come from the registry are passed to [`Metrics::render`].
#[derive(Default)]
pub struct Metrics {
    pub frames_encoded: AtomicU64,
    pub media_bytes_sent: AtomicU64,
    pub media_messages_dropped: AtomicU64,
    pub ws_connections: AtomicU64,
    pub ws_open: AtomicU64,
    pub client_errors: AtomicU64,
    pub sessions_created: AtomicU64,
    pub recordings_started: AtomicU64,
}

/// Gauges read at scrape time.
pub struct Gauges {
    pub sessions: usize,
    pub viewers: usize,
    pub recordings_active: usize,
}

impl Metrics {
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP endless_{name} {help}\n# TYPE endless_{name} {kind}\nendless_{name} {value}");
        };
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        metric("sessions", "gauge", "Live sessions.", g.sessions as u64);
        metric("viewers", "gauge", "Viewers watching a session.", g.viewers as u64);
        metric("recordings_active", "gauge", "Recordings in progress.", g.recordings_active as u64);
        metric("frames_encoded_total", "counter", "H.264 frames encoded.", c(&self.frames_encoded));
        metric("media_bytes_sent_total", "counter", "Media bytes queued to viewers.", c(&self.media_bytes_sent));
        metric(
            "media_messages_dropped_total",
            "counter",
            "Media messages skipped for slow viewers.",
            c(&self.media_messages_dropped),
        );
        metric("ws_connections_total", "counter", "WebSocket connections accepted.", c(&self.ws_connections));
        metric("ws_open", "gauge", "WebSocket connections open.", c(&self.ws_open));
        metric("client_errors_total", "counter", "Requests refused with an error message.", c(&self.client_errors));
        metric("sessions_created_total", "counter", "Sessions created (forks included).", c(&self.sessions_created));
        metric("recordings_started_total", "counter", "Recordings started.", c(&self.recordings_started));
        out
    }
}
