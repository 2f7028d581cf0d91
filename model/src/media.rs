//! Writing frames out: PNG images and contact sheets, and (with the `gst` feature) MP4 video
//! through GStreamer.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;
use std::str::FromStr;

/// A frame size in pixels, written `WIDTHxHEIGHT`. Both sides are even (H.264 in 4:2:0 needs
/// it) and between 16 and 4096.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Size {
    pub width: usize,
    pub height: usize,
}

impl Size {
    pub const fn new(width: usize, height: usize) -> Size {
        Size { width, height }
    }

    /// Bytes of an RGB8 frame of this size.
    pub fn rgb_bytes(&self) -> usize {
        self.width * self.height * 3
    }

    /// Bytes of a row of RGB8 as GStreamer lays it out: padded to a multiple of 4.
    pub fn gst_rgb_stride(&self) -> usize {
        (self.width * 3 + 3) & !3
    }
}

/// Copies a tightly packed RGB8 frame into a buffer with rows of `stride` bytes.
pub fn copy_rgb_rows(dst: &mut [u8], stride: usize, src: &[u8], size: Size) {
    let row = size.width * 3;
    if stride == row {
        dst[..src.len()].copy_from_slice(src);
        return;
    }
    for (d, s) in dst.chunks_mut(stride).zip(src.chunks_exact(row)) {
        d[..row].copy_from_slice(s);
    }
}

/// Why a size was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size {0:?} is not of the form WIDTHxHEIGHT, e.g. 256x256")]
    Format(String),
    #[error("size {0}x{1}: each side must be between 16 and 4096 pixels")]
    Range(usize, usize),
    #[error("size {0}x{1}: both sides must be even (H.264 needs it)")]
    Odd(usize, usize),
}

impl FromStr for Size {
    type Err = SizeError;

    fn from_str(s: &str) -> Result<Size, SizeError> {
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(|| SizeError::Format(s.to_string()))?;
        let parse = |v: &str| v.trim().parse::<usize>().map_err(|_| SizeError::Format(s.to_string()));
        let (width, height) = (parse(w)?, parse(h)?);
        if !(16..=4096).contains(&width) || !(16..=4096).contains(&height) {
            return Err(SizeError::Range(width, height));
        }
        if width % 2 == 1 || height % 2 == 1 {
            return Err(SizeError::Odd(width, height));
        }
        Ok(Size { width, height })
    }
}

impl TryFrom<String> for Size {
    type Error = SizeError;
    fn try_from(s: String) -> Result<Size, SizeError> {
        s.parse()
    }
}

impl From<Size> for String {
    fn from(s: Size) -> String {
        s.to_string()
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Errors of the media writers.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    #[error("cannot write {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot encode PNG: {0}")]
    Png(#[from] png::EncodingError),
    #[error("GStreamer: {0}")]
    Gstreamer(String),
    #[error("this build has no MP4 writer: rebuild with the `gst` feature (needs GStreamer)")]
    NoGstreamer,
}

/// Writes an RGB8 image as PNG.
pub fn write_png(path: &Path, size: Size, rgb: &[u8]) -> Result<(), MediaError> {
    assert_eq!(rgb.len(), size.rgb_bytes(), "image buffer size");
    let io = |source| MediaError::Io { path: path.display().to_string(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), size.width as u32, size.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(())
}

/// Lays frames of one size out in a grid, `columns` wide, with a `gap`-pixel dark border.
pub fn contact_sheet(frames: &[Vec<u8>], size: Size, columns: usize, gap: usize) -> (Size, Vec<u8>) {
    let columns = columns.clamp(1, frames.len().max(1));
    let rows = frames.len().div_ceil(columns);
    let sheet = Size::new(columns * (size.width + gap) + gap, rows * (size.height + gap) + gap);
    let mut out = vec![24u8; sheet.rgb_bytes()];
    for (k, frame) in frames.iter().enumerate() {
        let (ox, oy) = (gap + (k % columns) * (size.width + gap), gap + (k / columns) * (size.height + gap));
        for y in 0..size.height {
            let src = &frame[y * size.width * 3..(y + 1) * size.width * 3];
            let at = ((oy + y) * sheet.width + ox) * 3;
            out[at..at + size.width * 3].copy_from_slice(src);
        }
    }
    (sheet, out)
}

/// Writes RGB8 frames as an H.264 MP4 file at `fps`. Frames are pulled from the iterator as
/// the encoder takes them, so a long clip is never held in memory.
#[cfg(feature = "gst")]
pub fn write_mp4(
    path: &Path,
    size: Size,
    fps: f64,
    frames: impl Iterator<Item = Vec<u8>>,
) -> Result<usize, MediaError> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use gstreamer_app as gst_app;

    let err = |e: &dyn fmt::Display| MediaError::Gstreamer(e.to_string());
    gst::init().map_err(|e| err(&e))?;
    // appsrc ! videoconvert ! x264enc ! h264parse ! mp4mux ! filesink
    let pipeline = gst::parse::launch(&format!(
        "appsrc name=src format=time ! videoconvert ! video/x-raw,format=I420 \
         ! x264enc speed-preset=medium bframes=0 key-int-max={} ! h264parse ! mp4mux ! filesink location=\"{}\"",
        (fps * 2.0).round().max(1.0) as u32,
        path.display().to_string().replace('"', "\\\"")
    ))
    .map_err(|e| err(&e))?
    .downcast::<gst::Pipeline>()
    .map_err(|_| MediaError::Gstreamer("not a pipeline".into()))?;
    let result = (|| {
        let src = pipeline
            .by_name("src")
            .and_then(|e| e.downcast::<gst_app::AppSrc>().ok())
            .ok_or_else(|| MediaError::Gstreamer("appsrc missing".into()))?;
        let rate = gst::Fraction::approximate_f64(fps).ok_or_else(|| MediaError::Gstreamer(format!("fps {fps}")))?;
        let caps = gst::Caps::builder("video/x-raw")
            .field("format", "RGB")
            .field("width", size.width as i32)
            .field("height", size.height as i32)
            .field("framerate", rate)
            .build();
        src.set_caps(Some(&caps));
        src.set_max_bytes((size.rgb_bytes() * 8) as u64);
        src.set_block(true);
        pipeline.set_state(gst::State::Playing).map_err(|e| err(&e))?;
        let stride = size.gst_rgb_stride();
        let mut count = 0usize;
        for frame in frames {
            let mut buffer = gst::Buffer::with_size(stride * size.height).map_err(|e| err(&e))?;
            {
                let b = buffer.get_mut().expect("a new buffer has one owner");
                b.set_pts(gst::ClockTime::from_nseconds((count as f64 * 1e9 / fps) as u64));
                b.set_duration(gst::ClockTime::from_nseconds((1e9 / fps) as u64));
                let mut map = b.map_writable().map_err(|e| err(&e))?;
                copy_rgb_rows(&mut map, stride, &frame, size);
            }
            src.push_buffer(buffer).map_err(|e| err(&e))?;
            count += 1;
        }
        src.end_of_stream().map_err(|e| err(&e))?;
        let bus = pipeline.bus().expect("a pipeline has a bus");
        for msg in bus.iter_timed(gst::ClockTime::NONE) {
            match msg.view() {
                gst::MessageView::Eos(..) => return Ok(count),
                gst::MessageView::Error(e) => {
                    return Err(MediaError::Gstreamer(format!("{} ({:?})", e.error(), e.debug())));
                }
                _ => {}
            }
        }
        Ok(count)
    })();
    let _ = pipeline.set_state(gst::State::Null);
    result
}

/// Without the `gst` feature there is no MP4 writer.
#[cfg(not(feature = "gst"))]
pub fn write_mp4(
    _path: &Path,
    _size: Size,
    _fps: f64,
    _frames: impl Iterator<Item = Vec<u8>>,
) -> Result<usize, MediaError> {
    Err(MediaError::NoGstreamer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_refuse_clearly() {
        assert_eq!("256x144".parse::<Size>().unwrap(), Size::new(256, 144));
        assert_eq!(" 64X64 ".parse::<Size>().unwrap(), Size::new(64, 64));
        assert!(matches!("256".parse::<Size>(), Err(SizeError::Format(_))));
        assert!(matches!("8x8".parse::<Size>(), Err(SizeError::Range(8, 8))));
        assert!(matches!("255x144".parse::<Size>(), Err(SizeError::Odd(255, 144))));
    }

    #[test]
    fn rows_are_padded_for_gstreamer() {
        let size = Size::new(2, 2); // 6-byte rows, padded to 8
        assert_eq!(size.gst_rgb_stride(), 8);
        let mut dst = vec![0u8; 16];
        copy_rgb_rows(&mut dst, 8, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], size);
        assert_eq!(dst, [1, 2, 3, 4, 5, 6, 0, 0, 7, 8, 9, 10, 11, 12, 0, 0]);
    }

    #[test]
    fn contact_sheet_places_frames() {
        let size = Size::new(2, 2);
        let frames = vec![vec![100u8; 12], vec![200u8; 12], vec![50u8; 12]];
        let (sheet, rgb) = contact_sheet(&frames, size, 2, 1);
        assert_eq!(sheet, Size::new(7, 7));
        let px = |x: usize, y: usize| rgb[(y * sheet.width + x) * 3];
        assert_eq!((px(0, 0), px(1, 1), px(4, 1), px(1, 4), px(4, 4)), (24, 100, 200, 50, 24));
    }
}
