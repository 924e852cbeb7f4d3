"""The brain layer: what the system says, one 80 ms step at a time.

Every step a brain is handed what the user's side brought (`Heard`: 1920 samples at 24 kHz, plus
the frame's Mimi codes when the brain `hears_codes`) and returns at most one frame (`Said`: Mimi
codes for the system codec to decode, or 1920 samples of PCM) and any text. A brain writes to the
session's event log through `self.log(kind, detail)`.

- `LoopbackBrain`: the user's own codes, `delay_ms` later: the codec's round trip, for tests and the widget;
- `ScriptedBrain`: given utterances at given times, deaf to the user: for tests;
- `MoshiBrain` (`csmlab.pipeline.moshi_brain`), `CascadeBrain` (`csmlab.pipeline.cascade`),
  `MoshiCsmBrain` (`csmlab.pipeline.moshi_csm`: Moshi leads, CSM speaks).

This module knows none of its subclasses: `make_brain` (`csmlab.pipeline.registry`) names them all.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from csmlab.audio import to_mimi
from csmlab.errors import ConfigError
from csmlab.metrics import FRAME_SIZE, frame_ms

FRAME_MS = round(frame_ms())  # 80


@dataclass(frozen=True)
class Heard:
    """The user's side of one step."""

    index: int
    pcm: np.ndarray  # [1920] float32 at 24 kHz (silence when concealed)
    codes: np.ndarray | None  # [K] int64 Mimi codes, for brains that hear codes
    concealed: bool = False  # the frame was lost on the way: silence stands in for it


@dataclass(frozen=True)
class Said:
    """The system's side of one step: codes or PCM (or neither: silence), and text."""

    codes: np.ndarray | None = None  # [K] Mimi codes for the system codec
    pcm: np.ndarray | None = None  # [1920] float32 at 24 kHz
    text: str = ""


SILENT = Said()


class Brain:
    """The interface every brain follows; subclasses override `step` and say what they hear and say."""

    name = "brain"
    hears_codes = False  # the session encodes the user's audio for it (user codec session)
    speaks_codes = False  # it returns codes, which the session decodes (system codec session)
    text_separator = ""  # between two texts it says: "" for a token stream, "\n" for whole replies

    def __init__(self):
        self.log = lambda kind, detail="": None

    def attach(self, log) -> None:
        """The session hands its event-log writer here before the first step."""
        self.log = log

    def codec(self):
        """The Mimi that the session's codec sessions use (None: the brain needs no codec)."""
        return None

    def measures_threads(self, codec) -> bool:
        """Whether a session measures this brain's step on 1 and on all cores at start
        (`csmlab.pipeline.threads`); if not, it keeps torch's thread count."""
        return False

    def tuned_models(self, codec) -> list:
        """The modules whose shapes key a cached thread choice."""
        return []

    def threads_trial(self, codec, threads: int):
        """A callable that runs one whole step (encode, brain, decode) on fresh state at `threads`
        intra-op threads, warmed up: what `csmlab.pipeline.threads` times."""
        raise NotImplementedError

    def step(self, heard: Heard) -> Said:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget the conversation (a new session starts from scratch)."""

    def close(self) -> None:
        """Free what the brain holds (streams, threads)."""

    def algorithmic_ms(self) -> dict[str, float]:
        """Latency this brain adds by design (not compute): e.g. Moshi's acoustic delay."""
        return {}

    def latency_ms(self) -> dict:
        """Measured latency summaries of its own (e.g. the cascade's response latency)."""
        return {}

    @property
    def weights(self) -> str:
        """Which weights speak: 'real', 'offline', 'none' ..."""
        return "none"


class LoopbackBrain(Brain):
    """Echoes the user's own Mimi codes `delay_ms` later (a multiple of 80 ms): the codec's round trip.

    `codec` defaults to `load_codec(8)` (full-size Mimi: random weights offline, so the echo is a buzz);
    `listen=True` loads the small trained Mimi instead, so that the echo sounds like the input.
    """

    name = "loopback"
    hears_codes = speaks_codes = True

    def __init__(self, delay_ms: int = 160, codec=None, listen: bool = False):
        super().__init__()
        if delay_ms < 0 or delay_ms % FRAME_MS:
            raise ConfigError(f"delay_ms must be a multiple of {FRAME_MS} ms (>= 0), not {delay_ms}")
        self.delay = delay_ms // FRAME_MS
        self._codec, self._listen = codec, listen
        self._queue: deque = deque()

    def codec(self):
        if self._codec is None:
            from csmlab.codec import load_codec

            self._codec = load_codec(8, listen=self._listen)
        return self._codec

    def step(self, heard: Heard) -> Said:
        self._queue.append(heard.codes)
        if len(self._queue) <= self.delay:
            return SILENT
        return Said(codes=self._queue.popleft())

    def reset(self) -> None:
        self._queue.clear()

    def algorithmic_ms(self) -> dict[str, float]:
        return {"loopback delay": self.delay * FRAME_MS}

    @property
    def weights(self) -> str:
        return self.codec().weights.kind


@dataclass(frozen=True)
class Utterance:
    """What a `ScriptedBrain` says, from `at_ms` on: audio (any rate, csmlab.audio rules) and its text."""

    at_ms: float
    audio: np.ndarray
    sample_rate: int = 24000
    text: str = ""


class ScriptedBrain(Brain):
    """Plays `utterances` at their times, whatever the user does: deterministic, for tests and demos.

    An utterance starts at the first step at or after `at_ms`; its text comes out on that step. If it
    is still playing when the next one is due, the next one waits its turn.
    """

    name = "scripted"

    def __init__(self, utterances: Sequence[Utterance | tuple] = ()):
        super().__init__()
        self.utterances = sorted((u if isinstance(u, Utterance) else Utterance(*u) for u in utterances),
                                 key=lambda u: u.at_ms)
        self._frames = [frames_of(to_mimi(u.audio, u.sample_rate)) for u in self.utterances]
        self.reset()

    def reset(self) -> None:
        self._next = 0  # the next utterance to start
        self._playing: deque[np.ndarray] = deque()

    def step(self, heard: Heard) -> Said:
        text = ""
        if not self._playing and self._next < len(self.utterances) and heard.index * FRAME_MS >= self.utterances[self._next].at_ms:
            self._playing.extend(self._frames[self._next])
            text = self.utterances[self._next].text
            self.log("utterance", f"{self._next}: {text!r}")
            self._next += 1
        if not self._playing:
            return Said(text=text)
        return Said(pcm=self._playing.popleft(), text=text)


def frames_of(audio_24k: np.ndarray) -> list[np.ndarray]:
    """`[T]` audio as whole `[1920]` frames, the last one zero-padded."""
    n = -(-len(audio_24k) // FRAME_SIZE)
    padded = np.zeros(n * FRAME_SIZE, dtype=np.float32)
    padded[: len(audio_24k)] = audio_24k
    return list(padded.reshape(n, FRAME_SIZE))
