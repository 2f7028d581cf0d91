//! Faults in one session's frame source, injected: a source that returns an error and one
//! whose generator thread panics. Each failing session ends cleanly — its recording
//! finalised, its viewers told why, the session closed — while a healthy session beside them
//! goes on streaming through its real encoder without a gap.

use endless_model::media::Size;
use endless_sessions::{FrameSource, Registry, Settings, SourceError, SourceFactory, WorldSource};
use endless_streamer::config::Config;
use endless_streamer::metrics::Metrics;
use endless_streamer::protocol::{ServerMessage, Track};
use endless_streamer::stream::SessionStream;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

const FPS: f64 = 12.0;

/// After `chunks` good chunks: an error (`panic: false`) or a panic on the generator thread.
struct Faulty {
    world: WorldSource,
    chunks: u32,
    panic: bool,
}

impl FrameSource for Faulty {
    fn size(&self) -> Size {
        self.world.size()
    }
    fn fps(&self) -> f64 {
        self.world.fps()
    }
    fn next_frame(&self) -> u64 {
        self.world.next_frame()
    }
    fn next_chunk(&mut self, n: usize) -> Result<Vec<Vec<u8>>, SourceError> {
        if self.chunks == 0 {
            assert!(!self.panic, "injected panic in the frame source");
            return Err(SourceError::Failed("injected fault".into()));
        }
        self.chunks -= 1;
        self.world.next_chunk(n)
    }
    fn steer(&mut self, at: u64, prompt: &str, t: f64) -> Result<u64, SourceError> {
        self.world.steer(at, prompt, t)
    }
    fn rewind_to(&mut self, frame: u64) -> bool {
        self.world.rewind_to(frame)
    }
    fn fork_at(&self, frame: u64) -> Box<dyn FrameSource> {
        self.world.fork_at(frame)
    }
    fn describe(&self) -> serde_json::Value {
        self.world.describe()
    }
}

/// Prompts with "error" or "panic" get a faulty source.
struct Injecting;

impl SourceFactory for Injecting {
    fn create(&self, prompt: &str, seed: u64, size: Size, fps: f64) -> Result<Box<dyn FrameSource>, SourceError> {
        let world = WorldSource::new(prompt, seed, size, fps);
        Ok(match (prompt.contains("error"), prompt.contains("panic")) {
            (true, _) => Box::new(Faulty { world, chunks: 2, panic: false }),
            (_, true) => Box::new(Faulty { world, chunks: 2, panic: true }),
            _ => Box::new(world),
        })
    }
}

/// The `ended` reason of a stream's events (within 20 s), skipping other events.
async fn ended(events: &mut broadcast::Receiver<ServerMessage>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Ok(ServerMessage::Ended { reason })) => return reason,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            other => panic!("no ended event: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_source_ends_its_session_and_the_others_stream_on() {
    let recordings = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.recording.dir = recordings.path().to_path_buf();
    let settings = Settings { chunk_frames: 12, buffer_chunks: 2, ..Settings::default() };
    let registry = Registry::new(Box::new(Injecting), settings, 8, Duration::from_secs(60));
    let metrics = Arc::new(Metrics::default());
    let start = |prompt: &str| {
        let req =
            endless_sessions::CreateRequest { prompt: prompt.into(), seed: Some(3), size: Size::new(64, 64), fps: FPS };
        let (session, _) = registry.create(&req).unwrap();
        SessionStream::start(session, &config, metrics.clone()).unwrap()
    };
    let (erroring, panicking, healthy) =
        (start("hills with an error"), start("hills with a panic"), start("hills at dawn"));
    let mut media = healthy.subscribe();
    let mut events: Vec<_> = [&erroring, &panicking].iter().map(|s| s.events.subscribe()).collect();
    let _viewers: Vec<_> = [&erroring, &panicking, &healthy].iter().map(|s| s.session.watch()).collect();
    let recording = erroring.start_recording().unwrap();

    let reason = ended(&mut events[0]).await;
    assert!(reason.contains("generation failed") && reason.contains("injected fault"), "{reason}");
    let reason = ended(&mut events[1]).await;
    assert_eq!(reason, "generation stopped unexpectedly");
    assert!(erroring.session.is_closed() && panicking.session.is_closed(), "failed sessions are closed");
    assert!(!erroring.is_recording());
    let timeline: serde_json::Value =
        serde_json::from_slice(&std::fs::read(recordings.path().join(&recording).with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(timeline["finished"], true, "the failed session's recording was finalised: {timeline}");
    assert!(timeline["frames"].as_u64().unwrap() > 0);

    // The healthy session streamed all along, and goes on: 3 s of consecutive frames after
    // both others ended.
    let mut last: Option<u64> = None;
    let mut after = 0;
    while after < 3 * FPS as usize {
        match tokio::time::timeout(Duration::from_secs(5), media.recv()).await {
            Ok(Ok(m)) if m.packet.track == Track::H264 => {
                if let Some(prev) = last {
                    let step = m.packet.pts_us - prev;
                    assert!((83_000..=83_700).contains(&step), "a gap of {step} µs in the healthy stream");
                }
                last = Some(m.packet.pts_us);
                after += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                // The test fell behind the stream, not the stream behind: resynchronise.
                last = None;
                assert!(n < 64, "lagged {n} packets");
            }
            other => panic!("the healthy stream stopped: {other:?}"),
        }
    }
    assert!(!healthy.session.is_closed());
}
