//! Sessions end to end (without sockets or codecs): pacing, bounded buffering, steering,
//! forks, access, eviction and faults.

use endless_model::media::Size;
use endless_sessions::*;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const FPS: f64 = 50.0;
const SIZE: Size = Size::new(48, 32);

fn registry(max_sessions: usize, idle_timeout: Duration) -> Registry {
    let settings = Settings { chunk_frames: 5, buffer_chunks: 2, ..Settings::default() };
    Registry::new(Box::new(WorldFactory), settings, max_sessions, idle_timeout)
}

fn request(prompt: &str) -> CreateRequest {
    CreateRequest { prompt: prompt.into(), seed: Some(17), size: SIZE, fps: FPS }
}

async fn next_frame(out: &mut mpsc::Receiver<Output>) -> Frame {
    match tokio::time::timeout(Duration::from_secs(10), out.recv()).await {
        Ok(Some(Output::Frame(f))) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// The frames a world source renders for the same seed and prompt timeline.
fn reference(prompt: &str, steers: &[(u64, &str, f64)], from: u64, n: usize) -> Vec<Vec<u8>> {
    let mut s = WorldSource::new(prompt, 17, SIZE, FPS);
    for (at, p, t) in steers {
        s.steer(*at, p, *t).unwrap();
    }
    s.rewind_to(0);
    let all = s.next_chunk(from as usize + n).unwrap();
    all[from as usize..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_come_in_real_time_in_order_only_while_watched() {
    let reg = registry(4, Duration::from_secs(60));
    let (session, _token) = reg.create(&request("hills at dawn, panning left")).unwrap();
    let mut out = session.take_output().unwrap();
    assert!(session.take_output().is_none());

    // Nobody watches: nothing plays, and generation stops at the bounded buffer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(out.try_recv().is_err());
    let info = session.info();
    assert_eq!(info.shown_frames, 0);
    // It waits once two chunks' worth are ahead: at most one more chunk is made past that.
    assert!(info.buffered_frames < 5 * 3, "generation ran {} frames ahead", info.buffered_frames);

    let guard = session.watch();
    let started = Instant::now();
    let expected = reference("hills at dawn, panning left", &[], 0, 25);
    for (i, want) in expected.iter().enumerate() {
        let f = next_frame(&mut out).await;
        assert_eq!(f.index, i as u64);
        assert_eq!(f.pts_ns, (i as f64 * 1e9 / FPS).round() as u64);
        assert_eq!(&f.rgb[..], &want[..], "frame {i} is the world's frame");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "25 frames at 50 fps arrived in {took:?}: not paced");

    // The last viewer leaves: playback stops.
    drop(guard);
    tokio::time::sleep(Duration::from_millis(100)).await;
    while out.try_recv().is_ok() {}
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(out.try_recv().is_err(), "frames kept coming with no viewer");
    assert!(session.idle_for().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steer_shows_within_the_lead_not_after_the_buffer() {
    let reg = registry(4, Duration::from_secs(60));
    let (session, token) = reg.create(&request("mountains during the day")).unwrap();
    let mut out = session.take_output().unwrap();
    let _guard = session.watch();
    for _ in 0..10 {
        next_frame(&mut out).await;
    }
    // Let the buffer fill, then steer.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(session.steer("not-the-token", "night", None).is_err());
    let at = session.steer(token.as_str(), "snowy night", Some(0.5)).unwrap();
    assert!(at <= session.played() + 10 + 1, "steer at {at}, played {}", session.played());
    assert_eq!(
        session.steer(token.as_str(), "rain", None).unwrap_err().to_string().split(':').next().unwrap(),
        "steering too fast"
    );
    let want = reference("mountains during the day", &[(at, "snowy night", 0.5)], at, 40);
    let mut f = next_frame(&mut out).await;
    while f.index < at {
        f = next_frame(&mut out).await;
    }
    for (k, w) in want.iter().enumerate() {
        assert_eq!(f.index, at + k as u64);
        assert_eq!(&f.rgb[..], &w[..], "frame {} after the steer", f.index);
        f = next_frame(&mut out).await;
    }
    let history = session.history();
    assert_eq!(history.len(), 2);
    assert_eq!(history[1].frame, at);
    assert_eq!(session.prompt(), "snowy night");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_continue_from_the_frame_showing_and_then_diverge() {
    let reg = registry(4, Duration::from_secs(60));
    let (parent, token) = reg.create(&request("the ocean at sunset, static camera")).unwrap();
    let mut out = parent.take_output().unwrap();
    let _g = parent.watch();
    for _ in 0..12 {
        next_frame(&mut out).await;
    }
    assert!(matches!(reg.fork(&parent.id, "nope"), Err(RegistryError::Session(SessionError::NotOwner))));
    let (child, child_token) = reg.fork(&parent.id, token.as_str()).unwrap();
    assert_ne!(child.id, parent.id);
    let mut child_out = child.take_output().unwrap();
    let _cg = child.watch();
    let first = next_frame(&mut child_out).await;
    let want = reference("the ocean at sunset, static camera", &[], first.index, 1);
    assert!(first.index >= 12, "fork starts at frame {}", first.index);
    assert_eq!(&first.rgb[..], &want[0][..]);
    child.steer(child_token.as_str(), "rain", Some(0.0)).unwrap();
    assert!(parent.steer(child_token.as_str(), "snow", None).is_err(), "a fork's token does not control the parent");
    assert_eq!(reg.list().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_access_and_eviction() {
    let reg = registry(2, Duration::from_millis(150));
    assert!(reg.create(&request("  ")).is_err());
    assert!(matches!(
        reg.create(&request("blah blah")),
        Err(RegistryError::Session(SessionError::Source(SourceError::EmptyPrompt)))
    ));
    assert_eq!(reg.create(&CreateRequest { fps: 0.0, ..request("hills") }).unwrap_err(), RegistryError::BadFps);
    let (a, ta) = reg.create(&request("city at night")).unwrap();
    let (b, _tb) = reg.create(&request("desert")).unwrap();
    assert_eq!(reg.create(&request("forest")).unwrap_err(), RegistryError::Full(2));
    assert!(reg.close(&a.id, "wrong").is_err());
    let _watching = b.watch();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // a has no viewer and is evicted; b is watched and stays.
    assert_eq!(reg.evict_idle(), vec![a.id.clone()]);
    assert!(a.is_closed());
    assert!(reg.get(&b.id).is_ok());
    assert_eq!(reg.close(&a.id, ta.as_str()).unwrap_err(), RegistryError::NotFound);
}

/// A world source that behaves like others: it fails after `chunks_left` chunks, takes
/// `delay` per chunk (waiting, as a model source waits for its device, with the session's
/// source lock held), and has its own chunk size.
struct Like {
    world: WorldSource,
    chunks_left: Option<u32>,
    delay: Duration,
    chunk: Option<usize>,
}

impl Like {
    fn world(world: WorldSource) -> Like {
        Like { world, chunks_left: None, delay: Duration::ZERO, chunk: None }
    }
}

impl FrameSource for Like {
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
        if let Some(left) = &mut self.chunks_left {
            if *left == 0 {
                return Err(SourceError::Failed("injected fault".into()));
            }
            *left -= 1;
        }
        std::thread::sleep(self.delay);
        self.world.next_chunk(n)
    }
    fn chunk_hint(&self) -> Option<usize> {
        self.chunk
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

struct SometimesFailing;

impl SourceFactory for SometimesFailing {
    fn create(&self, prompt: &str, seed: u64, size: Size, fps: f64) -> Result<Box<dyn FrameSource>, SourceError> {
        let world = WorldSource::new(prompt, seed, size, fps);
        Ok(if prompt.contains("fail") {
            Box::new(Like { chunks_left: Some(2), ..Like::world(world) })
        } else {
            Box::new(world)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_reports_its_error_and_the_others_go_on() {
    let settings = Settings { chunk_frames: 5, buffer_chunks: 2, ..Settings::default() };
    let reg = Registry::new(Box::new(SometimesFailing), settings, 4, Duration::from_secs(60));
    let (bad, _) = reg.create(&request("hills that fail")).unwrap();
    let (good, _) = reg.create(&request("hills")).unwrap();
    let (mut bad_out, mut good_out) = (bad.take_output().unwrap(), good.take_output().unwrap());
    let (_g1, _g2) = (bad.watch(), good.watch());
    let mut frames = 0;
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(10), bad_out.recv()).await.unwrap() {
            Some(Output::Frame(_)) => frames += 1,
            Some(Output::Failed(e)) => break e,
            None => panic!("closed without an error"),
        }
    };
    assert!(error.contains("injected fault"), "{error}");
    assert!(frames <= 10);
    for _ in 0..30 {
        next_frame(&mut good_out).await;
    }
}

/// Chunks of 25 frames (1 s at 25 fps) made in 0.4 s each, with the source's lock held:
/// playback does not wait for the lock (no stall once playing), the session asks for the
/// source's chunk size (asking for the session's 5 frames at a time, 0.4 s each, could not
/// keep up), and a steer lands far enough ahead for its chunk to be made in time (1.5 chunk
/// times: 15 frames), frees the buffer it rolls back at once, and shows within a few seconds
/// without a stall. (With backpressure counted in chunk slots the generator could sit on a
/// chunk the rewind had made useless until playback freed a slot, and start the steer's chunk
/// too late.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_source_plays_without_stalls_and_steers_in_time() {
    let settings = Settings { chunk_frames: 5, buffer_chunks: 2, ..Settings::default() };
    let world = WorldSource::new("green hills", 17, SIZE, 25.0);
    let source = Like { delay: Duration::from_millis(400), chunk: Some(25), ..Like::world(world) };
    let (session, owner) = Session::start(Box::new(source), "green hills", 17, settings, Vec::new());
    let mut out = session.take_output().unwrap();
    let _viewer = session.watch();
    for i in 0..50 {
        let frame = next_frame(&mut out).await;
        assert_eq!(frame.index, i);
    }
    assert_eq!(session.info().stalls, 0, "playback waited for the source");
    let showing = session.played();
    let steered = Instant::now();
    let at = session.steer(owner.as_str(), "snowy hills at night", Some(0.0)).unwrap();
    // 1.5 × 0.4 s at 25 fps is 15 frames (the world source changes at any frame).
    assert!((showing + 15..showing + 15 + 25).contains(&at), "steer at {at}, showing {showing}");
    loop {
        if next_frame(&mut out).await.index >= at {
            break;
        }
    }
    let waited = steered.elapsed().as_secs_f64();
    assert!(waited < 3.0, "the steer showed after {waited:.2} s");
    let info = session.info();
    assert_eq!(info.stalls, 0, "the steer's chunk was late");
    assert!(info.generated_fps > 40.0, "chunks of 25 frames in 0.4 s");
    // Steered again and again while a viewer keeps reading: the buffer holds only frames still
    // to be shown (two chunks' worth and the one being made), and every steer's chunk is in
    // time.
    let reader = tokio::spawn(async move {
        let mut indices = Vec::new();
        for _ in 0..100 {
            indices.push(next_frame(&mut out).await.index);
        }
        indices
    });
    for prompt in ["rainy hills", "foggy hills", "green hills at dawn"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (session, owner) = (session.clone(), owner.clone());
        let info = tokio::task::spawn_blocking(move || {
            session.steer(owner.as_str(), prompt, Some(0.0)).unwrap();
            session.info()
        })
        .await
        .unwrap();
        assert!(info.buffered_frames < 3 * 25, "{info:?}");
    }
    let indices = reader.await.unwrap();
    assert!(indices.windows(2).all(|w| w[1] == w[0] + 1), "{indices:?}");
    assert_eq!(session.info().stalls, 0, "a steer's chunk was late");
}
