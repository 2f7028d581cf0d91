//! Headless Chromium (Debian's) driven over WebDriver by chromedriver, for the browser tests
//! and the page benchmark (`src/bin/page_bench.rs`).

use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A minimal HTTP/1.1 JSON client for chromedriver.
fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Value {
    let mut s = TcpStream::connect(addr).expect("chromedriver accepts");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read the head, then exactly Content-Length bytes (chromedriver keeps connections open).
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = s.read(&mut buf).expect("chromedriver answers");
        assert!(n > 0, "chromedriver closed the connection");
        raw.extend_from_slice(&buf[..n]);
        if let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            while raw.len() < split + 4 + len {
                let n = s.read(&mut buf).expect("chromedriver answers");
                assert!(n > 0, "short answer");
                raw.extend_from_slice(&buf[..n]);
            }
            let body = &raw[split + 4..split + 4 + len];
            return serde_json::from_slice(body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&raw)));
        }
    }
}

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/setup.sh installs chromium-driver)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let started = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                     "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                     "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let answer = call(addr, "POST", "/session", Some(&caps));
        let session =
            answer["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {answer}")).to_string();
        Browser { driver, addr, session, _profile: profile }
    }

    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let v = call(self.addr, method, &format!("/session/{}{path}", self.session), body.as_ref());
        if let Some(err) = v["value"]["error"].as_str() {
            panic!("WebDriver {path}: {err}: {}", v["value"]["message"]);
        }
        v["value"].clone()
    }

    pub fn js(&self, script: &str) -> Value {
        self.cmd("POST", "/execute/sync", Some(json!({"script": script, "args": []})))
    }

    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let started = Instant::now();
        loop {
            let v = self.js(script);
            if v.as_bool() != Some(false) && !v.is_null() {
                return v;
            }
            assert!(started.elapsed() < timeout, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        let id =
            el.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).expect("element id").to_string();
        self.cmd("POST", &format!("/element/{id}/clear"), Some(json!({})));
        self.cmd("POST", &format!("/element/{id}/value"), Some(json!({"text": text})));
    }

    pub fn click(&self, css: &str) {
        let el = self.cmd("POST", "/element", Some(json!({"using": "css selector", "value": css})));
        let id =
            el.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).expect("element id").to_string();
        self.cmd("POST", &format!("/element/{id}/click"), Some(json!({})));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(self.addr, "DELETE", &format!("/session/{}", self.session), None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Mean brightness and a coarse fingerprint of the canvas, computed in the page.
pub const CANVAS: &str = "const c = document.querySelector('canvas#video'); \
    const g = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
    let s = 0; const cells = new Array(16).fill(0); \
    for (let i = 0; i < g.length; i += 4) { const v = (g[i] + g[i+1] + g[i+2]) / 3; s += v; \
      const p = i / 4, x = p % c.width, y = Math.floor(p / c.width); \
      cells[Math.floor(4 * y / c.height) * 4 + Math.floor(4 * x / c.width)] += v; } \
    return {mean: s / (g.length / 4), cells: cells.map(v => v / (g.length / 64)), w: c.width, h: c.height};";
