"""CSM, Sesame's Conversational Speech Model, as a streaming voice on top of Mimi.

    voice = load_csm()
    audio = voice.generate(text, speaker=0, context=[Segment(speaker, text, audio), ...])  # whole utterance
    for chunk in voice.stream(text, speaker=0, context=[...]):  # 80 ms of audio per generated frame
        ...

- `voice`: loading (`csmlab.weights`), the prompt, whole-utterance and frame-by-frame generation;
- `architecture`: the real 1B on `meta`, a random-weight twin for timings, the CSM/Moshi table;
- `with_moshi`: what Moshi hears of CSM, Mimi agreement, the CSM <-> Moshi pipeline.
"""
from csmlab.csm.architecture import compatibility_table, meta_csm, parameter_counts, random_csm
from csmlab.csm.with_moshi import codec_agreement, csm_codes_to_moshi, moshi_hears, moshi_says, moshi_to_csm
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
    "codec_agreement", "compatibility_table", "conversation_context", "csm_codes_to_moshi", "load_csm",
    "meta_csm", "moshi_hears", "moshi_says", "moshi_to_csm", "parameter_counts", "random_csm",
]
