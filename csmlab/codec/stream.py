"""A streaming session: chunks of any length and rate in, codes of complete frames out.

moshi's streaming API only takes whole 80 ms frames (multiples of 1920 samples at 24 kHz). A
session sits in front of it and does what real audio needs:

    chunk (any dtype, layout, rate) -> validate -> mono float32 -> soxr stream -> 24 kHz buffer
    buffer -> whole frames -> backend stream -> codes [K, n]          (the rest waits in the buffer)

Every check runs before any state changes, so a bad chunk raises a `CsmlabError` and the next good
chunk carries on as if the bad one had never come. A failure inside the codec itself is different:
its streaming state is then half-updated, so the session raises `ComponentError` and refuses to go
on until `reset()`; `session.unencoded` holds the audio that had not become codes. `flush()` ends
the stream: it drains the resampler, pads the last partial frame with zeros (as the batch path
does) and encodes it.

Threads: sessions on one codec are independent and may run in different threads, next to batch
calls on the same codec (`csmlab.codec` states the contract). One session is one ordered stream:
its calls take the session's own lock, so two threads sharing a session cannot corrupt it, but
only the caller can say in what order its chunks belong.
"""
from __future__ import annotations

import threading

import numpy as np

from csmlab.audio import Resampler, channels_axis, check_sample_rate, to_mono
from csmlab.errors import AudioFormatError, ComponentError, StreamClosedError
from csmlab.metrics import FRAME_SIZE


class CodecSession:
    """One audio stream through one codec; open it with `codec.stream()`, use it as a context manager."""

    def __init__(self, codec, threads: int | None = None):
        self.codec = codec
        self._lock = threading.RLock()
        self._stream = codec.backend.open_stream(threads=threads)
        self._closed = False
        self._clear()

    def _clear(self) -> None:
        self._rate: int | None = None
        self._layout: str | None = None  # remembered from the first unambiguous 2-D chunk
        self._resampler: Resampler | None = None
        self._buffer = np.zeros(0, dtype=np.float32)  # [t] 24 kHz samples short of a frame
        self._flushed = False
        self._failure: str | None = None  # set when a backend call failed: reset() before going on

    # -- encode -----------------------------------------------------------------------------------
    def encode(self, chunk, sample_rate, layout: str | None = None) -> np.ndarray:
        """Push a chunk of any length; returns codes `[K, n]` (int64, n >= 0) of the frames now complete."""
        with self._lock:  # one call at a time on one session
            self._check_usable()
            if self._flushed:
                raise StreamClosedError("this stream was flushed (it has ended); call reset() to start a new one")
            rate = check_sample_rate(sample_rate)
            if self._rate is not None and rate != self._rate:
                raise AudioFormatError(
                    f"sample rate changed mid-stream from {self._rate} to {rate} Hz; keep one rate per stream, "
                    "or flush() and reset() before switching"
                )
            layout = self._resolve_layout(chunk, layout)
            mono = to_mono(chunk, layout)  # raises before anything below changes
            if self._resampler is None:
                self._rate, self._resampler = rate, Resampler(rate)
            if layout != "auto":
                self._layout = layout
            return self._push(self._resampler.push(mono))

    def _resolve_layout(self, chunk, layout: str | None) -> str:
        """The caller's layout, else the shape's own, else (ambiguous chunk) the one this stream showed."""
        shape = tuple(getattr(chunk, "shape", ()))
        if layout is not None or len(shape) != 2:
            return layout or "auto"
        try:
            return ("channels_first", "channels_last")[channels_axis(shape)]
        except AudioFormatError:
            return self._layout or "auto"  # with no layout seen yet, to_mono raises the clear error

    def _push(self, audio_24k: np.ndarray) -> np.ndarray:
        self._buffer = buffer = np.concatenate([self._buffer, audio_24k])  # kept until encoded
        n = len(buffer) // FRAME_SIZE
        if n == 0:
            return np.zeros((self.codec.num_codebooks, 0), dtype=np.int64)
        codes = self._backend(self._stream.encode, buffer[: n * FRAME_SIZE])  # [K, n]
        self._buffer = buffer[n * FRAME_SIZE :]
        return codes

    def _backend(self, call, *args):
        """Run a backend call. If it fails, its streaming state is half-updated and cannot be trusted:
        the session refuses further calls until `reset()`, and `unencoded` keeps the audio not yet
        turned into codes, so that nothing is lost (re-send it at 24 kHz after the reset)."""
        try:
            return call(*args)
        except BaseException as err:  # an interrupt (Ctrl-C, the notebook's stop button) half-updates it too
            self._failure = f"{type(err).__name__}: {err}"
            if self._resampler is not None and not self._flushed:  # its delay line holds audio too
                self._buffer = np.concatenate([self._buffer, self._resampler.push(np.zeros(0, np.float32), last=True)])
            if not isinstance(err, Exception):
                raise
            raise ComponentError(
                f"the {self.codec.name} codec failed mid-stream ({self._failure}). Recover with: "
                "audio = session.unencoded; session.reset(); session.encode(audio, 24000)"
            ) from err

    def flush(self) -> np.ndarray:
        """End the stream: drain the resampler, zero-pad the last partial frame, return its codes."""
        with self._lock:  # one call at a time on one session
            self._check_usable()
            if self._flushed or self._resampler is None:
                self._flushed = True
                return np.zeros((self.codec.num_codebooks, 0), dtype=np.int64)
            tail = self._resampler.push(np.zeros(0, dtype=np.float32), last=True)
            buffer = np.concatenate([self._buffer, tail])
            padded = np.zeros(-(-len(buffer) // FRAME_SIZE) * FRAME_SIZE, dtype=np.float32)
            padded[: len(buffer)] = buffer
            self._buffer, self._flushed = np.zeros(0, dtype=np.float32), True
            return self._push(padded)

    @property
    def unencoded(self) -> np.ndarray:
        """The 24 kHz audio received but not yet encoded: the part of a frame still waiting for the
        rest of it (the codec's algorithmic latency), or, after a backend failure, all that was lost."""
        return self._buffer.copy()

    # -- decode -----------------------------------------------------------------------------------
    def decode(self, codes) -> np.ndarray:
        """Decode the next `[K, n]` codes; returns `n * 1920` float32 samples at 24 kHz."""
        with self._lock:  # one call at a time on one session
            self._check_usable()
            codes = self.codec.check_codes(codes)
            if codes.shape[1] == 0:
                return np.zeros(0, dtype=np.float32)
            return self._backend(self._stream.decode, codes)

    # -- lifecycle --------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything: start a new stream (a new rate is allowed) on the same session."""
        with self._lock:  # one call at a time on one session
            self._check_open()
            self._stream.reset()
            self._clear()

    def close(self) -> None:
        """Release the backend's streaming state; any later call raises `StreamClosedError`."""
        with self._lock:  # one call at a time on one session
            if not self._closed:
                self._stream.close()
                self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise StreamClosedError("this codec session is closed; open a new one with codec.stream()")

    def _check_usable(self) -> None:
        self._check_open()
        if self._failure is not None:
            raise ComponentError(f"this stream's codec failed earlier ({self._failure}); call reset() first")

    def __enter__(self) -> CodecSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
