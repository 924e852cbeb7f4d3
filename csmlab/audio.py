"""Any audio in, Mimi's audio out: validation, downmix and a streaming resampler.

Mimi takes 24 kHz mono float32. Real audio arrives as numpy or torch arrays, float or int16, mono or
stereo, `[T]`, `[C, T]` or `[T, C]`, at 16 kHz, 44.1 kHz or anything else. `to_mono` turns each of
these into `[T]` float32 and refuses what cannot be audio with an `AudioFormatError` that says what
to do. `Resampler` wraps `soxr.ResampleStream`, whose output does not depend on how the input is
cut into chunks (bit for bit), so a streaming session and a batch call that both use it feed Mimi
exactly the same samples.

Layout: a 2-D array has one axis of 1 or 2 channels and one of time. When only one axis has size 1
or 2 that one is channels; when both do (e.g. a `[2, 2]` chunk) the layout is ambiguous, and the
caller says `layout="channels_first"` (`[C, T]`) or `"channels_last"` (`[T, C]`).

Bounds, checked before any state changes so that one bad chunk cannot poison a stream:
- float audio lives in [-1, 1]. A peak above `MAX_PEAK` (8.0, +18 dBFS: louder than any recording
  normalised to full scale, even after generous gain) is refused, not clipped: it almost always is
  int16 PCM stored as float (peaks in the thousands: divide by 32768), and magnitudes like 1e20
  overflow inside Mimi and leave NaN in a session's attention cache;
- sample rates are integers from `MIN_RATE` (1 kHz) to `MAX_RATE` (768 kHz, the highest rate audio
  interfaces offer). soxr hangs building a resampler for absurd rates (3e14 Hz), so the bound is
  checked before one is built.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import soxr

from csmlab.errors import AudioFormatError, is_number
from csmlab.metrics import SAMPLE_RATE

MIMI_RATE = SAMPLE_RATE  # Mimi takes 24 kHz audio
LAYOUTS = ("auto", "channels_first", "channels_last")
MAX_CHANNELS = 2
MAX_PEAK = 8.0  # float audio is [-1, 1]; above this it is int16 PCM as float, or garbage
MIN_RATE, MAX_RATE = 1_000, 768_000  # Hz
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}


def _as_numpy(audio) -> np.ndarray:
    if hasattr(audio, "detach") and hasattr(audio, "cpu"):  # torch.Tensor, without importing torch
        audio = audio.detach().cpu()
        if audio.is_floating_point() and audio.element_size() < 4:  # bf16/fp16 from a model's output
            audio = audio.float()
        audio = audio.numpy()
    if not isinstance(audio, np.ndarray):
        raise AudioFormatError(f"audio must be a numpy array or a torch tensor, not {type(audio).__name__}")
    return audio


def _to_float(audio: np.ndarray) -> np.ndarray:
    """float16/32/64 pass through; int16/int32 PCM is scaled to [-1, 1)."""
    if audio.dtype in _INT_SCALE:
        return audio.astype(np.float32) / np.float32(_INT_SCALE[audio.dtype])
    if audio.dtype in (np.float16, np.float32, np.float64):
        return audio
    raise AudioFormatError(
        f"audio dtype {audio.dtype} is not supported: pass float32/float64 in [-1, 1] or int16 PCM "
        "(convert with audio.astype(np.float32))"
    )


def channels_axis(shape: tuple[int, ...], layout: str = "auto") -> int:
    """Which axis of a 2-D `shape` holds the channels (0 for `[C, T]`, 1 for `[T, C]`)."""
    if layout not in LAYOUTS:
        raise AudioFormatError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    if layout != "auto":
        axis = 0 if layout == "channels_first" else 1
    elif shape == (1, 1):
        axis = 0  # one mono sample either way
    else:
        small = [i for i, n in enumerate(shape) if n <= MAX_CHANNELS]
        if len(small) == 2:
            raise AudioFormatError(
                f"audio of shape {shape} is ambiguous: both axes could be channels. Pass "
                "layout='channels_first' for [C, T] or layout='channels_last' for [T, C]"
            )
        if not small:
            raise AudioFormatError(
                f"audio of shape {shape} has no axis of 1 or 2 channels: pass mono [T] or stereo [2, T] / [T, 2]"
            )
        axis = small[0]
    if shape[axis] > MAX_CHANNELS:
        raise AudioFormatError(f"audio of shape {shape} has {shape[axis]} channels on axis {axis}; Mimi takes mono or stereo")
    return axis


def to_mono(audio, layout: str = "auto") -> np.ndarray:
    """Validate `audio` and return it as `[T]` float32 in [-1, 1], stereo averaged to mono."""
    if layout not in LAYOUTS:
        raise AudioFormatError(f"layout must be one of {LAYOUTS}, not {layout!r}")
    audio = _as_numpy(audio)
    if audio.ndim > 2:
        raise AudioFormatError(
            f"audio has {audio.ndim} dims {audio.shape}; pass one stream as [T], [C, T] or [T, C] (no batch axis)"
        )
    if audio.size == 0:
        raise AudioFormatError(f"audio is empty (shape {audio.shape}); pass at least one sample")
    audio = _to_float(audio)
    if audio.ndim == 2:
        audio = audio.mean(axis=channels_axis(audio.shape, layout))
    audio = audio.reshape(-1)  # [T], still in its own float type: float64 1e300 stays finite to be named
    if not np.isfinite(audio).all():
        bad = int((~np.isfinite(audio)).sum())
        raise AudioFormatError(f"audio has {bad} NaN/Inf samples; clean it first, e.g. np.nan_to_num(audio)")
    check_peak(audio)
    return np.ascontiguousarray(audio, dtype=np.float32)


def check_peak(audio: np.ndarray) -> None:
    """An `AudioFormatError` for float audio far outside [-1, 1] (see the module docstring)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > MAX_PEAK:
        hint = ("it looks like int16 PCM stored as float: divide by 32768 (audio / 32768)" if peak <= 32768 * 1.01
                else "these are not audio samples; check where the array came from")
        raise AudioFormatError(
            f"audio peaks at {peak:.4g}, far above 1.0 (float audio must lie in [-1, 1]; csmlab refuses peaks above "
            f"{MAX_PEAK:g} rather than clip them): {hint}"
        )


def check_sample_rate(sample_rate) -> int:
    """The sample rate as an int, or an `AudioFormatError` for non-numbers, NaN/inf, fractions and
    rates outside `MIN_RATE..MAX_RATE`."""
    if not is_number(sample_rate, numbers.Real):
        raise AudioFormatError(f"sample_rate must be a positive integer in Hz, not {sample_rate!r}")
    if not math.isfinite(sample_rate) or sample_rate != int(sample_rate) or not MIN_RATE <= sample_rate <= MAX_RATE:
        raise AudioFormatError(
            f"sample_rate must be an integer from {MIN_RATE} to {MAX_RATE} Hz (e.g. 16000), not {sample_rate!r}"
        )
    return int(sample_rate)


class Resampler:
    """A streaming resampler to 24 kHz whose output is independent of the chunking (soxr, HQ)."""

    def __init__(self, in_rate: int, out_rate: int = MIMI_RATE):
        self.in_rate, self.out_rate = in_rate, out_rate
        self._soxr = None if in_rate == out_rate else soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32")

    def push(self, audio: np.ndarray, last: bool = False) -> np.ndarray:
        """Resample the next `[T]` float32 chunk; `last=True` also drains the filter's tail."""
        if self._soxr is None:
            return audio
        return self._soxr.resample_chunk(audio, last=last)


def resample(audio: np.ndarray, in_rate: int, out_rate: int = MIMI_RATE) -> np.ndarray:
    """Resample a whole `[T]` signal, through the same streaming resampler a session uses."""
    return Resampler(in_rate, out_rate).push(audio, last=True)


def to_mimi(audio, sample_rate, layout: str = "auto") -> np.ndarray:
    """Any supported audio at any rate -> `[T]` float32 mono at 24 kHz (batch path).

    A clip too short to leave one sample at 24 kHz is refused here, so that every codec backend
    gives the same answer (they disagreed: an assertion, a RuntimeError, one frame)."""
    rate = check_sample_rate(sample_rate)
    mono = to_mono(audio, layout)
    out = resample(mono, rate)
    if len(out) == 0:
        raise AudioFormatError(
            f"{len(mono)} sample(s) at {rate} Hz is shorter than one sample at {MIMI_RATE} Hz; "
            f"pass at least {-(-rate // MIMI_RATE)} samples"
        )
    return out
