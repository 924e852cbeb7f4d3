"""The input layer's jitter buffer: sender frames with sequence numbers in, an ordered stream out.

Audio from a network arrives late, twice, out of order or not at all. The policy, frame by frame
(a "frame" is whatever one `push` carried, tagged with the sender's `seq`):

- **in order**: released at once;
- **early** (a gap before it): held; a missing frame is waited for while fewer than `window` later
  frames are held (whatever their numbers), then declared lost and **concealed** with silence as
  long as the shorter of its real neighbours. For `[0, 5, 1, 2, 3, 4, 6]` and `window=3` nothing is
  concealed: only frame 5 is held when 1 arrives;
- **a gap too long to conceal**: concealment is bounded by real input, so that a few bytes cannot
  demand minutes of compute (a seq jump of 50 was 50 concealed steps; after a 10 s chunk, 470 s of
  silence). Each frame consumed earns one frame of concealment credit, up to `max_conceal`; a gap
  longer than the credit is **skipped** (counted; numbering resumes after it) instead of concealed.
  So `concealed <= max_conceal + consumed` frames, each no longer than a real frame beside it;
- **duplicate** (already held or already released): dropped and counted;
- **late** (its slot was already concealed or skipped): dropped and counted; the silence has gone out;
- **a jump** of more than `max_gap` frames either way: the sender restarted (a reconnect); what is
  held is released (gaps concealed) and numbering restarts at the new frame;
- `seq=None`: no numbering, so no reordering: released in arrival order.

Every frame pushed is accounted for: `received == consumed + duplicate + late + held`, and the
stream out is `consumed + concealed` frames long. Nothing is lost silently.
"""
from __future__ import annotations

import numbers
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from csmlab.errors import AudioFormatError, ConfigError, is_number


def check_seq(seq) -> int | None:
    """The sender's frame number as an int (or None), or an `AudioFormatError`: checked before the
    buffer counts the frame, so a bad one changes nothing ("abc" and NaN escaped as ValueError, 1.5
    and True were silently taken as frame 1)."""
    if seq is None:
        return None
    if not is_number(seq, numbers.Integral):
        raise AudioFormatError(f"seq must be an int (the sender's frame counter) or None (no numbering), not {seq!r}")
    return int(seq)


@dataclass
class JitterCounts:
    """What the buffer did with the frames: received ones consumed or dropped, missing ones concealed or skipped."""

    received: int = 0
    consumed: int = 0  # released in order, as themselves
    concealed: int = 0  # silence stood in for a missing frame
    # dropped on arrival:
    duplicate: int = 0
    late: int = 0  # its place was already played or concealed
    restarts: int = 0  # the sender's counter jumped: the buffer started again
    skipped: int = 0  # frames never received, in gaps too long to conceal (not in `received`)

    @property
    def dropped(self) -> int:
        return self.duplicate + self.late


@dataclass(frozen=True)
class Released:
    """One frame out of the buffer, in order: the sender's audio, or silence in a lost frame's place."""

    seq: int | None
    audio: np.ndarray  # [n] float32 mono, at the source's rate
    concealed: bool = False


@dataclass
class JitterBuffer:
    """Reorders within `window` frames, conceals what is lost, drops duplicates and late frames."""

    window: int = 3
    max_gap: int = 50
    max_conceal: int = 12  # concealment credit, in frames (~1 s of 80 ms frames): see the module's doc
    log: Callable[[str, str], None] = lambda kind, detail: None
    counts: JitterCounts = field(default_factory=JitterCounts)

    def __post_init__(self):
        if self.window < 1 or self.max_gap <= self.window or self.max_conceal < 0:
            raise ConfigError(f"need window >= 1, max_gap > window and max_conceal >= 0, got window={self.window}, "
                              f"max_gap={self.max_gap}, max_conceal={self.max_conceal}")
        self._held: dict[int, np.ndarray] = {}
        self._next: int | None = None  # the seq expected next
        self._released: deque[int] = deque(maxlen=2 * self.max_gap)  # recent seqs actually released
        self._last_len = 0  # samples of the last real frame released: a concealed one is no longer
        self._credit = self.max_conceal  # frames that may still be concealed (one earned per frame consumed)

    @property
    def held(self) -> int:
        return len(self._held)

    def push(self, seq: int | None, audio: np.ndarray) -> list[Released]:
        """Take one sender frame; return the frames that are now in order (possibly none)."""
        self.counts.received += 1
        if seq is None:
            self.counts.consumed += 1
            return [Released(None, audio)]
        seq = int(seq)
        out: list[Released] = []
        if self._next is None:
            self._next = seq
        elif abs(seq - self._next) > self.max_gap:
            self.counts.restarts += 1
            self.log("restart", f"seq jumped from {self._next} to {seq}: the sender restarted; released what was held")
            out = self.flush()
            self._next = seq
        if seq in self._held or seq in self._released:
            self.counts.duplicate += 1
            self.log("duplicate", f"seq {seq} arrived twice: dropped")
            return out
        if seq < self._next:
            self.counts.late += 1
            self.log("late", f"seq {seq} arrived after its slot was concealed or skipped: dropped")
            return out
        self._held[seq] = audio
        return out + self._release()

    def _release(self, everything: bool = False) -> list[Released]:
        out = []
        while self._held:
            if self._next in self._held:
                out.append(self._take(self._next))
            elif not everything and len(self._held) < self.window:
                break  # the missing frame may still come
            elif min(self._held) - self._next > self._credit:
                self._skip(min(self._held))
                continue
            else:
                out.append(self._conceal(self._next))
            self._next += 1
        return out

    def _take(self, seq: int) -> Released:
        self.counts.consumed += 1
        self._credit = min(self.max_conceal, self._credit + 1)
        self._released.append(seq)
        audio = self._held.pop(seq)
        self._last_len = len(audio)
        return Released(seq, audio)

    def _conceal(self, seq: int) -> Released:
        self.counts.concealed += 1
        self._credit -= 1
        n = min(self._last_len, len(self._held[min(self._held)]))  # no longer than a real neighbour
        self.log("concealed", f"seq {seq} lost: {n} samples of silence in its place")
        return Released(seq, np.zeros(n, dtype=np.float32), concealed=True)

    def _skip(self, resume: int) -> None:
        gap = resume - self._next
        self.counts.skipped += gap
        self.log("skipped", f"seqs {self._next}..{resume - 1} lost: {gap} frames, more than the "
                 f"{self._credit} that may be concealed now; the stream resumes at {resume}")
        self._next = resume

    def flush(self) -> list[Released]:
        """Release everything held, concealing the gaps between (end of stream, or a disconnect)."""
        return self._release(everything=True)

    def restart(self) -> list[Released]:
        """A new source: release what is held, then accept any numbering."""
        out = self.flush()
        self._next = None
        self._released.clear()
        return out
