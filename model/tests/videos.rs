//! The real-video data source: MP4s written by the crate's own writer from world clips are found,
//! probed, decoded at the requested size, rate and start, and sampled deterministically.
#![cfg(feature = "gst")]

use endless_model::media::{Size, write_mp4};
use endless_model::videos::{ClipRequest, VideoError, VideoFolder, VideoSampler};
use endless_model::world::{ClipOptions, ClipSampler, Split};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const W: usize = 96;
const H: usize = 64;
const FPS: f64 = 8.0;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("endless-videos-{}-{name}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn world_frames(seed: u64, frames: usize) -> Vec<Vec<u8>> {
    let o = ClipOptions { width: W, height: H, fps: FPS, frames, transition_probability: 0.0 };
    ClipSampler::new(Split::Train, seed).next_clip(&o).render(true)
}

/// A folder with `a.mp4` (40 frames, captioned), `sub/b.MP4` (30 frames, no caption) and a text
/// file that is not a video; and the frames `a.mp4` was written from. Built once for all tests.
fn folder() -> &'static (PathBuf, Vec<Vec<u8>>) {
    static FOLDER: OnceLock<(PathBuf, Vec<Vec<u8>>)> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let d = dir("folder");
        let a = world_frames(1, 40);
        assert_eq!(write_mp4(&d.join("a.mp4"), Size::new(W, H), FPS, a.clone().into_iter()).unwrap(), 40);
        std::fs::write(d.join("a.txt"), "  a sunny meadow, camera panning left \n").unwrap();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        let b = world_frames(2, 30);
        assert_eq!(write_mp4(&d.join("sub/b.MP4"), Size::new(W, H), FPS, b.into_iter()).unwrap(), 30);
        std::fs::write(d.join("notes.txt"), "not a video").unwrap();
        (d, a)
    })
}

fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len());
    let mse = a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum::<f64>() / a.len() as f64;
    10.0 * (255.0 * 255.0 / mse.max(1e-10)).log10()
}

/// The centre `w × h` window of a `W × H` frame.
fn centre_crop(frame: &[u8], w: usize, h: usize) -> Vec<u8> {
    let (x0, y0) = ((W - w) / 2, (H - h) / 2);
    (y0..y0 + h).flat_map(|y| frame[(y * W + x0) * 3..(y * W + x0 + w) * 3].iter().copied()).collect()
}

fn request(video: usize, start_secs: f64, width: usize, height: usize, fps: f64, frames: usize) -> ClipRequest {
    ClipRequest { video, start_secs, width, height, fps, frames }
}

#[test]
fn the_folder_is_found_and_probed() {
    let (d, _) = folder();
    let f = VideoFolder::open(d).unwrap();
    assert_eq!(f.len(), 2, "{:?}", f.videos());
    let (a, b) = (&f.videos()[0], &f.videos()[1]);
    assert_eq!((a.path.clone(), b.path.clone()), (d.join("a.mp4"), d.join("sub/b.MP4")));
    assert_eq!((a.width, a.height, b.width, b.height), (W, H, W, H));
    assert!((a.duration_secs - 5.0).abs() < 0.05, "{}", a.duration_secs);
    assert!((b.duration_secs - 3.75).abs() < 0.05, "{}", b.duration_secs);
    assert_eq!(a.fps, Some(FPS));
    assert_eq!(a.caption.as_deref(), Some("a sunny meadow, camera panning left"));
    assert_eq!(b.caption, None);
}

#[test]
fn a_clip_at_native_size_matches_the_source_frames() {
    let (d, original) = folder();
    let f = VideoFolder::open(d).unwrap();
    for start in [0.0, 1.25, 2.0] {
        let clip = f.clip(&request(0, start, W, H, FPS, 24)).unwrap();
        assert_eq!(clip.frames.len(), 24);
        assert_eq!(clip.caption.as_deref(), Some("a sunny meadow, camera panning left"));
        assert_eq!((clip.source.clone(), clip.start_secs), (d.join("a.mp4"), start));
        // Keyframes are 2 s apart: 1.25 s needs an accurate seek, not a keyframe seek.
        let first = (start * FPS) as usize;
        for (k, frame) in clip.frames.iter().enumerate() {
            assert_eq!(frame.len(), W * H * 3);
            let p = psnr(frame, &original[first + k]);
            assert!(p > 28.0, "start {start}, frame {k}: PSNR {p:.1} dB");
            // And it is that frame, not a neighbour (where neighbours differ at all).
            let next = original.get(first + k + 1);
            if next.is_some_and(|n| psnr(n, &original[first + k]) < 40.0) {
                assert!(p > psnr(frame, next.unwrap()), "start {start}, frame {k} is off by one");
            }
        }
    }
}

#[test]
fn a_square_clip_is_the_centre_crop_and_decoding_is_deterministic() {
    let (d, original) = folder();
    let f = VideoFolder::open(d).unwrap();
    // 96×64 covering 64×64 needs no scaling: the clip is the centre 64×64 window.
    let r = request(0, 2.0, 64, 64, FPS, 17);
    let started = std::time::Instant::now();
    let clip = f.clip(&r).unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("decoded {} frames of 64x64 in {:.1} ms: {:.0} frames/s", clip.frames.len(), secs * 1e3, 17.0 / secs);
    assert_eq!(clip.frames.len(), 17);
    for (k, frame) in clip.frames.iter().enumerate() {
        assert_eq!(frame.len(), 64 * 64 * 3);
        let p = psnr(frame, &centre_crop(&original[16 + k], 64, 64));
        assert!(p > 28.0, "frame {k}: PSNR {p:.1} dB against the centre crop");
    }
    assert_eq!(f.clip(&r).unwrap(), clip, "the same request gives the same bytes");

    // Another size, aspect and rate from the other video, also deterministic.
    let r = request(1, 0.4, 48, 80, 12.0, 20);
    let clip = f.clip(&r).unwrap();
    assert_eq!(clip.frames.len(), 20);
    assert!(clip.frames.iter().all(|frame| frame.len() == 48 * 80 * 3));
    assert_eq!(clip.caption, None);
    assert_eq!(f.clip(&r).unwrap(), clip);
}

#[test]
fn a_clip_past_the_end_is_refused() {
    let (d, _) = folder();
    let f = VideoFolder::open(d).unwrap();
    let e = f.clip(&request(1, 2.0, 64, 64, FPS, 24)).unwrap_err();
    assert!(matches!(e, VideoError::TooShort { .. }), "{e}");
    assert!(e.to_string().contains("runs past its end"), "{e}");
    assert!(matches!(f.clip(&request(2, 0.0, 64, 64, FPS, 4)), Err(VideoError::Request(_))));
    assert!(matches!(f.clip(&request(0, 0.0, 64, 64, 0.0, 4)), Err(VideoError::Request(_))));
}

#[test]
fn the_sampler_is_deterministic_and_its_clips_fit() {
    let (d, _) = folder();
    let f = VideoFolder::open(d).unwrap();
    let durations: Vec<f64> = f.videos().iter().map(|v| v.duration_secs).collect();
    let draw = |seed| {
        let mut s = VideoSampler::new(f.clone(), seed);
        (0..200).map(|_| s.next_request(64, 64, FPS, 24)).collect::<Vec<_>>()
    };
    let requests = draw(7);
    assert_eq!(requests, draw(7));
    assert_ne!(requests, draw(8));
    for r in &requests {
        assert_eq!((r.width, r.height, r.fps, r.frames), (64, 64, FPS, 24));
        assert!(r.start_secs >= 0.0 && r.start_secs + 23.0 / FPS < durations[r.video], "{r:?}");
    }
    // Both videos are drawn; `b` has little room for 3 s clips, so it is drawn less often.
    let b = requests.iter().filter(|r| r.video == 1).count();
    assert!(b > 0 && b < 100, "{b} of 200 requests from b");
    // The last clip that fits decodes.
    let last = request(1, durations[1] - 23.0 / FPS - 0.002, 64, 64, FPS, 24);
    assert_eq!(f.clip(&last).unwrap().frames.len(), 24);
    // The requests decode, on several threads as on one.
    use rayon::prelude::*;
    let parallel: Vec<_> = requests[..4].par_iter().map(|r| f.clip(r).unwrap()).collect();
    for (r, clip) in requests[..4].iter().zip(&parallel) {
        assert_eq!(clip.frames.len(), 24);
        assert_eq!(&f.clip(r).unwrap(), clip);
    }
    // Clips longer than any video: the request is refused when decoded, clearly.
    let r = VideoSampler::new(f.clone(), 7).next_request(64, 64, FPS, 100);
    assert!(matches!(f.clip(&r), Err(VideoError::TooShort { .. })), "{r:?}");
}

#[test]
fn a_folder_without_usable_videos_is_refused() {
    let empty = dir("empty");
    std::fs::write(empty.join("readme.txt"), "no videos here").unwrap();
    let e = VideoFolder::open(&empty).unwrap_err();
    assert!(matches!(e, VideoError::NoVideos { found: 0, .. }), "{e}");
    assert!(e.to_string().contains("no usable video"), "{e}");

    let broken = dir("broken");
    std::fs::write(broken.join("clip.mp4"), vec![7u8; 4096]).unwrap();
    let e = VideoFolder::open(&broken).unwrap_err();
    assert!(matches!(e, VideoError::NoVideos { found: 1, skipped: 1, .. }), "{e}");

    let e = VideoFolder::open(Path::new("/nonexistent/endless-videos")).unwrap_err();
    assert!(matches!(e, VideoError::Io { .. }), "{e}");
}

/// A WebM with VP8 video at 25 fps, 320×180, and an Opus audio track that must be left alone.
#[test]
fn a_webm_with_audio_is_decoded_resampled_and_cropped() {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    let d = dir("webm");
    let path = d.join("ball.WebM");
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "webmmux name=m ! filesink location=\"{}\" \
         audiotestsrc num-buffers=100 ! audioconvert ! audioresample ! opusenc ! m. \
         videotestsrc num-buffers=50 pattern=ball ! video/x-raw,width=320,height=180,framerate=25/1 \
         ! vp8enc deadline=1 ! m.",
        path.display()
    ))
    .unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let bus = pipeline.bus().unwrap();
    let msg =
        bus.timed_pop_filtered(gst::ClockTime::from_seconds(30), &[gst::MessageType::Eos, gst::MessageType::Error]);
    pipeline.set_state(gst::State::Null).unwrap();
    assert!(matches!(msg.as_ref().map(|m| m.view()), Some(gst::MessageView::Eos(..))), "{msg:?}");

    let f = VideoFolder::open(&d).unwrap();
    let v = &f.videos()[0];
    assert_eq!((v.width, v.height), (320, 180));
    assert!((v.duration_secs - 2.0).abs() < 0.1, "{}", v.duration_secs);
    let r = request(0, 0.3, 64, 64, FPS, 12);
    let started = std::time::Instant::now();
    let clip = f.clip(&r).unwrap();
    let secs = started.elapsed().as_secs_f64();
    eprintln!("decoded 12 frames of 64x64 from 320x180 VP8 in {:.1} ms: {:.0} frames/s", secs * 1e3, 12.0 / secs);
    assert_eq!(clip.frames.len(), 12);
    assert!(clip.frames.iter().all(|frame| frame.len() == 64 * 64 * 3));
    assert_eq!(f.clip(&r).unwrap(), clip);
    // The audio outlasts the picture: the duration is the video's, and the last clip that fits decodes.
    let last = request(0, v.duration_secs - 11.0 / FPS - 0.002, 64, 64, FPS, 12);
    assert_eq!(f.clip(&last).unwrap().frames.len(), 12);
    // The ball moves: the frames are not all the same.
    assert!(clip.frames.windows(2).any(|w| w[0] != w[1]));
}

/// Decoding speed on a folder of real videos: `ENDLESS_VIDEOS_DIR=... cargo test --release
/// -p endless-model --features gst --test videos -- --ignored --nocapture`.
#[test]
#[ignore = "needs ENDLESS_VIDEOS_DIR"]
fn decoding_speed() {
    let dir = PathBuf::from(std::env::var("ENDLESS_VIDEOS_DIR").expect("ENDLESS_VIDEOS_DIR"));
    let started = std::time::Instant::now();
    let f = VideoFolder::open(&dir).unwrap();
    eprintln!("opened {} videos ({:.0} s) in {:.2} s", f.len(), f.total_secs(), started.elapsed().as_secs_f64());
    let mut sampler = VideoSampler::new(f.clone(), 1);
    let (clips, frames) = (20, 17);
    let started = std::time::Instant::now();
    for _ in 0..clips {
        let r = sampler.next_request(64, 64, FPS, frames);
        assert_eq!(f.clip(&r).unwrap().frames.len(), frames);
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{clips} clips of {frames} frames, 64x64 at 8 fps: {:.0} ms a clip, {:.0} frames/s",
        secs * 1e3 / clips as f64,
        (clips * frames) as f64 / secs
    );
}
