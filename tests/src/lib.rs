//! Helpers for the end-to-end tests in `tests/tests/`: finding the built binaries and
//! decoding what they write with GStreamer.

use std::path::PathBuf;

/// A binary of the workspace, built by `scripts/test.sh` into the same target directory as
/// this test (the test runs from `target/<profile>/deps/`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("a running test knows its own path");
    let dir = exe.parent().and_then(|d| d.parent()).expect("tests run from target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `bash scripts/test.sh`, which builds every binary first",
        path.display()
    );
    path
}

/// One decoded video frame.
pub struct DecodedFrame {
    /// Presentation time in nanoseconds.
    pub pts: u64,
    pub width: usize,
    pub height: usize,
    /// RGB8, tightly packed.
    pub rgb: Vec<u8>,
}

/// Decodes every frame of a media file to RGB with GStreamer
/// (`filesrc ! decodebin ! videoconvert ! appsink`).
pub fn decode_file(path: &std::path::Path) -> Vec<DecodedFrame> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().expect("GStreamer initialises");
    let pipeline = gst::parse::launch(&format!(
        "filesrc location=\"{}\" ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false",
        path.display()
    ))
    .expect("the decode pipeline parses")
    .downcast::<gst::Pipeline>()
    .expect("parse::launch of several elements gives a pipeline");
    let sink = pipeline
        .by_name("sink")
        .and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok())
        .expect("the pipeline has an appsink named sink");
    pipeline.set_state(gst::State::Playing).expect("the decode pipeline starts");
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let caps = sample.caps().expect("decoded samples have caps");
        let info = gstreamer_video::VideoInfo::from_caps(caps).expect("raw video caps");
        let buffer = sample.buffer().expect("a sample has a buffer");
        let map = buffer.map_readable().expect("a decoded buffer is readable");
        let (w, h, stride) = (info.width() as usize, info.height() as usize, info.stride()[0] as usize);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            rgb.extend_from_slice(&map[y * stride..y * stride + w * 3]);
        }
        frames.push(DecodedFrame { pts: buffer.pts().map_or(u64::MAX, |t| t.nseconds()), width: w, height: h, rgb });
    }
    let _ = pipeline.set_state(gst::State::Null);
    frames
}

/// Peak signal-to-noise ratio between two RGB8 images, in dB.
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    if mse == 0.0 { f64::INFINITY } else { 10.0 * (255.0f64 * 255.0 / mse).log10() }
}

/// Mean of every channel of an RGB8 image: [r, g, b].
pub fn mean_rgb(rgb: &[u8]) -> [f64; 3] {
    let mut m = [0.0; 3];
    for px in rgb.chunks_exact(3) {
        for c in 0..3 {
            m[c] += px[c] as f64;
        }
    }
    let n = (rgb.len() / 3) as f64;
    m.map(|v| v / n)
}
