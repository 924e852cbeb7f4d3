"""What one CSM prompt shares with the next, computed once: each context turn's Mimi codes, and the
backbone's KV cache of the prompt's unchanged beginning.

A voice that speaks a conversation phrase by phrase (`csmlab.pipeline.moshi_csm`) builds a new prompt
for every phrase, and most of it is the conversation it already had. transformers'
`CsmForConditionalGeneration` encodes every context turn's audio with Mimi inside each `forward()`
(`_merge_input_ids_with_input_values`, one `codec_model.encode()` per turn); on the small offline CSM
(whose Mimi is full size) that encode was most of a phrase's first frame (`scripts/csm_phrase_start.py`
splits it).

`SegmentCodes` keeps each turn's codes, keyed by the `Segment` object itself (identity: a Segment is
frozen, and a conversation grows by new Segments). It is the same encode of the same samples, so the
codes are the uncached path's exactly. A turn whose audio is replaced (a new Segment, even with the
same words) is encoded again; an audio array edited in place is not noticed: make a new Segment.

`PromptPrefix` keeps the backbone's KV cache of the last prompt. The next prompt is compared with it
position by position (its input embeddings: text, and each audio frame's 32 codes); the positions up
to the first difference are kept and only the rest is prefilled. Any change (a turn dropped at the
front, a turn replaced) ends the shared prefix there. On the small offline CSM the prefill is a small
part of a phrase's start; at real size (CSM-1B) it is the largest (`scripts/csm_phrase_start.py
--real-size` times it). Prefilling in two pieces sums in another order than in one, so the logits
agree to float rounding (the test allows 1e-4), not bit for bit: a sample or an argmax on a near tie
could differ. One voice keeps one prefix: sessions that take turns on a voice share little of it.
"""
from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Callable

import torch


class SegmentCodes:
    """Mimi codes `[T, 32]` per context Segment, the `limit` most recently used kept.

    An entry holds its Segment weakly (the audio is not kept alive by the cache; a Segment gone and
    another born at its address is no hit). `encoded` counts the encodes done (cache misses),
    `reused` the turns found.
    """

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._entries: OrderedDict[int, tuple[weakref.ref, tuple, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()  # one voice may serve several sessions' threads
        self.encoded = self.reused = 0

    def codes(self, segment, audio: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`segment`'s codes: cached, or `encode(audio)` (its samples as the prompt holds them) now."""
        what = (tuple(audio.shape), audio.dtype, audio.device)  # the same turn prepared otherwise is encoded anew
        with self._lock:
            entry = self._entries.get(id(segment))
            if entry is not None and entry[0]() is segment and entry[1] == what:
                self._entries.move_to_end(id(segment))
                self.reused += 1
                return entry[2]
        codes = encode(audio)
        with self._lock:
            self.encoded += 1
            self._entries[id(segment)] = (weakref.ref(segment), what, codes)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        return codes

    def clear(self) -> None:
        """Forget every turn (and zero the counts)."""
        with self._lock:
            self._entries.clear()
            self.encoded = self.reused = 0

    def __len__(self) -> int:
        return len(self._entries)


class PromptPrefix:
    """The backbone's KV cache of the last prompt, lent to the next generation whose prompt starts alike.

    `take()` hands it out (cropped to the shared prefix) and forgets it, so two generations never share
    one; `give()` takes it back when a generation ends. `kept` is the positions reused by the last `take()`.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._embeds = self._cache = None
        self.kept = 0

    def take(self, embeds: torch.Tensor):
        """`(start, cache)`: the positions of `embeds` `[1, L, H]` the cache already holds (at most L - 1:
        the last is prefilled for its logits), or `(0, None)`."""
        with self._lock:
            old, cache = self._embeds, self._cache
            self._embeds = self._cache = None
        start = 0
        if cache is not None:
            n = min(old.shape[1], embeds.shape[1] - 1)
            same = (old[0, :n] == embeds[0, :n]).all(-1)  # [n] positions equal so far
            start = n if bool(same.all()) else int(same.int().argmin())
        self.kept = start
        if start == 0:
            return 0, None
        cache.crop(start)
        return start, cache

    def give(self, embeds: torch.Tensor, cache) -> None:
        """Keep `cache`, which holds `embeds`' positions first (and maybe generated frames after them)."""
        with self._lock:
            self._embeds, self._cache = embeds, cache

    def clear(self) -> None:
        with self._lock:
            self._embeds = self._cache = None
