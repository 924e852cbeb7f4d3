"""CSM and Moshi side by side: one Mimi, two models. The table that compares them, and the bridge.

- `compatibility_table`: CSM-1B's and Moshi-7B's configs, row by row (computed, not typed in);
- `csm_codes_to_moshi`: CSM's frames as Moshi's user stream (codes to codes, no audio round trip);
- `moshi_says` / `moshi_to_csm`: Moshi's inner monologue as the text CSM speaks.

Brain (Moshi) and voice (CSM) meet only here in the pipeline: `csmlab.csm` never imports
`csmlab.moshi`, so a voice can be loaded and used without the dialogue model.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from csmlab.csm.voice import CsmVoice, Segment
from csmlab.errors import CsmlabError
from csmlab.moshi import REAL_CONFIG, MoshiStream


def compatibility_table(csm_config=None, moshi_config: dict | None = None) -> list[tuple[str, str, str]]:
    """(property, CSM, Moshi) rows computed from the configs (default: the released ones), not typed in."""
    from transformers import CsmConfig

    c, m = csm_config or CsmConfig(), moshi_config or REAL_CONFIG
    mimi = c.codec_config
    users = m["n_q"] - m["dep_q"]
    return [
        ("sample rate (Hz)", f"{mimi.sampling_rate}", "24000 (same Mimi)"),
        ("frame rate (Hz)", f"{mimi.frame_rate}", f"{mimi.frame_rate} (same Mimi)"),
        ("codebooks per frame", f"{c.num_codebooks}", f"{m['dep_q']} (Moshi) + {users} (user)"),
        ("codes per codebook", f"{mimi.codebook_size} (+3 specials: vocab {c.vocab_size})", f"{m['card']}"),
        ("audio bitrate (kbps)", f"{c.num_codebooks * 11 * mimi.frame_rate / 1000:.1f}",
         f"{m['dep_q'] * 11 * mimi.frame_rate / 1000:.1f} per speaker"),
        ("text vocabulary", f"{c.text_vocab_size} (Llama-3 BPE)", f"{m['text_card']} (SentencePiece)"),
        ("text placement", "before the audio, per turn", "time-aligned, 1 token per frame"),
        ("context", f"{c.max_position_embeddings} positions (text tokens + frames)",
         f"{m['context']} frames ({m['context'] / mimi.frame_rate:.0f} s)"),
        ("codebook delays", "none (depth decoder, in order)", f"{m['delays'][1:1 + m['dep_q']]}"),
        ("special text tokens", f"bos {c.bos_token_id}, <|AUDIO|> {c.audio_token_id}, <|audio_eos|> "
         f"{c.audio_eos_token_id}", f"pad {m['existing_text_padding_id']}, end-of-padding 0"),
        ("special audio codes", f"end of audio: all {c.codebook_eos_token_id}; pad {c.codebook_pad_token_id}",
         f"initial token {m['card']}"),
    ]


def csm_codes_to_moshi(moshi, codes: torch.Tensor, seed: int = 0) -> list:
    """Feed CSM's frames to Moshi as the user's stream, code to code: no decode, no re-encode.

    Both speak Mimi, so CSM's first 8 codebooks *are* Moshi user tokens. Returns Moshi's `Step`s.
    """
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
