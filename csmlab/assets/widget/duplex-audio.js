// csmlab duplex audio: the browser half of a live duplex session, with no framework.
//
//   mic -> getUserMedia -> capture worklet -> 80 ms frames (packFrame) -> send(buffer) -> kernel
//   kernel -> receive(buffer) -> playback worklet (jitter buffer) -> speaker
//
//   const audio = new DuplexAudio({send: (buf) => socket.send(buf), onUpdate: () => draw(audio.stats())});
//   await audio.start();            // in a click handler: browsers start audio only after a gesture
//   audio.receive(buffer);          // each system frame from the kernel (ArrayBuffer or DataView)
//   audio.stop();
//
// Used by the notebook widget (csmlab/widget, over an anywidget comm) and by `csmlab serve` (over a
// WebSocket): the transport is the caller's. The frame layout is documented in csmlab/widget/frames.py.
// Capture asks for echo cancellation (the speaker must not talk to the mic) and turns noise
// suppression and automatic gain off (they fight the codec). The AudioContext runs at 24 kHz when the
// browser allows it; otherwise both worklets resample (windowed sinc) between the device rate and 24 kHz.
// Round-trip latency is measured on the AudioContext clock: from the capture of a frame's first sample
// to the moment the system frame that consumed it starts to play. The device's own input and output
// latencies (outside the page's reach) are reported separately.

export const RATE = 24000; // Mimi's sample rate
export const FRAME = 1920; // samples per 80 ms frame
export const FRAME_MS = (1000 * FRAME) / RATE;
export const HEADER_BYTES = 16;
export const KIND_MIC = 1;
export const KIND_SYSTEM = 2;
export const FLAG_NO_SEQ = 1;
export const FLAG_LATE = 2;
const VERSION = 1;
const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1; // every browser in practice

/** One frame as one binary buffer: 16-byte header + float32 samples (see csmlab/widget/frames.py). */
export function packFrame(kind, seq, timeMs, samples, flags = 0) {
  const buffer = new ArrayBuffer(HEADER_BYTES + 4 * samples.length);
  const view = new DataView(buffer);
  view.setUint8(0, VERSION);
  view.setUint8(1, kind);
  view.setUint16(2, flags, true);
  view.setUint32(4, seq >>> 0, true);
  view.setFloat64(8, timeMs, true);
  if (LITTLE_ENDIAN) new Float32Array(buffer, HEADER_BYTES).set(samples);
  else for (let i = 0; i < samples.length; i++) view.setFloat32(HEADER_BYTES + 4 * i, samples[i], true);
  return buffer;
}

/** Decode an ArrayBuffer or DataView made by packFrame (or by the kernel's pack_frame). */
export function unpackFrame(data) {
  const view = data instanceof DataView ? data : new DataView(data);
  if (view.byteLength < HEADER_BYTES || (view.byteLength - HEADER_BYTES) % 4) {
    throw new Error(`a duplex frame is a ${HEADER_BYTES}-byte header plus float32 samples; got ${view.byteLength} bytes`);
  }
  const version = view.getUint8(0);
  if (version !== VERSION) throw new Error(`duplex frame version ${version} is not ${VERSION}: restart the kernel and reload the page`);
  const start = view.byteOffset + HEADER_BYTES;
  const samples = LITTLE_ENDIAN
    ? new Float32Array(view.buffer.slice(start, view.byteOffset + view.byteLength)) // an aligned copy we own
    : Float32Array.from({ length: (view.byteLength - HEADER_BYTES) / 4 }, (_, i) => view.getFloat32(HEADER_BYTES + 4 * i, true));
  const flags = view.getUint16(2, true);
  return { kind: view.getUint8(1), flags, seq: view.getUint32(4, true), timeMs: view.getFloat64(8, true), samples, noSeq: !!(flags & FLAG_NO_SEQ), late: !!(flags & FLAG_LATE) };
}

/** Level of a block in dBFS (RMS), floored at -90. */
export function levelDb(samples) {
  let sum = 0;
  for (let i = 0; i < samples.length; i++) sum += samples[i] * samples[i];
  return Math.max(-90, 10 * Math.log10(sum / Math.max(1, samples.length) + 1e-12));
}

/**
 * Streaming resampler between any two rates: a Blackman-windowed sinc, tabulated at 512 phases,
 * cut off below the lower Nyquist frequency so that 48 kHz -> 24 kHz does not alias. Its output does
 * not depend on how the input is cut into blocks. Delay: `width` input samples (~0.4 ms at 48 kHz).
 */
export class Resampler {
  constructor(inRate, outRate, halfTaps = 16) {
    this.step = inRate / outRate; // input samples per output sample
    const cutoff = 0.92 * Math.min(1, outRate / inRate); // of the input's Nyquist frequency
    this.width = Math.ceil(halfTaps / cutoff);
    this.phases = 512;
    const taps = 2 * this.width;
    this.table = new Float32Array((this.phases + 1) * taps);
    for (let p = 0; p <= this.phases; p++) {
      let sum = 0;
      for (let k = 0; k < taps; k++) {
        const x = k - this.width + 1 - p / this.phases; // distance from the output instant, input samples
        const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / this.width) + 0.08 * Math.cos((2 * Math.PI * x) / this.width);
        const s = x === 0 ? 1 : Math.sin(Math.PI * cutoff * x) / (Math.PI * cutoff * x);
        const h = Math.abs(x) >= this.width ? 0 : w * s;
        this.table[p * taps + k] = h;
        sum += h;
      }
      for (let k = 0; k < taps; k++) this.table[p * taps + k] /= sum; // unit gain at DC for every phase
    }
    this.history = new Float32Array(taps); // the last input samples, zeros at first
    this.pos = this.width - 1; // position of the next output instant in `history`, fractional
  }

  /** Resample the next block (Float32Array); returns a new Float32Array (possibly empty). */
  process(input) {
    const taps = 2 * this.width;
    const buf = new Float32Array(this.history.length + input.length);
    buf.set(this.history);
    buf.set(input, this.history.length);
    const out = [];
    while (Math.floor(this.pos) + this.width < buf.length) {
      const base = Math.floor(this.pos);
      const phase = Math.round((this.pos - base) * this.phases);
      const row = phase * taps;
      let acc = 0;
      for (let k = 0; k < taps; k++) acc += this.table[row + k] * buf[base - this.width + 1 + k];
      out.push(acc);
      this.pos += this.step;
    }
    const keep = Math.floor(this.pos) - this.width + 1; // first input sample still needed
    this.history = buf.slice(keep);
    this.pos -= keep;
    return Float32Array.from(out);
  }
}

/**
 * The playback worklet's adaptive jitter buffer (the idea of WebRTC's NetEQ, small). Pure: no audio
 * API, the caller gives the time, so it runs under node as well as on the audio thread.
 *
 * - **Target**: the audio it keeps in hand before each arrival is the recent high percentile
 *   (`quantile`, over the last `windowFrames` deliveries) of the inter-arrival excess (time since the
 *   previous delivery minus the audio that delivery brought), plus `marginMs`, within [minTargetMs,
 *   maxTargetMs]. Frames arriving within `mergeMs` of each other are one delivery: a burst that a busy
 *   main thread hands over at once carries its own cover for the gap before it. One stall is one
 *   sample of that statistic, so it does not raise the target; stalls that recur do.
 * - **Start**: playback starts `target` after an arrival that found the buffer empty (the first, or
 *   after an underrun): a frame later than that plays late, and the buffer counts an underrun.
 * - **Shed**: when the buffer stayed above target just before every arrival of the last `lowWindowMs`
 *   (a burst after a gap is not excess), it removes `blockMs` blocks at the read head, each spliced
 *   with a `fadeMs` raised-cosine cross-fade (no step, so no click). Quiet blocks (below `quietDb`, or
 *   `quietBelowDb` under the loud part of what is queued: a codec's noise floor) go first, at once;
 *   when the excess outlasts `graceMs`, blocks no louder than the median of what is queued go too,
 *   never two in a row. Every removed millisecond is counted (`shedMs`).
 * - **Overflow**: more than `maxBufferMs` queued is cut at the head the same way, counted as `droppedMs`.
 * - **Underrun**: dry, the output decays from its last sample to zero in ~2 ms; it resumes with a
 *   ~2 ms fade-in. Silence played while dry is counted (`underrunMs`).
 * Accounting, exact in samples: pushed = played + shed + dropped + buffered.
 */
export class PlayoutBuffer {
  constructor(rate, { targetMs = 60, minTargetMs = 10, maxTargetMs = 300, marginMs = 10, maxBufferMs = 1000,
    windowFrames = 50, lowWindowMs = 600, mergeMs = 8, quantile = 0.95, quietDb = -45, quietBelowDb = 20, graceMs = 300, blockMs = 10, fadeMs = 2.5, shed = true } = {}) {
    Object.assign(this, { rate, minTargetMs, maxTargetMs, marginMs, windowFrames, lowWindowMs, mergeMs, quantile, quietDb, quietBelowDb, graceMs, shed });
    this.targetMs = targetMs; // until enough arrivals were seen
    this.block = Math.round((blockMs / 1000) * rate);
    this.fade = Math.round((fadeMs / 1000) * rate);
    this.maxBuffered = Math.round((maxBufferMs / 1000) * rate);
    this.ring = new Float32Array(this.maxBuffered + 2 * rate); // room for the cap plus a burst of frames
    this.r = 0; // absolute index of the next sample to play
    this.w = 0; // absolute index just after the last sample written
    this.marks = []; // {pos, seq, arrived}: where each pushed frame starts
    this.excess = []; // inter-arrival excess (ms) of the last windowFrames arrivals
    this.lastArrival = null; // ms: when the last delivery (one frame, or a burst of them) began
    this.deliveryMs = 0; // audio that delivery brought
    this.lows = []; // {at, level, removed}: buffered samples just before each arrival of the last lowWindowMs, while playing
    this.removed = 0; // samples ever shed or dropped
    this.excessSince = null; // ms: when the buffer went above target
    this.loudCut = false; // the last block played was cut although not quiet
    this.sinceCheck = 0; // samples played since the last shedding decision
    this.playing = false;
    this.everPlayed = false;
    this.startAt = null;
    this.last = 0;
    this.gain = 1;
    this.ramp = 1 / (0.002 * rate);
    this.decay = Math.exp(-1 / (0.0005 * rate));
    this.counts = { pushed: 0, played: 0, shed: 0, dropped: 0, underruns: 0, underrunSamples: 0, shedCuts: 0, dropCuts: 0 };
  }

  get buffered() {
    return this.w - this.r;
  }

  ms(samples) {
    return (1000 * samples) / this.rate;
  }

  /** One frame arrives at `nowMs` (Float32Array at this rate). */
  push(x, seq, nowMs) {
    if (this.lastArrival !== null && nowMs - this.lastArrival < this.mergeMs) {
      this.deliveryMs += this.ms(x.length); // part of the same delivery (a burst): one sample of jitter
    } else {
      if (this.lastArrival !== null) {
        this.excess.push(nowMs - this.lastArrival - this.deliveryMs);
        if (this.excess.length > this.windowFrames) this.excess.shift();
        if (this.excess.length >= 5) this.targetMs = this.adaptTarget();
      }
      this.lastArrival = nowMs;
      this.deliveryMs = this.ms(x.length);
    }
    if (this.playing) {
      this.lows.push({ at: nowMs, level: this.buffered, removed: this.removed });
      while (this.lows[0].at < nowMs - this.lowWindowMs) this.lows.shift();
    }
    if (this.buffered + x.length > this.ring.length) this.cut(this.buffered + x.length - this.ring.length, "dropped", true);
    for (let i = 0; i < x.length; i++) this.ring[(this.w + i) % this.ring.length] = x[i];
    this.marks.push({ pos: this.w, seq, arrived: nowMs });
    this.w += x.length;
    this.counts.pushed += x.length;
    if (this.buffered > this.maxBuffered) this.cut(this.buffered - this.maxBuffered, "dropped", true);
    if (!this.playing && this.startAt === null) this.startAt = nowMs + this.targetMs;
  }

  adaptTarget() {
    const sorted = this.excess.map((e) => Math.max(0, e)).sort((a, b) => a - b);
    const high = sorted[Math.min(sorted.length - 1, Math.floor(this.quantile * sorted.length))];
    return Math.min(this.maxTargetMs, Math.max(this.minTargetMs, high + this.marginMs));
  }

  /** Samples above target: what the buffer held just before each arrival of the last `lowWindowMs` (less what
   * was cut since), at its lowest, minus the target. A burst that follows a gap is not excess: the next gap
   * needs it; a level that stays high over the window is. */
  excessSamples() {
    if (this.lows.length < 2) return 0;
    const low = Math.min(...this.lows.map((l) => l.level - (this.removed - l.removed)));
    return Math.max(0, low - (this.targetMs / 1000) * this.rate);
  }

  at(i) {
    return this.ring[i % this.ring.length];
  }

  levelDb(start, n) {
    let sum = 0;
    for (let i = start; i < start + n; i++) sum += this.at(i) * this.at(i);
    return 10 * Math.log10(sum / n + 1e-12);
  }

  /** Remove `n` samples at the read head, cross-fading into what follows; `force` cuts even without the fade's room. */
  cut(n, kind, force = false) {
    n = Math.min(n, this.buffered);
    const fade = Math.min(this.fade, this.buffered - n);
    if (!force && fade < this.fade) return false;
    for (let k = 0; k < fade; k++) {
      const wIn = 0.5 - 0.5 * Math.cos((Math.PI * (k + 0.5)) / fade); // raised cosine, 0 -> 1
      const j = (this.r + n + k) % this.ring.length;
      this.ring[j] = this.at(this.r + k) * (1 - wIn) + this.ring[j] * wIn;
    }
    this.r += n;
    for (const m of this.marks) if (m.pos < this.r) m.pos = this.r; // a frame whose start was cut starts after the cut
    this.removed += n;
    this.counts[kind] += n;
    this.counts[kind === "shed" ? "shedCuts" : "dropCuts"]++;
    return true;
  }

  /** Levels (dB) of the queued blocks, sorted: what "quiet" and "low-energy" mean for this audio now. */
  queuedDb() {
    const dbs = [];
    for (let p = this.r; p + this.block <= this.w; p += this.block) dbs.push(this.levelDb(p, this.block));
    return dbs.sort((a, b) => a - b);
  }

  /** At a block boundary: cut the block at the head if the buffer runs above target and the policy
   * allows (`queued`: queuedDb(), once per decision). True when a quiet block was cut (the next may go at once). */
  maybeShed(nowMs, queued) {
    if (this.excessSamples() < this.block) {
      this.excessSince = null;
      return false;
    }
    if (this.excessSince === null) this.excessSince = nowMs;
    if (this.buffered < this.block + this.fade) return false;
    const db = this.levelDb(this.r, this.block);
    const loud = queued[Math.floor(0.9 * (queued.length - 1))]; // the loud part of what is queued
    if (db < this.quietDb || db < loud - this.quietBelowDb) return this.cut(this.block, "shed");
    if (nowMs - this.excessSince >= this.graceMs && !this.loudCut && db <= queued[Math.floor(queued.length / 2)]) {
      this.loudCut = this.cut(this.block, "shed");
      return false;
    }
    this.loudCut = false;
    return false;
  }

  /**
   * Fill `out` (Float32Array) with the next samples, the first one played at `nowMs`. Returns the frames
   * that started to play: [{seq, arrived, started}] (ms).
   */
  pull(out, nowMs) {
    const started = [];
    if (!this.playing && this.startAt !== null && nowMs >= this.startAt) {
      this.playing = true;
      this.startAt = null;
      this.gain = this.everPlayed ? 0 : 1; // fade in after an underrun
      this.everPlayed = true;
      this.lows = [];
    }
    for (let i = 0; i < out.length; i++) {
      const t = nowMs + (1000 * i) / this.rate;
      if (this.playing && this.shed && ++this.sinceCheck >= this.block) {
        this.sinceCheck = 0;
        const queued = this.excessSamples() >= this.block ? this.queuedDb() : null; // the audio thread's budget: once
        for (let cuts = 0; cuts < 10 && this.maybeShed(t, queued); cuts++); // quiet blocks may go back to back
      }
      if (this.playing && this.buffered > 0) {
        while (this.marks.length && this.marks[0].pos <= this.r) {
          const m = this.marks.shift();
          started.push({ seq: m.seq, arrived: m.arrived, started: t, bufferedMs: this.ms(this.buffered) });
        }
        this.gain = Math.min(1, this.gain + this.ramp);
        this.last = this.at(this.r++) * this.gain;
        this.counts.played++;
      } else {
        if (this.playing) {
          this.playing = false; // ran dry: count it, then wait for the target delay again
          this.counts.underruns++;
        }
        if (this.everPlayed) this.counts.underrunSamples++;
        this.last *= this.decay;
      }
      out[i] = this.last;
    }
    return started;
  }

  stats() {
    const c = this.counts;
    return {
      bufferedMs: this.ms(this.buffered), targetMs: this.targetMs, underruns: c.underruns, underrunMs: this.ms(c.underrunSamples),
      shedMs: this.ms(c.shed), shedCuts: c.shedCuts, droppedMs: this.ms(c.dropped), dropCuts: c.dropCuts,
      pushedMs: this.ms(c.pushed), playedMs: this.ms(c.played),
    };
  }
}

/* ------------------------------------------------------------------------------------------------ */
/* The two AudioWorklet processors. They run on the audio thread, from a Blob URL built from this   */
/* source, so they see only what is pasted into that Blob: the constants, Resampler and these.      */

function workletScope() {
  /** A ring buffer of the last `seconds` of audio at the context rate, for `DuplexAudio.recording()`. */
  class Tap {
    constructor(seconds) {
      this.data = new Float32Array(Math.max(1, Math.round(seconds * sampleRate)));
      this.written = 0; // samples ever written
      this.end = 0; // context frame just after the last sample written
    }
    write(block) {
      for (let i = 0; i < block.length; i++) this.data[(this.written + i) % this.data.length] = block[i];
      this.written += block.length;
      this.end = currentFrame + block.length;
    }
    dump() {
      const n = Math.min(this.written, this.data.length);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = this.data[(this.written - n + i) % this.data.length];
      return { samples: out, endFrame: this.end, rate: sampleRate };
    }
  }

  /** Microphone -> 24 kHz -> 80 ms frames posted to the page with seq and capture time. */
  class CaptureProcessor extends AudioWorkletProcessor {
    constructor(options) {
      super();
      this.resampler = sampleRate === RATE ? null : new Resampler(sampleRate, RATE);
      this.frame = new Float32Array(FRAME);
      this.fill = 0;
      this.seq = 0;
      this.t0 = 0;
      this.tap = new Tap(options.processorOptions.tapSeconds);
      this.port.onmessage = (e) => {
        if (e.data.type === "dump") this.port.postMessage({ type: "tap", ...this.tap.dump() });
      };
    }

    process(inputs) {
      const channel = inputs[0][0];
      if (!channel) return true; // the source is not connected (yet)
      this.tap.write(channel);
      const start = currentTime;
      const x = this.resampler ? this.resampler.process(channel) : channel;
      for (let i = 0; i < x.length; i++) {
        if (this.fill === 0) this.t0 = start + i / RATE;
        this.frame[this.fill++] = x[i];
        if (this.fill === FRAME) {
          const posted = 1000 * (currentTime + channel.length / sampleRate);
          this.port.postMessage({ type: "frame", seq: this.seq++, t0: 1000 * this.t0, posted, samples: this.frame }, [this.frame.buffer]);
          this.frame = new Float32Array(FRAME);
          this.fill = 0;
        }
      }
      return true;
    }
  }

  /** System frames -> PlayoutBuffer (adaptive jitter buffer) -> speaker; reports each frame's start. */
  class PlaybackProcessor extends AudioWorkletProcessor {
    constructor(options) {
      super();
      const opts = options.processorOptions;
      this.resampler = sampleRate === RATE ? null : new Resampler(RATE, sampleRate);
      this.buffer = new PlayoutBuffer(sampleRate, opts.playout);
      this.tap = new Tap(opts.tapSeconds);
      this.port.onmessage = (e) => this.onMessage(e.data);
    }

    onMessage(msg) {
      if (msg.type === "dump") {
        this.port.postMessage({ type: "tap", ...this.tap.dump() });
        return;
      }
      const x = this.resampler ? this.resampler.process(msg.samples) : msg.samples;
      this.buffer.push(x, msg.seq, 1000 * currentTime);
    }

    process(inputs, outputs) {
      const out = outputs[0];
      const mono = out[0];
      for (const s of this.buffer.pull(mono, 1000 * currentTime)) this.port.postMessage({ type: "played", ...s });
      for (let c = 1; c < out.length; c++) out[c].set(mono);
      this.tap.write(mono);
      if (currentFrame % (sampleRate / 4) < mono.length) this.port.postMessage({ type: "status", ...this.buffer.stats() });
      return true;
    }
  }

  registerProcessor("csmlab-capture", CaptureProcessor);
  registerProcessor("csmlab-playback", PlaybackProcessor);
}

function workletUrl() {
  const constants = { RATE, FRAME };
  const source = [
    ...Object.entries(constants).map(([k, v]) => `const ${k} = ${JSON.stringify(v)};`),
    Resampler.toString(),
    PlayoutBuffer.toString(),
    `(${workletScope.toString()})();`,
  ].join("\n");
  return URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
}

/* ------------------------------------------------------------------------------------------------ */

const TIMELINE = 1000; // frames kept in DuplexAudio.timeline (80 s)

/** Median of the last values of a bounded list. */
function median(values) {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function pushBounded(list, value, max = 100) {
  list.push(value);
  if (list.length > max) list.shift();
}

/**
 * Why the microphone cannot start on this page, in words, or "" when it can. Browsers give
 * getUserMedia (and AudioWorklet) only to secure contexts: https:// pages and localhost.
 */
export function insecureOrigin(port = (typeof location !== "undefined" && location.port) || "8888") {
  if (typeof navigator !== "undefined" && navigator.mediaDevices && navigator.mediaDevices.getUserMedia) return "";
  return "the microphone needs https:// or localhost; on a remote machine open an SSH tunnel " +
    `(\`ssh -L ${port}:localhost:${port} host\`, then open http://localhost:${port}/) or serve behind TLS (deploy/Caddyfile)`;
}

/** A failure to start the microphone, in words that say what to do. */
export function microphoneError(e) {
  if (e.name === "InsecureContextError") return e.message;
  if (e.name === "NotAllowedError") return "the microphone was refused: allow it for this page (the icon left of the address bar), then press Start again";
  if (e.name === "NotFoundError") return "no microphone found: connect one, or choose one in the browser's settings";
  if (e.name === "NotReadableError") return "the microphone is busy or unavailable (another application may hold it)";
  return `could not start the microphone: ${e.name}: ${e.message}`;
}

/** The page side of a duplex session: capture, send, receive, play, measure. */
export class DuplexAudio {
  /**
   * @param {object} o
   * @param {(buffer: ArrayBuffer) => void} o.send      called with each packed 80 ms mic frame
   * @param {() => void} [o.onUpdate]                  called after each frame sent or played (then read stats())
   * @param {number|null} [o.contextRate=24000]         AudioContext rate to ask for; null: the device's
   * @param {number} [o.jitterMs=60]                    playback delay until the arrivals' jitter is measured
   * @param {object} [o.playout]                        more PlayoutBuffer options (maxBufferMs, shed, ...)
   * @param {number} [o.tapSeconds=15]                  seconds of mic and speaker audio kept for recording()
   */
  constructor({ send, onUpdate = () => {}, contextRate = RATE, jitterMs = 60, playout = {}, tapSeconds = 15 }) {
    Object.assign(this, { send, onUpdate, contextRate, tapSeconds });
    this.playout = { targetMs: jitterMs, ...playout };
    this.pending = new Map(); // seq -> {t0, posted, sentAt}: frames sent, waiting for their echo
    this.sending = true;
    this.resetStats();
  }

  resetStats() {
    this.counts = { sent: 0, notSent: 0, received: 0, played: 0, late: 0, concealed: 0, unmatched: 0, badFrames: 0 };
    this.series = { roundTrip: [], capture: [], transport: [], kernel: [], playback: [], other: [] };
    this.timeline = []; // per frame, ms: [started (AudioContext clock), round trip, capture, transport, kernel, playback]
    this.levels = { input: -90, output: -90 };
    this.player = { bufferedMs: 0, targetMs: NaN, underruns: 0, underrunMs: 0, shedMs: 0, shedCuts: 0, droppedMs: 0, dropCuts: 0 };
  }

  async start() {
    const insecure = insecureOrigin();
    if (insecure) throw Object.assign(new Error(insecure), { name: "InsecureContextError" });
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false, channelCount: 1 },
    });
    const { ctx, source } = this.openContext();
    this.ctx = ctx;
    await ctx.audioWorklet.addModule(workletUrl());
    const tapSeconds = this.tapSeconds;
    this.capture = new AudioWorkletNode(ctx, "csmlab-capture", { numberOfInputs: 1, numberOfOutputs: 1, processorOptions: { tapSeconds } });
    this.playback = new AudioWorkletNode(ctx, "csmlab-playback", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: { playout: this.playout, tapSeconds },
    });
    this.capture.port.onmessage = (e) => this.onCapture(e.data);
    this.playback.port.onmessage = (e) => this.onPlayback(e.data);
    source.connect(this.capture);
    this.capture.connect(ctx.destination); // it outputs silence; being connected keeps it running
    this.playback.connect(ctx.destination);
    await ctx.resume();
    this.source = source;
  }

  /** A 24 kHz context when the browser can feed it from the mic (Chromium can; Firefox refuses). */
  openContext() {
    const tries = this.contextRate ? [{ sampleRate: this.contextRate }, {}] : [{}];
    let error = null;
    for (const rate of tries) {
      const ctx = new AudioContext({ ...rate, latencyHint: "interactive" });
      try {
        return { ctx, source: ctx.createMediaStreamSource(this.stream) };
      } catch (e) {
        error = e;
        ctx.close();
      }
    }
    throw error;
  }

  onCapture(msg) {
    if (msg.type === "tap") return this.resolveTap("input", msg);
    this.levels.input = levelDb(msg.samples);
    if (!this.sending) {
      this.counts.notSent++;
    } else {
      this.send(packFrame(KIND_MIC, msg.seq, msg.t0, msg.samples));
      this.counts.sent++;
      this.pending.set(msg.seq, { t0: msg.t0, posted: msg.posted, sentAt: performance.now() });
      for (const seq of this.pending.keys()) {
        if (seq < msg.seq - 100) this.pending.delete(seq); // never answered (dropped in the kernel)
        else break;
      }
    }
    this.onUpdate();
  }

  /** A system frame from the kernel (ArrayBuffer or DataView). Throws on a malformed buffer. */
  receive(data) {
    let frame;
    try {
      frame = unpackFrame(data);
    } catch (e) {
      this.counts.badFrames++;
      throw e;
    }
    this.counts.received++;
    if (frame.late) this.counts.late++;
    this.levels.output = levelDb(frame.samples);
    const sent = frame.noSeq ? undefined : this.pending.get(frame.seq);
    if (frame.noSeq) this.counts.concealed++;
    else if (sent) {
      sent.receivedAt = performance.now();
      sent.kernelMs = frame.timeMs;
    } else this.counts.unmatched++;
    if (this.playback) this.playback.port.postMessage({ type: "frame", seq: frame.noSeq ? -1 : frame.seq, samples: frame.samples }, [frame.samples.buffer]);
  }

  onPlayback(msg) {
    if (msg.type === "tap") return this.resolveTap("output", msg);
    if (msg.type === "status") {
      const { type, ...player } = msg;
      Object.assign(this.player, player);
      return;
    }
    this.counts.played++;
    const sent = this.pending.get(msg.seq);
    if (!sent || sent.receivedAt === undefined) return;
    this.pending.delete(msg.seq);
    const s = this.series;
    const roundTrip = msg.started - sent.t0;
    const capture = sent.posted - sent.t0;
    const transport = sent.receivedAt - sent.sentAt - sent.kernelMs;
    const playback = msg.started - msg.arrived;
    pushBounded(s.roundTrip, roundTrip);
    pushBounded(this.timeline, [msg.started, roundTrip, capture, transport, sent.kernelMs, playback], TIMELINE);
    pushBounded(s.capture, capture);
    pushBounded(s.transport, transport);
    pushBounded(s.kernel, sent.kernelMs);
    pushBounded(s.playback, playback);
    pushBounded(s.other, roundTrip - capture - transport - sent.kernelMs - playback);
    this.onUpdate();
  }

  /** Counts, levels and latency figures (ms; medians of the last 100 frames, and the last). */
  stats() {
    const latency = {};
    for (const [k, v] of Object.entries(this.series)) latency[k] = { median: median(v), last: v.length ? v[v.length - 1] : NaN, n: v.length };
    const ctx = this.ctx;
    const track = this.stream && this.stream.getAudioTracks()[0];
    const input = track && track.getSettings ? track.getSettings().latency : undefined; // Chromium reports it
    const device = ctx ? { contextRate: ctx.sampleRate, baseLatencyMs: 1000 * (ctx.baseLatency || 0), outputLatencyMs: 1000 * (ctx.outputLatency || 0),
      inputLatencyMs: 1000 * (input || 0) } : {};
    return { counts: { ...this.counts }, levels: { ...this.levels }, player: { ...this.player }, latency, device, pending: this.pending.size };
  }

  /** The last `tapSeconds` of mic input and speaker output, sample-aligned, at the context rate. */
  recording() {
    const taps = {};
    const done = new Promise((resolve) => (this.resolveTap = (name, msg) => { taps[name] = msg; if (taps.input && taps.output) resolve(); }));
    this.capture.port.postMessage({ type: "dump" });
    this.playback.port.postMessage({ type: "dump" });
    return done.then(() => {
      const { input, output } = taps;
      const end = Math.min(input.endFrame, output.endFrame);
      const n = Math.min(input.samples.length - (input.endFrame - end), output.samples.length - (output.endFrame - end));
      const cut = (t) => t.samples.subarray(t.samples.length - (t.endFrame - end) - n, t.samples.length - (t.endFrame - end));
      return { input: cut(input), output: cut(output), rate: input.rate };
    });
  }

  stop() {
    this.sending = false;
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close();
    this.stream = this.ctx = this.capture = this.playback = null;
  }
}
