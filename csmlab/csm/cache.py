"""What one CSM prompt shares with the next, computed once: each context turn's Mimi codes.

A voice that speaks a conversation phrase by phrase (`csmlab.pipeline.moshi_csm`) builds a new prompt
for every phrase, and most of it is the conversation it already had. transformers'
`CsmForConditionalGeneration` encodes every context turn's audio with Mimi inside each `forward()`
(`_merge_input_ids_with_input_values`, one `codec_model.encode()` per turn); on the small offline CSM
that encode was ~90% of a phrase's first frame (`scripts/csm_phrase_start.py`).

`SegmentCodes` keeps each turn's codes, keyed by the `Segment` object itself (identity: a Segment is
frozen, and a conversation grows by new Segments). It is the same encode of the same samples, so the
codes are the uncached path's exactly. A turn whose audio is replaced (a new Segment, even with the
same words) is encoded again; an audio array edited in place is not noticed: make a new Segment.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable

import torch


class SegmentCodes:
    """Mimi codes `[T, 32]` per context Segment, the `limit` most recently used kept.

    `encoded` counts the encodes done (cache misses), `reused` the turns found: what the tests read.
    """

    def __init__(self, limit: int = 64):
        self.limit = limit
        self._entries: OrderedDict[int, tuple[object, tuple, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()  # one voice may serve several sessions' threads
        self.encoded = self.reused = 0

    def codes(self, segment, audio: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`segment`'s codes: cached, or `encode(audio)` (its samples as the prompt holds them) now."""
        what = (tuple(audio.shape), audio.dtype, audio.device)  # the same turn prepared otherwise is encoded anew
        with self._lock:
            entry = self._entries.get(id(segment))
            if entry is not None and entry[0] is segment and entry[1] == what:  # `is`: the entry holds the
                self._entries.move_to_end(id(segment))  # segment, so its id cannot be another object's
                self.reused += 1
                return entry[2]
        codes = encode(audio)
        with self._lock:
            self.encoded += 1
            self._entries[id(segment)] = (segment, what, codes)
            while len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        return codes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
