"""moshi's Mimi streamed with a session's own state: the interface the plain and the fast kernels share.

`MimiStream` swaps a session's streaming state into the one model around each call, under the model's
lock and on the session's thread count; `FastMimiStream` (`csmlab.codec.fast`) subclasses it to run the
same modules on faster kernels, and `MoshiBackend` (`csmlab.codec.backends`) opens one or the other.
Both import this module and neither imports the other's side, so the two codec paths form no circle.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch

from csmlab.batching.slots import without_cuda_graphs
from csmlab.errors import ConfigError, StreamClosedError, is_number
from csmlab.locks import exclusive, streaming_slots
from csmlab.metrics import FRAME_SIZE


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
        """A new streaming state for this stream's rows; `self._slots` pairs each piece with the module
        dict it is installed in (`csmlab.locks.streaming_slots`)."""
        with _exclusive(self.model):
            self.model._start_streaming(self.batch_size, contextlib.ExitStack())  # moshi's states need no exit
            _widen_attention_caches(self.model, 2 * self.FRAMES_PER_CALL)
            state = without_cuda_graphs(self.model.get_streaming_state())  # 1..4 frames, B rows per call
            self._slots = [(slots, state[name]) for name, slots in streaming_slots(self.model).items()]
            return state

    def _kernels(self):
        """What runs the modules during a call; `FastMimiStream` swaps in faster kernels."""
        return contextlib.nullcontext()

    @contextlib.contextmanager
    def _installed(self):
        if self._state is None:
            raise StreamClosedError("this codec stream is closed; open a new one with codec.stream()")
        with _exclusive(self.model), stream_threads(self.threads), self._kernels():
            for slots, state in self._slots:  # moshi's `set_streaming_state`, without its walk
                slots["_streaming_state"] = state
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
        self._state, self._slots = None, []


STREAM_THREADS = 1
"""Intra-op threads of a stream opened without a count. A frame is a few hundred small ops: with two
threads each op pays a fork/join, and on a busy 2-core machine a join waits for a descheduled thread
(a 1 s stream cost 3.6-6 s of CPU with 2 threads against 0.4 s with 1, AMD EPYC, load ~6). On a
free core two threads pay (moshi's `streaming()`: 1.7x on an idle Intel Xeon, issue 23): ask for them."""


def check_threads(threads: int | None) -> int:
    """A stream's thread count: `threads`, or `STREAM_THREADS` for None; a `ConfigError` if not >= 1."""
    if threads is None:
        return STREAM_THREADS
    if not is_number(threads, int) or threads < 1:
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
