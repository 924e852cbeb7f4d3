"""CSM's real architecture without its weights: counted on `meta`, timed with random weights, compared.

The default `CsmConfig` is `sesame/csm-1b`'s: a 1.24 B backbone (text embeddings, 16 Llama layers,
codebook-0 head), a 0.31 B depth decoder (with the audio-code embeddings it shares with the
backbone) and Mimi (0.08 B). Random weights cost the same compute as the released ones, so
per-frame timings on `random_csm()` are real figures (`csmlab bench csm`). The table that sets CSM
next to Moshi is `csmlab.pipeline.bridge.compatibility_table` (csmlab.csm does not import csmlab.moshi).
"""
from __future__ import annotations

import torch


def meta_csm(config=None):
    """`CsmForConditionalGeneration` on the `meta` device: the real 1B's shapes (default `CsmConfig`), no memory."""
    from transformers import CsmConfig, CsmForConditionalGeneration

    with torch.device("meta"):
        return CsmForConditionalGeneration(config or CsmConfig())


def parameter_counts(model) -> dict[str, int]:
    """Parameters of backbone (text embeddings, layers, codebook-0 head), depth decoder, Mimi, total.

    The audio-code embedding table is shared (tied) by backbone and depth decoder; it is counted once,
    in the depth decoder, and reported alone as `shared_audio_embeddings`.
    """
    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    total, depth, codec = count(model), count(model.depth_decoder), count(model.codec_model)
    return {"backbone": total - depth - codec, "depth_decoder": depth, "codec (Mimi)": codec, "total": total,
            "shared_audio_embeddings": model.backbone_model.embed_tokens.embed_audio_tokens.weight.numel()}


def random_csm(config=None, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """A CSM of `config` (default: the real 1B) with random weights: the same compute as the released one.

    transformers' own initialisation of 1.6 B parameters takes minutes on a laptop CPU; we skip it
    (`no_init_weights`) and draw every parameter once from N(0, 0.02).
    """
    from transformers import CsmConfig, CsmForConditionalGeneration
    from transformers.modeling_utils import no_init_weights

    with no_init_weights(), torch.device(device):
        model = CsmForConditionalGeneration(config or CsmConfig())
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02, generator=gen)
    return model.to(dtype).eval()

