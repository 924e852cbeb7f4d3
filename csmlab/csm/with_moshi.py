"""CSM next to Moshi: one Mimi, two models. What Moshi hears of CSM, and a pipeline between them.

- `moshi_hears`: CSM's 32-codebook frames through Moshi's 8-codebook Mimi;
- `codec_agreement`: CSM's Mimi (transformers) against moshi's Mimi, with and without the fix of
  transformers 4.57.6's missing 250-step window;
- `csm_codes_to_moshi` / `moshi_to_csm`: CSM's frames as Moshi's user stream (codes, no audio round
  trip), and Moshi's inner monologue as the text CSM speaks.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from csmlab.csm.voice import MOSHI_CODEBOOKS, CsmVoice, Segment
from csmlab.errors import CodesError, CsmlabError
from csmlab.metrics import SAMPLE_RATE


def moshi_hears(voice: CsmVoice, codes: torch.Tensor) -> np.ndarray:
    """CSM's `[T, 32]` frames through Moshi's Mimi, which keeps the first 8 codebooks only."""
    codes = torch.as_tensor(codes)
    if codes.ndim != 2 or codes.shape[1] < MOSHI_CODEBOOKS:
        raise CodesError(f"moshi_hears() takes [T, K>=8] codes, got {tuple(codes.shape)}")
    return voice.codec(MOSHI_CODEBOOKS).decode(codes[:, :MOSHI_CODEBOOKS].T)


@torch.no_grad()
def codec_agreement(voice: CsmVoice, audio_24k: np.ndarray) -> dict[str, np.ndarray]:
    """Per codebook, the fraction of frames where CSM's Mimi gives moshi's Mimi's code: window fix on, off."""
    from csmlab.convert import fix_sliding_window, sliding_window_fixed

    x = torch.from_numpy(np.ascontiguousarray(audio_24k, dtype=np.float32))
    ours = torch.from_numpy(voice.codec().encode(x.numpy(), SAMPLE_RATE))  # [32, T] moshi's Mimi
    out = {}
    was_fixed = sliding_window_fixed()
    try:
        for name, fixed in (("window fixed", True), ("transformers 4.57 as is", False)):
            fix_sliding_window(fixed)
            theirs = voice.model.codec_model.encode(x[None, None].to(voice.model.dtype)).audio_codes[0].cpu()
            out[name] = (theirs == ours).float().mean(-1).numpy()  # [32]
    finally:
        fix_sliding_window(was_fixed)
    return out


def csm_codes_to_moshi(moshi, codes: torch.Tensor, seed: int = 0) -> list:
    """Feed CSM's frames to Moshi as the user's stream, code to code: no decode, no re-encode.

    Both speak Mimi, so CSM's first 8 codebooks *are* Moshi user tokens. Returns Moshi's `Step`s.
    """
    from csmlab.moshi import MoshiStream

    user = torch.as_tensor(codes)[:, : moshi.num_user_codebooks]  # [T, 8]
    with MoshiStream(moshi, seed=seed) as stream:
        return [stream.step(frame) for frame in user]


def moshi_says(steps) -> str:
    """Moshi's inner monologue (its text stream, padding dropped) as plain text."""
    return "".join(step.text for step in steps).strip()


def moshi_to_csm(voice: CsmVoice, steps, speaker: int = 1, context: Sequence[Segment] = (),
                 **stream_kwargs) -> Iterator[np.ndarray]:
    """CSM voices what Moshi's inner monologue says: Moshi thinks in text, CSM speaks it."""
    text = moshi_says(steps)
    if not text:
        raise CsmlabError("Moshi's inner monologue is empty (only padding) so far: let it run more steps")
    return voice.stream(text, speaker, context, **stream_kwargs)
