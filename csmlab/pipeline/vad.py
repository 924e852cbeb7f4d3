"""Streaming voice-activity detection with silero-vad: is the user speaking, 32 ms at a time?

silero-vad (Silero Team, 2021-2025; `silero_vad/data/silero_vad.jit`, 2.3 MB, shipped in its wheel,
so it works offline) scores 512-sample chunks of 16 kHz audio (32 ms) with the probability of
speech, keeping a recurrent state between chunks. `StreamingVad` feeds it the pipeline's 24 kHz
frames (1920 samples, 80 ms: 2.5 chunks) through a streaming resampler and applies silero's own
hysteresis: speech starts at `threshold` and ends below `threshold - 0.15`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from csmlab.audio import Resampler
from csmlab.metrics import SAMPLE_RATE

VAD_RATE = 16000
CHUNK = 512  # silero's window at 16 kHz
CHUNK_MS = 1000 * CHUNK / VAD_RATE  # 32 ms


@dataclass(frozen=True)
class VadChunk:
    """One 32 ms chunk: where it ends (ms of user audio), silero's probability, and the decision."""

    end_ms: float
    prob: float
    speech: bool


class StreamingVad:
    """24 kHz audio in, one `VadChunk` per complete 32 ms out (none, one or more per push)."""

    def __init__(self, threshold: float = 0.5):
        from silero_vad import load_silero_vad

        self.model = load_silero_vad()  # the TorchScript model in the wheel: no download
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.model.reset_states()
        self._resampler = Resampler(SAMPLE_RATE, VAD_RATE)
        self._buffer = np.zeros(0, np.float32)
        self._chunks = 0
        self.speech = False

    @torch.inference_mode()
    def push(self, audio_24k: np.ndarray) -> list[VadChunk]:
        self._buffer = np.concatenate([self._buffer, self._resampler.push(audio_24k)])
        out = []
        while len(self._buffer) >= CHUNK:
            chunk, self._buffer = self._buffer[:CHUNK], self._buffer[CHUNK:]
            prob = float(self.model(torch.from_numpy(chunk), VAD_RATE))
            self.speech = prob >= self.threshold or (self.speech and prob >= self.threshold - 0.15)
            self._chunks += 1
            out.append(VadChunk(self._chunks * CHUNK_MS, prob, self.speech))
        return out


@dataclass(frozen=True)
class TurnEnd:
    """What `TurnTracker.push` saw end: a turn (start and end of speech, ms) or a noise too short for one."""

    start_ms: float
    end_ms: float
    audio: np.ndarray  # [T] float32 at 24 kHz, from the turn's first frame to the end of the hang-over
    ignored: bool  # shorter than `min_speech_ms`


class TurnTracker:
    """The user's turns from the VAD: a turn starts with speech and ends after `end_silence_ms` without
    (the hang-over); one shorter than `min_speech_ms` is a noise (a cough, a click), not a turn."""

    def __init__(self, end_silence_ms: float = 240, min_speech_ms: float = 160):
        self.end_silence_ms, self.min_speech_ms = end_silence_ms, min_speech_ms
        self.reset()

    def reset(self) -> None:
        self.start_ms: float | None = None  # None while the user is not speaking
        self.last_speech_ms = 0.0
        self._audio: list[np.ndarray] = []

    def push(self, pcm: np.ndarray, chunks: list[VadChunk], now_ms: float) -> TurnEnd | None:
        """One frame and its VAD chunks (`now_ms`: the frame's end); returns the turn that ended, if one did."""
        speech = [c for c in chunks if c.speech]
        if speech:
            if self.start_ms is None:
                self.start_ms, self._audio = speech[0].end_ms - CHUNK_MS, []
            self.last_speech_ms = speech[-1].end_ms
        if self.start_ms is None:
            return None
        self._audio.append(pcm)
        if speech or now_ms - self.last_speech_ms < self.end_silence_ms:
            return None
        start, end, self.start_ms = self.start_ms, self.last_speech_ms, None
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        return TurnEnd(start, end, audio, end - start < self.min_speech_ms)
