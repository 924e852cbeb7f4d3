// A live path on a simulated clock, for duplex-audio.js's PlayoutBuffer without a browser:
// a frame of 80 ms is captured every 80 ms, reaches the player `baseMs` + a random jitter later
// (in order; `burst` > 1 delivers them in groups, as a busy main thread does), or, during a stall,
// all at once when the stall ends; the player is pulled 128 samples
// at a time, as an AudioWorklet is. Prints, as JSON: each frame's round trip (capture of its first
// sample -> start of its playback), the buffer's stats, and the largest sample-to-sample step.
//
//   node tests/js/playout_sim.mjs '{"stalls": [[4000, 400]], "signal": "speech"}'
import { PlayoutBuffer } from "../../csmlab/assets/widget/duplex-audio.js";

const RATE = 24000, FRAME = 1920, FRAME_MS = 80, QUANTUM = 128;

function rng(seed) { // mulberry32: the same jitter on every run
  return () => {
    seed |= 0; seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Frame k's samples: a 230 Hz tone at -10 dBFS, either always ("tone") or 300 ms on, 200 ms off
 * ("speech"), the pauses silent or, as a codec's output is, noise at -40 dBFS ("noisy"). */
function frame(k, signal, noise) {
  const x = new Float32Array(FRAME);
  for (let i = 0; i < FRAME; i++) {
    const n = k * FRAME + i;
    const on = signal === "tone" || n % 12000 < 7200;
    x[i] = on ? 0.45 * Math.sin((2 * Math.PI * 230 * n) / RATE) : signal === "noisy" ? 0.0173 * (noise() - 0.5) : 0;
  }
  return x;
}

export function simulate({ seconds = 12, baseMs = 20, jitterMs = 15, stalls = [], burst = 1, signal = "speech", seed = 1, playout = {} } = {}) {
  const random = rng(seed);
  const n = Math.round((seconds * 1000) / FRAME_MS);
  const arrivals = [];
  let previous = 0, delay = 0;
  for (let k = 0; k < n; k++) {
    if (k % burst === 0) delay = random() * jitterMs;
    let t = (Math.floor(k / burst) + 1) * burst * FRAME_MS + baseMs + delay; // `burst` frames delivered together
    for (const [at, length] of stalls) if (t >= at && t < at + length) t = at + length;
    previous = Math.max(previous, t); // the transport keeps order
    arrivals.push(previous);
  }
  const buffer = new PlayoutBuffer(RATE, playout);
  const roundTrip = new Array(n).fill(null);
  const out = new Float32Array(QUANTUM);
  let next = 0, last = 0, maxStep = 0, lastStarted = 0;
  for (let q = 0; q * QUANTUM < (seconds + 1) * RATE; q++) {
    const now = (1000 * q * QUANTUM) / RATE;
    while (next < n && arrivals[next] <= now) buffer.push(frame(next, signal, random), next, arrivals[next]), next++;
    for (const s of buffer.pull(out, now)) roundTrip[s.seq] = s.started - s.seq * FRAME_MS, lastStarted = s.started;
    for (let i = 0; i < QUANTUM; i++) maxStep = Math.max(maxStep, Math.abs(out[i] - last)), last = out[i];
  }
  const toneStep = 0.45 * 2 * Math.sin((Math.PI * 230) / RATE); // the largest step of the tone itself
  return { frameMs: FRAME_MS, roundTrip, arrivals, stats: buffer.stats(), counts: buffer.counts, maxStep, toneStep, lastStarted };
}

if (typeof process !== "undefined" && process.argv[1] && import.meta.url.endsWith(process.argv[1].split("/").pop())) {
  console.log(JSON.stringify(simulate(JSON.parse(process.argv[2] || "{}"))));
}
