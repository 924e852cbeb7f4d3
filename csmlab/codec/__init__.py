"""Mimi behind one adapter: any audio in, codes out, in batch or streaming, on three implementations.

    codec = load_codec(num_codebooks=8, backend="moshi")   # or "rustymimi", "transformers"
    codes = codec.encode(audio, sample_rate)   # [K, T] int64, batch (offline) mode
    audio24k = codec.decode(codes)             # [T * 1920] float32 mono at 24 kHz
    with codec.stream() as s:                  # one session per audio stream (precision="int8": cheaper, inexact)
        new_codes = s.encode(chunk, sample_rate)  # chunks of any length -> [K, n] for frames now complete
        pcm = s.decode(new_codes)                 # 1920 samples per frame
        tail = s.flush()                          # zero-pads and encodes what is still buffered

Mimi (Défossez et al., "Moshi: a speech-text foundation model for real-time dialogue", 2024) turns
24 kHz mono audio into 12.5 frames per second, each frame `K` codes of 11 bits (2048 entries).
`audio` may be numpy or torch, float32/float64/int16, mono or stereo, `[T]`, `[C, T]` or `[T, C]`,
at any sample rate (see `csmlab.audio`). The batch path pads the end with zeros to a whole frame,
exactly as a session's `flush()` does, so batch and streaming see the same samples.

Threads: one `Codec` may serve any number of sessions and batch calls from any threads, and each
gives exactly the codes (and audio) it gives alone. Every backend call holds the model's lock
(`csmlab.locks`): calls on one codec run one at a time, and each session's streaming state is
installed only for its own calls. A session is one ordered stream: feed it from one thread at a
time (its own lock keeps concurrent calls from corrupting it, but cannot order your chunks).
A session dropped without `close()` holds nothing of the codec's.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch

from csmlab.audio import MIMI_RATE, to_mimi
from csmlab.codec.backends import BACKENDS
from csmlab.codec.precision import ReducedMoshiBackend, check_precision
from csmlab.codec.codes import check_range, integer_codes
from csmlab.codec.stream import CodecSession
from csmlab.errors import CodesError, ConfigError, is_number
from csmlab.metrics import CODEBOOK_SIZE, FRAME_SIZE
from csmlab.weights import WeightsSource, resolve, resolve_listening

MAX_CODEBOOKS = 32

__all__ = ["Codec", "CodecSession", "load_codec", "FRAME_SIZE", "CODEBOOK_SIZE"]


class Codec:
    """A loaded Mimi: batch `encode`/`decode`, and `stream()` for sessions."""

    sample_rate = MIMI_RATE
    frame_size = FRAME_SIZE
    frame_rate = MIMI_RATE / FRAME_SIZE  # 12.5 Hz

    def __init__(self, backend, weights: WeightsSource):
        self.backend, self.weights = backend, weights
        self.num_codebooks: int = backend.num_codebooks
        self.codebook_size: int = backend.codebook_size  # 2048 for Mimi, 1024 for the small one
        self.precision: str = getattr(backend, "precision", "fp32")  # "int8": see csmlab.codec.precision

    @property
    def name(self) -> str:
        return self.backend.name

    def __repr__(self) -> str:
        reduced = "" if self.precision == "fp32" else \
            f", precision={self.precision!r}: REDUCED PRECISION, codes differ from fp32"
        return f"Codec(backend={self.name!r}, num_codebooks={self.num_codebooks}, weights={self.weights.kind}{reduced})"

    def encode(self, audio, sample_rate, layout: str = "auto") -> np.ndarray:
        """Encode a whole clip: `[K, ceil(T24 / 1920)]` int64 codes (`T24` samples after resampling)."""
        x = to_mimi(audio, sample_rate, layout)  # [T24]
        padded = np.zeros(-(-len(x) // FRAME_SIZE) * FRAME_SIZE, dtype=np.float32)
        padded[: len(x)] = x
        return self.backend.encode(padded)

    def decode(self, codes) -> np.ndarray:
        """Decode `[K, n]` codes to `n * 1920` float32 samples at 24 kHz."""
        codes = self.check_codes(codes)
        if codes.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.backend.decode(codes)

    def stream(self, threads: int | None = None) -> CodecSession:
        """A new streaming session; several can run side by side on one codec.

        `threads`: torch intra-op threads for its calls (moshi backend; None: `mimi_stream.STREAM_THREADS`,
        1, the safe choice on a busy machine). torch's count is one per process: overlapping calls of
        sessions asking for different counts share one (`mimi_stream._StreamThreads`)."""
        return CodecSession(self, threads)

    def check_codes(self, codes) -> np.ndarray:
        """`codes` as `[K, n]` int64 numpy, or a `CodesError` that says what is wrong with them."""
        codes = integer_codes(codes)
        if codes.ndim != 2:
            raise CodesError(f"codes must be [K, n] (codebooks, frames), not shape {codes.shape}; drop any batch axis")
        k, n = codes.shape
        if k != self.num_codebooks:
            raise CodesError(f"this codec uses {self.num_codebooks} codebooks but the codes have {k}: {self._advice(k, n)}")
        check_range(codes, self.codebook_size)
        return np.ascontiguousarray(codes, dtype=np.int64)

    def _advice(self, k: int, n: int) -> str:
        """What to do about `[k, n]` codes for a codec of another codebook count."""
        if n == self.num_codebooks:
            return "they look transposed ([frames, codebooks]); this codec takes [K, n]: pass codes.T"
        if k == 0:
            return "codes without codebooks hold nothing; pass codes as encode() returns them, [K, n]"
        if k > self.num_codebooks:
            return f"slice codes[:{self.num_codebooks}] (the first codebooks carry the most)"
        return f"load_codec(num_codebooks={k}) to decode them"

@functools.lru_cache(maxsize=8)
def _backend(name: str, path: Path, num_codebooks: int, config: str | None, precision: str, device: str):
    if precision != "fp32":  # a model of its own: the fp32 codec's weights are never touched
        return ReducedMoshiBackend(path, num_codebooks, config and json.loads(config), precision)
    if device != "cpu":
        return BACKENDS[name](path, num_codebooks, config and json.loads(config), device=device)
    return BACKENDS[name](path, num_codebooks, config and json.loads(config))


def load_codec(num_codebooks: int = 8, backend: str = "moshi", weights: str | Path | WeightsSource | None = None,
               listen: bool = False, precision: str = "fp32", device="cpu") -> Codec:
    """Load Mimi with `num_codebooks` (1..32; Moshi uses 8) on one of `"moshi"`, `"rustymimi"`, `"transformers"`.

    `weights` is a moshi-format checkpoint path or a `WeightsSource`; by default `resolve("mimi")`
    (real weights when available, else the offline stand-in: print `codec.weights.banner()`).
    `listen=True` is for hearing the result: without real weights it loads the small Mimi trained
    on synthetic speech (moshi backend, 1..8 codebooks of 1024) instead of the full-size stand-in.
    Loaded models are cached, so loading the same codec twice is free.
    `precision="int8"` (moshi backend) loads a separate int8-weight copy for cheaper streaming; its
    codes differ from fp32's at times (`csmlab.codec.precision`), so keep "fp32" where equality matters.
    `device` ("cpu", "cuda", a `torch.device`): where the moshi backend's Mimi runs (the others: CPU only).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    check_precision(precision, backend)
    device = str(torch.device(device))
    if device != "cpu" and (backend != "moshi" or precision != "fp32"):
        raise ConfigError(f"only the moshi backend in fp32 runs on {device}; {backend!r} ({precision}) runs on the CPU")
    if not is_number(num_codebooks, int) or not 1 <= num_codebooks <= MAX_CODEBOOKS:
        raise CodesError(f"num_codebooks must be an int in 1..{MAX_CODEBOOKS} (Moshi uses 8), not {num_codebooks!r}")
    if isinstance(weights, WeightsSource):
        source = weights
    else:
        source = resolve_listening(weights) if listen else resolve("mimi", weights)
    config = source.config and json.dumps(source.config, sort_keys=True)  # hashable, for the cache
    return Codec(_backend(backend, Path(source.path), num_codebooks, config, precision, device), source)
