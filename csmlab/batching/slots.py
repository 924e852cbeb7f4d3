"""Slots: the rows of one batched moshi streaming state, rented one per conversation.

moshi's streaming modules hold their state as tensors with a batch axis (`module.streaming(B)`), and
honour an exec mask: a row whose mask is False is left as it was, as if that step never happened.
So B conversations can share one state and one forward pass per step (`csmlab.codec.batch`,
`csmlab.moshi.batch`), each in its own row:

- `Slots` hands out rows (lowest free first) and takes them back; a row handed out again is reset
  before its next step (`reset_streaming(reset_mask)` for that row only, the others keep theirs).
- `row_views(model, state, n)` installs the state of rows `[:n]` as views: a step that needs only the first n rows
  runs on n, so slots nobody rents cost nothing, and the modules' in-place updates land in the full
  state.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import threading

import torch

from csmlab.errors import CapacityError, ConfigError, is_number


class Slots:
    """`size` rows: `take()` the lowest free one, `give_back()` it; thread-safe."""

    def __init__(self, size: int, what: str):
        if not is_number(size, int) or size < 1:
            raise CapacityError(f"a batch needs at least 1 slot, not {size!r}")
        self.size, self.what = size, what
        self._lock = threading.Lock()
        self._taken: set[int] = set()
        self._fresh: set[int] = set()  # taken (or reset) since the last step: clear before using

    def take(self) -> int:
        with self._lock:
            free = [i for i in range(self.size) if i not in self._taken]
            if not free:
                raise CapacityError(f"all {self.size} {self.what} slots are in use: close a session first, "
                                    f"or build the batch with a larger size")
            self._taken.add(free[0])
            self._fresh.add(free[0])
            return free[0]

    def renew(self, slot: int) -> None:
        """Start the slot's stream again from scratch at its next step."""
        with self._lock:
            self._fresh.add(slot)

    def give_back(self, slot: int) -> None:
        with self._lock:
            self._taken.discard(slot)
            self._fresh.discard(slot)

    def check(self, slots) -> None:
        """Refuse slots that nobody took: their rows belong to no stream (or to a stream that left)."""
        with self._lock:
            stray = sorted(set(slots) - self._taken)
        if stray:
            raise ConfigError(f"{self.what} slot(s) {stray} are not taken: step only slots from join(), until leave()")

    def pop_fresh(self) -> list[int]:
        """The slots to clear before this step (and forget them: they are cleared once)."""
        with self._lock:
            fresh, self._fresh = sorted(self._fresh), set()
            return fresh

    @property
    def in_use(self) -> int:
        return len(self._taken)


@contextlib.contextmanager
def row_views(model, state: dict, rows: int):
    """Install on `model` each module's streaming state restricted to rows `[:rows]`, as views of `state`.

    Works for the states of moshi's convolutions, attention (with its ring KV cache), transformers,
    Mimi and LMGen: every tensor field whose first axis is the batch is sliced. moshi updates most of
    them in place (`x[:] = torch.where(exec_mask, ...)`), straight into the full state; a field it
    replaces instead (a replicate-padded conv's `first` flag) is copied back on exit.
    """
    views = {name: _rows(s, rows) for name, s in state.items()}
    model.set_streaming_state({name: view for name, (view, _) in views.items()})
    yield
    for name, (view, sliced) in views.items():
        for field, before in sliced.items():
            after = getattr(view, field)
            if after is not before:
                getattr(state[name], field)[:rows] = after


def _rows(state, rows: int):
    """(a shallow copy of `state` whose batch tensors are row views, {field: the view it got})."""
    if state.batch_size == rows:
        return state, {}
    view, sliced = copy.copy(state), {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == state.batch_size:
            sliced[f.name] = value[:rows]
            setattr(view, f.name, sliced[f.name])
    view.exec_mask = state.exec_mask[:rows]
    view.batch_size = rows
    cache = getattr(state, "kv_cache", None)
    if cache is not None:
        view.kv_cache = copy.copy(cache)
        view.kv_cache.cache = cache.cache[:, :rows]  # [2, B, H, capacity, D]
        if cache.respect_exec_mask:
            view.kv_cache.end_offset = cache.end_offset[:rows]
    return view, sliced


def clear_rows(model, slots: list[int], batch_size: int, also=None) -> None:
    """Reset rows `slots` of the state installed on `model` to a new stream's, the others untouched.

    `reset_streaming(reset_mask)` rewinds offsets and conv buffers; the KV cache rows are zeroed too,
    because a rewound cache still holds the old keys and values, and a NaN among them would survive
    the attention mask (0 x NaN is NaN). `also`: a detached module whose caches `model` resets
    through its own state (LMGen resets its LM), to zero as well."""
    if not slots:
        return
    mask = torch.zeros(batch_size, dtype=torch.bool)
    mask[slots] = True
    model.reset_streaming(mask)
    states = list(model.get_streaming_state().values())
    if also is not None:
        states += also.get_streaming_state().values()
    for state in states:
        cache = getattr(state, "kv_cache", None)
        if cache is not None:
            cache.cache[:, mask] = 0


def without_cuda_graphs(state: dict) -> dict:
    """`state` (a module's `get_streaming_state()`) with moshi's CUDA graphs switched off, then returned.

    On a GPU, moshi's LMGen and Mimi capture a CUDA graph of each streaming call (`CUDAGraphed`, kept in
    the state), bound to the tensors and shapes of its first call. csmlab installs views of a state
    for a varying number of rows (`row_views`), feeds a varying number of frames per codec call, and
    samples rows from their own generators: a replayed graph would raise on the new shapes, or
    compute on the old ones. So the states csmlab keeps run eagerly, each switched off on its own
    (moshi's `no_cuda_graph()` is one process-wide flag that two threads would race on).
    `csmlab bench gpu` measures what the graphs give on moshi's own path."""
    from moshi.utils.compile import CUDAGraphed

    for module_state in state.values():
        for value in vars(module_state).values():
            if isinstance(value, CUDAGraphed):
                value.disable = True
    return state
