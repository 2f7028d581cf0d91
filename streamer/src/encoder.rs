//! Per-session H.264 encoding in GStreamer, and the fragmented-MP4 branch for MSE viewers.
//!
//! ```text
//! appsrc (RGB, explicit PTS) ! videoconvert ! x264enc (zerolatency, constrained-baseline)
//!   ! h264parse config-interval=-1 ! byte-stream/au ! tee
//!       tee. ! queue ! appsink h264      → WebCodecs viewers and recordings
//!       tee. ! queue ! h264parse ! mp4mux (fragmented) ! appsink fmp4 → MSE viewers
//! ```

use crate::config::{Encoder as EncoderSettings, SpeedPreset};
use crate::protocol::{Track, now_us};
use bytes::{Bytes, BytesMut};
use endless_model::media::{Size, copy_rgb_rows};
use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use std::sync::{Arc, Mutex};

/// One encoded unit on its way to viewers and recordings.
#[derive(Debug, Clone)]
pub struct Packet {
    pub track: Track,
    pub keyframe: bool,
    /// Presentation time in microseconds since the session's first frame.
    pub pts_us: u64,
    /// Wall clock when it left the encoder, microseconds since the Unix epoch.
    pub push_us: u64,
    pub data: Bytes,
}

/// Why encoding failed.
#[derive(Debug, thiserror::Error)]
pub enum EncoderError {
    #[error("GStreamer: {0}")]
    Gstreamer(String),
}

fn gst_err(e: impl std::fmt::Display) -> EncoderError {
    EncoderError::Gstreamer(e.to_string())
}

impl SpeedPreset {
    fn x264_name(self) -> &'static str {
        match self {
            SpeedPreset::Ultrafast => "ultrafast",
            SpeedPreset::Superfast => "superfast",
            SpeedPreset::Veryfast => "veryfast",
            SpeedPreset::Faster => "faster",
            SpeedPreset::Fast => "fast",
            SpeedPreset::Medium => "medium",
        }
    }
}

/// The WebCodecs codec string of an H.264 stream, from its SPS: `avc1.PPCCLL`.
pub fn codec_string(access_unit: &[u8]) -> Option<String> {
    nal_units(access_unit)
        .find(|n| !n.is_empty() && n[0] & 0x1f == 7 && n.len() >= 4)
        .map(|sps| format!("avc1.{:02X}{:02X}{:02X}", sps[1], sps[2], sps[3]))
}

/// The NAL units of an Annex B byte stream, without start codes.
fn nal_units(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let ends: Vec<usize> = starts
        .iter()
        .skip(1)
        .map(|&s| {
            let mut e = s - 3;
            while e > 0 && data[e - 1] == 0 {
                e -= 1; // a 4-byte start code's leading zero
            }
            e
        })
        .chain(std::iter::once(data.len()))
        .collect();
    starts.into_iter().zip(ends).map(move |(s, e)| &data[s..e.max(s)])
}

/// Regroups mp4mux's output (boxes split over buffers) into whole segments: `ftyp`+`moov`
/// (init) and `moof`+`mdat` (media).
#[derive(Default)]
struct Fmp4Splitter {
    pending: BytesMut,
    segment: BytesMut,
}

impl Fmp4Splitter {
    fn push(&mut self, data: &[u8]) -> Vec<(Track, bool, Bytes)> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            if self.pending.len() < 8 {
                break;
            }
            let size = u32::from_be_bytes(self.pending[0..4].try_into().expect("4 bytes")) as usize;
            if size < 8 || self.pending.len() < size {
                break;
            }
            let kind: [u8; 4] = self.pending[4..8].try_into().expect("4 bytes");
            let b = self.pending.split_to(size);
            self.segment.extend_from_slice(&b);
            match &kind {
                b"moov" => out.push((Track::Fmp4Init, true, self.segment.split().freeze())),
                b"mdat" => {
                    let seg = self.segment.split().freeze();
                    out.push((Track::Fmp4Media, fragment_starts_with_sync_sample(&seg), seg));
                }
                _ => {}
            }
        }
        out
    }
}

/// Children boxes of a box body: (type, body).
fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let size = u32::from_be_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        if size < 8 || size > data.len() {
            break;
        }
        out.push((data[4..8].try_into().expect("4 bytes"), &data[8..size]));
        data = &data[size..];
    }
    out
}

/// Whether a `moof`+`mdat` segment's first sample is a sync sample (a keyframe), from the
/// sample flags of `trun` (or `tfhd`'s defaults).
fn fragment_starts_with_sync_sample(segment: &[u8]) -> bool {
    let u32_at = |d: &[u8], i: usize| d.get(i..i + 4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
    for (kind, moof) in boxes(segment) {
        if &kind != b"moof" {
            continue;
        }
        for (kind, traf) in boxes(moof) {
            if &kind != b"traf" {
                continue;
            }
            let mut default_flags = None;
            for (kind, body) in boxes(traf) {
                let Some(vf) = u32_at(body, 0) else { continue };
                let flags = vf & 0x00ff_ffff;
                if &kind == b"tfhd" {
                    // track_ID, then optional fields in order.
                    let mut at = 8;
                    for (bit, len) in [(0x01, 8), (0x02, 4), (0x08, 4), (0x10, 4)] {
                        if flags & bit != 0 {
                            at += len;
                        }
                    }
                    if flags & 0x20 != 0 {
                        default_flags = u32_at(body, at);
                    }
                } else if &kind == b"trun" {
                    let mut at = 8; // version/flags, sample_count
                    if flags & 0x01 != 0 {
                        at += 4; // data_offset
                    }
                    let sample_flags = if flags & 0x04 != 0 {
                        u32_at(body, at)
                    } else if flags & 0x400 != 0 {
                        let skip = [0x100, 0x200].iter().filter(|b| flags & **b != 0).count() * 4;
                        u32_at(body, at + skip)
                    } else {
                        default_flags
                    };
                    return sample_flags.is_some_and(|f| f & 0x0001_0000 == 0);
                }
            }
        }
    }
    false
}

/// A running encoder. Frames go in with [`Encoder::push`]; packets come out through the
/// callback given to [`Encoder::start`], on GStreamer's streaming threads.
pub struct Encoder {
    pipeline: gst::Pipeline,
    src: gst_app::AppSrc,
    size: Size,
}

impl Encoder {
    /// Builds and starts the pipeline for frames of `size` at `fps`.
    pub fn start(
        size: Size,
        fps: f64,
        settings: &EncoderSettings,
        on_packet: impl Fn(Packet) + Send + Sync + 'static,
    ) -> Result<Encoder, EncoderError> {
        gst::init().map_err(gst_err)?;
        let key_int = ((settings.keyframe_interval_secs.get() as f64) * fps).round().max(1.0) as u32;
        let description = format!(
            "appsrc name=src format=time is-live=true do-timestamp=false \
             ! videoconvert ! video/x-raw,format=I420 \
             ! x264enc tune=zerolatency speed-preset={preset} key-int-max={key_int} bitrate={bitrate} \
             ! video/x-h264,profile=constrained-baseline \
             ! h264parse config-interval=-1 ! video/x-h264,stream-format=byte-stream,alignment=au \
             ! tee name=t \
             t. ! queue max-size-buffers=64 ! appsink name=h264 sync=false emit-signals=false \
             t. ! queue max-size-buffers=64 ! h264parse ! mp4mux fragment-duration=1 streamable=true \
                ! appsink name=fmp4 sync=false emit-signals=false",
            preset = settings.speed_preset.x264_name(),
            bitrate = settings.bitrate_kbps.get(),
        );
        let pipeline = gst::parse::launch(&description)
            .map_err(gst_err)?
            .downcast::<gst::Pipeline>()
            .map_err(|_| EncoderError::Gstreamer("not a pipeline".into()))?;
        let by_name = |name: &str| pipeline.by_name(name).ok_or_else(|| EncoderError::Gstreamer(format!("no {name}")));
        let src = by_name("src")?.downcast::<gst_app::AppSrc>().map_err(|_| gst_err("src is not an appsrc"))?;
        let rate = gst::Fraction::approximate_f64(fps).ok_or_else(|| gst_err(format!("fps {fps}")))?;
        src.set_caps(Some(
            &gst::Caps::builder("video/x-raw")
                .field("format", "RGB")
                .field("width", size.width as i32)
                .field("height", size.height as i32)
                .field("framerate", rate)
                .build(),
        ));
        // Frames come in real time from the session's clock; a few frames of slack.
        src.set_max_bytes((size.rgb_bytes() * 8) as u64);
        src.set_block(false);

        let on_packet = Arc::new(on_packet);
        let h264 = by_name("h264")?.downcast::<gst_app::AppSink>().map_err(|_| gst_err("h264 is not an appsink"))?;
        let sink_cb = on_packet.clone();
        h264.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    if let Some((pts_us, keyframe, data)) = read_sample(&sample) {
                        sink_cb(Packet { track: Track::H264, keyframe, pts_us, push_us: now_us(), data });
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        let fmp4 = by_name("fmp4")?.downcast::<gst_app::AppSink>().map_err(|_| gst_err("fmp4 is not an appsink"))?;
        let splitter = Mutex::new(Fmp4Splitter::default());
        let last_pts = Mutex::new(0u64);
        fmp4.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                    let Some(buffer) = sample.buffer() else { return Ok(gst::FlowSuccess::Ok) };
                    let Ok(map) = buffer.map_readable() else { return Ok(gst::FlowSuccess::Ok) };
                    let pts = running_time_us(&sample).unwrap_or(0);
                    let mut last = last_pts.lock().unwrap_or_else(|p| p.into_inner());
                    if pts > 0 {
                        *last = pts;
                    }
                    let segments = splitter.lock().unwrap_or_else(|p| p.into_inner()).push(&map);
                    for (track, keyframe, data) in segments {
                        on_packet(Packet { track, keyframe, pts_us: *last, push_us: now_us(), data });
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        pipeline.set_state(gst::State::Playing).map_err(gst_err)?;
        Ok(Encoder { pipeline, src, size })
    }

    /// Encodes one RGB8 frame at `pts_ns` lasting `duration_ns`.
    pub fn push(&self, rgb: &[u8], pts_ns: u64, duration_ns: u64) -> Result<(), EncoderError> {
        let size = self.size;
        let stride = size.gst_rgb_stride();
        let mut buffer = gst::Buffer::with_size(stride * size.height).map_err(gst_err)?;
        {
            let b = buffer.get_mut().expect("a new buffer has one owner");
            b.set_pts(gst::ClockTime::from_nseconds(pts_ns));
            b.set_duration(gst::ClockTime::from_nseconds(duration_ns));
            let mut map = b.map_writable().map_err(gst_err)?;
            copy_rgb_rows(&mut map, stride, rgb, size);
        }
        self.src.push_buffer(buffer).map_err(gst_err)?;
        Ok(())
    }

    /// Asks the encoder for a keyframe (with SPS/PPS) as soon as possible: a viewer joined or
    /// a recording started.
    pub fn force_keyframe(&self) {
        let event = gstreamer_video::DownstreamForceKeyUnitEvent::builder().all_headers(true).build();
        self.src.send_event(event);
    }

    /// Stops the pipeline.
    pub fn stop(&self) {
        let _ = self.pipeline.set_state(gst::State::Null);
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Running time of a sample's buffer in µs (x264enc shifts PTS by 1000 h; running time
/// undoes that).
fn running_time_us(sample: &gst::Sample) -> Option<u64> {
    let pts = sample.buffer()?.pts()?;
    let segment = sample.segment()?.downcast_ref::<gst::ClockTime>()?;
    segment.to_running_time(pts).map(|t| t.useconds())
}

fn read_sample(sample: &gst::Sample) -> Option<(u64, bool, Bytes)> {
    let buffer = sample.buffer()?;
    let keyframe = !buffer.flags().contains(gst::BufferFlags::DELTA_UNIT);
    let map = buffer.map_readable().ok()?;
    Some((running_time_us(sample)?, keyframe, Bytes::copy_from_slice(&map)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_string_comes_from_the_sps() {
        // 4-byte start code, SPS (profile 0x42, constraints 0xC0, level 0x1F), then a PPS.
        let au = [0, 0, 0, 1, 0x67, 0x42, 0xC0, 0x1F, 0xAA, 0, 0, 1, 0x68, 0xCE];
        assert_eq!(codec_string(&au).as_deref(), Some("avc1.42C01F"));
        assert_eq!(nal_units(&au).count(), 2);
        assert_eq!(codec_string(&[0, 0, 1, 0x65, 1, 2]), None);
    }

    #[test]
    fn fmp4_splitter_regroups_boxes_across_buffers() {
        let bx = |kind: &[u8; 4], body: &[u8]| {
            let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
            v.extend_from_slice(kind);
            v.extend_from_slice(body);
            v
        };
        // trun with first-sample-flags: sync sample (0) and non-sync (0x00010000).
        let trun = |flags: u32| {
            let mut b = vec![0, 0, 0, 0x05]; // version 0, flags data-offset | first-sample-flags
            b.extend_from_slice(&1u32.to_be_bytes());
            b.extend_from_slice(&0u32.to_be_bytes());
            b.extend_from_slice(&flags.to_be_bytes());
            bx(b"trun", &b)
        };
        let moof = |flags| bx(b"moof", &bx(b"traf", &[bx(b"tfhd", &[0, 0, 0, 0, 0, 0, 0, 1]), trun(flags)].concat()));
        let stream = [
            bx(b"ftyp", b"isom"),
            bx(b"moov", b"x"),
            moof(0),
            bx(b"mdat", b"key"),
            moof(0x0001_0000),
            bx(b"mdat", b"d"),
        ]
        .concat();
        let mut s = Fmp4Splitter::default();
        let mut out = Vec::new();
        for piece in stream.chunks(5) {
            out.extend(s.push(piece));
        }
        assert_eq!(out.len(), 3);
        assert_eq!((out[0].0, out[1].0, out[2].0), (Track::Fmp4Init, Track::Fmp4Media, Track::Fmp4Media));
        assert!(out[1].1, "first fragment starts with a sync sample");
        assert!(!out[2].1);
        assert_eq!(out.iter().map(|o| o.2.len()).sum::<usize>(), stream.len());
    }
}
