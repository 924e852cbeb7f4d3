"""Three implementations of Mimi behind one small interface: moshi (torch), rustymimi, transformers.

A backend sees only clean input: `[T]` float32 mono at 24 kHz with `T` a multiple of 1920, and
`[K, n]` int64 codes already checked. The session (`csmlab.codec.stream`) and `Codec` do the
validation, resampling and buffering, once for all three.

    batch:      encode(x [T]) -> codes [K, T/1920]       decode(codes [K, n]) -> audio [n*1920]
    streaming:  s = open_stream(); s.encode(x) / s.decode(codes) / s.reset() / s.close()
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from csmlab.codec.mimi_stream import MimiStream, _audio, _codes, _exclusive, _wave, device_of
from csmlab.errors import CodesError, ConfigError
from csmlab.metrics import CODEBOOK_SIZE


class MoshiBackend:
    """Kyutai's PyTorch Mimi (`moshi.models.loaders.get_mimi`), the reference implementation.

    One model serves the batch path and every session: each call holds the model's lock
    (`csmlab.locks`), and a batch call runs with no session's streaming state installed.
    """

    name = "moshi"

    def __init__(self, path: Path | None, num_codebooks: int, config: dict | None = None, device: str = "cpu",
                 model: torch.nn.Module | None = None):
        from moshi.models.loaders import get_mimi

        self.model = model if model is not None else get_mimi(str(path), device=device, mimi_config=config).eval()
        self.device = device_of(self.model)
        total = self.model.total_codebooks  # 32 for Kyutai's Mimi, 8 for the small one: the checkpoint says
        if num_codebooks > total:
            raise CodesError(f"this Mimi has {total} codebooks; load_codec(num_codebooks=...) takes 1..{total}")
        self.model.set_num_codebooks(num_codebooks)
        self.num_codebooks = num_codebooks
        self.codebook_size = self.model.cardinality

    @classmethod
    def wrap(cls, model: torch.nn.Module, num_codebooks: int) -> "MoshiBackend":
        """A backend around a Mimi already loaded (or built with random weights on its device)."""
        return cls(None, num_codebooks, model=model.eval())

    def encode(self, x: np.ndarray) -> np.ndarray:
        with _exclusive(self.model):
            return _codes(self.model.encode(_wave(x, self.device)))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        with _exclusive(self.model):
            return _audio(self.model.decode(torch.from_numpy(codes)[None].to(self.device)))

    def open_stream(self, batch_size: int = 1, threads: int | None = None):
        """On the CPU, the kernels measured fastest on this host (`csmlab.codec.fast.cpu_stream`); moshi's
        own modules elsewhere (on a GPU the stock kernels are the fast ones). Its calls run on `threads`
        intra-op threads (None: `STREAM_THREADS`)."""
        from csmlab.codec.fast import cpu_stream

        return cpu_stream(self.model, batch_size, threads) if self.device.type == "cpu" else MimiStream(self.model, batch_size, threads)


def _full_size_only(backend: str, config: dict | None) -> None:
    """rustymimi and the converter know only Mimi's released configuration."""
    if config is not None:
        raise ConfigError(f"backend {backend!r} reads only the full-size Mimi; load this small Mimi with backend='moshi'")


def refuse_threads(backend: str, threads: int | None) -> None:
    """Only the moshi backend's streams take a thread count (rustymimi runs its own threads)."""
    if threads is not None:
        raise ConfigError(f"backend {backend!r} streams on its own threads; stream(threads=...) is for a plain backend='moshi' codec")


class RustyMimiBackend:
    """Kyutai's Rust Mimi (candle) through its Python binding; it always uses 8 codebooks."""

    name = "rustymimi"
    CODEBOOKS = 8

    codebook_size = CODEBOOK_SIZE

    def __init__(self, path: Path, num_codebooks: int, config: dict | None = None):
        import rustymimi

        _full_size_only(self.name, config)

        if num_codebooks != self.CODEBOOKS:
            raise CodesError(
                f"rustymimi always uses {self.CODEBOOKS} codebooks; load_codec(num_codebooks={self.CODEBOOKS}, "
                f"backend='rustymimi'), or use backend='moshi' for {num_codebooks}"
            )
        self.path, self.num_codebooks = path, num_codebooks
        self.model = rustymimi.Tokenizer(str(path))
        self._lock = threading.Lock()  # a Tokenizer takes one caller at a time ("Already borrowed")

    def encode(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.model.encode(x[None, None])[0].astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.model.decode(codes[None].astype(np.uint32)).reshape(-1)

    def open_stream(self, threads: int | None = None):
        refuse_threads(self.name, threads)
        return RustyMimiStream(self.path)


class RustyMimiStream:
    """One `rustymimi.Tokenizer` per session: `encode_step`/`decode_step` keep their own state, so
    sessions never share one (the session's own lock keeps its calls one at a time).

    `reset()` loads a fresh tokenizer: rustymimi 0.4.1's own `Tokenizer.reset()` leaves some state
    behind (measured: after a few frames and `reset()`, codebook 0 of the next first frame differs
    from a fresh tokenizer's, and from moshi's).
    """

    def __init__(self, path: Path):
        self.path = path
        self.reset()

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.model.encode_step(x[None, None])[0].astype(np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.model.decode_step(codes[None].astype(np.uint32)).reshape(-1)

    def reset(self) -> None:
        import rustymimi

        self.model = rustymimi.Tokenizer(str(self.path))

    def close(self) -> None:
        self.model = None


class TransformersBackend:
    """Hugging Face's `MimiModel`, converted from the same checkpoint (`csmlab.weights.convert`)."""

    name = "transformers"

    codebook_size = CODEBOOK_SIZE

    def __init__(self, path: Path, num_codebooks: int, config: dict | None = None):
        from csmlab.weights.convert import to_transformers_mimi

        _full_size_only(self.name, config)

        self.model = to_transformers_mimi(path, num_codebooks, use_cache=True)
        self.num_codebooks = num_codebooks

    @torch.inference_mode()
    def encode(self, x: np.ndarray) -> np.ndarray:
        return _codes(self.model.encode(_wave(x, "cpu"), return_dict=True).audio_codes)

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        return _audio(self.model.decode(torch.from_numpy(codes)[None], return_dict=True).audio_values)

    def open_stream(self, threads: int | None = None):
        refuse_threads(self.name, threads)
        return TransformersStream(self)


class TransformersStream:
    """transformers' streaming encode (padding cache + KV cache); decode re-runs the code history.

    transformers 4.57.6 streams the encoder (`use_streaming=True` carries each conv's left context in
    a `MimiConv1dPaddingCache`, and `use_cache=True` the attention's KV cache: without it no context
    carries between frames). Its decoder convolutions keep no state, so a streaming decode has to
    decode every code so far and return the new tail: exact, but its cost grows with the stream.
    Use it to compare implementations; use moshi or rustymimi for real time.
    """

    def __init__(self, backend: TransformersBackend):
        self.backend = backend
        self.reset()

    @torch.inference_mode()
    def encode(self, x: np.ndarray) -> np.ndarray:
        out = self.backend.model.encode(
            _wave(x, "cpu"),
            encoder_past_key_values=self._kv,
            padding_cache=self._padding,
            use_streaming=True,
            return_dict=True,
        )
        self._kv, self._padding = out.encoder_past_key_values, out.padding_cache
        return _codes(out.audio_codes)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        self._history.append(codes)
        audio = self.backend.decode(np.concatenate(self._history, axis=1))
        new = audio[self._emitted :]
        self._emitted = len(audio)
        return new

    def reset(self) -> None:
        self._kv = self._padding = None
        self._history: list[np.ndarray] = []
        self._emitted = 0

    def close(self) -> None:
        self.reset()


BACKENDS = {b.name: b for b in (MoshiBackend, RustyMimiBackend, TransformersBackend)}
