"""CSM, Sesame's Conversational Speech Model, as a streaming voice on top of Mimi.

    voice = load_csm()
    audio = voice.generate(text, speaker=0, context=[Segment(speaker, text, audio), ...])  # whole utterance
    for chunk in voice.stream(text, speaker=0, context=[...]):  # 80 ms of audio per generated frame
        ...

- `voice`: loading (`csmlab.weights`), the prompt, whole-utterance and frame-by-frame generation;
- `cache`: what one prompt shares with the next (each context turn's Mimi codes, the KV prefix);
- `architecture`: the real 1B on `meta`, a random-weight twin for timings;
- `mimi`: what Moshi's 8-codebook Mimi hears of CSM, and CSM's Mimi against moshi's.

The CSM <-> Moshi bridge (and the config table of both) is `csmlab.pipeline.bridge`: this package
never imports `csmlab.moshi`.
"""
from csmlab.csm.architecture import meta_csm, parameter_counts, random_csm
from csmlab.csm.mimi import codec_agreement, moshi_hears
from csmlab.csm.voice import (
    DEFAULT_MAX_AUDIO_MS,
    FRAME_MS,
    MOSHI_CODEBOOKS,
    SAMPLE_RATE,
    CsmVoice,
    Sampling,
    Segment,
    conversation_context,
    load_csm,
)

__all__ = [
    "CsmVoice", "DEFAULT_MAX_AUDIO_MS", "FRAME_MS", "MOSHI_CODEBOOKS", "SAMPLE_RATE", "Sampling", "Segment",
    "codec_agreement", "conversation_context", "load_csm", "meta_csm", "moshi_hears", "parameter_counts",
    "random_csm",
]
