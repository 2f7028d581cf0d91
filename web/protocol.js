// endless wire protocol, version 1 (docs/protocol.md); mirrors streamer/src/protocol.rs.

/** Protocol version, the first byte of every binary media message. */
export const VERSION = 1;
/** Bytes of the media header. */
export const HEADER_LEN = 20;
/** Media tracks of binary messages. */
export const Track = Object.freeze({ H264: 1, FMP4_INIT: 2, FMP4_MEDIA: 3 });

/**
 * Parses a binary media message.
 * @param {ArrayBuffer} buf the whole WebSocket message
 * @returns {{version:number, track:number, keyframe:boolean, ptsUs:number, pushUs:number,
 *   payload:Uint8Array} | null} null when it is not a version-1 media message
 */
export function parseMedia(buf) {
  if (!(buf instanceof ArrayBuffer) || buf.byteLength < HEADER_LEN) return null;
  const v = new DataView(buf);
  const version = v.getUint8(0);
  const track = v.getUint8(1);
  const flags = v.getUint8(2);
  if (version !== VERSION || track < 1 || track > 3 || v.getUint8(3) !== 0 || flags > 1) return null;
  return {
    version,
    track,
    keyframe: (flags & 1) === 1,
    ptsUs: Number(v.getBigUint64(4, false)),
    pushUs: Number(v.getBigUint64(12, false)),
    payload: new Uint8Array(buf, HEADER_LEN),
  };
}

/** Drops undefined, null and empty-string fields: the server rejects unknown ones, not missing ones. */
function compact(obj) {
  const out = {};
  for (const [k, v] of Object.entries(obj)) if (v !== undefined && v !== null && v !== '') out[k] = v;
  return out;
}

/**
 * Client → server message constructors. Each returns the JSON text to send.
 * Optional arguments left out are omitted from the message.
 */
export const msg = {
  /**
   * @param {{prompt:string, size?:string, fps?:number, seed?:number, apiKey?:string}} o
   * @returns {string}
   */
  create: ({ prompt, size, fps, seed, apiKey }) =>
    JSON.stringify(compact({ type: 'create', prompt, seed, size, fps, api_key: apiKey })),
  /**
   * @param {string} session
   * @param {string|null|undefined} token owner token, absent for viewers
   * @param {'h264'|'fmp4'} codec
   * @returns {string}
   */
  watch: (session, token, codec) => JSON.stringify(compact({ type: 'watch', session, token, codec })),
  /**
   * @param {string} prompt
   * @param {number} [transitionSecs]
   * @returns {string}
   */
  steer: (prompt, transitionSecs) =>
    JSON.stringify(compact({ type: 'steer', prompt, transition_secs: transitionSecs })),
  /** @returns {string} */
  pause: () => JSON.stringify({ type: 'pause' }),
  /** @returns {string} */
  resume: () => JSON.stringify({ type: 'resume' }),
  /** @param {boolean} on @returns {string} */
  record: (on) => JSON.stringify({ type: 'record', on: !!on }),
  /** @returns {string} */
  fork: () => JSON.stringify({ type: 'fork' }),
  /** @returns {string} */
  close: () => JSON.stringify({ type: 'close' }),
  /** @param {number} t the client's wall clock in ms @returns {string} */
  ping: (t) => JSON.stringify({ type: 'ping', t }),
};

/**
 * Parses a text message from the server.
 * @param {string} text
 * @returns {{type:string, [k:string]:any} | null} null when it is not a JSON object with a type
 */
export function parseText(text) {
  try {
    const m = JSON.parse(text);
    return m && typeof m === 'object' && typeof m.type === 'string' ? m : null;
  } catch {
    return null;
  }
}

/** The client's wall clock in ms since the Unix epoch, sub-millisecond precise. */
export function wallMs() {
  return performance.timeOrigin + performance.now();
}
