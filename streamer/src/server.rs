//! The HTTP and WebSocket server: the player, the JSON API, `/metrics`, `/healthz`, the
//! recordings, and one WebSocket per page for control and media.

use crate::config::{Config, Source};
use crate::metrics::{Gauges, Metrics};
use crate::protocol::{
    ClientMessage, Codec, Create, Incoming, MediaHeader, ProtocolError, ServerMessage, Track, close, decode_client,
    now_us,
};
use crate::recording;
use crate::stream::SessionStream;
use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use dashmap::DashMap;
use endless_model::media::Size;
use endless_sessions::{
    CreateRequest, ModelFactory, ModelSettings, OwnerToken, Registry, Scheduler, SessionId, Settings, SourceFactory,
    WorldFactory,
};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::services::{ServeDir, ServeFile};

/// Everything the handlers share.
pub struct AppState {
    pub config: Config,
    /// The device worker of the model source.
    pub model: Option<Arc<Scheduler>>,
    registry: Registry,
    streams: DashMap<SessionId, Arc<SessionStream>>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the server is shutting down: sockets close.
    closing: CancellationToken,
    /// Open WebSocket connections: the HTTP server's graceful shutdown does not wait for
    /// upgraded connections, so shutdown waits here for them to send their close frames.
    connections: tokio_util::task::TaskTracker,
    /// A session ended since the heap was last trimmed.
    heap_dirty: std::sync::atomic::AtomicBool,
}

/// A client-facing refusal: the message says what was wrong with their request.
struct Refusal(String);

impl<E: std::fmt::Display> From<E> for Refusal {
    fn from(e: E) -> Self {
        Refusal(e.to_string())
    }
}

impl AppState {
    fn new(config: Config) -> anyhow::Result<Arc<AppState>> {
        let (factory, model): (Box<dyn SourceFactory>, _) = match config.sessions.source {
            Source::World => (Box::new(WorldFactory), None),
            Source::Model => {
                let scheduler = Scheduler::start(model_settings(&config)).map_err(anyhow::Error::msg)?;
                (Box::new(ModelFactory { scheduler: scheduler.clone() }), Some(scheduler))
            }
        };
        let s = &config.sessions;
        let registry = Registry::new(
            factory,
            session_settings(&config),
            s.max_sessions.get() as usize,
            Duration::from_secs(s.idle_timeout_secs.get() as u64),
        );
        Ok(Arc::new(AppState {
            config,
            model,
            registry,
            streams: DashMap::new(),
            metrics: Arc::new(Metrics::default()),
            closing: CancellationToken::new(),
            connections: tokio_util::task::TaskTracker::new(),
            heap_dirty: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn create(&self, req: &Create) -> Result<(Arc<SessionStream>, OwnerToken), Refusal> {
        let required = &self.config.server.api_key;
        if !required.is_empty() && !req.api_key.as_deref().is_some_and(|k| OwnerToken::constant_time_eq(k, required)) {
            return Err(Refusal("a valid API key is required to create a session".into()));
        }
        let size = match (&req.size, &self.model) {
            (Some(s), _) => s.parse::<Size>()?,
            (None, Some(model)) => model.size(),
            (None, None) => self.config.sessions.size,
        };
        if size.width > 1024 || size.height > 1024 {
            return Err(Refusal("size is at most 1024x1024".into()));
        }
        let fps = req.fps.unwrap_or(match &self.model {
            Some(model) => model.spec.fps,
            None => self.config.sessions.fps.get() as f64,
        });
        let (session, token) =
            self.registry.create(&CreateRequest { prompt: req.prompt.clone(), seed: req.seed, size, fps })?;
        self.metrics.sessions_created.fetch_add(1, Ordering::Relaxed);
        self.attach(session, token)
    }

    fn attach(
        &self,
        session: Arc<endless_sessions::Session>,
        token: OwnerToken,
    ) -> Result<(Arc<SessionStream>, OwnerToken), Refusal> {
        let stream = SessionStream::start(session.clone(), &self.config, self.metrics.clone()).map_err(|e| {
            tracing::error!(cause = %e, "cannot start the encoder");
            session.close();
            Refusal("the server could not start an encoder".into())
        })?;
        self.streams.insert(session.id.clone(), stream.clone());
        Ok((stream, token))
    }

    fn stream(&self, id: &str) -> Result<Arc<SessionStream>, Refusal> {
        SessionId::parse(id)
            .and_then(|id| self.streams.get(&id).map(|s| s.clone()))
            .filter(|s| !s.session.is_closed())
            .ok_or_else(|| Refusal("no such session".into()))
    }

    async fn close_stream(&self, id: &SessionId, reason: &str) {
        if let Some((_, stream)) = self.streams.remove(id) {
            stream.shutdown(reason).await;
            self.heap_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Closes sessions idle past the timeout (or closed by their owner).
    async fn evict(&self) {
        for id in self.registry.evict_idle() {
            self.close_stream(&id, "nobody watched for too long").await;
        }
        let gone: Vec<SessionId> =
            self.streams.iter().filter(|s| s.session.is_closed()).map(|s| s.session.id.clone()).collect();
        for id in gone {
            self.close_stream(&id, "the session ended").await;
        }
    }
}

/// The model source's settings from the configuration.
/// The sessions' settings from `[sessions]`.
pub fn session_settings(config: &Config) -> Settings {
    let s = &config.sessions;
    Settings {
        chunk_frames: s.chunk_frames.get() as usize,
        buffer_chunks: s.buffer_chunks.get() as usize,
        max_prompt_chars: s.max_prompt_chars.get() as usize,
        steer_min_interval: Duration::from_millis(s.steer_min_interval_ms.get() as u64),
        transition_secs: s.transition_secs.get() as f64,
        ..Settings::default()
    }
}

pub fn model_settings(config: &Config) -> ModelSettings {
    use crate::config::ExtendMode as Mode;
    use endless_model::pipeline::{ExtendMode, SamplerSettings};
    let m = &config.model;
    let tenths = |v: i64| v as f64 / 10.0;
    let s = &config.sessions;
    ModelSettings {
        dir: m.dir.clone(),
        text_dir: if m.text_dir.as_os_str().is_empty() {
            endless_model::text::default_dir()
        } else {
            m.text_dir.clone()
        },
        device: m.device,
        sampler: SamplerSettings {
            steps: m.steps.get() as usize,
            eta: 0.0,
            guidance: endless_model::diffusion::Guidance {
                text: tenths(m.text_guidance_tenths.get()),
                context: tenths(m.context_guidance_tenths.get()),
            },
            mode: match m.mode {
                Mode::Replacement => ExtendMode::Replacement,
                Mode::Conditioned => ExtendMode::Conditioned,
                Mode::Guided => ExtendMode::Guided { weight: tenths(m.guidance_weight_tenths.get()) },
            },
            self_conditioning: m.self_conditioning,
        },
        min_steps: m.min_steps.get() as usize,
        context_frames: m.context_frames.get() as usize,
        anchors: m.anchors.get() as usize,
        anchor_every: m.anchor_every.get() as usize,
        max_batch: m.max_batch.get() as usize,
        decode_thread: m.decode_thread,
        decode_threads: m.decode_threads.get() as usize,
        parallel_passes: m.parallel_passes,
        ema: m.ema,
        // Enough for a fork to continue from the frame shown with the whole buffer ahead.
        history_frames: (s.chunk_frames.get() * (s.buffer_chunks.get() + 2)) as usize,
    }
}

/// Gives the C heap's free pages back to the system. An ended session frees its encoder's
/// buffers (x264's lookahead, GStreamer's pools) inside glibc's heap, which keeps them: in a
/// 32-minute soak the server's RSS grew 28 % under a steady load, and `malloc_trim` at minute
/// 21 returned 12 of its 74 MiB. Called once a second at most, after a session has ended.
#[allow(unsafe_code)]
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks glibc's own arenas and takes their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Binds `config.server.listen` (port 0 picks a free port) and serves until `shutdown` is
/// cancelled; then every recording is finalised within the configured grace time.
pub async fn start(config: Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(config.server.listen).await?;
    let addr = listener.local_addr()?;
    let state = AppState::new(config)?;
    let app = router(state.clone());
    let evictor = state.clone();
    let stop_evicting = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    evictor.evict().await;
                    if evictor.heap_dirty.swap(false, Ordering::Relaxed) {
                        trim_heap();
                    }
                }
                _ = stop_evicting.cancelled() => return,
            }
        }
    });
    let drain = state.clone();
    let closing = state.closing.clone();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        let grace = Duration::from_secs(drain.config.server.shutdown_grace_secs.get() as u64);
        tracing::info!(sessions = drain.streams.len(), "shutting down: finalising recordings");
        let ids: Vec<SessionId> = drain.streams.iter().map(|s| s.session.id.clone()).collect();
        let all =
            futures_util::future::join_all(ids.iter().map(|id| drain.close_stream(id, "the server is shutting down")));
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("shutdown grace time ran out");
        }
        drain.registry.close_all();
        closing.cancel();
    });
    let closing = state.closing.clone();
    let connections = state.connections.clone();
    let done = tokio::spawn(async move {
        let listener = listener.tap_io(|tcp| {
            #[cfg(target_os = "linux")]
            if let Err(e) = socket2::SockRef::from(&*tcp).set_tcp_notsent_lowat(SOCKET_UNSENT_BYTES) {
                tracing::debug!(cause = %e, "cannot set TCP_NOTSENT_LOWAT");
            }
        });
        axum::serve(listener, app.into_make_service()).with_graceful_shutdown(closing.cancelled_owned()).await?;
        connections.close();
        if tokio::time::timeout(Duration::from_secs(2), connections.wait()).await.is_err() {
            tracing::warn!("WebSocket connections still open at exit");
        }
        Ok(())
    });
    tracing::info!(%addr, "endless is serving");
    Ok(Running { addr, state, done })
}

fn router(state: Arc<AppState>) -> Router {
    let web = ServeDir::new(&state.config.server.web_dir);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/sessions", get(list_sessions).post(create_session))
        .route("/api/recordings", get(list_recordings))
        .route("/api/source", get(source_info))
        .route("/recordings/{name}", get(download))
        .route("/ws", get(ws))
        .fallback_service(web)
        .with_state(state)
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let gauges = Gauges {
        sessions: s.registry.len(),
        viewers: s.registry.list().iter().map(|i| i.viewers).sum(),
        recordings_active: s.streams.iter().filter(|st| st.is_recording()).count(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render(&gauges))
}

/// What new sessions stream: the source, the size and rate a session gets when it asks for
/// none, and whether that is the only one (a model streams at the size and rate it was
/// trained for; the world renders any size). The page offers its choices from this.
async fn source_info(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(match &s.model {
        Some(model) => serde_json::json!({
            "source": "model",
            "size": model.size().to_string(),
            "fps": model.spec.fps,
            "fixed": true,
        }),
        None => serde_json::json!({
            "source": "world",
            "size": s.config.sessions.size.to_string(),
            "fps": s.config.sessions.fps.get(),
            "fixed": false,
        }),
    })
}

async fn list_sessions(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    Json(s.registry.list())
}

async fn create_session(State(s): State<Arc<AppState>>, headers: HeaderMap, Json(mut body): Json<Create>) -> Response {
    if let Some(key) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        body.api_key = Some(key.to_string());
    }
    match s.create(&body) {
        Ok((stream, token)) => Json(serde_json::json!({
            "session": stream.session.id,
            "token": token.as_str(),
            "size": stream.session.size().to_string(),
            "fps": stream.session.fps(),
        }))
        .into_response(),
        Err(Refusal(message)) => {
            s.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
            (StatusCode::BAD_REQUEST, Json(serde_json::json!({ "error": message }))).into_response()
        }
    }
}

async fn list_recordings(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let dir = s.config.recording.dir.clone();
    Json(tokio::task::spawn_blocking(move || recording::list(&dir)).await.unwrap_or_default())
}

async fn download(State(s): State<Arc<AppState>>, UrlPath(name): UrlPath<String>, req: Request<Body>) -> Response {
    if !recording::is_recording_name(&name) {
        return (StatusCode::NOT_FOUND, "no such recording").into_response();
    }
    let path = s.config.recording.dir.join(&name);
    match ServeFile::new(path).oneshot(req).await {
        Ok(r) => r.into_response(),
        Err(e) => match e {},
    }
}

async fn ws(State(s): State<Arc<AppState>>, upgrade: WebSocketUpgrade) -> Response {
    let max = s.config.server.max_message_bytes.get() as usize;
    // The WebSocket layer reads messages up to twice the limit; the decoder refuses those over
    // it with close code 1009 and the socket is drained before it closes, so the client
    // reads the close frame (and every reply before it). Beyond twice the limit the layer
    // gives up mid-message: a close frame is still sent, but the unread rest of the message
    // may make the kernel reset the connection.
    let layer_max = max.saturating_mul(2);
    let tracker = s.connections.clone();
    upgrade
        .max_message_size(layer_max)
        .max_frame_size(layer_max)
        .on_upgrade(move |socket| tracker.track_future(connection(s, socket)))
}

/// What a socket is watching.
struct Watching {
    stream: Arc<SessionStream>,
    token: Option<String>,
    forward: tokio::task::JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// One WebSocket: a writer task fed by a bounded queue, and this loop reading requests.
async fn connection(state: Arc<AppState>, socket: WebSocket) {
    state.metrics.ws_connections.fetch_add(1, Ordering::Relaxed);
    state.metrics.ws_open.fetch_add(1, Ordering::Relaxed);
    let (mut sink, mut incoming) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(SOCKET_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut watching: Option<Watching> = None;
    let max = state.config.server.max_message_bytes.get() as usize;
    let mut budget = ErrorBudget::new();
    loop {
        let msg = tokio::select! {
            m = incoming.next() => m,
            _ = state.closing.cancelled() => {
                let _ = tx.send(close_frame(close::GOING_AWAY, "server shutting down")).await;
                break;
            }
        };
        let msg = match msg {
            None => break,
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                // The WebSocket layer refused what arrived; the stream cannot be read further.
                if let Some((code, reason)) = read_error_close(e, max) {
                    state.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(close_frame(code, &reason)).await;
                }
                break;
            }
        };
        let decoded = match &msg {
            Message::Text(text) => decode_client(Incoming::Text(text.as_str()), max),
            Message::Binary(bytes) => decode_client(Incoming::Binary(bytes), max),
            Message::Close(_) => break,
            Message::Ping(_) | Message::Pong(_) => continue,
        };
        let refused = match decoded {
            Ok(req) => {
                let request = req.kind();
                handle(&state, req, &mut watching, &tx).await.err().map(|Refusal(message)| ProtocolError {
                    message,
                    request,
                    close: None,
                })
            }
            Err(e) => Some(e),
        };
        let Some(e) = refused else { continue };
        state.metrics.client_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(code) = e.close {
            let _ = tx.send(close_frame(code, &e.message)).await;
            drain(&mut incoming).await;
            break;
        }
        if !budget.spend() {
            tracing::info!("closing a connection that keeps sending invalid requests");
            let _ = tx.send(close_frame(close::POLICY_VIOLATION, "too many invalid requests")).await;
            drain(&mut incoming).await;
            break;
        }
        if send(&tx, ServerMessage::Error { message: e.message, request: e.request.into() }).await.is_err() {
            break;
        }
    }
    drop(watching);
    drop(tx);
    let _ = writer.await;
    state.metrics.ws_open.fetch_sub(1, Ordering::Relaxed);
}

/// Messages a socket's queue holds (media, replies, events).
const SOCKET_QUEUE: usize = 256;
/// Media messages that may wait for one socket before its viewer is skipped to the next
/// keyframe: 4 s at 12 fps, two keyframe intervals. Kept well under [`SOCKET_QUEUE`] so
/// that replies and events still find room.
const MEDIA_QUEUE: usize = 48;
/// Unsent bytes the kernel holds for one socket (`TCP_NOTSENT_LOWAT`). Without it a viewer
/// that stops reading soaks up to `tcp_wmem` (4 MiB) of kernel memory and minutes of video
/// before the server notices; with it the backlog stays in the queue above, where it is
/// skipped to a keyframe within seconds. Throughput is unaffected: only unsent data counts,
/// not data in flight.
const SOCKET_UNSENT_BYTES: u32 = 128 * 1024;

/// Refused requests a connection may make in a burst before it is cut off (close 1008).
const ERROR_BURST: f64 = 256.0;
/// Refused requests per second a connection may keep making: far more than a page that
/// steers too fast now and then, far fewer than a client flooding garbage.
const ERROR_REFILL_PER_SEC: f64 = 32.0;

/// A token bucket of refusals: a client that only sends garbage costs the server a parse
/// and a reply per message, so it is cut off rather than answered forever.
struct ErrorBudget {
    tokens: f64,
    at: std::time::Instant,
}

impl ErrorBudget {
    fn new() -> Self {
        ErrorBudget { tokens: ERROR_BURST, at: std::time::Instant::now() }
    }

    /// Takes one refusal from the budget; false when it is spent.
    fn spend(&mut self) -> bool {
        let now = std::time::Instant::now();
        self.tokens = (self.tokens + (now - self.at).as_secs_f64() * ERROR_REFILL_PER_SEC).min(ERROR_BURST);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Reads and discards what the client still sends after the server's close frame, until
/// its close reply or end of stream, for at most 2 s. Dropping a socket with unread data
/// makes the kernel reset the connection, and a reset discards what the client had not yet
/// read — the error replies before the close, and the close frame itself.
async fn drain(incoming: &mut futures_util::stream::SplitStream<WebSocket>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = incoming.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

/// A close message; the reason is cut to the 123 bytes a close frame can carry.
fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame { code, reason: reason[..end].into() }))
}

/// The close code and reason for a message the WebSocket layer could not read: too big
/// (1009), text that is not UTF-8 (1007), broken framing (1002). `None` when the peer is
/// simply gone.
fn read_error_close(e: axum::Error, max: usize) -> Option<(u16, String)> {
    use tungstenite::Error as WsError;
    let inner = e.into_inner();
    let ws = inner.downcast_ref::<WsError>()?;
    Some(match ws {
        WsError::Capacity(_) => (close::TOO_BIG, format!("message over the limit of {max} bytes")),
        WsError::Utf8(_) => (close::INVALID_DATA, "text message is not UTF-8".into()),
        WsError::Protocol(p) => (close::PROTOCOL_ERROR, format!("WebSocket protocol error: {p}")),
        _ => return None,
    })
}

async fn send(tx: &mpsc::Sender<Message>, m: ServerMessage) -> Result<(), ()> {
    tx.send(Message::Text(m.to_json().into())).await.map_err(|_| ())
}

/// The owned session of this socket, for owner-only requests.
fn owned(watching: &Option<Watching>) -> Result<(&Arc<SessionStream>, &str), Refusal> {
    let w = watching.as_ref().ok_or_else(|| Refusal("watch a session first".into()))?;
    let token = w.token.as_deref().filter(|t| w.stream.session.is_owner(t));
    token.map(|t| (&w.stream, t)).ok_or_else(|| Refusal("only the session's owner may do that".into()))
}

async fn handle(
    state: &Arc<AppState>,
    req: ClientMessage,
    watching: &mut Option<Watching>,
    tx: &mpsc::Sender<Message>,
) -> Result<(), Refusal> {
    match req {
        ClientMessage::Create(req) => {
            let (stream, token) = state.create(&req)?;
            let _ = send(
                tx,
                ServerMessage::Created { session: stream.session.id.to_string(), token: token.as_str().into() },
            )
            .await;
        }
        ClientMessage::Watch { session, token, codec } => {
            let stream = state.stream(&session)?;
            *watching = None; // stop forwarding the previous session first
            let owner = token.as_deref().is_some_and(|t| stream.session.is_owner(t));
            let media = stream.subscribe();
            let events = stream.events.subscribe();
            let guard = stream.session.watch();
            let codec_string = stream
                .wait_codec_string(Duration::from_secs(10))
                .await
                .ok_or_else(|| Refusal("the stream did not start in time".into()))?;
            let s = &stream.session;
            let _ = send(
                tx,
                ServerMessage::Watching {
                    session: s.id.to_string(),
                    owner,
                    width: s.size().width,
                    height: s.size().height,
                    fps: s.fps(),
                    codec,
                    codec_string,
                    prompt: s.prompt(),
                },
            )
            .await;
            let forward = tokio::spawn(forward(state.clone(), stream.clone(), codec, media, events, tx.clone(), guard));
            *watching = Some(Watching { stream, token, forward });
        }
        ClientMessage::Steer { prompt, transition_secs } => {
            let (stream, token) = owned(watching)?;
            let frame = stream.session.steer(token, &prompt, transition_secs)?;
            stream.note_prompts();
            let _ = stream.events.send(ServerMessage::Prompt { prompt: stream.session.prompt(), frame });
        }
        ClientMessage::Pause {} | ClientMessage::Resume {} => {
            let paused = matches!(req, ClientMessage::Pause {});
            let (stream, token) = owned(watching)?;
            stream.session.set_paused(token, paused)?;
            let _ = stream.events.send(ServerMessage::State { paused });
        }
        ClientMessage::Record { on } => {
            let (stream, _) = owned(watching)?;
            if on {
                stream.start_recording()?;
            } else {
                let stream = stream.clone();
                // Finalising may take a moment; the reply comes as a `recording` event.
                tokio::spawn(async move { stream.stop_recording().await });
            }
        }
        ClientMessage::Fork {} => {
            let (stream, token) = owned(watching)?;
            let (session, new_token) = state.registry.fork(&stream.session.id, token)?;
            state.metrics.sessions_created.fetch_add(1, Ordering::Relaxed);
            let (forked, new_token) = state.attach(session, new_token)?;
            let _ = send(
                tx,
                ServerMessage::Forked { session: forked.session.id.to_string(), token: new_token.as_str().into() },
            )
            .await;
        }
        ClientMessage::Close {} => {
            let (stream, token) = owned(watching)?;
            let id = stream.session.id.clone();
            state.registry.close(&id, token)?;
            state.close_stream(&id, "closed by its owner").await;
        }
        ClientMessage::Ping { t } => {
            let _ = send(tx, ServerMessage::Pong { t, server_ms: now_us() as f64 / 1000.0 }).await;
        }
    }
    Ok(())
}

/// Media, events and stats of one session to one socket. A viewer that falls behind (its
/// queue full, or the broadcast lagging) is skipped to the next keyframe.
async fn forward(
    state: Arc<AppState>,
    stream: Arc<SessionStream>,
    codec: Codec,
    mut media: broadcast::Receiver<Arc<crate::stream::Media>>,
    mut events: broadcast::Receiver<ServerMessage>,
    tx: mpsc::Sender<Message>,
    _guard: endless_sessions::ViewerGuard,
) {
    let wanted = |t: Track| match codec {
        Codec::H264 => t == Track::H264,
        Codec::Fmp4 => t == Track::Fmp4Media,
    };
    let mut need_key = true;
    // Whether media is being skipped for this viewer (not merely waiting for its first keyframe).
    let mut skipping = false;
    let mut stats = tokio::time::interval(Duration::from_secs(1));
    if codec == Codec::Fmp4 {
        // The init segment first: wait for the muxer to have written it.
        let mut init = stream.init_segment();
        for _ in 0..200 {
            if init.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
            init = stream.init_segment();
        }
        let Some(init) = init else { return };
        let header = MediaHeader { track: Track::Fmp4Init, keyframe: true, pts_us: 0, push_us: now_us() };
        if tx.send(Message::Binary([&header.encode()[..], &init].concat().into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            p = media.recv() => match p {
                Ok(m) if wanted(m.packet.track) => {
                    if need_key && !m.packet.keyframe {
                        if skipping {
                            state.metrics.media_messages_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                    // Media waiting for this socket beyond MEDIA_QUEUE: the viewer is not keeping
                    // up. Skip to the next keyframe rather than queue further behind live.
                    let queued = tx.max_capacity() - tx.capacity();
                    let sent = if queued >= MEDIA_QUEUE { Err(None) } else {
                        tx.try_send(Message::Binary(m.wire.clone())).map_err(|e| match e {
                            mpsc::error::TrySendError::Full(_) => None,
                            mpsc::error::TrySendError::Closed(_) => Some(()),
                        })
                    };
                    match sent {
                        Ok(()) => {
                            need_key = false;
                            skipping = false;
                            state.metrics.media_bytes_sent.fetch_add(m.wire.len() as u64, Ordering::Relaxed);
                        }
                        Err(None) => {
                            state.metrics.media_messages_dropped.fetch_add(1, Ordering::Relaxed);
                            need_key = true;
                            skipping = true;
                            stream.request_keyframe();
                        }
                        Err(Some(())) => return,
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    state.metrics.media_messages_dropped.fetch_add(n, Ordering::Relaxed);
                    need_key = true;
                    skipping = true;
                    stream.request_keyframe();
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            e = events.recv() => match e {
                Ok(m) => {
                    let ended = matches!(m, ServerMessage::Ended { .. });
                    if send(&tx, m).await.is_err() || ended {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = stats.tick() => {
                let i = stream.session.info();
                let m = ServerMessage::Stats {
                    generated_fps: i.generated_fps,
                    buffered_frames: i.buffered_frames,
                    shown_frames: i.shown_frames,
                    viewers: i.viewers,
                    stalls: i.stalls,
                    recording: i.recording,
                    paused: i.paused,
                    source: i.source,
                };
                let _ = tx.try_send(Message::Text(m.to_json().into()));
            }
        }
    }
}
