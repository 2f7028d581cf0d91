//! Helpers for the end-to-end tests in `tests/tests/`: finding the built binaries and
//! decoding what they write with GStreamer.

use std::path::PathBuf;

pub mod browser;
pub mod client;

/// A binary of the workspace, built by `scripts/test.sh` into the same target directory as
/// this test (a test runs from `target/<profile>/deps/`, the load and soak binaries from
/// `target/<profile>/`). `ENDLESS_BIN` overrides the `endless` binary, for a run that must
/// not pick up a rebuild in a shared target directory.
/// `relative` in the repository. Read at run time from `CARGO_MANIFEST_DIR`, which cargo sets
/// for the tests it runs: the path compiled in is where the crate was built, and a shared
/// target directory can hold a build of another checkout that cargo still counts as fresh
/// (a browser test once loaded the page from a checkout that no longer existed).
pub fn repo_path(relative: &str) -> PathBuf {
    let manifest =
        std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| env!("CARGO_MANIFEST_DIR").into(), PathBuf::from);
    manifest.join("..").join(relative)
}

pub fn binary(name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os("ENDLESS_BIN").filter(|_| name == "endless") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("a running test knows its own path");
    let dir = exe.parent().expect("an executable is in a folder");
    let dir = if dir.ends_with("deps") { dir.parent().expect("deps is in target/<profile>") } else { dir };
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
    let frames = pull_frames(&sink);
    let _ = pipeline.set_state(gst::State::Null);
    frames
}

/// Every decoded RGB frame an appsink gives until end of stream.
fn pull_frames(sink: &gstreamer_app::AppSink) -> Vec<DecodedFrame> {
    let mut frames = Vec::new();
    while let Ok(sample) = sink.pull_sample() {
        let info = gstreamer_video::VideoInfo::from_caps(sample.caps().expect("decoded samples have caps"))
            .expect("raw video caps");
        let buffer = sample.buffer().expect("a sample has a buffer");
        let map = buffer.map_readable().expect("a decoded buffer is readable");
        let (w, h, stride) = (info.width() as usize, info.height() as usize, info.stride()[0] as usize);
        let mut rgb = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            rgb.extend_from_slice(&map[y * stride..y * stride + w * 3]);
        }
        frames.push(DecodedFrame { pts: buffer.pts().map_or(u64::MAX, |t| t.nseconds()), width: w, height: h, rgb });
    }
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

/// A running `endless serve` on a free port, with its own recordings folder; SIGTERM on drop.
pub struct TestServer {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    pub recordings: tempfile::TempDir,
}

impl TestServer {
    /// Starts the server with `extra` flags after these: the procedural world (whatever
    /// config.toml's default source is), 128x128 at 12 fps. `--set sessions.source=model`
    /// in `extra` overrides the source.
    pub fn start(extra: &[&str]) -> TestServer {
        let defaults = ["--source", "world", "--size", "128x128", "--fps", "12"];
        TestServer::start_with(&[&defaults[..], extra].concat())
    }

    /// Starts the server as `scripts/serve.sh` does — the shipped config.toml, the shipped
    /// `models/` — on a free port with its own recordings folder, `extra` flags after.
    pub fn shipped(extra: &[&str]) -> TestServer {
        let config = repo_path("config.toml").display().to_string();
        let models = format!("model.dir={}", repo_path("models").display());
        TestServer::start_with(&[&["--config", config.as_str(), "--set", models.as_str()][..], extra].concat())
    }

    fn start_with(args: &[&str]) -> TestServer {
        use std::io::BufRead;
        let recordings = tempfile::tempdir().expect("a temp dir");
        let web = repo_path("web");
        let mut child = std::process::Command::new(binary("endless"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .arg("--recordings-dir")
            .arg(recordings.path())
            .arg("--set")
            .arg(format!("server.web_dir={}", web.display()))
            .arg("serve")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("endless starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let mut reader = std::io::BufReader::new(stdout);
        reader.read_line(&mut line).expect("endless prints its address");
        // The rest of its output (its log) goes on to ours: a closed pipe would lose it.
        std::thread::spawn(move || {
            for l in reader.lines().map_while(Result::ok) {
                eprintln!("endless: {l}");
            }
        });
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        TestServer { child, addr, recordings }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        self.child.wait().expect("the server exits")
    }

    /// SIGKILL: no chance to finalise anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.terminate();
        }
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, Vec<u8>) {
    http(addr, "GET", path, None)
}

/// A plain HTTP/1.1 request with an optional JSON body: (status, body).
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, json: Option<&str>) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the server accepts");
    let body = json.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request written");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("response read");
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&rest[eol + 2..eol + 2 + n]);
            rest = &rest[eol + 2 + n + 2..];
        }
        body = out;
    }
    (status, body)
}

/// Decodes H.264 access units (Annex B) with GStreamer: the RGB frames, in order.
pub fn decode_h264(access_units: &[Vec<u8>], fps: u32) -> Vec<DecodedFrame> {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    gst::init().expect("GStreamer initialises");
    let pipeline = gst::parse::launch(
        "appsrc name=src format=time caps=video/x-h264,stream-format=byte-stream,alignment=au \
         ! h264parse ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=sink sync=false",
    )
    .expect("the decode pipeline parses")
    .downcast::<gst::Pipeline>()
    .expect("a pipeline");
    let src = pipeline.by_name("src").and_then(|e| e.downcast::<gstreamer_app::AppSrc>().ok()).expect("appsrc");
    let sink = pipeline.by_name("sink").and_then(|e| e.downcast::<gstreamer_app::AppSink>().ok()).expect("appsink");
    pipeline.set_state(gst::State::Playing).expect("the decode pipeline starts");
    for (i, au) in access_units.iter().enumerate() {
        let mut b = gst::Buffer::from_slice(au.clone());
        b.get_mut().expect("one owner").set_pts(gst::ClockTime::from_nseconds(i as u64 * 1_000_000_000 / fps as u64));
        src.push_buffer(b).expect("the decoder takes the access unit");
    }
    src.end_of_stream().expect("EOS");
    let frames = pull_frames(&sink);
    let _ = pipeline.set_state(gst::State::Null);
    frames
}
