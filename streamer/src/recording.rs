//! Recordings: the session's H.264 into an MP4 that is playable up to its last fragment at
//! any moment (`fragment-mode=first-moov-then-finalise`: a kill -9 leaves a fragmented file;
//! a clean stop rewrites it as a normal MP4), with a JSON timeline beside it to replay it.
//!
//! ```text
//! appsrc (H.264 byte-stream AUs) ! h264parse ! mp4mux fragment-mode=first-moov-then-finalise ! filesink
//! ```

use crate::encoder::Packet;
use crate::protocol::Track;
use endless_sessions::{PromptEvent, Session};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a recording could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RecordingError {
    #[error("the recordings folder is over its quota ({0} MiB)")]
    Quota(i64),
    #[error("cannot write the recording: {0}")]
    Io(#[from] std::io::Error),
    #[error("recording pipeline: {0}")]
    Gstreamer(String),
}

fn gst_err(e: impl std::fmt::Display) -> RecordingError {
    RecordingError::Gstreamer(e.to_string())
}

/// What is needed to replay a recording: written beside the MP4 as `<name>.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Timeline {
    pub version: u32,
    pub session: String,
    pub seed: u64,
    /// The frame source and its configuration.
    pub source: serde_json::Value,
    pub size: String,
    pub fps: f64,
    /// Unix seconds when recording started.
    pub started_at: u64,
    /// The stream frame the recording starts at (its first keyframe is at or after it).
    pub start_frame: u64,
    /// Every prompt of the stream since it began, with the frame it took effect at.
    pub prompts: Vec<PromptEvent>,
    /// Whether the recording was finalised (a clean stop).
    pub finished: bool,
    /// Frames in the file.
    pub frames: u64,
    /// [`frames_digest`] of the raw frames behind the file's frames, written when the
    /// recording is finalised: `endless replay` checks its frames against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames_digest: Option<String>,
}

/// FNV-1a, 64 bits: a stable hash of one raw RGB frame.
pub fn frame_hash(rgb: &[u8]) -> u64 {
    rgb.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The digest of a run of frames, from their [`frame_hash`]es in order.
pub fn frames_digest(hashes: impl IntoIterator<Item = u64>) -> String {
    let bytes: Vec<u8> = hashes.into_iter().flat_map(u64::to_le_bytes).collect();
    format!("fnv1a64:{:016x}", frame_hash(&bytes))
}

/// A recording in progress.
pub struct Recorder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    pub name: String,
    path: PathBuf,
    timeline: Timeline,
    /// PTS of the first frame written (µs); `None` until the first keyframe arrives.
    first_pts: Option<u64>,
    frame_us: u64,
    /// `(frame index, frame_hash)` of the raw frames since the recording started.
    hashes: std::collections::VecDeque<(u64, u64)>,
}

/// Bytes used by the files in `dir`.
pub fn used_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|it| it.filter_map(|e| e.ok()?.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

impl Recorder {
    /// Starts recording `session` into `dir`, if the folder is under `quota_mib`.
    pub fn start(dir: &Path, session: &Session, quota_mib: i64) -> Result<Recorder, RecordingError> {
        std::fs::create_dir_all(dir)?;
        if used_bytes(dir) >= (quota_mib as u64) << 20 {
            return Err(RecordingError::Quota(quota_mib));
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let name = format!("{}-{}-{:03}.mp4", &session.id.as_str()[..12], now.as_secs(), now.subsec_millis());
        let path = dir.join(&name);
        gst::init().map_err(gst_err)?;
        let pipeline = gst::Pipeline::new();
        let src = gst_app::AppSrc::builder()
            .caps(
                &gst::Caps::builder("video/x-h264")
                    .field("stream-format", "byte-stream")
                    .field("alignment", "au")
                    .build(),
            )
            .format(gst::Format::Time)
            .max_bytes(64 << 20)
            .block(false)
            .build();
        let parse = gst::ElementFactory::make("h264parse").build().map_err(gst_err)?;
        let mux = gst::ElementFactory::make("mp4mux")
            .property("fragment-duration", 1000u32)
            .property_from_str("fragment-mode", "first-moov-then-finalise")
            .build()
            .map_err(gst_err)?;
        let sink = gst::ElementFactory::make("filesink")
            .property("location", path.to_str().ok_or_else(|| gst_err("recording path is not UTF-8"))?)
            .build()
            .map_err(gst_err)?;
        pipeline.add_many([src.upcast_ref(), &parse, &mux, &sink]).map_err(gst_err)?;
        gst::Element::link_many([src.upcast_ref(), &parse, &mux, &sink]).map_err(gst_err)?;
        pipeline.set_state(gst::State::Playing).map_err(gst_err)?;
        let timeline = Timeline {
            version: 1,
            session: session.id.to_string(),
            seed: session.seed,
            source: session.describe_source(),
            size: session.size().to_string(),
            fps: session.fps(),
            started_at: now.as_secs(),
            start_frame: session.played(),
            prompts: session.history(),
            finished: false,
            frames: 0,
            frames_digest: None,
        };
        let recorder = Recorder {
            pipeline,
            src,
            name,
            path,
            timeline,
            first_pts: None,
            frame_us: (1e6 / session.fps()) as u64,
            hashes: Default::default(),
        };
        recorder.write_timeline()?;
        Ok(recorder)
    }

    fn write_timeline(&self) -> Result<(), RecordingError> {
        let json = serde_json::to_vec_pretty(&self.timeline).expect("a timeline always serialises");
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, json)?;
        std::fs::rename(tmp, self.path.with_extension("json"))?;
        Ok(())
    }

    /// Seconds recorded so far.
    pub fn seconds(&self) -> f64 {
        self.timeline.frames as f64 / self.timeline.fps
    }

    /// Notes a prompt change in the timeline.
    pub fn note_prompts(&mut self, prompts: Vec<PromptEvent>) {
        self.timeline.prompts = prompts;
        if let Err(e) = self.write_timeline() {
            tracing::warn!(recording = %self.name, cause = %e, "cannot update the timeline");
        }
    }

    /// Replaces the source's description in the timeline (written when the recording is
    /// finished).
    pub fn note_source(&mut self, source: serde_json::Value) {
        self.timeline.source = source;
    }

    /// Notes the hash of a raw frame going into the encoder (before its access unit comes).
    pub fn note_frame(&mut self, index: u64, hash: u64) {
        self.hashes.push_back((index, hash));
        // Frames before the file's first frame are not needed once it is known.
        if self.first_pts.is_some() {
            while self.hashes.front().is_some_and(|&(i, _)| i < self.timeline.start_frame) {
                self.hashes.pop_front();
            }
        }
    }

    /// Writes an encoded access unit; everything before the first keyframe is skipped.
    pub fn push(&mut self, p: &Packet) {
        if p.track != Track::H264 {
            return;
        }
        let first = match self.first_pts {
            Some(f) => f,
            None if p.keyframe => {
                self.first_pts = Some(p.pts_us);
                self.timeline.start_frame = (p.pts_us as f64 * self.timeline.fps / 1e6).round() as u64;
                p.pts_us
            }
            None => return,
        };
        let mut buffer = gst::Buffer::from_slice(p.data.clone());
        {
            let b = buffer.get_mut().expect("a new buffer has one owner");
            b.set_pts(gst::ClockTime::from_useconds(p.pts_us.saturating_sub(first)));
            b.set_duration(gst::ClockTime::from_useconds(self.frame_us));
            if !p.keyframe {
                b.set_flags(gst::BufferFlags::DELTA_UNIT);
            }
        }
        if self.src.push_buffer(buffer).is_ok() {
            self.timeline.frames += 1;
        }
    }

    /// Finishes the file (EOS, then the muxer rewrites it as a normal MP4) within `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Result<String, RecordingError> {
        let _ = self.src.end_of_stream();
        let bus = self.pipeline.bus().expect("a pipeline has a bus");
        let mut result = Err(gst_err("timed out finalising"));
        for msg in bus.iter_timed(gst::ClockTime::from_mseconds(timeout.as_millis() as u64)) {
            match msg.view() {
                gst::MessageView::Eos(..) => {
                    result = Ok(());
                    break;
                }
                gst::MessageView::Error(e) => {
                    result = Err(gst_err(e.error()));
                    break;
                }
                _ => {}
            }
        }
        let _ = self.pipeline.set_state(gst::State::Null);
        self.timeline.finished = result.is_ok();
        let (start, n) = (self.timeline.start_frame, self.timeline.frames);
        let hashes: Vec<u64> =
            self.hashes.iter().filter(|&&(i, _)| i >= start && i < start + n).map(|&(_, h)| h).collect();
        // Only when every frame of the file was seen raw (it always is, barring a bug).
        self.timeline.frames_digest = (hashes.len() as u64 == n).then(|| frames_digest(hashes));
        self.write_timeline()?;
        result.map(|()| self.name.clone())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

/// A recording as listed over HTTP.
#[derive(Debug, Clone, Serialize)]
pub struct RecordingInfo {
    pub name: String,
    pub bytes: u64,
    pub created: u64,
    pub session: String,
    pub prompt: String,
    pub url: String,
    pub timeline_url: String,
}

/// Whether `name` looks like a file this server writes: `<12 hex>-<digits>-<3 digits>.mp4`
/// or its `.json`. Nothing else is ever served from the folder.
pub fn is_recording_name(name: &str) -> bool {
    let stem = name.strip_suffix(".mp4").or_else(|| name.strip_suffix(".json"));
    let Some(stem) = stem else { return false };
    let parts: Vec<&str> = stem.split('-').collect();
    parts.len() == 3
        && parts[0].len() == 12
        && parts[0].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !parts[1].is_empty()
        && parts[1].len() <= 20
        && parts[1].bytes().all(|b| b.is_ascii_digit())
        && parts[2].len() == 3
        && parts[2].bytes().all(|b| b.is_ascii_digit())
}

/// The recordings in `dir`, newest first.
pub fn list(dir: &Path) -> Vec<RecordingInfo> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<RecordingInfo> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            if !name.ends_with(".mp4") || !is_recording_name(&name) {
                return None;
            }
            let bytes = e.metadata().ok()?.len();
            let timeline: Option<Timeline> = std::fs::read(dir.join(name.replace(".mp4", ".json")))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            let (session, prompt, created) = match &timeline {
                Some(t) => {
                    (t.session.clone(), t.prompts.last().map(|p| p.prompt.clone()).unwrap_or_default(), t.started_at)
                }
                None => (String::new(), String::new(), 0),
            };
            Some(RecordingInfo {
                url: format!("/recordings/{name}"),
                timeline_url: format!("/recordings/{}", name.replace(".mp4", ".json")),
                name,
                bytes,
                created,
                session,
                prompt,
            })
        })
        .collect();
    out.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_names_the_server_writes_are_recordings() {
        assert!(is_recording_name("0123456789ab-1763790000-042.mp4"));
        assert!(is_recording_name("0123456789ab-1763790000-042.json"));
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "0123456789ab-1763790000-042.mp4/..",
            "..%2f..%2fetc%2fpasswd",
            "0123456789AB-1763790000-042.mp4",
            "0123456789ab-17637x0000-042.mp4",
            "0123456789ab-1763790000-042.mp4.tmp",
            "0123456789ab-1763790000-042.json.tmp",
            "x.mp4",
            "",
        ] {
            assert!(!is_recording_name(bad), "{bad}");
        }
    }
}
