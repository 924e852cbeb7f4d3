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
