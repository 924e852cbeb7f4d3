"""Reply policies for the cascade: given the user's finished turn, what text does the system say?

- `ScriptedReplies`: given texts, in turn (for tests and demos);
- `RuleResponder`: a small rule-based responder (a question gets an answer-shaped reply, a
  statement an acknowledgement), which quotes the user when a transcript gives their words.

Moshi does not answer through a policy: its text stream is the text of its own speech, and comes
*after* the user's turn, so a policy that reads it at the end of the turn finds padding and voices
the answer one turn late. Moshi leads in `csmlab.pipeline.moshi_csm.MoshiCsmBrain` instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import cycle
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class UserTurn:
    """One turn of the user as the cascade heard it (times in ms of session audio)."""

    start_ms: float
    end_ms: float  # the end of speech, as the VAD saw it
    audio: np.ndarray  # [T] float32 at 24 kHz
    text: str = ""  # from a transcript standing in for ASR, when one is given


class ScriptedReplies:
    """Says `texts` in order, then starts again."""

    name = "scripted"

    def __init__(self, texts: Sequence[str]):
        self._texts = cycle(list(texts))

    def reply(self, turn: UserTurn) -> str:
        return next(self._texts)


class RuleResponder:
    """A dozen lines of rules: enough to hold up a turn-taking demo, honestly not a dialogue model."""

    name = "rules"

    def reply(self, turn: UserTurn) -> str:
        words = turn.text.strip().rstrip("?.!").split()
        seconds = (turn.end_ms - turn.start_ms) / 1000
        if turn.text.strip().endswith("?") or (words and words[0].lower() in {"what", "why", "how", "who", "when", "where", "do", "are", "is", "can"}):
            return "Good question. Let me think about that for a moment."
        if len(words) >= 3:
            return f"I see. You said {' '.join(words[-3:]).lower()}. Tell me more."
        return "Mm-hmm." if seconds < 1.5 else "I see. Go on."
