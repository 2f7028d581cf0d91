// Players: WebCodecs decoding with a playout scheduler, and a Media Source Extensions fallback.
// Both draw onto the page's canvas and report every shown frame through `onShown`.

import { Track } from './protocol.js';

/** Counts events in a sliding one-second window (frames drawn per second). */
export class RateMeter {
  constructor() {
    /** @type {number[]} */
    this.times = [];
  }

  /** Notes an event at `t` (performance.now() ms). */
  tick(t) {
    this.times.push(t);
    if (this.times.length > 240) this.times.splice(0, this.times.length - 240);
  }

  /** Events in the second before `now`. */
  rate(now = performance.now()) {
    let n = 0;
    for (let i = this.times.length - 1; i >= 0 && this.times[i] > now - 1000; i--) n++;
    return n;
  }
}

function sizeCanvas(canvas, w, h) {
  if (w > 0 && h > 0 && (canvas.width !== w || canvas.height !== h)) {
    canvas.width = w;
    canvas.height = h;
  }
}

/**
 * Presents decoded VideoFrames at their timestamps against a playout clock.
 *
 * The first frame's PTS is anchored to now + `jitterMs`; every later frame is due at
 * anchor + (pts − anchorPts). Frames that come late (a stall, a pause, a skipped viewer)
 * re-anchor the clock; a queue longer than `maxQueueMs` beyond the jitter buffer skips
 * ahead to `targetQueueMs`. Each frame is closed exactly once: drawn or dropped.
 */
export class FrameScheduler {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{jitterMs?:number, maxQueueMs?:number, targetQueueMs?:number, lateMs?:number,
   *   onShown?:(ptsUs:number, atMs:number)=>void, onDropped?:(ptsUs:number)=>void}} [opts]
   */
  constructor(canvas, opts = {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false }) || canvas.getContext('2d');
    this.jitterMs = opts.jitterMs ?? 100;
    this.maxQueueMs = opts.maxQueueMs ?? 1000;
    this.targetQueueMs = opts.targetQueueMs ?? 500;
    this.lateMs = opts.lateMs ?? 250;
    this.onShown = opts.onShown || (() => {});
    this.onDropped = opts.onDropped || (() => {});
    /** @type {{frame: VideoFrame, pts: number, due: number}[]} */
    this.queue = [];
    /** @type {{pts:number, at:number} | null} */
    this.anchor = null;
    this.lastPts = -Infinity;
    this.drawn = 0;
    this.dropped = 0;
    this.reanchors = 0;
    this.meter = new RateMeter();
    this.raf = 0;
    this.running = false;
  }

  /** Starts the requestAnimationFrame loop. */
  start() {
    if (this.running) return;
    this.running = true;
    const loop = () => {
      if (!this.running) return;
      this.tick(performance.now());
      this.raf = requestAnimationFrame(loop);
    };
    this.raf = requestAnimationFrame(loop);
  }

  /** Stops the loop and closes every queued frame. */
  stop() {
    this.running = false;
    cancelAnimationFrame(this.raf);
    this.clear();
  }

  /** Closes every queued frame and forgets the clock (the next frame re-anchors it). */
  clear() {
    for (const q of this.queue) this.drop(q);
    this.queue = [];
    this.anchor = null;
    this.lastPts = -Infinity;
  }

  /** Frames waiting to be shown. */
  get queued() {
    return this.queue.length;
  }

  /** Milliseconds of video waiting to be shown. */
  queuedMs(now = performance.now()) {
    return this.queue.length ? Math.max(0, this.queue[this.queue.length - 1].due - now) : 0;
  }

  due(pts) {
    return this.anchor.at + (pts - this.anchor.pts) / 1000;
  }

  reanchor(pts, at) {
    this.anchor = { pts, at };
    for (const q of this.queue) q.due = this.due(q.pts);
  }

  /**
   * Queues a decoded frame; the scheduler owns it from now on.
   * @param {VideoFrame} frame
   * @param {number} [now] performance.now() ms
   */
  push(frame, now = performance.now()) {
    const pts = frame.timestamp;
    if (!this.anchor || pts <= this.lastPts - 1e6 || this.due(pts) > now + 5000) {
      // First frame, or the timeline jumped (reconnect, new stream): start the clock here.
      if (this.anchor) this.reanchors++;
      this.reanchor(pts, now + this.jitterMs);
    } else if (this.due(pts) < now - this.lateMs) {
      // Underrun: the frame is late, so the clock restarts from it with a fresh jitter buffer.
      this.reanchors++;
      this.reanchor(pts, now + this.jitterMs);
    }
    if (pts <= this.lastPts) {
      // Out of order or repeated timestamp: keep the queue sorted, drop what it replaces.
      const i = this.queue.findIndex((q) => q.pts >= pts);
      if (i >= 0) for (const q of this.queue.splice(i)) this.drop(q);
    }
    this.queue.push({ frame, pts, due: this.due(pts) });
    this.lastPts = pts;
    const ahead = this.queuedMs(now) - this.jitterMs;
    if (ahead > this.maxQueueMs) {
      // The queue outgrew its budget: skip ahead so latency stays low.
      this.reanchors++;
      this.reanchor(this.anchor.pts, this.anchor.at - (ahead - this.targetQueueMs));
    }
    this.prune(now);
  }

  /** Drops overdue frames except the newest overdue one (which the next tick draws). */
  prune(now) {
    let last = -1;
    for (let i = 0; i < this.queue.length && this.queue[i].due <= now; i++) last = i;
    if (last > 0) for (const q of this.queue.splice(0, last)) this.drop(q);
  }

  drop(q) {
    this.dropped++;
    this.onDropped(q.pts);
    try { q.frame.close(); } catch { /* already closed */ }
  }

  /**
   * Draws the newest frame that is due at `now`, dropping older due ones.
   * @param {number} now performance.now() ms
   */
  tick(now) {
    // A frame due within 4 ms goes on this vsync rather than the next.
    let i = -1;
    while (i + 1 < this.queue.length && this.queue[i + 1].due <= now + 4) i++;
    if (i < 0) return;
    for (const q of this.queue.splice(0, i)) this.drop(q);
    const { frame, pts } = this.queue.shift();
    sizeCanvas(this.canvas, frame.displayWidth, frame.displayHeight);
    this.ctx.drawImage(frame, 0, 0, this.canvas.width, this.canvas.height);
    frame.close();
    this.drawn++;
    this.meter.tick(now);
    this.onShown(pts, now);
  }
}

/**
 * H.264 (Annex B access units, track 1) through WebCodecs' VideoDecoder into a FrameScheduler.
 */
export class WebCodecsPlayer {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {{onShown?:(ptsUs:number, pushUs:number|undefined, atMs:number)=>void,
   *   onFatal?:(reason:string)=>void, jitterMs?:number}} [opts]
   */
  constructor(canvas, opts = {}) {
    this.onShownCb = opts.onShown || (() => {});
    this.onFatal = opts.onFatal || (() => {});
    /** push time (µs) by PTS, until the frame is shown or dropped */
    this.pushByPts = new Map();
    this.scheduler = new FrameScheduler(canvas, {
      jitterMs: opts.jitterMs,
      onShown: (pts, at) => {
        const push = this.pushByPts.get(pts);
        this.pushByPts.delete(pts);
        this.onShownCb(pts, push, at);
      },
      onDropped: (pts) => this.pushByPts.delete(pts),
    });
    this.decoder = null;
    this.config = null;
    /** chunks received while the configuration is checked */
    this.pending = [];
    this.needKey = true;
    this.closed = false;
    this.decoded = 0;
    this.skipped = 0;
    this.resets = 0;
    this.errorsSinceOutput = 0;
  }

  /**
   * Checks and applies the decoder configuration, then starts presenting.
   * @param {string} codecString e.g. "avc1.42C01F" from the `watching` message
   * @returns {Promise<boolean>} whether the browser can decode it
   */
  async configure(codecString) {
    this.config = { codec: codecString, optimizeForLatency: true, hardwareAcceleration: 'no-preference' };
    const ok = await Promise.resolve()
      .then(() => VideoDecoder.isConfigSupported(this.config))
      .then((r) => !!r.supported, () => false);
    if (this.closed) return ok;
    if (!ok) {
      this.onFatal('unsupported');
      return false;
    }
    this.makeDecoder();
    this.scheduler.start();
    for (const m of this.pending.splice(0)) this.decode(m);
    return true;
  }

  makeDecoder() {
    this.decoder = new VideoDecoder({ output: (f) => this.onOutput(f), error: () => this.onError() });
    this.decoder.configure(this.config);
    this.needKey = true;
  }

  /**
   * Feeds one track-1 media message (see parseMedia).
   * @param {{keyframe:boolean, ptsUs:number, pushUs:number, payload:Uint8Array}} m
   */
  push(m) {
    if (this.closed) return;
    if (!this.decoder) {
      if (m.keyframe || this.pending.length) this.pending.push(m);
      if (this.pending.length > 240) this.pending = [];
      return;
    }
    this.decode(m);
  }

  decode(m) {
    if (this.needKey && !m.keyframe) {
      this.skipped++;
      return;
    }
    if (!this.decoder || this.decoder.state !== 'configured') return;
    this.needKey = false;
    this.pushByPts.set(m.ptsUs, m.pushUs);
    if (this.pushByPts.size > 600) this.pushByPts.delete(this.pushByPts.keys().next().value);
    try {
      this.decoder.decode(
        new EncodedVideoChunk({ type: m.keyframe ? 'key' : 'delta', timestamp: m.ptsUs, data: m.payload }),
      );
    } catch {
      this.onError();
    }
  }

  onOutput(frame) {
    if (this.closed) {
      frame.close();
      return;
    }
    this.decoded++;
    this.errorsSinceOutput = 0;
    this.scheduler.push(frame);
  }

  /** A decoder error: start over with a fresh decoder from the next keyframe. */
  onError() {
    if (this.closed) return;
    this.resets++;
    this.errorsSinceOutput++;
    try { this.decoder?.close(); } catch { /* closed by the error already */ }
    this.decoder = null;
    if (this.errorsSinceOutput >= 3) {
      this.onFatal('decode');
      return;
    }
    try {
      this.makeDecoder();
    } catch {
      this.onFatal('decode');
    }
  }

  /** Frames decoded and waiting to be shown. */
  get queuedFrames() {
    return this.scheduler.queued + (this.decoder?.decodeQueueSize || 0);
  }

  /** Seconds of video waiting to be shown. */
  get queuedSeconds() {
    return this.scheduler.queuedMs() / 1000;
  }

  /** Frames drawn so far. */
  get framesDrawn() {
    return this.scheduler.drawn;
  }

  /** Frames drawn in the last second. */
  shownFps(now) {
    return this.scheduler.meter.rate(now);
  }

  /** Releases the decoder and every frame. */
  close() {
    this.closed = true;
    this.pending = [];
    try { if (this.decoder && this.decoder.state !== 'closed') this.decoder.close(); } catch { /* already closed */ }
    this.decoder = null;
    this.scheduler.stop();
    this.pushByPts.clear();
  }
}

/** Whether Media Source Extensions can play H.264 in fMP4 with this codec string. */
export function mseSupports(codecString = 'avc1.42C01F') {
  const MS = window.MediaSource || window.ManagedMediaSource;
  return !!MS && MS.isTypeSupported(`video/mp4; codecs="${codecString}"`);
}

/**
 * fMP4 (track 2 init, track 3 segments) through Media Source Extensions into a <video>,
 * mirrored onto the canvas frame by frame. Keeps playback near the live edge.
 */
export class MsePlayer {
  /**
   * @param {HTMLVideoElement} video muted, playsinline
   * @param {HTMLCanvasElement} canvas
   * @param {string} codecString
   * @param {{onShown?:(ptsUs:number, pushUs:number|undefined, atMs:number)=>void,
   *   onFatal?:(reason:string)=>void}} [opts]
   */
  constructor(video, canvas, codecString, opts = {}) {
    this.video = video;
    this.canvas = canvas;
    this.ctx = canvas.getContext('2d', { alpha: false }) || canvas.getContext('2d');
    this.onShown = opts.onShown || (() => {});
    this.onFatal = opts.onFatal || (() => {});
    this.mime = `video/mp4; codecs="${codecString}"`;
    /** @type {Uint8Array[]} */
    this.queue = [];
    /** segment start (s) → push time (µs), for latency */
    this.segments = [];
    this.haveInit = false;
    this.sb = null;
    this.closed = false;
    /** recent distances to the live edge: {at, lag} */
    this.lags = [];
    /** seeks to skip a gap or catch up with the live edge */
    this.skips = 0;
    this.framesDrawn = 0;
    this.meter = new RateMeter();
    const MS = window.MediaSource || window.ManagedMediaSource;
    if (!MS || !MS.isTypeSupported(this.mime)) {
      queueMicrotask(() => this.onFatal('unsupported'));
      return;
    }
    this.ms = new MS();
    this.url = URL.createObjectURL(this.ms);
    video.disableRemotePlayback = true;
    video.muted = true;
    video.src = this.url;
    this.ms.addEventListener('sourceopen', () => {
      if (this.closed) return;
      try {
        this.sb = this.ms.addSourceBuffer(this.mime);
        this.sb.mode = 'segments';
      } catch {
        return this.onFatal('unsupported');
      }
      this.sb.addEventListener('updateend', () => {
        this.keepLive();
        this.pump();
      });
      this.pump();
    }, { once: true });
    this.timer = setInterval(() => this.keepLive(), 250);
    this.startDrawing();
  }

  /**
   * Feeds one track-2 or track-3 media message (see parseMedia).
   * @param {{track:number, ptsUs:number, pushUs:number, payload:Uint8Array}} m
   */
  push(m) {
    if (this.closed) return;
    if (m.track === Track.FMP4_INIT) {
      this.haveInit = true;
    } else if (!this.haveInit) {
      return;
    } else {
      this.segments.push({ start: m.ptsUs / 1e6, pushUs: m.pushUs });
      if (this.segments.length > 300) this.segments.splice(0, 100);
    }
    this.queue.push(m.payload);
    this.pump();
  }

  pump() {
    const sb = this.sb;
    if (this.closed || !sb || sb.updating || !this.queue.length) return;
    const v = this.video;
    const b = sb.buffered;
    // Trim what is well behind the playhead before appending more.
    if (b.length && v.currentTime - b.start(0) > 30) {
      try {
        sb.remove(0, v.currentTime - 10);
        return;
      } catch {
        /* fall through to append */
      }
    }
    const data = this.queue.shift();
    try {
      sb.appendBuffer(data);
    } catch (e) {
      if (e && e.name === 'QuotaExceededError' && b.length && v.currentTime - b.start(0) > 1) {
        this.queue.unshift(data);
        try {
          sb.remove(0, v.currentTime - 1);
        } catch {
          this.onFatal('append');
        }
      } else {
        this.onFatal('append');
      }
    }
  }

  /** Skips gaps and stays within a second of the live edge. */
  keepLive() {
    const v = this.video;
    if (this.closed || !this.sb) return;
    const b = v.buffered;
    if (!b.length) return;
    const t = v.currentTime;
    let inside = false;
    let next = -1;
    for (let i = 0; i < b.length; i++) {
      if (t >= b.start(i) && t < b.end(i)) inside = true;
      else if (next < 0 && b.start(i) > t) next = b.start(i);
    }
    const end = b.end(b.length - 1);
    if (!inside && next >= 0) {
      this.skips++;
      v.currentTime = next + 0.01;
      this.lags = [];
    } else {
      // Seek only when even the lowest lag of the last two seconds is over a second: a burst
      // of frames (a whole chunk at once) that plays down by itself is left alone.
      const now = performance.now();
      this.lags.push({ at: now, lag: end - t });
      while (this.lags.length && this.lags[0].at < now - 2000) this.lags.shift();
      const covered = now - this.lags[0].at >= 1500;
      if (covered && Math.min(...this.lags.map((l) => l.lag)) > 1) {
        this.skips++;
        this.lags = [];
        v.currentTime = Math.max(b.start(b.length - 1), end - 0.2);
      }
    }
    if (v.paused && v.readyState >= 2) v.play().catch(() => {});
  }

  startDrawing() {
    const v = this.video;
    const draw = (now, mediaTime) => {
      sizeCanvas(this.canvas, v.videoWidth, v.videoHeight);
      if (this.canvas.width) this.ctx.drawImage(v, 0, 0, this.canvas.width, this.canvas.height);
      this.framesDrawn++;
      this.meter.tick(now);
      this.onShown(Math.round(mediaTime * 1e6), this.pushFor(mediaTime), now);
    };
    if ('requestVideoFrameCallback' in HTMLVideoElement.prototype) {
      const cb = (now, meta) => {
        if (this.closed) return;
        draw(performance.now(), meta.mediaTime);
        this.vfc = v.requestVideoFrameCallback(cb);
      };
      this.vfc = v.requestVideoFrameCallback(cb);
    } else {
      // No requestVideoFrameCallback: draw whenever the playhead moved.
      let last = -1;
      const loop = () => {
        if (this.closed) return;
        if (v.readyState >= 2 && v.currentTime !== last) draw(performance.now(), (last = v.currentTime));
        this.raf = requestAnimationFrame(loop);
      };
      this.raf = requestAnimationFrame(loop);
    }
  }

  /** Push time of the segment holding media time `t` (s), when the timelines agree. */
  pushFor(t) {
    for (let i = this.segments.length - 1; i >= 0; i--) {
      const s = this.segments[i];
      if (s.start <= t + 1e-3) return t - s.start < 5 ? s.pushUs : undefined;
    }
    return undefined;
  }

  /** Frames buffered ahead of the playhead, in seconds. */
  get queuedSeconds() {
    const b = this.video.buffered;
    return b.length ? Math.max(0, b.end(b.length - 1) - this.video.currentTime) : 0;
  }

  /** Frames shown in the last second. */
  shownFps(now) {
    return this.meter.rate(now);
  }

  /** Detaches the media source and stops drawing. */
  close() {
    this.closed = true;
    clearInterval(this.timer);
    cancelAnimationFrame(this.raf);
    if (this.vfc && this.video.cancelVideoFrameCallback) this.video.cancelVideoFrameCallback(this.vfc);
    this.queue = [];
    try { if (this.ms && this.ms.readyState === 'open') this.ms.endOfStream(); } catch { /* closing anyway */ }
    this.video.pause();
    this.video.removeAttribute('src');
    this.video.load();
    if (this.url) URL.revokeObjectURL(this.url);
  }
}
