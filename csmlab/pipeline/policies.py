"""Reply policies for the cascade: given the user's finished turn, what text does the system say?

- `MoshiPolicy`: Moshi listens all along (its own `MoshiStream` on the user's codes) and its inner
  monologue during the user's turn is the reply; offline, Moshi's weights are random, so its text is
  random word pieces, said to be so;
- `ScriptedReplies`: given texts, in turn (for tests and demos);
- `RuleResponder`: a small rule-based responder (a question gets an answer-shaped reply, a
  statement an acknowledgement), which quotes the user when a transcript gives their words.
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
    hears_codes = False

    def __init__(self, texts: Sequence[str]):
        self._texts = cycle(list(texts))

    def reply(self, turn: UserTurn) -> str:
        return next(self._texts)


class RuleResponder:
    """A dozen lines of rules: enough to hold up a turn-taking demo, honestly not a dialogue model."""

    name = "rules"
    hears_codes = False

    def reply(self, turn: UserTurn) -> str:
        words = turn.text.strip().rstrip("?.!").split()
        seconds = (turn.end_ms - turn.start_ms) / 1000
        if turn.text.strip().endswith("?") or (words and words[0].lower() in {"what", "why", "how", "who", "when", "where", "do", "are", "is", "can"}):
            return "Good question. Let me think about that for a moment."
        if len(words) >= 3:
            return f"I see. You said {' '.join(words[-3:]).lower()}. Tell me more."
        return "Mm-hmm." if seconds < 1.5 else "I see. Go on."


class MoshiPolicy:
    """Moshi's inner monologue during the user's turn, as the text the voice speaks."""

    name = "moshi"
    hears_codes = True

    def __init__(self, model=None, seed: int = 0, fallback: str = "I see."):
        from csmlab import moshi

        self.model = model if model is not None else moshi.load()
        self.stream = moshi.MoshiStream(self.model, seed=seed)
        self.fallback = fallback
        self._pieces: list[str] = []

    def hear(self, codes) -> None:
        """One step of the user's codes; Moshi's text piece is kept until the turn is answered."""
        import torch

        out = self.stream.step(None if codes is None else torch.from_numpy(codes))
        self._pieces.append(out.text)

    def reply(self, turn: UserTurn) -> str:
        text, self._pieces = "".join(self._pieces).strip(), []
        return text or self.fallback

    def codec(self):
        from csmlab.pipeline.moshi_brain import moshi_codec

        return moshi_codec(self.model)

    def close(self) -> None:
        self.stream.close()
