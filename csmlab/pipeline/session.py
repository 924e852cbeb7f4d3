"""A full-duplex session: the user's audio in, the system's audio and text out, one 80 ms step at a time.

    push(chunk, rate, seq) -> input: validate, jitter buffer, resample to 24 kHz, cut 1920-sample frames
    each frame -> encode (user codec session) -> brain -> decode (system codec session) -> Step

Each layer is timed (`Step.compute_ms`) and writes to one event log (`session.events`). The clock is
simulated (as fast as compute allows) or real time; the code is the same (`csmlab.pipeline.clock`).

Policies, stated once:
- **Late (real time)**: a step's output is due `deadline_ms` (80) after its input frame was complete.
  A step that finishes later sends silence instead of its audio (its text is kept) and counts as late.
  Compute never skips a frame, so the codec's and the brain's states follow the audio; after an
  overrun the next steps run back to back until the session is on time again.
  A step runs its layers one after the other, so its compute is the frame's input-to-output time,
  and that is what the deadline judges. The second core shortens it as intra-op threads
  (`threads`: measured at start for Moshi's brain, cached per host, `csmlab.pipeline.threads`).
  Overlapping layers instead (encoding frame t+1 while the brain and the decode run frame t) would
  raise throughput, not shorten a frame's way through: each output would come one frame later
  (due 160 ms after its frame is complete) and the conversation's latency would grow by 80 ms.
- **Brain faults**: the brain runs on its own worker thread. If it raises, silence goes out, a
  `ComponentError` is logged, and the next step calls it again. If it does not answer within
  `stall_ms` (default: 1 s on the real-time clock, no limit on the simulated one), silence goes out
  and the stall is counted; while it is still busy the following steps send silence (counted as
  `brain_busy`), and its late answer is thrown away.
- **Codec faults**: a codec session that fails is logged and reset; that step is silent.
- **Malformed audio**: `push` raises `AudioFormatError` before anything changes; the next chunk
  carries on. The event log counts it.
- **Overload** (`csmlab.pipeline.overload`, real-time clock only: a simulation measures compute and
  judges nothing): when the median compute of the last 12 computed steps runs above 80 ms (or close
  to it), the session says so (`session.overload`, `report()["overload"]`)
  and sheds work by its `overload` policy: `"skip"` (default): a concealed step (silence standing in
  for a frame that was lost or dropped) skips encode, brain and decode and sends silence, instead of
  costing a full step; `"rate"`: once overloaded, the brain runs at a declared lower rate (one frame
  in 2, 3 or 4, said in words), the frames between go out silent without compute, and a computed
  step has the skipped frames' time before it is late; `"none"`: every step computed. A shed step
  says so (`Step.shed`).
- **Disconnect**: `disconnect()` ends the current source (what it sent is flushed, nothing is
  lost); until the next `push`, `tick()` keeps the clock going with silent, concealed steps. The next
  `push` is a reconnect: any numbering and sample rate.
"""
from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np

from csmlab.audio import Resampler, check_sample_rate, to_mono
from csmlab.codec.mimi_stream import stream_threads
from csmlab.codec.codes import integer_codes
from csmlab.errors import AudioFormatError, CodesError, ComponentError, CsmlabError, StreamClosedError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE, latency_summary
from csmlab.pipeline.brain import FRAME_MS, SILENT, Brain, Heard, Said
from csmlab.pipeline.clock import make_clock
from csmlab.pipeline.events import EventLog
from csmlab.pipeline.jitter import JitterBuffer, check_seq
from csmlab.pipeline.overload import Overload
from csmlab.pipeline.threads import step_threads

LAYERS = ("input", "encode", "brain", "decode")
STALL_MS = 1000.0  # a brain silent this long on the real-time clock is stalled
FAULTS = ("malformed", "concealed", "skipped", "duplicate", "late", "restart", "disconnect", "reconnect", "brain_error",
          "brain_stall", "brain_busy", "error", "bad_output",
          "overload_overloaded")  # event kinds that report() counts as faults


@dataclass(frozen=True)
class Step:
    """One 80 ms step of the session: what went out, and what it cost."""

    index: int
    pcm: np.ndarray  # [1920] float32 system audio at 24 kHz (silence when none)
    text: str
    seq: int | None  # the last sender seq whose audio this step consumed (None: concealed frame)
    late: bool  # compute overran the deadline (real-time clock): silence went out
    compute_ms: dict[str, float]
    t_ms: float = 0.0  # when the step's input frame was complete, on the session clock
    concealed: bool = False  # the user's frame was (all) silence standing in for lost audio
    fault: str | None = None  # what went wrong in this step, if anything ("brain_error", ...)
    shed: bool = False  # the overload policy shed its encode, brain and decode: silence went out


@dataclass(frozen=True)
class Packet:
    """One delivery from an audio source: a chunk (with its seq) at time `at` (s), or a disconnect."""

    at: float
    chunk: np.ndarray | None = None
    sample_rate: int = SAMPLE_RATE
    seq: int | None = None
    kind: str = "audio"  # "audio" | "disconnect"


def packets(audio, sample_rate: int, chunk_ms: float = FRAME_MS) -> list[Packet]:
    """A whole clip as a live source would send it: `chunk_ms` chunks, numbered, each due when complete."""
    mono = to_mono(audio)
    rate = check_sample_rate(sample_rate)
    size = max(1, round(rate * chunk_ms / 1000))
    return [Packet((i + 1) * size / rate, mono[i * size:(i + 1) * size], rate, i) for i in range(-(-len(mono) // size))]


@dataclass
class _Input:
    """24 kHz samples waiting to fill a frame, and which sender frame (seq) each run of them came from."""

    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    runs: deque = field(default_factory=deque)  # (seq or None, concealed, n samples)

    def add(self, samples: np.ndarray, seq: int | None, concealed: bool) -> None:
        if len(samples):
            self.audio = np.concatenate([self.audio, samples])
            self.runs.append((seq, concealed, len(samples)))

    def frames(self) -> Iterator[tuple[np.ndarray, int | None, bool]]:
        """Whole frames: (pcm [1920], last real seq in it or None, all concealed?)."""
        while len(self.audio) >= FRAME_SIZE:
            frame, self.audio = self.audio[:FRAME_SIZE], self.audio[FRAME_SIZE:]
            need, seq, real = FRAME_SIZE, None, False
            while need:
                run_seq, concealed, n = self.runs.popleft()
                take = min(n, need)
                if not concealed:
                    seq, real = run_seq, True
                if take < n:
                    self.runs.appendleft((run_seq, concealed, n - take))
                need -= take
            yield frame, seq, not real


class DuplexSession:
    """Audio in, audio and text out, through input, codec, brain and codec layers on one clock."""

    def __init__(self, brain: Brain, clock="simulated", *, codec=None, window: int = 3, max_gap: int = 50,
                 deadline_ms: float = FRAME_MS, stall_ms: float | None = None, events: int = 2000,
                 history: int = 20_000, overload: str = "skip", threads: int | None = None):
        self.brain, self.clock = brain, make_clock(clock)
        if stall_ms is None:  # a live session cannot wait long; a simulation measures compute and never drops work
            stall_ms = STALL_MS if self.clock.kind == "realtime" else math.inf
        self.deadline_ms, self.stall_ms = deadline_ms, stall_ms
        self.events = EventLog(events)
        self._jitter = JitterBuffer(window, max_gap, log=lambda kind, detail: self._log("input", kind, detail))
        self._input = _Input()
        self._resampler: Resampler | None = None
        self._rate: int | None = None
        codec = codec or brain.codec()
        if (brain.hears_codes or brain.speaks_codes) and codec is None:
            raise CsmlabError(f"brain {brain.name!r} works on Mimi codes but gives no codec: pass codec=load_codec(8)")
        self.codec = codec
        self.threads = step_threads(brain, codec, threads)  # measured at start for Moshi's brain, cached per host
        per_stream = self.threads.count if codec is not None and codec.name == "moshi" and self.threads.how != "torch" else None
        self._user = codec.stream(per_stream) if brain.hears_codes else None  # the user's audio -> codes
        self._system = codec.stream(per_stream) if brain.speaks_codes else None  # the brain's codes -> audio
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"brain-{brain.name}")
        # Moshi's brain on the CPU: its codec calls run on the brain's worker thread too, so that one
        # thread (one OpenMP team) runs the whole step, as `threads_trial` measured it.
        self._codecs_on_worker = self.threads.how != "torch" and brain.measures_threads(codec)
        self._busy = None  # the future of a stalled brain call
        self._index, self._closed = 0, False
        self._disconnected_at: float | None = None
        self._compute: dict[str, deque] = {k: deque(maxlen=history) for k in (*LAYERS, "total")}
        self._late = self._faulted = 0
        self.overload = Overload(brain.name, policy=overload)
        brain.attach(lambda kind, detail="": self._log("brain", kind, detail))

    # ---- input --------------------------------------------------------------------------------
    def push(self, chunk, sample_rate, seq: int | None = None) -> list[Step]:
        """Take a chunk of any size, rate and dtype (csmlab.audio rules); return the steps it completed."""
        return self._push(chunk, sample_rate, seq, None)

    def _push(self, chunk, sample_rate, seq, at: float | None) -> list[Step]:
        self._check_open()
        start = time.perf_counter()
        try:
            rate = check_sample_rate(sample_rate)
            seq = check_seq(seq)
            mono = to_mono(chunk)
            if self._rate is not None and rate != self._rate and self._disconnected_at is None:
                raise AudioFormatError(f"sample rate changed mid-stream from {self._rate} to {rate} Hz: keep one rate "
                                       "per connection, or call session.disconnect() before switching")
        except AudioFormatError as err:
            self._log("input", "malformed", str(err))
            raise
        at = self.clock.now() if at is None else at
        steps = self.tick(at) if self._disconnected_at is not None else []
        if self._disconnected_at is not None:
            self._reconnect(rate)
        elif self._resampler is None:
            self._rate, self._resampler = rate, Resampler(rate)
        self._feed(self._jitter.push(seq, mono))
        return steps + self._run_frames(at, 1000 * (time.perf_counter() - start))

    def _feed(self, released) -> None:
        for frame in released:
            self._input.add(self._resampler.push(frame.audio), frame.seq, frame.concealed)

    def _end_source(self) -> None:
        """Flush what the source sent: held frames, the resampler's tail, the last partial frame."""
        if self._resampler is None:
            return
        self._feed(self._jitter.restart())
        self._input.add(self._resampler.push(np.zeros(0, np.float32), last=True), None, True)
        short = -len(self._input.audio) % FRAME_SIZE
        self._input.add(np.zeros(short, np.float32), None, True)
        self._resampler = None

    def end(self) -> list[Step]:
        """The source has finished: flush it (nothing is lost; the last frame is zero-padded)."""
        self._check_open()
        self._end_source()
        return self._run_frames(self.clock.now(), 0.0)

    def disconnect(self) -> list[Step]:
        """The source went away: flush it; `tick()` keeps the clock going with silence until it is back."""
        steps = self.end()
        self._disconnected_at = self.clock.now()
        self._silent_steps = 0
        self._log("input", "disconnect", "source gone: silent steps until it reconnects")
        return steps

    def tick(self, now: float | None = None) -> list[Step]:
        """While disconnected: one silent, concealed step per 80 ms that passed. Otherwise nothing."""
        if self._disconnected_at is None:
            return []
        now = self.clock.now() if now is None else now
        due = int((now - self._disconnected_at) * 1000 / FRAME_MS + 1e-6)  # steps whose time has come (float-safe)
        steps = []
        while self._silent_steps < due:
            self._silent_steps += 1
            at = self._disconnected_at + self._silent_steps * FRAME_MS / 1000
            steps.append(self._step(np.zeros(FRAME_SIZE, np.float32), None, True, at, {"input": 0.0}))
        return steps

    def _tick_until(self, t: float) -> Iterator[Step]:
        """While disconnected, the silent steps due before `t`, each at its own time on the clock."""
        while self._disconnected_at is not None:
            due = self._disconnected_at + (self._silent_steps + 1) * FRAME_MS / 1000
            if due > t:
                return
            self.clock.wait_until(due)
            yield from self.tick(due)

    def _reconnect(self, rate: int) -> None:
        self._log("input", "reconnect", f"source back after {self._silent_steps} silent steps, at {rate} Hz")
        self._disconnected_at = None
        self._rate, self._resampler = rate, Resampler(rate)

    def _run_frames(self, at: float, input_ms: float) -> list[Step]:
        steps = []
        for frame, seq, concealed in self._input.frames():
            steps.append(self._step(frame, seq, concealed, at, {"input": input_ms}))
            input_ms = 0.0
        return steps

    # ---- one step -----------------------------------------------------------------------------
    def _step(self, frame: np.ndarray, seq, concealed: bool, at: float, ms: dict) -> Step:
        if self.overload.sheds(self._index, concealed):
            return self._shed(seq, at, ms, concealed)
        codes, fault = self._encode(frame, ms)
        said, brain_fault = self._think(Heard(self._index, frame, codes, concealed), ms)
        pcm, decode_fault = self._speak(said, ms)
        fault = fault or brain_fault or decode_fault
        ms["total"] = sum(ms.values())
        late = 1000 * (self.clock.now() - at) > self.deadline_ms + self.overload.slack_ms
        if late:
            self._late += 1
            self._log("clock", "late", f"done {1000 * (self.clock.now() - at):.0f} ms after its frame: silence sent")
            pcm = np.zeros(FRAME_SIZE, np.float32)
        self._faulted += fault is not None
        for layer, value in ms.items():
            self._compute[layer].append(value)
        if self.clock.kind == "realtime" and self.overload.observe(ms["total"] - ms.get("input", 0.0)):
            self._log("clock", f"overload_{self.overload.state}", self.overload.message())
        step = Step(self._index, pcm, said.text, seq, late, ms, 1000 * at, concealed, fault)
        self._index += 1
        return step

    def _shed(self, seq, at: float, ms: dict, concealed: bool) -> Step:
        """Overloaded: the policy's frame (concealed, or between two at a declared rate) costs no encode,
        brain or decode; silence goes out."""
        self.overload.shed_steps += 1
        ms["total"] = sum(ms.values())
        step = Step(self._index, np.zeros(FRAME_SIZE, np.float32), "", seq, False, ms, 1000 * at, concealed, shed=True)
        self._index += 1
        return step

    def _encode(self, frame: np.ndarray, ms: dict) -> tuple[np.ndarray | None, str | None]:
        if self._user is None:
            return None, None
        with _timed(ms, "encode"):
            try:
                codes = self._codec_call(self._user.encode, frame, SAMPLE_RATE)  # [K, 1]
                return codes[:, 0], None
            except CsmlabError as err:
                self._log("encode", "error", f"{err}; user codec reset")
                self._user.reset()
                return None, "encode_error"

    def _think(self, heard: Heard, ms: dict) -> tuple[Said, str | None]:
        with _timed(ms, "brain"):
            if self._busy is not None:
                if not self._busy.done():
                    self._log("brain", "brain_busy", "still stalled: silence")
                    return SILENT, "brain_busy"
                self._busy = None
                self._log("brain", "recovered", "the stalled call returned; its answer was dropped")
            future = self._worker.submit(self._brain_step, heard)
            try:
                return future.result(timeout=None if math.isinf(self.stall_ms) else self.stall_ms / 1000), None
            except FutureTimeout:
                self._busy = future
                self._log("brain", "brain_stall", f"no answer within {self.stall_ms:.0f} ms: silence")
                return SILENT, "brain_stall"
            except Exception as err:  # noqa: BLE001 - any brain failure becomes silence + a logged ComponentError
                error = ComponentError(f"brain {self.brain.name!r} raised {err!r} at step {heard.index}; "
                                       "silence sent, it is called again next step")
                self._log("brain", "brain_error", str(error))
                return SILENT, "brain_error"

    def _codec_call(self, call, *args):
        """A codec session's call, on the brain's worker thread when the whole step runs there (and the
        brain is not stalled in it), else here."""
        if self._codecs_on_worker and self._busy is None:
            return self._worker.submit(call, *args).result()
        return call(*args)

    def _brain_step(self, heard: Heard) -> Said:
        """On the worker thread: the brain's step on the session's threads (torch's count is per thread)."""
        with stream_threads(self.threads.count):
            return self.brain.step(heard)

    def _speak(self, said: Said, ms: dict) -> tuple[np.ndarray, str | None]:
        silence = np.zeros(FRAME_SIZE, np.float32)
        with _timed(ms, "decode"):
            if said.codes is not None:
                try:
                    codes = integer_codes(said.codes)  # CodesError for bf16, floats, text
                    if codes.ndim != 1:
                        raise CodesError(f"a brain says one frame of codes, [K], not shape {codes.shape}")
                    return self._codec_call(self._system.decode, codes[:, None]), None  # [K, 1] -> [1920]
                except CsmlabError as err:
                    self._log("decode", "error", f"{err}; system codec reset")
                    self._system.reset()
                    return silence, "decode_error"
            if said.pcm is None:
                return silence, None
            try:  # what goes to the speaker: one frame of audio in [-1, 1], by csmlab.audio's rules
                pcm = to_mono(said.pcm)
                if pcm.shape != (FRAME_SIZE,):
                    raise AudioFormatError(f"brain gave pcm of shape {pcm.shape}; a step says [{FRAME_SIZE}]")
            except AudioFormatError as err:
                self._log("brain", "bad_output", str(err))
                return silence, "bad_output"
            return pcm, None

    # ---- whole clips --------------------------------------------------------------------------
    def run(self, audio, sample_rate, chunk_ms: float = FRAME_MS) -> Iterator[Step]:
        """Stream a whole clip through the session, `chunk_ms` at a time, paced by the clock."""
        return self.feed(packets(audio, sample_rate, chunk_ms))

    def feed(self, source: Iterable[Packet]) -> Iterator[Step]:
        """Play a source's packets at their times (s, from now): audio, faults and disconnects alike."""
        start = self.clock.now()
        for packet in source:
            at = start + packet.at
            yield from self._tick_until(at)
            self.clock.wait_until(at)
            if packet.kind == "disconnect":
                yield from self.disconnect()
                continue
            try:
                yield from self._push(packet.chunk, packet.sample_rate, packet.seq, at)
            except AudioFormatError:
                continue  # counted in the event log; the session goes on with the next packet
        yield from self.end()

    # ---- summary ------------------------------------------------------------------------------
    def layers(self) -> list[tuple[str, object]]:
        """The layers audio goes through, in order, as the objects that do the work (None: not used)."""
        return [("input", self._jitter), ("encode", self._user), ("brain", self.brain), ("decode", self._system)]

    def log(self, layer: str, kind: str, detail: str = "") -> None:
        """Write to the event log (for layers outside the session, e.g. a widget's transport)."""
        self._log(layer, kind, detail)

    def _log(self, layer: str, kind: str, detail: str = "") -> None:
        self.events.add(self._index, 1000 * self.clock.now(), layer, kind, detail)

    def report(self) -> dict:
        """Per-layer p50/p95 compute, real-time factor, frame and fault counts: JSON-able."""
        n, counts = self._index, self._jitter.counts
        total = np.asarray(self._compute["total"])
        return {
            "brain": self.brain.name,
            "weights": self.brain.weights,
            "codec_weights": self.codec.weights.kind if self.codec is not None else None,
            "clock": self.clock.kind,
            "steps": n,
            "audio_s": round(n * FRAME_MS / 1000, 3),
            "compute_ms": {k: latency_summary(v) for k, v in self._compute.items() if len(v)},
            "real_time_factor": round(float(total.mean()) / FRAME_MS, 4) if len(total) else None,
            "frames": {"received": counts.received, "consumed": counts.consumed, "concealed": counts.concealed,
                       "duplicate": counts.duplicate, "late": counts.late, "dropped": counts.dropped,
                       "held": self._jitter.held, "restarts": counts.restarts,
                       "skipped": counts.skipped},
            "steps_late": self._late,
            "threads": self.threads.report(),
            "late_pct": round(100 * self._late / n, 3) if n else 0.0,
            "steps_faulted": self._faulted,
            "faults": {f"{layer}/{kind}": c for (layer, kind), c in sorted(self.events.counts.items()) if kind in FAULTS},
            "events": {f"{layer}/{kind}": c for (layer, kind), c in sorted(self.events.counts.items())},
            "overload": self.overload.report(),
            "latency_ms": {"algorithmic": {"frame": FRAME_MS, **self.brain.algorithmic_ms()}, **self.brain.latency_ms()},
        }

    # ---- lifecycle ----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError("this DuplexSession is closed; open a new one")

    def close(self) -> None:
        """Free the codec sessions, the brain and its worker thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for session in (self._user, self._system):
            if session is not None:
                session.close()
        self._worker.shutdown(wait=self._busy is None)
        if self._busy is not None and not self._busy.done():  # a stalled call still runs the brain: close after it
            self._busy.add_done_callback(lambda _: self.brain.close())
        else:
            self.brain.close()

    def __enter__(self) -> DuplexSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _timed:
    """Adds the block's wall time (ms) to `ms[layer]`."""

    def __init__(self, ms: dict, layer: str):
        self.ms, self.layer = ms, layer

    def __enter__(self):
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        self.ms[self.layer] = self.ms.get(self.layer, 0.0) + 1000 * (time.perf_counter() - self.start)
