// endless player page: UI wiring, the WebSocket session and the live stats.

import { msg, parseMedia, parseText, wallMs, Track } from './protocol.js';
import { WebCodecsPlayer, MsePlayer, mseSupports } from './player.js';

/** Every element with an id, by camel-cased id: `el.video` is the canvas, `el.mse` the <video>. */
const el = {};
for (const n of document.querySelectorAll('[id]')) el[n.id.replace(/-(\w)/g, (_, c) => c.toUpperCase())] = n;

const idlePlaceholder = el.prompt.placeholder;
const params = new URLSearchParams(location.search);
const wantFmp4 = params.get('codec') === 'fmp4';

/** Live numbers, read by the automated browser test; updated in place. */
const stats = {
  shownFps: 0, generatedFps: 0, latencyMs: null, switchMs: null, switches: 0, framesDrawn: 0, viewers: 0, bufferedFrames: 0,
  codec: null, prompt: '',
  session: null, owner: false, connected: false, mode: null, codecString: null, width: 0, height: 0, fps: 0,
  queuedFrames: 0, bufferSeconds: 0, stalls: 0, paused: false, recording: false, clockOffsetMs: 0, rttMs: null,
};
window.endlessStats = stats;

const state = {
  ws: null, retry: 0, retryTimer: 0, pingTimer: 0,
  /** 'idle' | 'creating' | 'joining' | 'watching' | 'ended' */
  mode: 'idle', session: null, token: null, owner: false, fps: 12, paused: false, recording: false, recStart: 0,
  player: null, forceFmp4: wantFmp4 || !window.VideoDecoder, firstFrame: false, awaitingWatch: false, drawnBefore: 0,
  /** ping/pong samples {rtt, offset} and the clock offset in use (server − page, ms) */
  clock: [], offset: 0,
  /** push→display latencies of the last 60 frames (ms) */
  latencies: [],
  caption: '', pendingCaption: null,
  /** This page's last steer: when it was sent and, once acknowledged, its first frame's PTS. */
  steerSent: null,
};

// ---- helpers

const enc = encodeURIComponent;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const clockText = (secs) => `${Math.floor(secs / 60)}:${String(Math.floor(secs % 60)).padStart(2, '0')}`;
const watchPath = (id) => `/?watch=${enc(id)}`;
const ownerPath = (id, token) => `${watchPath(id)}&token=${enc(token)}`;

/** Shows a non-blocking message for a few seconds. */
function toast(text, kind = 'info') {
  const t = document.createElement('div');
  t.className = `toast ${kind}`;
  t.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  t.textContent = text;
  el.toasts.append(t);
  while (el.toasts.children.length > 4) el.toasts.firstElementChild.remove();
  setTimeout(() => {
    t.classList.add('leaving');
    setTimeout(() => t.remove(), 300);
  }, kind === 'error' ? 7000 : 4000);
}

function setConn(kind, text) {
  el.conn.dataset.state = kind;
  el.conn.textContent = text;
  stats.connected = kind === 'live';
}

function showLoading(text) {
  el.loadingText.textContent = text;
  el.loading.hidden = false;
}

/** Copies text to the clipboard, falling back to a selection copy and then a prompt. */
async function copyText(text, what) {
  let ok = false;
  try {
    await navigator.clipboard.writeText(text);
    ok = true;
  } catch {
    const ta = node('textarea', '', undefined, { readonly: '', style: 'position:fixed;top:-1000px;opacity:0' });
    ta.value = text;
    document.body.append(ta);
    ta.select();
    try { ok = document.execCommand('copy'); } catch { /* no clipboard at all */ }
    ta.remove();
  }
  if (ok) toast(`${what} copied`);
  else window.prompt(`Copy the ${what.toLowerCase()}:`, text);
}

// ---- UI modes

/** Lays the page out for the current mode and role. */
function render() {
  const { mode, owner } = state;
  const watching = mode === 'watching';
  const creating = mode === 'creating';
  const live = watching || mode === 'joining';
  el.placeholder.hidden = mode !== 'idle' && mode !== 'creating';
  el.stage.classList.toggle('idle', !state.firstFrame);
  // An owner (or a page joining with a token) gets the steering form, a viewer none.
  const steering = (watching && owner) || (mode === 'joining' && !!state.token);
  const canSteer = watching && owner;
  el.promptForm.hidden = mode === 'ended' || (live && !steering);
  el.promptLabel.textContent = steering ? 'Steer the stream' : 'Describe a landscape';
  el.prompt.placeholder = steering ? 'now it snows, camera panning right' : idlePlaceholder;
  el.start.hidden = steering;
  el.start.disabled = creating || mode === 'joining';
  el.start.textContent = creating ? 'Starting…' : 'Start stream';
  el.steer.hidden = !steering;
  el.transitionRow.hidden = !steering;
  el.settings.hidden = steering || mode === 'joining';
  el.controls.hidden = !watching;
  for (const n of document.querySelectorAll('.owner-only')) n.hidden = !owner;
  for (const b of [el.pause, el.record, el.fork, el.close, el.steer]) b.disabled = !canSteer;
  el.viewerNote.hidden = !(watching && !owner);
  el.badgeLive.hidden = !watching;
  el.caption.hidden = !live || !state.caption;
}

function setMode(mode) {
  state.mode = mode;
  render();
}

/** Shows the end-of-stream overlay and stops everything. */
function finish(text) {
  clearTimeout(state.retryTimer);
  closePlayer();
  dropSocket();
  setConn('idle', 'Not connected');
  el.loading.hidden = true;
  el.endedText.textContent = text;
  el.ended.hidden = false;
  setRecording(false);
  stats.shownFps = 0;
  el.sShown.textContent = '0 fps';
  setMode('ended');
  el.restart.focus();
  refreshSessions(true);
}

function setCaption(text) {
  state.pendingCaption = null;
  stats.prompt = text;
  if (text === state.caption) return;
  const first = !state.caption;
  state.caption = text;
  render();
  if (first) return void (el.caption.textContent = text);
  el.caption.classList.add('fading');
  setTimeout(() => {
    el.caption.textContent = state.caption;
    el.caption.classList.remove('fading');
  }, 300);
}

function setPaused(paused) {
  state.paused = stats.paused = paused;
  el.pause.textContent = paused ? 'Resume' : 'Pause';
  el.badgePaused.hidden = !paused;
}

function setRecording(on) {
  if (on === state.recording) return;
  state.recording = stats.recording = on;
  state.recStart = performance.now();
  el.record.setAttribute('aria-pressed', String(on));
  el.badgeRec.hidden = !on;
  updateRecordingTime();
}

function updateRecordingTime() {
  const t = clockText((performance.now() - state.recStart) / 1000);
  el.recTime.textContent = `REC ${t}`;
  el.record.querySelector('.label').textContent = state.recording ? `Stop recording · ${t}` : 'Record';
}

/** Disables a button until the returned function is called or `ms` pass. */
function busy(button, ms) {
  button.disabled = true;
  const t = setTimeout(() => render(), ms);
  return () => {
    clearTimeout(t);
    render();
  };
}
let recordDone = () => {};
let forkDone = () => {};

// ---- socket

function wsUrl() {
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
}

function send(text) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(text);
    return true;
  }
  toast('Not connected to the server', 'error');
  return false;
}

function dropSocket() {
  const ws = state.ws;
  state.ws = null;
  clearInterval(state.pingTimer);
  if (!ws) return;
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  try { ws.close(); } catch { /* already closed */ }
}

/** Opens a fresh WebSocket and calls `onOpen` once it is open. */
function connect(onOpen) {
  dropSocket();
  clearTimeout(state.retryTimer);
  const ws = new WebSocket(wsUrl());
  ws.binaryType = 'arraybuffer';
  state.ws = ws;
  setConn('connecting', 'Connecting…');
  ws.onopen = () => {
    console.info(`endless: connected to ${ws.url}`);
    setConn('live', 'Connected');
    sendPing();
    state.pingTimer = setInterval(sendPing, 5000);
    onOpen();
  };
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') onText(e.data);
    else onBinary(e.data);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    clearInterval(state.pingTimer);
    onSocketClosed();
  };
}

function onSocketClosed() {
  if (state.mode === 'ended') return;
  if (state.session) {
    // Watching (or about to): come back with backoff and watch again.
    const delay = Math.min(10000, 500 * 2 ** state.retry) * (0.8 + Math.random() * 0.4);
    state.retry++;
    setConn('down', 'Reconnecting…');
    showLoading(`Connection lost — reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`);
    state.retryTimer = setTimeout(() => connect(sendWatch), delay);
  } else {
    setConn('down', 'Disconnected');
    el.loading.hidden = true;
    if (state.mode === 'creating') toast('Lost the connection to the server', 'error');
    setMode('idle');
  }
}

function sendWatch() {
  state.awaitingWatch = true;
  send(msg.watch(state.session, state.token, state.forceFmp4 ? 'fmp4' : 'h264'));
  showLoading('Joining the stream…');
}

function sendPing() {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(msg.ping(wallMs()));
}

function onPong(m) {
  const now = wallMs();
  const rtt = now - m.t;
  if (!(rtt >= 0) || typeof m.server_ms !== 'number') return;
  state.clock.push({ rtt, offset: m.server_ms - (m.t + now) / 2 });
  if (state.clock.length > 6) state.clock.shift();
  // The sample with the shortest round trip bounds the error best.
  const best = state.clock.reduce((a, b) => (b.rtt < a.rtt ? b : a));
  state.offset = stats.clockOffsetMs = best.offset;
  stats.rttMs = rtt;
}

// ---- messages

/** Handlers of the server's text messages, by `type`. */
const handlers = {
  created(m) {
    state.session = stats.session = m.session;
    state.token = m.token;
    history.replaceState(null, '', ownerPath(m.session, m.token) + (wantFmp4 ? '&codec=fmp4' : ''));
    setMode('joining');
    sendWatch();
    refreshSessions(true);
  },
  watching: (m) => onWatching(m),
  prompt: (m) => onPrompt(m),
  state: (m) => setPaused(!!m.paused),
  recording(m) {
    setRecording(!!m.on);
    recordDone();
    if (state.owner) toast(m.on ? `Recording${m.name ? ` to ${m.name}` : ''}` : 'Recording saved');
    refreshRecordings(true);
    setTimeout(() => refreshRecordings(true), 1500);
  },
  forked(m) {
    forkDone();
    el.forkLink.href = ownerPath(m.session, m.token);
    el.forkResult.hidden = false;
    el.forkLink.focus();
    toast('Fork ready — it is yours to steer');
    refreshSessions(true);
  },
  stats: (m) => onStats(m),
  pong: (m) => onPong(m),
  error: (m) => onServerError(m),
  ended: (m) => finish(`Stream ended: ${m.reason || 'closed'}`),
};

function onText(text) {
  const m = parseText(text);
  if (m && Object.hasOwn(handlers, m.type)) handlers[m.type](m);
}

function onWatching(m) {
  state.retry = 0;
  state.awaitingWatch = false;
  state.session = stats.session = m.session;
  if (state.token && !m.owner && state.mode !== 'watching') toast('That owner token is not valid: watching read-only', 'error');
  state.owner = !!m.owner;
  state.fps = m.fps || 12;
  Object.assign(stats, { owner: state.owner, fps: state.fps, width: m.width, height: m.height, codec: m.codec, codecString: m.codec_string });
  el.stage.style.setProperty('--ar-w', String(m.width || 16));
  el.stage.style.setProperty('--ar-h', String(m.height || 9));
  // Resizing clears the canvas: only on a new size, so a reconnect keeps the last picture.
  if (m.width && m.height && (el.video.width !== m.width || el.video.height !== m.height)) {
    el.video.width = m.width;
    el.video.height = m.height;
  }
  el.sRes.textContent = `${m.width}×${m.height} @ ${m.fps}`;
  el.ended.hidden = true;
  setMode('watching');
  setCaption(m.prompt || '');
  startPlayer(m);
  showLoading('Waiting for the first frame…');
}

function onPrompt(m) {
  stats.prompt = m.prompt;
  // Change the caption when the first frame made with the prompt is shown (or soon anyway).
  const ptsUs = typeof m.frame === 'number' ? (m.frame * 1e6) / state.fps : 0;
  state.pendingCaption = { text: m.prompt, ptsUs, deadline: performance.now() + 3000 };
  if (state.steerSent && state.steerSent.ptsUs === null) state.steerSent.ptsUs = ptsUs;
}

function onStats(m) {
  Object.assign(stats, {
    generatedFps: m.generated_fps, bufferedFrames: m.buffered_frames, viewers: m.viewers, stalls: m.stalls, serverShownFrames: m.shown_frames,
    // The model's denoising steps per chunk (fewer than full when the device is overloaded).
    steps: m.source && m.source.steps
      ? `${m.source.steps}/${m.source.full_steps} steps` + (m.source.anchors ? `, ${m.source.anchors} anchor${m.source.anchors > 1 ? 's' : ''}` : '')
      : '',
  });
  setPaused(!!m.paused);
  setRecording(!!m.recording);
}

function onServerError(m) {
  toast(m.message || 'Something went wrong', 'error');
  if (m.request === 'create') {
    state.session = null;
    el.loading.hidden = true;
    dropSocket();
    setConn('idle', 'Not connected');
    setMode('idle');
    if (/key/i.test(m.message || '')) {
      el.settings.open = true;
      el.apiKey.focus();
    }
  } else if (m.request === 'watch' && state.awaitingWatch) {
    finish(`Can't watch this stream: ${m.message}`);
  } else if (m.request === 'record') {
    recordDone();
  } else if (m.request === 'fork') {
    forkDone();
  }
}

// ---- media

function closePlayer() {
  if (state.player) {
    state.drawnBefore += state.player.framesDrawn;
    state.player.close();
  }
  state.player = null;
  el.mse.hidden = true;
}

function startPlayer(m) {
  closePlayer();
  state.latencies = [];
  el.sCodec.title = m.codec_string;
  const opts = { onShown: onFrameShown, onFatal: (reason) => playerFailed(reason, m) };
  if (m.codec === 'fmp4') {
    el.mse.hidden = false;
    state.player = new MsePlayer(el.mse, el.video, m.codec_string, opts);
    stats.mode = 'mse';
    el.sCodec.textContent = 'MSE (fMP4)';
  } else {
    const p = new WebCodecsPlayer(el.video, opts);
    state.player = p;
    stats.mode = 'webcodecs';
    el.sCodec.textContent = 'WebCodecs';
    p.configure(m.codec_string);
  }
}

/** The player cannot go on: switch to MSE if it can, else give up with a clear message. */
function playerFailed(reason, m) {
  if (state.mode !== 'watching') return;
  closePlayer();
  if (m.codec !== 'fmp4' && mseSupports(m.codec_string)) {
    state.forceFmp4 = true;
    toast(reason === 'unsupported' ? 'Using the compatibility player (MSE)' : 'Decoder failed — switching to the compatibility player');
    connect(sendWatch);
  } else {
    finish(`This browser cannot play the stream (${m.codec_string}, ${reason}).`);
  }
}

function onBinary(buf) {
  const m = parseMedia(buf);
  const p = state.player;
  if (!m || !p || state.mode !== 'watching') return;
  if (m.track === Track.H264 ? p instanceof WebCodecsPlayer : p instanceof MsePlayer) p.push(m);
}

function onFrameShown(ptsUs, pushUs, atMs) {
  if (!el.loading.hidden) el.loading.hidden = true;
  if (!state.firstFrame) {
    state.firstFrame = true;
    render();
  }
  if (pushUs !== undefined && pushUs > 0) {
    const latency = performance.timeOrigin + atMs - (pushUs / 1000 - state.offset);
    state.latencies.push(latency);
    if (state.latencies.length > 60) state.latencies.shift();
  }
  const pc = state.pendingCaption;
  if (pc && ptsUs >= pc.ptsUs) setCaption(pc.text);
  // Steer → shown: from the click to the first frame made with the new prompt on screen.
  const sent = state.steerSent;
  if (sent && sent.ptsUs !== null && ptsUs >= sent.ptsUs) {
    stats.switchMs = Math.round(atMs - sent.atMs);
    stats.switches += 1;
    state.steerSent = null;
  }
}

/** Refreshes the stats panel and window.endlessStats (4 times a second). */
function updateStats() {
  const p = state.player;
  const now = performance.now();
  if (state.pendingCaption && now > state.pendingCaption.deadline) setCaption(state.pendingCaption.text);
  if (state.recording) updateRecordingTime();
  if (state.mode !== 'watching') return;
  stats.shownFps = p ? p.shownFps(now) : 0;
  stats.framesDrawn = state.drawnBefore + (p ? p.framesDrawn : 0);
  stats.latencyMs = state.latencies.length ? Math.round(median(state.latencies)) : null;
  const pageSecs = p ? p.queuedSeconds : 0;
  stats.queuedFrames = p instanceof WebCodecsPlayer ? p.queuedFrames : Math.round(pageSecs * state.fps);
  stats.bufferSeconds = stats.bufferedFrames / state.fps + pageSecs;
  el.sGen.textContent = `${Number(stats.generatedFps || 0).toFixed(1)} fps` + (stats.steps ? ` · ${stats.steps}` : '');
  el.sShown.textContent = `${stats.shownFps} fps`;
  el.sBuffer.textContent = `${stats.bufferSeconds.toFixed(2)} s`;
  el.sBuffer.title = `server ${stats.bufferedFrames} frames + page ${stats.queuedFrames} frames`;
  el.sLatency.textContent = stats.latencyMs === null ? '–' : `${stats.latencyMs} ms`;
  el.sViewers.textContent = String(stats.viewers);
  el.sStalls.textContent = String(stats.stalls);
}

// ---- panels

const wrap = (tag, cls, ...children) => {
  const n = node(tag, cls);
  n.append(...children);
  return n;
};
const li = (cls, ...children) => wrap('li', cls, ...children);

function node(tag, cls, text, attrs = {}) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined) n.textContent = text;
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  return n;
}

function formatDate(created) {
  let ms = NaN;
  if (typeof created === 'number') ms = created < 1e12 ? created * 1000 : created;
  else if (typeof created === 'string') ms = /^\d+$/.test(created) ? Number(created) * 1000 : Date.parse(created);
  return Number.isFinite(ms) ? new Date(ms).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' }) : '';
}

const formatAge = (secs) =>
  !(secs >= 0) ? '' : secs < 60 ? `${Math.round(secs)} s` : secs < 3600 ? `${Math.round(secs / 60)} min` : `${(secs / 3600).toFixed(1)} h`;

async function getJson(url) {
  const r = await fetch(url, { cache: 'no-store' });
  if (!r.ok) throw new Error(`${r.status}`);
  return r.json();
}

/** Fills a panel's list from a JSON array endpoint, with `card` rendering one entry. */
async function refreshList(ul, url, force, empty, card) {
  if (document.hidden && !force) return;
  try {
    const list = await getJson(url);
    ul.replaceChildren(...(Array.isArray(list) && list.length ? list.map(card) : [li('empty', empty)]));
  } catch {
    ul.replaceChildren(li('empty', 'Unavailable right now.'));
  }
}

/** Lists the live sessions (`GET /api/sessions`). */
function refreshSessions(force = false) {
  return refreshList(el.sessions, '/api/sessions', force, 'No live streams yet — start one.', (s) => {
    const current = s.id === state.session;
    const meta = node('div', 'card-meta');
    for (const t of [`${s.viewers} watching`, `${s.fps} fps`, s.size, formatAge(s.age_secs)]) meta.append(node('span', '', t));
    if (s.paused) meta.append(node('span', '', 'paused'));
    if (s.recording) meta.append(node('span', 'tag', '● rec'));
    const link = current
      ? node('span', '', 'You are watching this')
      : node('a', '', 'Watch', { href: watchPath(s.id), 'aria-label': `Watch: ${s.prompt}` });
    return li(current ? 'current' : '', node('p', 'card-prompt', s.prompt), meta, wrap('div', 'card-links', link));
  });
}

/** Lists the recordings (`GET /api/recordings`). */
function refreshRecordings(force = false) {
  return refreshList(el.recordings, '/api/recordings', force, 'No recordings yet. Press Record while you own a stream.', (r) => {
    const meta = wrap('div', 'card-meta', node('span', '', `${((r.bytes || 0) / 1048576).toFixed(1)} MB`), node('span', '', formatDate(r.created)));
    const links = wrap('div', 'card-links', node('a', '', 'Download', { href: r.url, download: r.name, 'aria-label': `Download ${r.name}` }));
    if (r.timeline_url) links.append(node('a', '', 'Timeline JSON', { href: r.timeline_url, target: '_blank', rel: 'noopener' }));
    return li('', node('p', 'card-prompt', r.prompt || r.name, { title: r.name }), meta, links);
  });
}

// ---- actions

function startStream() {
  const prompt = el.prompt.value.trim();
  if (!prompt) {
    el.prompt.focus();
    return;
  }
  const apiKey = el.apiKey.value.trim();
  state.session = null;
  state.token = null;
  state.firstFrame = false;
  setMode('creating');
  showLoading('Starting the stream…');
  connect(() => send(msg.create({ prompt, size: el.size.value, fps: Number(el.fps.value), apiKey })));
}

function steer() {
  const prompt = el.prompt.value.trim();
  if (!prompt) {
    el.prompt.focus();
    return;
  }
  if (send(msg.steer(prompt, Number(el.transition.value)))) {
    state.steerSent = { atMs: performance.now(), ptsUs: null };
    el.prompt.value = '';
    busy(el.steer, 300);
  }
}

function wire() {
  el.promptForm.addEventListener('submit', (e) => {
    e.preventDefault();
    if (state.mode === 'watching' && state.owner) steer();
    else if (state.mode === 'idle' || state.mode === 'ended') startStream();
  });
  for (const chip of document.querySelectorAll('.chip')) {
    chip.addEventListener('click', () => {
      el.prompt.value = chip.textContent;
      el.prompt.focus();
    });
  }
  el.transition.addEventListener('input', () => (el.transitionOut.textContent = `${el.transition.value} s`));
  el.pause.addEventListener('click', () => send(state.paused ? msg.resume() : msg.pause()));
  el.record.addEventListener('click', () => {
    if (send(msg.record(!state.recording))) recordDone = busy(el.record, 4000);
  });
  el.fork.addEventListener('click', () => {
    el.forkResult.hidden = true;
    if (send(msg.fork())) forkDone = busy(el.fork, 6000);
  });
  el.close.addEventListener('click', () => {
    if (window.confirm('Close this stream for everyone watching it?')) send(msg.close());
  });
  el.copyWatch.addEventListener('click', () => copyText(location.origin + watchPath(state.session), 'Watch link'));
  el.copyOwner.addEventListener('click', () => copyText(location.origin + ownerPath(state.session, state.token), 'Owner link'));
  el.restart.addEventListener('click', () => location.assign(wantFmp4 ? '/?codec=fmp4' : '/'));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) {
      refreshSessions();
      refreshRecordings();
    }
  });
}

/**
 * Offers the sizes and rates the server streams (`GET /api/source`): a model streams only the
 * size and rate it was trained for, so that becomes the only choice; the world renders any
 * size, and the server's default is added to the choices and selected.
 */
async function loadSource(attempt = 0) {
  let info;
  try {
    info = await getJson('/api/source');
  } catch (e) {
    // A server without the endpoint answers 404: keep the page's choices. A failed request
    // (the server still starting, a dropped connection) is tried again a few times.
    if (e.message !== '404' && attempt < 5) setTimeout(() => loadSource(attempt + 1), 250 * 2 ** attempt);
    return;
  }
  const offer = (select, value, label) => {
    value = String(value);
    if (info.fixed) select.replaceChildren();
    if (![...select.options].some((o) => o.value === value)) select.append(node('option', '', label, { value }));
    select.value = value;
    select.disabled = !!info.fixed;
  };
  offer(el.size, info.size, info.size.replace('x', ' × '));
  offer(el.fps, info.fps, `${info.fps} fps`);
  stats.source = info.source;
}

function init() {
  wire();
  loadSource();
  const watch = params.get('watch');
  if (watch) {
    state.session = stats.session = watch;
    state.token = params.get('token') || null;
    setMode('joining');
    showLoading('Connecting…');
    connect(sendWatch);
  } else {
    setMode('idle');
  }
  setInterval(updateStats, 250);
  refreshSessions(true);
  refreshRecordings(true);
  setInterval(() => {
    refreshSessions();
    refreshRecordings();
  }, 5000);
}

init();
