//! A session's media side: its encoder, the fan-out of encoded packets to viewers, the
//! cached init data for late joiners, and its recording.

use crate::config::Config;
use crate::encoder::{Encoder, Packet, codec_string};
use crate::metrics::Metrics;
use crate::protocol::{MediaHeader, ServerMessage, Track};
use crate::recording::{Recorder, RecordingError};
use bytes::Bytes;
use endless_sessions::{Output, Session};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::broadcast;

/// Shortest time between two forced keyframes.
const KEY_GAP: Duration = Duration::from_millis(500);

/// When a keyframe was last forced, and whether one is scheduled.
#[derive(Default)]
struct KeyThrottle {
    last: Option<std::time::Instant>,
    pending: bool,
}

/// Packets a viewer may fall behind by before it is skipped to the next keyframe.
const MEDIA_BACKLOG: usize = 128;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An encoded packet with its media message (header and payload) built once: every viewer
/// is sent the same reference-counted bytes, so a viewer's queue costs a pointer per
/// message, not a copy of the frame.
#[derive(Debug)]
pub struct Media {
    pub packet: Packet,
    pub wire: Bytes,
}

/// What the encoder callback shares with the stream.
struct Shared {
    media: broadcast::Sender<Arc<Media>>,
    init: Mutex<Option<Bytes>>,
    codec: Mutex<Option<String>>,
    recorder: Mutex<Option<Recorder>>,
    metrics: Arc<Metrics>,
}

/// A session with its encoder and viewers' fan-out.
pub struct SessionStream {
    pub session: Arc<Session>,
    encoder: Arc<Encoder>,
    shared: Arc<Shared>,
    /// Control events every viewer sees (prompt changes, pause, recording, end).
    pub events: broadcast::Sender<ServerMessage>,
    recordings_dir: PathBuf,
    quota_mib: i64,
    max_record_secs: f64,
    grace: Duration,
    keys: Arc<Mutex<KeyThrottle>>,
}

impl SessionStream {
    /// Starts encoding `session`'s frames.
    pub fn start(session: Arc<Session>, config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<SessionStream>> {
        let output = session.take_output().ok_or_else(|| anyhow::anyhow!("the session's output is taken"))?;
        let (media, _) = broadcast::channel(MEDIA_BACKLOG);
        let shared = Arc::new(Shared {
            media,
            init: Mutex::new(None),
            codec: Mutex::new(None),
            recorder: Mutex::new(None),
            metrics,
        });
        let cb = shared.clone();
        let encoder = Arc::new(Encoder::start(session.size(), session.fps(), &config.encoder, move |p| {
            if p.track == Track::Fmp4Init {
                *lock(&cb.init) = Some(p.data.clone());
            }
            if p.track == Track::H264 {
                cb.metrics.frames_encoded.fetch_add(1, Ordering::Relaxed);
                if p.keyframe && lock(&cb.codec).is_none() {
                    *lock(&cb.codec) = codec_string(&p.data);
                }
                if let Some(r) = lock(&cb.recorder).as_mut() {
                    r.push(&p);
                }
            }
            if cb.media.receiver_count() > 0 {
                let header = MediaHeader { track: p.track, keyframe: p.keyframe, pts_us: p.pts_us, push_us: p.push_us };
                let wire = Bytes::from([&header.encode()[..], &p.data].concat());
                let _ = cb.media.send(Arc::new(Media { packet: p, wire }));
            }
        })?);
        let (events, _) = broadcast::channel(64);
        let stream = Arc::new(SessionStream {
            session,
            encoder,
            shared,
            events,
            recordings_dir: config.recording.dir.clone(),
            quota_mib: config.recording.quota_mib.get(),
            max_record_secs: config.recording.max_secs.get() as f64,
            grace: Duration::from_secs(config.server.shutdown_grace_secs.get() as u64),
            keys: Arc::new(Mutex::new(KeyThrottle::default())),
        });
        tokio::spawn(stream.clone().feed(output));
        Ok(stream)
    }

    /// Frames from the session's playout clock into the encoder. When they stop for any
    /// reason but the session closing — the source failed, its thread died, the encoder
    /// failed — the recording is finalised, viewers are told why, and the session is closed
    /// so the evictor frees it; other sessions never notice.
    async fn feed(self: Arc<Self>, mut output: tokio::sync::mpsc::Receiver<Output>) {
        let reason = loop {
            match output.recv().await {
                Some(Output::Frame(f)) => {
                    if let Some(r) = lock(&self.shared.recorder).as_mut() {
                        r.note_frame(f.index, crate::recording::frame_hash(&f.rgb));
                    }
                    if let Err(e) = self.encoder.push(&f.rgb, f.pts_ns, f.duration_ns) {
                        tracing::error!(session = %self.session.id, cause = %e, "encoder failed");
                        break Some("the encoder failed".to_string());
                    }
                    let over =
                        lock(&self.shared.recorder).as_ref().is_some_and(|r| r.seconds() >= self.max_record_secs);
                    if over {
                        tracing::info!(session = %self.session.id, "recording reached its maximum length");
                        self.stop_recording().await;
                    }
                }
                Some(Output::Failed(e)) => {
                    tracing::error!(session = %self.session.id, cause = %e, "generation failed");
                    break Some(format!("generation failed: {e}"));
                }
                None if self.session.is_closed() => break None,
                None => {
                    // The generator thread is gone without a word: it panicked.
                    tracing::error!(session = %self.session.id, "generation stopped unexpectedly");
                    break Some("generation stopped unexpectedly".to_string());
                }
            }
        };
        if let Some(reason) = reason {
            self.stop_recording().await;
            // Closed before the viewers hear of it, as in `shutdown`: whoever is told the
            // stream ended finds the session closed.
            self.session.close();
            let _ = self.events.send(ServerMessage::Ended { reason });
        }
    }

    /// Packets for a new viewer. A keyframe is asked for so it can start soon — throttled
    /// like [`Self::request_keyframe`], so a client that re-sends `watch` in a loop cannot
    /// turn everyone's stream into keyframes.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Media>> {
        let rx = self.shared.media.subscribe();
        self.request_keyframe();
        rx
    }

    /// Asks for a keyframe for a viewer that joined or was skipped ahead. At most one is
    /// forced per [`KEY_GAP`], so joins and slow viewers cannot flood the stream with
    /// keyframes; a request inside the gap is served at its end, so nobody waits a whole
    /// keyframe interval (200 viewers joining at once all start within half a second).
    pub fn request_keyframe(&self) {
        let now = std::time::Instant::now();
        let mut k = lock(&self.keys);
        match k.last {
            Some(t) if now < t + KEY_GAP => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
                if !k.pending {
                    k.pending = true;
                    let (keys, encoder, at) = (self.keys.clone(), self.encoder.clone(), t + KEY_GAP);
                    runtime.spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        let mut k = lock(&keys);
                        (k.pending, k.last) = (false, Some(std::time::Instant::now()));
                        drop(k);
                        encoder.force_keyframe();
                    });
                }
            }
            _ => {
                k.last = Some(now);
                drop(k);
                self.encoder.force_keyframe();
            }
        }
    }

    /// The fMP4 init segment, once the muxer has written it.
    pub fn init_segment(&self) -> Option<Bytes> {
        lock(&self.shared.init).clone()
    }

    /// The WebCodecs codec string, once the first keyframe has been encoded.
    pub fn codec_string(&self) -> Option<String> {
        lock(&self.shared.codec).clone()
    }

    /// Waits (up to `timeout`) for the first keyframe's codec string.
    pub async fn wait_codec_string(&self, timeout: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.codec_string() {
                return Some(c);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_recording(&self) -> bool {
        lock(&self.shared.recorder).is_some()
    }

    /// Starts a recording; returns its file name.
    pub fn start_recording(&self) -> Result<String, RecordingError> {
        let mut slot = lock(&self.shared.recorder);
        if let Some(r) = slot.as_ref() {
            return Ok(r.name.clone());
        }
        let recorder = Recorder::start(&self.recordings_dir, &self.session, self.quota_mib)?;
        let name = recorder.name.clone();
        *slot = Some(recorder);
        drop(slot);
        self.session.set_recording(true);
        self.shared.metrics.recordings_started.fetch_add(1, Ordering::Relaxed);
        self.encoder.force_keyframe();
        tracing::info!(session = %self.session.id, recording = %name, "recording started");
        let _ = self.events.send(ServerMessage::Recording { on: true, name: Some(name.clone()) });
        Ok(name)
    }

    /// Notes a prompt change in the recording's timeline.
    pub fn note_prompts(&self) {
        if let Some(r) = lock(&self.shared.recorder).as_mut() {
            r.note_prompts(self.session.history());
        }
    }

    /// Stops and finalises the recording, if any.
    pub async fn stop_recording(&self) -> Option<String> {
        let recorder = lock(&self.shared.recorder).take()?;
        self.session.set_recording(false);
        let grace = self.grace;
        let session = self.session.clone();
        let result = tokio::task::spawn_blocking(move || {
            // The source's description as it ends (a model source's steps per chunk under
            // overload, say), under the source's lock: off the runtime's threads.
            let mut recorder = recorder;
            recorder.note_source(session.describe_source());
            recorder.finish(grace)
        })
        .await;
        let name = match result {
            Ok(Ok(name)) => {
                tracing::info!(session = %self.session.id, recording = %name, "recording finalised");
                Some(name)
            }
            Ok(Err(e)) => {
                tracing::error!(session = %self.session.id, cause = %e, "recording not finalised");
                None
            }
            Err(e) => {
                tracing::error!(session = %self.session.id, cause = %e, "recording task failed");
                None
            }
        };
        let _ = self.events.send(ServerMessage::Recording { on: false, name: name.clone() });
        name
    }

    /// Ends the stream: finalises any recording, tells viewers, stops the encoder.
    pub async fn shutdown(&self, reason: &str) {
        self.stop_recording().await;
        self.session.close();
        let _ = self.events.send(ServerMessage::Ended { reason: reason.into() });
        self.encoder.stop();
    }
}
