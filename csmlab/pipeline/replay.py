"""`ReplayedMoshi`: a REPLAY that stands in for Moshi's text stream, one speaker's words from the real call.

Offline, Moshi's weights are random: its text is random word pieces, nearly never padding, so it
says nothing about how a real Moshi's text stream behaves. A real Moshi's inner monologue is the
text of its own speech, aligned with it: a word piece at the step its word starts, padding while
the word is spoken and whenever Moshi is silent (while the user speaks, above all). This replay
behaves so on the real call (`data/real/sample.stm`): each of `speaker`'s utterances has its
words spread evenly over its span, one word per step at most, and padding everywhere else.

It has `MoshiStream`'s interface as the brains use it (`step(codes) -> Step`, `index`, `delay`,
`reset()`, `close()`) and gives Moshi's timing: a word is *sampled* (`Step.lead_text`) at the
step its time falls in, and comes back aligned with its frame (`Step.text`, `Step.audio`) `delay`
steps later, as Moshi's acoustic delay makes it. Its "own voice" (`Step.audio`) is the speaker's
real audio from the call, encoded with `codec`. It is deaf: the user's codes change nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from csmlab.data import Recording
from csmlab.errors import ConfigError, is_number
from csmlab.metrics import frame_ms

FRAME_MS = frame_ms()  # 80.0
PADDING = 3  # Moshi's text padding id; the replay's word tokens are 4 + the word's index (not SentencePiece ids)


@dataclass(frozen=True)
class ReplayStep:
    """`csmlab.moshi.Step`'s fields, so that a brain reads a replay step as it reads Moshi's."""

    index: int
    text_token: int | None
    text: str
    audio: torch.Tensor | None
    ms: float = 0.0
    user_dropped: bool = False
    lead_text: str = ""

    @property
    def warming_up(self) -> bool:
        return self.audio is None


@dataclass(frozen=True)
class ReplayWord:
    """One word of the replay: its text (with a leading space, as Moshi's pieces) and when it is sampled."""

    index: int
    text: str
    step: int  # the step at which it is sampled (`lead_text`)
    t_s: float  # its time in the call, seconds (the utterance's span, spread evenly)


def spread_words(recording: Recording, speaker: str) -> list[ReplayWord]:
    """`speaker`'s STM words, each at start + i * span / n of its utterance, one step each at most."""
    words, last = [], -1
    for turn in recording.transcript:
        if turn.speaker != speaker:
            continue
        parts = turn.text.split()
        for i, part in enumerate(parts):
            t = turn.start + i * (turn.end - turn.start) / len(parts)
            step = max(int(t * 1000 / FRAME_MS), last + 1)  # Moshi samples one text token per step
            words.append(ReplayWord(len(words), " " + part, step, t))
            last = step
    if not words:
        names = sorted({t.speaker for t in recording.transcript})
        raise ConfigError(f"the recording's transcript has no words by {speaker!r}; its speakers are {', '.join(names)}")
    return words


class ReplayedMoshi:
    """A REPLAY of `speaker`'s words in the real call, in place of Moshi's text stream (NOT Moshi)."""

    name = "replay"
    label = "REPLAY of a real speaker's words (stand-in for Moshi's text stream, NOT Moshi)"

    def __init__(self, recording: Recording, speaker: str = "Sheila", codec=None, delay: int = 1):
        """`codec`: a `csmlab.codec` Codec that encodes the speaker's audio as the replay's "own voice"
        (None: no audio, `Step.audio` stays None). `delay`: Moshi's acoustic delay in steps (1: 80 ms,
        the released model's)."""
        if not is_number(delay, int) or delay < 0:
            raise ConfigError(f"delay is a whole number of 80 ms steps (>= 0), not {delay!r}")
        self.speaker, self.delay = speaker, delay
        self.words = spread_words(recording, speaker)
        self._at = {w.step: w for w in self.words}
        self.codes = self._own_voice(recording, codec) if codec is not None else None  # [K, T]
        self.reset()

    def _own_voice(self, recording: Recording, codec) -> torch.Tensor:
        from csmlab.pipeline.call import user_side

        side = user_side(recording, self.speaker)  # the speaker's turns, silence elsewhere
        return torch.from_numpy(np.asarray(codec.encode(side.audio, side.sample_rate), np.int64))

    def __repr__(self) -> str:
        return f"ReplayedMoshi(REPLAY of {self.speaker}'s {len(self.words)} words in the real call, NOT Moshi; delay {self.delay})"

    def reset(self) -> None:
        self.index, self._closed = 0, False

    def close(self) -> None:
        self._closed = True

    def piece(self, step: int) -> str:
        word = self._at.get(step)
        return word.text if word is not None else ""

    def step(self, user_codes=None) -> ReplayStep:
        """One 80 ms step; the user's codes are heard and ignored (a replay is deaf)."""
        if self._closed:
            from csmlab.errors import StreamClosedError

            raise StreamClosedError("this ReplayedMoshi was closed; make a new one")
        t, self.index = self.index, self.index + 1
        lead = self.piece(t)
        if t < self.delay:  # warming up, as Moshi does
            return ReplayStep(t, None, "", None, lead_text=lead)
        aligned = t - self.delay
        word = self._at.get(aligned)
        token = PADDING if word is None else 4 + word.index
        audio = None
        if self.codes is not None:  # past the call's end, its last frame (the speaker's side ends silenced)
            audio = self.codes[:, min(aligned, self.codes.shape[1] - 1)]
        return ReplayStep(t, token, self.piece(aligned), audio, lead_text=lead)


def speaking_pace_ms(recording: Recording, speaker: str) -> float:
    """`speaker`'s mean time per word over their utterances (ms): how long a voice takes to say their words."""
    turns = [t for t in recording.transcript if t.speaker == speaker]
    return 1000 * sum(t.end - t.start for t in turns) / sum(len(t.text.split()) for t in turns)
