"""The cascade's voices: text (and the conversation so far) in, 80 ms frames of 24 kHz audio out.

- `CsmSpeaker`: CSM (`csmlab.csm.CsmVoice.stream`) with the conversation, both sides' turns with
  their audio and text, as its context: that is CSM's whole point, a voice that fits the dialogue.
- `EspeakVoice`: espeak-ng, the offline stand-in. Offline, CSM has random weights (its audio is a
  buzz); espeak-ng is intelligible, robotic, and ignores the context. It is labelled as what it is.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from csmlab.csm.voice import Segment
from csmlab.pipeline.brain import frames_of


class EspeakVoice:
    """espeak-ng as the system's voice: the OFFLINE STAND-IN for CSM (intelligible, not CSM)."""

    label = "espeak-ng (offline stand-in, NOT CSM)"
    weights = "espeak-ng"

    def __init__(self, voice: str = "en-us", speed: int = 175, pitch: int = 50):
        self.voice, self.speed, self.pitch = voice, speed, pitch

    def speak(self, text: str, context: Sequence[Segment] = ()) -> Iterator[np.ndarray]:
        """The whole reply is synthesised at once (espeak-ng takes tens of ms), then sent frame by frame."""
        from csmlab.data.corpus import synthesize

        return iter(frames_of(synthesize(text, self.voice, self.speed, self.pitch)))


class CsmSpeaker:
    """CSM speaking as `speaker`, conditioned on the conversation so far, one frame per step.

    `voice` defaults to `load_csm()` (real sesame/csm-1b when found, else the offline random-weight
    stand-in: its audio is then a buzz, its timings real). `context_s` bounds the context kept."""

    def __init__(self, voice=None, speaker: int = 1, sampling=None, max_audio_ms: int = 10_000, context_s: float = 30.0):
        from csmlab.csm import Sampling, load_csm
        from csmlab.weights import default_device

        self.voice = voice if voice is not None else load_csm(device=default_device())
        self.speaker, self.max_audio_ms, self.context_s = speaker, max_audio_ms, context_s
        self.sampling = sampling or Sampling()

    @property
    def weights(self) -> str:
        return self.voice.source.kind

    @property
    def label(self) -> str:
        real = "real weights" if self.voice.source.is_real else "OFFLINE random weights: a buzz, real timings"
        return f"CSM ({real})"

    def speak(self, text: str, context: Sequence[Segment] = ()) -> Iterator[np.ndarray]:
        return self.voice.stream(text, self.speaker, self._recent(context), self.max_audio_ms, self.sampling)

    def frames(self, text: str, context: Sequence[Segment] = (), max_audio_ms: int | None = None):
        """CSM's `[32]` codes frame by frame (no audio): for a caller that decodes them on one `decoder()`."""
        return self.voice.frames(text, self.speaker, self._recent(context), max_audio_ms or self.max_audio_ms, self.sampling)

    def decoder(self):
        """A streaming Mimi decoder for CSM's 32 codebooks: one for several utterances joins them seamlessly."""
        return self.voice.codec().stream()

    def _recent(self, context: Sequence[Segment]) -> list[Segment]:
        """The newest turns that fit in `context_s` seconds (CSM's context window is finite)."""
        kept, total = [], 0.0
        for seg in reversed(context):
            total += len(seg.audio) / seg.sample_rate
            if total > self.context_s:
                break
            kept.append(seg)
        return kept[::-1]


def make_voice(voice):
    """`"espeak"`, `"csm"`, `"auto"` (CSM with real weights when found, else espeak-ng), or a voice object."""
    from csmlab.errors import ConfigError
    from csmlab.weights import locate

    if not isinstance(voice, str):
        return voice
    if voice == "auto":
        voice = "csm" if locate("csm").is_real else "espeak"
    if voice == "espeak":
        return EspeakVoice()
    if voice == "csm":
        return CsmSpeaker()
    raise ConfigError(f"voice must be 'auto', 'csm', 'espeak' or an object with speak(text, context), not {voice!r}")
