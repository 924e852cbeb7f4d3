"""The real two-party call as a duplex session sees it: one speaker is the user, the other the reference.

The recording is one mono channel with both speakers. To play "the user" into a session we keep
the call only where the user speaks (their RTTM turns) and silence the rest; overlaps keep the other
speaker faintly underneath, as a real line would. `csmlab.data` names the RTTM's speakers as the STM
does (`SPEAKER_NAMES`), so a side is found by name in both.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from csmlab.audio import resample
from csmlab.data import Recording, Turn
from csmlab.metrics import SAMPLE_RATE


@dataclass(frozen=True)
class Side:
    """One speaker's side of a call: their audio (the rest silenced), turns and words."""

    name: str  # the STM's name for them
    audio: np.ndarray  # [T] float32 at the recording's rate
    sample_rate: int
    turns: list[Turn]  # RTTM turns (who spoke when)
    transcript: list[Turn]  # STM utterances (what they said): the cascade's stand-in for ASR


def user_side(recording: Recording, name: str) -> Side:
    """The call where `name` (an STM speaker, e.g. "Diane") speaks, silence elsewhere."""
    words = [t for t in recording.transcript if t.speaker == name]
    turns = [t for t in recording.turns if t.speaker == name]
    mask = np.zeros(len(recording.audio), np.float32)
    for t in turns:
        mask[int(t.start * recording.sample_rate): int(t.end * recording.sample_rate)] = 1.0
    return Side(name, recording.audio * mask, recording.sample_rate, turns, words)


def stereo(user, user_rate: int, system_24k: np.ndarray, rate: int = SAMPLE_RATE) -> np.ndarray:
    """`[2, T]` at `rate`: the user on the left, the system on the right (for `IPython.display.Audio`).

    A player embeds its samples in the notebook: 16 kHz (the call's own rate) keeps notebooks small."""
    left = resample(np.asarray(user, np.float32), user_rate, rate)  # unchanged where the rates agree
    right = resample(system_24k, SAMPLE_RATE, rate)
    n = max(len(left), len(right))
    out = np.zeros((2, n), np.float32)
    out[0, : len(left)], out[1, : len(right)] = left, right
    return out


def replay_side(recording: Recording, name: str):
    """A `ScriptedBrain` that says what `name` said in the call, when they said it (STM utterances)."""
    from csmlab.pipeline.brain import ScriptedBrain, Utterance

    rate = recording.sample_rate
    return ScriptedBrain([Utterance(1000 * t.start, recording.audio[int(t.start * rate): int(t.end * rate)], rate, t.text)
                          for t in recording.transcript if t.speaker == name])
