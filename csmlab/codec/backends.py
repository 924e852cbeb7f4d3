"""Three implementations of Mimi behind one small interface: moshi (torch), rustymimi, transformers.

A backend sees only clean input: `[T]` float32 mono at 24 kHz with `T` a multiple of 1920, and
`[K, n]` int64 codes already checked. The session (`csmlab.codec.stream`) and `Codec` do the
validation, resampling and buffering, once for all three.

    batch:      encode(x [T]) -> codes [K, T/1920]       decode(codes [K, n]) -> audio [n*1920]
    streaming:  s = open_stream(); s.encode(x) / s.decode(codes) / s.reset() / s.close()
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
import torch

from csmlab.errors import CodesError, ConfigError, StreamClosedError
from csmlab.locks import exclusive
from csmlab.metrics import CODEBOOK_SIZE, FRAME_SIZE
from csmlab.batching.slots import without_cuda_graphs


def _codes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.reshape(tensor.shape[-2], tensor.shape[-1]).to(torch.int64).cpu().numpy()  # [K, n]


def _audio(tensor: torch.Tensor) -> np.ndarray:
    return tensor.reshape(-1).float().cpu().numpy()  # [T]


def device_of(model: torch.nn.Module) -> torch.device:
    """Where a model's weights live: inputs and streaming state go there (a CPU tensor fed to a model
    on the GPU fails, or worse, a state built on the CPU runs a layer there)."""
    return next(model.parameters()).device


def _wave(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(x)[None, None].to(device)  # [1, 1, T]


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


@contextlib.contextmanager
def _exclusive(model):
    """The model to ourselves, with no session's state in it, in inference mode."""
    with exclusive(model, "Mimi"), torch.inference_mode():
        yield


class MimiStream:
    """moshi's own streaming API, with this session's state swapped in for each call.

    moshi keeps streaming state on the modules themselves, so one model serves one stream at a
    time. Each session holds its own state and installs it around every call, under the model's
    lock, so several sessions (the duplex pipeline needs two) and the batch path share one set of
    weights from any threads. Between calls the model holds no state: a session that is dropped
    without `close()` frees nothing shared. `reset()` builds a fresh state rather than rewinding the
    old one, so nothing a past input left in the caches survives it.
    """

    FRAMES_PER_CALL = 4  # longer inputs are split: the attention caches are sized for this many frames

    def __init__(self, model, batch_size: int = 1, threads: int | None = None):
        self.model, self.batch_size = model, batch_size  # rows of state: >1 for `csmlab.codec.batch`
        self.threads = check_threads(threads)
        self._state = self._fresh_state()

    def _fresh_state(self) -> dict:
        with _exclusive(self.model):
            self.model._start_streaming(self.batch_size, contextlib.ExitStack())  # moshi's states need no exit
            _widen_attention_caches(self.model, 2 * self.FRAMES_PER_CALL)
            return without_cuda_graphs(self.model.get_streaming_state())  # 1..4 frames, B rows per call

    def _kernels(self):
        """What runs the modules during a call; `FastMimiStream` swaps in faster kernels."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _installed(self):
        if self._state is None:
            raise StreamClosedError("this codec stream is closed; open a new one with codec.stream()")
        with _exclusive(self.model), stream_threads(self.threads), self._kernels():
            self.model.set_streaming_state(self._state)
            yield

    def encode(self, x: np.ndarray) -> np.ndarray:
        step = self.FRAMES_PER_CALL * FRAME_SIZE
        device = device_of(self.model)
        with self._installed():
            codes = [_codes(self.model.encode(_wave(x[i : i + step], device))) for i in range(0, len(x), step)]
        return np.concatenate(codes, axis=1) if codes else np.zeros((self.model.num_codebooks, 0), np.int64)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        step = self.FRAMES_PER_CALL
        with self._installed():
            audio = [_audio(self.model.decode(torch.from_numpy(codes[:, i : i + step])[None].to(device_of(self.model))))
                     for i in range(0, codes.shape[1], step)]
        return np.concatenate(audio) if audio else np.zeros(0, np.float32)

    def reset(self) -> None:
        self._state = self._fresh_state()

    def close(self) -> None:
        self._state = None


STREAM_THREADS = 1
"""Intra-op threads of a stream opened without a count. A frame is a few hundred small ops: with two
threads each op pays a fork/join, and on a busy 2-core machine a join waits for a descheduled thread
(a 1 s stream cost 3.6-6 s of CPU with 2 threads against 0.4 s with 1, AMD EPYC, load ~6). On a
free core two threads pay (moshi's `streaming()`: 1.7x on an idle Intel Xeon, issue 23): ask for them."""


def check_threads(threads: int | None) -> int:
    """A stream's thread count: `threads`, or `STREAM_THREADS` for None; a `ConfigError` if not >= 1."""
    if threads is None:
        return STREAM_THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads is a whole number >= 1 (or None for {STREAM_THREADS}), not {threads!r}")
    return threads


class _StreamThreads:
    """A streaming call's intra-op threads while it runs, the process's own setting once no call runs.

    torch's thread count is one setting per process, not per thread: with calls in several threads
    (sessions on different codecs), each saving and restoring it would leave whichever value the
    last one saved. So the first call in saves it and the last one out restores it; each call sets
    its own count as it enters, and calls that overlap share the one set last."""

    def __init__(self):
        self._lock, self._calls, self._saved = threading.Lock(), 0, 0

    @contextlib.contextmanager
    def __call__(self, threads: int):
        with self._lock:
            if self._calls == 0:
                self._saved = torch.get_num_threads()
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            self._calls += 1
        try:
            yield
        finally:
            with self._lock:
                self._calls -= 1
                if self._calls == 0 and torch.get_num_threads() != self._saved:
                    torch.set_num_threads(self._saved)


stream_threads = _StreamThreads()


def _widen_attention_caches(model, tokens_per_call: int) -> None:
    """Give every windowed attention a KV cache of `context + tokens_per_call - 1` entries.

    Why: moshi sizes a streaming cache to exactly `context` entries, but a call adds several tokens
    at once (2 per 80 ms frame, Mimi's transformers run at 25 Hz). Writing them overwrites keys that
    the call's first queries still see in batch mode, so streaming attends to a shorter past than
    batch once a clip outgrows the window (real Mimi: after 10 s; a small Mimi with a 32-step
    context: after 1.28 s, where codes then differed on 2-4% of entries). The attention mask still
    enforces `context`, so a larger ring changes nothing else.
    """
    from moshi.modules.transformer import RingKVCache, StreamingMultiheadAttention

    for module in model.modules():
        state = module._streaming_state if isinstance(module, StreamingMultiheadAttention) else None
        cache = getattr(state, "kv_cache", None)
        if cache is None or module.context is None:
            continue
        _, batch, heads, _, dim = cache.cache.shape
        state.kv_cache = RingKVCache(batch, heads, dim, module.context + tokens_per_call - 1,
                                     cache.respect_exec_mask, cache.cache.device, cache.cache.dtype)


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
