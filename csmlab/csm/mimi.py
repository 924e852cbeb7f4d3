"""CSM's Mimi seen from Moshi's side: what an 8-codebook listener hears, and whether two Mimis agree.

- `moshi_hears`: CSM's 32-codebook frames through Moshi's 8-codebook Mimi;
- `codec_agreement`: CSM's Mimi (transformers) against moshi's Mimi, with and without the fix of
  transformers 4.57.6's missing 250-step window.

Nothing here needs the Moshi LM: the bridge between the two models (CSM's frames as Moshi's user
stream, Moshi's monologue voiced by CSM) lives in `csmlab.pipeline.bridge`, where brain and voice meet.
"""
from __future__ import annotations

import numpy as np
import torch

from csmlab.csm.voice import MOSHI_CODEBOOKS, CsmVoice
from csmlab.errors import CodesError
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
    from csmlab.weights.convert import fix_sliding_window, sliding_window_fixed

    x = torch.from_numpy(np.ascontiguousarray(audio_24k, dtype=np.float32))
    ours = torch.from_numpy(voice.codec().encode(x.numpy(), SAMPLE_RATE))  # [32, T] moshi's Mimi
    out = {}
    was_fixed = sliding_window_fixed()
    try:
        for name, fixed in (("window fixed", True), ("transformers 4.57 as is", False)):
            fix_sliding_window(fixed)
            x_model = x[None, None].to(voice.model.device, voice.model.dtype)  # CSM on a GPU: the audio goes there
            theirs = voice.model.codec_model.encode(x_model).audio_codes[0].cpu()
            out[name] = (theirs == ours).float().mean(-1).numpy()  # [32]
    finally:
        fix_sliding_window(was_fixed)
    return out
