//! Real videos as a second data source: a folder of video files, decoded through GStreamer into
//! clips of RGB8 frames shaped exactly like the world renderer's (`width * height * 3` bytes,
//! tightly packed), so that training can mix them with procedural clips.
//!
//! Behind the `gst` feature: the GPU machines have no GStreamer, and the procedural world needs
//! none. [`VideoFolder::open`] finds and probes the files once; [`VideoFolder::clip`] decodes one
//! [`ClipRequest`]; [`VideoSampler`] draws requests deterministically from a seed, the way
//! [`crate::world::ClipSampler`] draws procedural clips.

use crate::media::Size;
use crate::world::noise_uniform;
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::path::{Path, PathBuf};

/// File extensions taken for videos, compared case-insensitively.
pub const VIDEO_EXTENSIONS: [&str; 6] = ["mp4", "mkv", "webm", "mov", "avi", "m4v"];

/// How long GStreamer may take to preroll a file or hand over a frame before we give up: a
/// broken file must fail, not hang a training run.
const TIMEOUT: gst::ClockTime = gst::ClockTime::from_seconds(20);

/// Errors of the video data source.
#[derive(Debug, thiserror::Error)]
pub enum VideoError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("GStreamer: {0}")]
    Gstreamer(String),
    #[error("no usable video in {dir}: {found} video file(s) found ({}), {skipped} unreadable", VIDEO_EXTENSIONS.join(", "))]
    NoVideos { dir: PathBuf, found: usize, skipped: usize },
    #[error("cannot probe {path}: {reason}")]
    Probe { path: PathBuf, reason: String },
    #[error("cannot decode {path}: {reason}")]
    Decode { path: PathBuf, reason: String },
    #[error("bad clip request: {0}")]
    Request(String),
    #[error(
        "{path} is {duration:.3} s long: a clip of {frames} frames at {fps} fps from {start:.3} s runs past its end"
    )]
    TooShort { path: PathBuf, duration: f64, start: f64, frames: usize, fps: f64 },
    #[error("{path} ended after {got} of {wanted} frames (clip from {start:.3} s)")]
    EndedEarly { path: PathBuf, got: usize, wanted: usize, start: f64 },
}

/// What probing found out about one video file.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub path: PathBuf,
    /// Length of the video stream, in seconds.
    pub duration_secs: f64,
    /// Decoded frame size, in stored pixels (see `pixel_aspect` for non-square pixels).
    pub width: usize,
    pub height: usize,
    /// Pixel aspect ratio (width / height of one pixel); 1 for square pixels.
    pub pixel_aspect: f64,
    /// Native frame rate, when the stream declares a fixed one.
    pub fps: Option<f64>,
    /// The sidecar caption (`clip.mp4` → `clip.txt`), trimmed; `None` without one or when empty.
    pub caption: Option<String>,
}

/// A video folder, probed: every usable video file under a directory, in sorted path order.
#[derive(Debug, Clone)]
pub struct VideoFolder {
    dir: PathBuf,
    videos: Vec<VideoInfo>,
}

/// One clip to decode: `frames` frames at `fps`, the first at `start_secs` into video `video`
/// (an index into [`VideoFolder::videos`]), scaled to cover `width × height` and centre-cropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipRequest {
    pub video: usize,
    pub start_secs: f64,
    pub width: usize,
    pub height: usize,
    pub fps: f64,
    pub frames: usize,
}

/// A decoded clip: `frames` RGB8 frames of `width * height * 3` bytes, like
/// [`crate::world::Clip::render`]'s.
#[derive(Debug, Clone, PartialEq)]
pub struct RealClip {
    pub frames: Vec<Vec<u8>>,
    pub caption: Option<String>,
    pub source: PathBuf,
    pub start_secs: f64,
}

fn gst_err(e: impl std::fmt::Display) -> VideoError {
    VideoError::Gstreamer(e.to_string())
}

/// Whether `path` names a video by its extension.
fn is_video(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| VIDEO_EXTENSIONS.iter().any(|v| e.eq_ignore_ascii_case(v)))
}

/// Video files under `dir`, recursively.
fn find_videos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), VideoError> {
    let io = |source| VideoError::Io { path: dir.to_path_buf(), source };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        // `metadata` follows symbolic links, so a linked folder of videos counts too.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => find_videos(&path, out)?,
            Ok(m) if m.is_file() && is_video(&path) => out.push(path),
            Ok(_) => {}
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "skipping an unreadable entry"),
        }
    }
    Ok(())
}

/// The caption next to a video: same stem, `.txt`.
fn sidecar_caption(video: &Path) -> Option<String> {
    let text = std::fs::read_to_string(video.with_extension("txt")).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The first error on the bus, if any, as text.
fn bus_error(pipeline: &gst::Pipeline) -> Option<String> {
    let bus = pipeline.bus()?;
    while let Some(msg) = bus.pop_filtered(&[gst::MessageType::Error]) {
        if let gst::MessageView::Error(e) = msg.view() {
            return Some(match e.debug() {
                Some(debug) => format!("{} ({debug})", e.error()),
                None => e.error().to_string(),
            });
        }
    }
    None
}

/// Sets a pipeline to `state` and waits for it; on failure, the bus's error explains why.
fn set_state_and_wait(pipeline: &gst::Pipeline, state: gst::State) -> Result<(), String> {
    let failed = |what: &str| bus_error(pipeline).unwrap_or_else(|| what.to_string());
    pipeline.set_state(state).map_err(|_| failed("state change failed"))?;
    match pipeline.state(TIMEOUT) {
        (Ok(_), current, _) if current == state => Ok(()),
        (Ok(_), _, _) => Err(failed("timed out waiting for the pipeline (no video stream?)")),
        (Err(_), _, _) => Err(failed("state change failed")),
    }
}

/// A pipeline `filesrc ! decodebin ! <chain>`, decodebin's first video pad linked to the first
/// element of `chain`. Linking by hand, not through `parse::launch`, so that audio and subtitle
/// streams are left alone whatever order decodebin exposes them in.
fn decode_pipeline(path: &Path, chain: &[gst::Element]) -> Result<gst::Pipeline, VideoError> {
    gst::init().map_err(gst_err)?;
    let pipeline = gst::Pipeline::new();
    let src = gst::ElementFactory::make("filesrc").property("location", path).build().map_err(gst_err)?;
    let decode = gst::ElementFactory::make("decodebin").build().map_err(gst_err)?;
    pipeline.add_many([&src, &decode]).map_err(gst_err)?;
    pipeline.add_many(chain).map_err(gst_err)?;
    src.link(&decode).map_err(gst_err)?;
    gst::Element::link_many(chain).map_err(gst_err)?;
    let sink_pad = chain[0].static_pad("sink").ok_or_else(|| gst_err("the first element has no sink pad"))?;
    // Weakly: the pipeline owns the pad, and the handler must not keep it alive.
    let sink_pad = sink_pad.downgrade();
    decode.connect_pad_added(move |_, pad| {
        let Some(sink_pad) = sink_pad.upgrade() else { return };
        let caps = pad.current_caps().unwrap_or_else(|| pad.query_caps(None));
        let video = caps.structure(0).is_some_and(|s| s.name().starts_with("video/"));
        if video && !sink_pad.is_linked() {
            // A failure here surfaces as a not-linked error on the bus.
            let _ = pad.link(&sink_pad);
        }
    });
    Ok(pipeline)
}

fn appsink(caps: Option<&gst::Caps>) -> gst_app::AppSink {
    let mut builder = gst_app::AppSink::builder().sync(false).max_buffers(4).drop(false).enable_last_sample(false);
    if let Some(caps) = caps {
        builder = builder.caps(caps);
    }
    builder.build()
}

fn fraction(s: &gst::StructureRef, field: &str) -> Option<f64> {
    let f = s.get::<gst::Fraction>(field).ok()?;
    (f.numer() > 0 && f.denom() > 0).then(|| f.numer() as f64 / f.denom() as f64)
}

/// Probes one file: prerolls `decodebin` into an appsink, reads the decoded caps, then finds
/// where the video stream ends (see [`video_end`]).
fn probe(path: &Path) -> Result<VideoInfo, VideoError> {
    let fail = |reason: String| VideoError::Probe { path: path.to_path_buf(), reason };
    let sink = appsink(None);
    let pipeline = decode_pipeline(path, &[sink.clone().upcast()])?;
    let result = (|| {
        set_state_and_wait(&pipeline, gst::State::Paused).map_err(fail)?;
        let sample = sink.pull_preroll().map_err(|_| fail("no frame prerolled".into()))?;
        let caps = sample.caps().ok_or_else(|| fail("decoded frames have no caps".into()))?;
        let s = caps.structure(0).ok_or_else(|| fail("empty caps".into()))?;
        let width = s.get::<i32>("width").map_err(|e| fail(format!("no width in {caps}: {e}")))?;
        let height = s.get::<i32>("height").map_err(|e| fail(format!("no height in {caps}: {e}")))?;
        let fps = fraction(s, "framerate");
        let pixel_aspect = fraction(s, "pixel-aspect-ratio").unwrap_or(1.0);
        let container = pipeline
            .query_duration::<gst::ClockTime>()
            .ok_or_else(|| fail("unknown duration (not seekable?)".into()))?;
        let duration_secs = video_end(&pipeline, &sink, container, fps).unwrap_or(container.nseconds() as f64 / 1e9);
        if width <= 0 || height <= 0 || duration_secs <= 0.0 {
            return Err(fail(format!("empty video: {width}x{height}, {duration_secs} s")));
        }
        Ok(VideoInfo {
            path: path.to_path_buf(),
            duration_secs,
            width: width as usize,
            height: height as usize,
            pixel_aspect,
            fps,
            caption: sidecar_caption(path),
        })
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Where the video stream ends, in seconds: the end of its last frame. The container's duration
/// is the longest stream's, and an audio track often outlasts the picture; a sampler trusting it
/// would ask for frames that do not exist. So: seek to the keyframe before the last second and
/// decode to the end. `None` when that fails (the caller falls back to the container's duration).
fn video_end(
    pipeline: &gst::Pipeline,
    sink: &gst_app::AppSink,
    container: gst::ClockTime,
    fps: Option<f64>,
) -> Option<f64> {
    let target = container.saturating_sub(gst::ClockTime::from_seconds(1));
    let flags = gst::SeekFlags::FLUSH | gst::SeekFlags::KEY_UNIT | gst::SeekFlags::SNAP_BEFORE;
    pipeline.seek_simple(flags, target).ok()?;
    set_state_and_wait(pipeline, gst::State::Playing).ok()?;
    let mut end: Option<f64> = None;
    while let Some(sample) = sink.try_pull_sample(TIMEOUT) {
        let Some(buffer) = sample.buffer() else { continue };
        let Some(pts) = buffer.pts() else { continue };
        // Media time, whatever the segment after the seek.
        let segment = sample.segment().and_then(|s| s.downcast_ref::<gst::ClockTime>());
        let pts = segment.and_then(|s| s.to_stream_time(pts)).unwrap_or(pts);
        let frame = buffer.duration().map(|d| d.nseconds() as f64 / 1e9).or(fps.map(|f| 1.0 / f)).unwrap_or(0.0);
        let at = pts.nseconds() as f64 / 1e9 + frame;
        end = Some(end.map_or(at, |e: f64| e.max(at)));
    }
    if !sink.is_eos() {
        return None;
    }
    end
}

impl VideoFolder {
    /// Finds the video files under `dir` (recursively, sorted by path so that indices and
    /// sampling are reproducible) and probes each once. Files that GStreamer cannot read are
    /// skipped with a warning: one broken download must not stop a run. Errors when none is
    /// usable.
    pub fn open(dir: &Path) -> Result<VideoFolder, VideoError> {
        gst::init().map_err(gst_err)?;
        let mut paths = Vec::new();
        find_videos(dir, &mut paths)?;
        paths.sort();
        let mut videos = Vec::with_capacity(paths.len());
        for path in &paths {
            match probe(path) {
                Ok(info) => videos.push(info),
                Err(e) => tracing::warn!(error = %e, "skipping a video"),
            }
        }
        if videos.is_empty() {
            return Err(VideoError::NoVideos { dir: dir.to_path_buf(), found: paths.len(), skipped: paths.len() });
        }
        Ok(VideoFolder { dir: dir.to_path_buf(), videos })
    }

    /// The folder this was opened on.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The usable videos, in sorted path order; [`ClipRequest::video`] indexes this.
    pub fn videos(&self) -> &[VideoInfo] {
        &self.videos
    }

    pub fn len(&self) -> usize {
        self.videos.len()
    }

    /// Always false: [`VideoFolder::open`] refuses a folder without a usable video.
    pub fn is_empty(&self) -> bool {
        self.videos.is_empty()
    }

    /// Total duration of the videos, in seconds.
    pub fn total_secs(&self) -> f64 {
        self.videos.iter().map(|v| v.duration_secs).sum()
    }

    /// Decodes one clip: `frames` RGB8 frames at `fps` from `start_secs` (an accurate seek, so
    /// the first frame is the one showing at `start_secs`, not the keyframe before it), scaled
    /// to cover `width × height` and centre-cropped: no letterboxing, no distortion.
    ///
    /// Each call builds its own pipeline: decoding is a pure function of the request and the
    /// file, so the same request gives the same bytes. Errors when the clip runs past the end of
    /// the video.
    pub fn clip(&self, request: &ClipRequest) -> Result<RealClip, VideoError> {
        let r = request;
        let video = self
            .videos
            .get(r.video)
            .ok_or_else(|| VideoError::Request(format!("video {} of a folder of {}", r.video, self.videos.len())))?;
        if r.width == 0 || r.height == 0 || r.frames == 0 || !(r.fps.is_finite() && r.fps > 0.0) {
            return Err(VideoError::Request(format!(
                "{}x{}, {} frames at {} fps: each must be positive",
                r.width, r.height, r.frames, r.fps
            )));
        }
        if r.width > i32::MAX as usize || r.height > i32::MAX as usize {
            return Err(VideoError::Request(format!("{}x{} is too large", r.width, r.height)));
        }
        if !(r.start_secs.is_finite() && r.start_secs >= 0.0) {
            return Err(VideoError::Request(format!("start {} s", r.start_secs)));
        }
        // The last frame is the one showing at `start + (frames - 1) / fps`: it must exist.
        if r.start_secs + (r.frames - 1) as f64 / r.fps >= video.duration_secs {
            return Err(VideoError::TooShort {
                path: video.path.clone(),
                duration: video.duration_secs,
                start: r.start_secs,
                frames: r.frames,
                fps: r.fps,
            });
        }
        let frames = decode(&video.path, r).map_err(|reason| match reason {
            Decoded::Error(reason) => VideoError::Decode { path: video.path.clone(), reason },
            Decoded::Ended(got) => {
                VideoError::EndedEarly { path: video.path.clone(), got, wanted: r.frames, start: r.start_secs }
            }
        })?;
        Ok(RealClip { frames, caption: video.caption.clone(), source: video.path.clone(), start_secs: r.start_secs })
    }
}

/// Why [`decode`] stopped short.
enum Decoded {
    Error(String),
    /// End of stream after this many frames.
    Ended(usize),
}

/// The decoding pipeline of one request:
///
/// `filesrc ! decodebin ! videorate ! video/x-raw,framerate=F ! aspectratiocrop aspect-ratio=W/H
///  ! videoscale add-borders=false ! videoconvert ! video/x-raw,format=RGB,width=W,height=H ! appsink`
///
/// The frame rate is changed first so that dropped frames are never scaled, and the crop comes
/// before the scale so that only the kept pixels are resampled. `aspectratiocrop` crops to the
/// target's display aspect ratio (honouring non-square pixels) around the centre, after which
/// the scale to `W × H` is uniform up to rounding: covering, not letterboxing or stretching.
fn decode(path: &Path, r: &ClipRequest) -> Result<Vec<Vec<u8>>, Decoded> {
    let error = |e: &dyn std::fmt::Display| Decoded::Error(e.to_string());
    let rate = gst::Fraction::approximate_f64(r.fps).ok_or_else(|| error(&format!("fps {}", r.fps)))?;
    let (w, h) = (r.width as i32, r.height as i32);
    let make = |name: &str| gst::ElementFactory::make(name).build().map_err(|e| error(&e));
    let videorate = make("videorate")?;
    let rate_caps = gst::Caps::builder("video/x-raw").field("framerate", rate).build();
    let rate_filter =
        gst::ElementFactory::make("capsfilter").property("caps", &rate_caps).build().map_err(|e| error(&e))?;
    let crop = gst::ElementFactory::make("aspectratiocrop")
        .property("aspect-ratio", gst::Fraction::new(w, h))
        .build()
        .map_err(|e| error(&e))?;
    let scale =
        gst::ElementFactory::make("videoscale").property("add-borders", false).build().map_err(|e| error(&e))?;
    let convert = make("videoconvert")?;
    let caps = gst::Caps::builder("video/x-raw")
        .field("format", "RGB")
        .field("width", w)
        .field("height", h)
        .field("pixel-aspect-ratio", gst::Fraction::new(1, 1))
        .field("framerate", rate)
        .build();
    let sink = appsink(Some(&caps));
    let chain = [videorate, rate_filter, crop, scale, convert, sink.clone().upcast()];
    let pipeline = decode_pipeline(path, &chain).map_err(|e| error(&e))?;
    let result = (|| {
        set_state_and_wait(&pipeline, gst::State::Paused).map_err(|e| error(&e))?;
        let start = gst::ClockTime::from_nseconds((r.start_secs * 1e9).round() as u64);
        pipeline.seek_simple(gst::SeekFlags::FLUSH | gst::SeekFlags::ACCURATE, start).map_err(|e| error(&e))?;
        // The flushing seek prerolls again; wait for it so that no frame from before it leaks in.
        set_state_and_wait(&pipeline, gst::State::Paused).map_err(|e| error(&e))?;
        set_state_and_wait(&pipeline, gst::State::Playing).map_err(|e| error(&e))?;
        let size = Size::new(r.width, r.height);
        let stride = size.gst_rgb_stride();
        let mut frames = Vec::with_capacity(r.frames);
        while frames.len() < r.frames {
            let Some(sample) = sink.try_pull_sample(TIMEOUT) else {
                if let Some(reason) = bus_error(&pipeline) {
                    return Err(Decoded::Error(reason));
                }
                if sink.is_eos() {
                    return Err(Decoded::Ended(frames.len()));
                }
                return Err(error(&"timed out waiting for a frame"));
            };
            let buffer = sample.buffer().ok_or_else(|| error(&"a sample without a buffer"))?;
            let map = buffer.map_readable().map_err(|e| error(&e))?;
            if map.len() < stride * (r.height - 1) + r.width * 3 {
                return Err(error(&format!("a frame of {} bytes for {size} RGB", map.len())));
            }
            frames.push(packed_rgb(&map, stride, size));
        }
        Ok(frames)
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// The inverse of [`crate::media::copy_rgb_rows`]: a tightly packed RGB8 frame from rows of
/// `stride` bytes.
fn packed_rgb(src: &[u8], stride: usize, size: Size) -> Vec<u8> {
    let row = size.width * 3;
    if stride == row {
        return src[..size.rgb_bytes()].to_vec();
    }
    let mut out = Vec::with_capacity(size.rgb_bytes());
    for y in 0..size.height {
        out.extend_from_slice(&src[y * stride..y * stride + row]);
    }
    out
}

/// A deterministic stream of clip requests over a folder: the `i`-th request is a pure function
/// of `(seed, i)` and the folder, so a resumed run sees the same clips.
///
/// Videos are drawn in proportion to their duration (every second of footage is equally likely,
/// rather than every file), among those long enough for the clip; the start is uniform over the
/// times at which the whole clip fits.
#[derive(Debug, Clone)]
pub struct VideoSampler {
    folder: VideoFolder,
    seed: u64,
    drawn: u64,
}

/// A uniform number in [0, 1) from a hash.
fn uniform(seed: u64, i: u64, k: i64) -> f64 {
    noise_uniform(seed, i as i64, k)
}

impl VideoSampler {
    pub fn new(folder: VideoFolder, seed: u64) -> VideoSampler {
        VideoSampler { folder, seed, drawn: 0 }
    }

    pub fn folder(&self) -> &VideoFolder {
        &self.folder
    }

    /// The next request. When no video is long enough for `frames` frames at `fps`, the request
    /// is for the start of the longest one, and [`VideoFolder::clip`] refuses it with
    /// [`VideoError::TooShort`].
    pub fn next_request(&mut self, width: usize, height: usize, fps: f64, frames: usize) -> ClipRequest {
        let i = self.drawn;
        self.drawn += 1;
        // The clip spans `frames / fps` seconds; a millisecond of slack keeps the last frame
        // clear of the end whatever the rounding of the container's duration.
        let span = frames.saturating_sub(1) as f64 / fps + 1e-3;
        let room = |v: &VideoInfo| v.duration_secs - span;
        let total: f64 = self.folder.videos.iter().map(room).filter(|r| *r > 0.0).sum();
        let request = |video, start_secs| ClipRequest { video, start_secs, width, height, fps, frames };
        if total <= 0.0 {
            let longest = (0..self.folder.videos.len())
                .max_by(|&a, &b| self.folder.videos[a].duration_secs.total_cmp(&self.folder.videos[b].duration_secs))
                .unwrap_or(0);
            return request(longest, 0.0);
        }
        // One draw over all the room there is: it picks the video and, within it, the start.
        let mut at = uniform(self.seed, i, 1) * total;
        let mut last = 0;
        for (k, v) in self.folder.videos.iter().enumerate() {
            let r = room(v);
            if r <= 0.0 {
                continue;
            }
            if at < r {
                return request(k, at);
            }
            at -= r;
            last = k;
        }
        // Only rounding gets here: the end of the last video with room.
        request(last, (room(&self.folder.videos[last]) * (1.0 - 1e-9)).max(0.0))
    }
}
