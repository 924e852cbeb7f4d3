"""Notebook 05's exercise checks (the pattern of `csmlab.exercises`: unanswered, a hint, or correct)."""
from __future__ import annotations

import numpy as np

from csmlab.exercises import Verdict, _close, _verdict
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE, frame_ms
from csmlab.widget.frames import HEADER_BYTES, KIND_MIC, pack_frame
from csmlab.widget.replay import echo_lag


def frame_bytes(answer) -> Verdict:
    """05, exercise 1: bytes one 80 ms mic frame takes on the wire."""
    truth = len(pack_frame(KIND_MIC, 0, 0.0, np.zeros(FRAME_SIZE, np.float32)))
    hint = "1920 samples of float32 (4 bytes each), plus the header with seq and capture time"
    if _close(answer, truth - HEADER_BYTES):
        hint = "the samples are right; the frame also carries a header (version, kind, flags, seq, time)"
    elif _close(answer, 2 * FRAME_SIZE + HEADER_BYTES):
        hint = "the page sends float32 samples, not 16-bit PCM"
    return _verdict((answer,), _close(answer, truth), f"{truth} bytes, {truth / frame_ms():.0f} kB/s", hint)  # bytes per ms = kB/s


def drops_per_second(answer, compute_ms: float) -> Verdict:
    """05, exercise 2: frames per second the bounded queue drops when each step takes `compute_ms`."""
    sent = 1000 / frame_ms()
    truth = max(0.0, sent - 1000 / compute_ms)
    hint = f"the page sends {sent:g} frames per second whatever happens; how many can the kernel take?"
    if _close(answer, 1000 / compute_ms, rel=1e-3):
        hint = "that is how many frames the kernel handles; the question is how many it must drop"
    return _verdict((answer,), _close(answer, truth, rel=1e-3, abs_=1e-3), f"{truth:g} frames dropped per second", hint)


def echo_delay_ms(answer, sent: np.ndarray, heard: np.ndarray, rate: int = SAMPLE_RATE) -> Verdict:
    """05, exercise 3: the lag (ms) at which the echo's loudness follows the input's, within 20 ms."""
    truth, corr = echo_lag(sent, heard, rate)
    hint = "compare the loudness envelopes (e.g. log energy per 10 ms) at lags 0..1000 ms; where do they line up?"
    return _verdict((answer,), _close(answer, truth, rel=0, abs_=20),
                    f"the echo follows {truth:.0f} ms later (envelope correlation {corr:.2f})", hint)


def mouth_to_ear_ms(answer, round_trip_ms: float, brain_delay_ms: float, device_ms: float) -> Verdict:
    """05, exercise 4: how long after speaking a learner hears the loopback's echo of it (ms)."""
    truth = round_trip_ms + brain_delay_ms + device_ms
    hint = "the round trip the page measures is only the path's part: add what the brain waits by design and the device's latency"
    if _close(answer, round_trip_ms, rel=0, abs_=1):
        hint = "that is the round trip the page shows; the echo comes the brain's delay later, and the sound card adds its own"
    elif _close(answer, round_trip_ms + brain_delay_ms, rel=0, abs_=1):
        hint = "almost: the AudioContext also reports the device's latency (baseLatency + outputLatency)"
    return _verdict((answer,), _close(answer, truth, rel=0, abs_=1), f"{truth:.0f} ms from mouth to ear", hint)
