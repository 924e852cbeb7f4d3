"""The offline twin of the live widget: a recording through the same kernel handler, as the page's frames.

A `DuplexWorker` (the very code behind `DuplexWidget`) is fed the recording cut into 80 ms binary
mic frames, with sequence numbers and capture times, exactly as the page sends them; the system
frames it sends back are decoded as the page decodes them. Frames are fed in lockstep (the next one
once the previous step came back), so the kernel time is compute, not queueing.

What the page would show is then computed on a virtual page clock: frame n is captured from
n * 80 ms, sent when complete (+80 ms), comes back after the kernel's measured time (transport: 0,
in-process), and plays through the page's jitter buffer (`jitter_ms` after an arrival that found it
empty, else right after the previous frame). Device latencies are not modelled.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from csmlab.audio import to_mimi
from csmlab.errors import ComponentError
from csmlab.metrics import FRAME_SIZE, frame_ms
from csmlab.widget.frames import KIND_MIC, pack_frame, unpack_frame
from csmlab.widget.worker import DuplexWorker

FRAME_MS = frame_ms()  # 80.0


def level_db(pcm: np.ndarray) -> float:
    """RMS level in dBFS, floored at -90: the widget's meters (`levelDb` in duplex-audio.js)."""
    return max(-90.0, 10 * np.log10(float(np.mean(np.square(pcm, dtype=np.float64))) + 1e-12))


def best_lag(x: np.ndarray, y: np.ndarray, max_lag: int) -> tuple[int, float]:
    """The lag (samples, `y` behind `x`) in [0, max_lag] where `y` best matches `x`, and their correlation."""
    x, y = x - x.mean(), y - y.mean()
    n = 1 << int(np.ceil(np.log2(2 * len(x))))
    xc = np.fft.irfft(np.fft.rfft(y, n) * np.conj(np.fft.rfft(x, n)), n)[: max_lag + 1]
    lag = int(np.argmax(xc))
    a, b = x[: len(x) - lag], y[lag:]
    return lag, float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0


def log_energy(x: np.ndarray, hop: int) -> np.ndarray:
    """Log energy per `hop` samples, centred: what survives a codec that does not keep the waveform."""
    n = len(x) // hop
    e = np.log(1e-7 + np.mean(np.square(x[: n * hop].reshape(n, hop), dtype=np.float64), axis=1))  # [n]
    return e - e.mean()


def echo_lag(sent: np.ndarray, heard: np.ndarray, rate: int, hop_ms: float = 10.0, max_lag_ms: float = 2000.0):
    """(lag ms, correlation) where the log-energy envelope of `heard` best matches that of `sent`."""
    hop = round(rate * hop_ms / 1000)
    lag, corr = best_lag(log_energy(sent, hop), log_energy(heard, hop), int(max_lag_ms / hop_ms))
    return lag * hop_ms, corr


@dataclass
class Replay:
    """Per step: what the page would show. Times in ms on the virtual page clock."""

    seq: np.ndarray  # [N] mic seq each step consumed (-1: concealed)
    input_db: np.ndarray  # [N] level of that mic frame
    output_db: np.ndarray  # [N] level of the system frame
    kernel_ms: np.ndarray  # [N] arrival in the kernel -> reply sent
    playback_ms: np.ndarray  # [N] wait in the jitter buffer
    round_trip_ms: np.ndarray  # [N] capture of the frame's first sample -> its reply starts to play
    text: list  # [N] str
    late: np.ndarray  # [N] bool
    output: np.ndarray  # [N * 1920] the system audio at 24 kHz
    underruns: int  # arrivals that found the jitter buffer empty, after playback started
    report: dict  # the worker's report (counts, session report)


class _Collector:
    """The `send` of the worker: keeps system frames and wakes the feeder."""

    def __init__(self):
        self.steps, self.errors, self.status = [], [], "starting"
        self.cond = threading.Condition()

    def __call__(self, content: dict, buffers: list) -> None:
        with self.cond:
            if content["type"] == "step":
                self.steps.append((content, unpack_frame(buffers[0])))
            elif content["type"] == "status":
                self.status = content["status"]
            if content["type"] == "error" or self.status == "failed":
                self.errors.append(content.get("message") or content.get("reason"))
            self.cond.notify_all()

    def wait_for(self, ready, timeout: float, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: ready() or self.errors, timeout):
                raise ComponentError(f"the kernel handler took more than {timeout:g} s for {what}")
            if self.errors:
                raise ComponentError(f"the kernel handler failed: {self.errors[0]}")


def replay(audio, sample_rate: int, brain="loopback", *, jitter_ms: float = 60.0, clock: str = "realtime",
           timeout_s: float = 60.0, **brain_kwargs) -> Replay:
    """Stream `audio` through a `DuplexWorker` on `brain` as the page would, and what it would show.

    `clock="realtime"` is the widget's: a step over 80 ms sends silence (`late`). `"simulated"` keeps
    every step's audio whatever the machine's load (compute is still measured: `kernel_ms`).
    """
    pcm = to_mimi(audio, sample_rate)  # [T] at 24 kHz
    frames = pcm[: len(pcm) // FRAME_SIZE * FRAME_SIZE].reshape(-1, FRAME_SIZE)  # [N, 1920]
    sink = _Collector()
    worker = DuplexWorker(brain, sink, clock=clock, **brain_kwargs).start()
    try:
        sink.wait_for(lambda: sink.status != "starting", timeout_s, "opening the session")  # as the page waits
        for seq, frame in enumerate(frames):
            worker.feed(pack_frame(KIND_MIC, seq, seq * FRAME_MS, frame))
            sink.wait_for(lambda: len(sink.steps) > seq, timeout_s, f"frame {seq}")
    finally:
        worker.stop(wait=True)
    return _page_view(frames, sink.steps, jitter_ms, worker.report())


def _page_view(frames: np.ndarray, steps: list, jitter_ms: float, report: dict) -> Replay:
    """The page's figures for each step, on the virtual clock (see the module docstring)."""
    seq = np.array([-1 if f.no_seq else f.seq for _, f in steps])
    kernel = np.array([f.time_ms for _, f in steps])
    captured = np.where(seq >= 0, seq, np.arange(len(seq))) * FRAME_MS  # [N] first sample of the frame
    arrived = captured + FRAME_MS + kernel
    start, end, empty = np.zeros(len(steps)), -np.inf, 0
    for i, t in enumerate(arrived):
        start[i] = t + jitter_ms if t > end else end  # an empty buffer waits the jitter margin again
        empty += bool(i) and t > end
        end = start[i] + FRAME_MS
    output = np.concatenate([f.pcm for _, f in steps]) if steps else np.zeros(0, np.float32)
    return Replay(
        seq=seq, input_db=np.array([level_db(frames[s]) if s >= 0 else -90.0 for s in seq]),
        output_db=np.array([level_db(f.pcm) for _, f in steps]), kernel_ms=kernel,
        playback_ms=start - arrived, round_trip_ms=start - captured, text=[c["text"] for c, _ in steps],
        late=np.array([f.late for _, f in steps]), output=output, underruns=empty, report=report)


def burst(audio, sample_rate: int, brain="loopback", *, max_queue: int = 4, timeout_s: float = 60.0,
          **brain_kwargs) -> dict:
    """Every frame of `audio` handed to a `DuplexWorker` at once, as a network that stalled and then
    delivered a backlog would: the bounded queue keeps the newest `max_queue` and drops the rest,
    counted. Returns the worker's report."""
    pcm = to_mimi(audio, sample_rate)
    frames = pcm[: len(pcm) // FRAME_SIZE * FRAME_SIZE].reshape(-1, FRAME_SIZE)  # [N, 1920]
    sink = _Collector()
    worker = DuplexWorker(brain, sink, clock="simulated", max_queue=max_queue, **brain_kwargs).start()
    try:
        sink.wait_for(lambda: sink.status != "starting", timeout_s, "opening the session")
        for seq, frame in enumerate(frames):
            worker.feed(pack_frame(KIND_MIC, seq, seq * FRAME_MS, frame))
        sink.wait_for(lambda: worker.queued == 0, timeout_s, "draining the queue")
    finally:
        worker.stop(wait=True)
    return worker.report()
