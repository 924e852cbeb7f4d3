"""Moshi 7B, its Mimi and CSM-1B at the real size with random weights, built directly on the device.

Random weights cost the same compute as the released ones. Built on the CPU and copied, a 7.7 B
model would spend minutes of a GPU lease on the initialisation and the copy; here each model is
constructed on `meta` (shapes, no storage), given uninitialised storage on the device
(`to_empty`), then filled there in place. `to_empty` leaves *every* tensor uninitialised, buffers
included, so each builder says what its buffers are: Moshi's LM has none, Mimi's are its codebooks
(filled here), and CSM's (rotary frequencies, token offsets, conv strides) are computed by its
constructor: CSM is therefore constructed on the device itself, with transformers' initialisation
skipped (`csmlab.csm.architecture.random_csm`), which costs no copy either.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from csmlab.weights import WeightsSource

STD = 0.02  # weights ~ N(0, STD); norm gains and layer scales 1, biases 0


@torch.no_grad()
def fill_random_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter of `module` in place on its device: biases 0, other vectors 1 (norm gains,
    layer scales), matrices and kernels N(0, STD). Deterministic for a seed and a device."""
    device = next(module.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, param in module.named_parameters():
        if param.dim() > 1:
            param.normal_(0.0, STD, generator=gen)
        else:
            param.fill_(0.0 if name.endswith("bias") else 1.0)
    return module


def on_device(build, device, seed: int = 0) -> nn.Module:
    """`build()` constructed on `meta`, given storage on `device` and filled there (parameters only:
    the caller fills its buffers, which `to_empty` leaves uninitialised)."""
    with torch.device("meta"):
        model = build()
    return fill_random_(model.to_empty(device=device), seed).eval()


def random_lm(config: dict, device, dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """Moshi's `LMModel` of `config` (`csmlab.moshi.REAL_CONFIG`: the 7B) with random weights on `device`."""
    from moshi.models.lm import LMModel

    from csmlab.moshi.architecture import lm_kwargs

    lm = on_device(lambda: LMModel(device="meta", dtype=dtype, **lm_kwargs(config)), device, seed)
    if any(True for _ in lm.buffers()):
        raise AssertionError("LMModel grew buffers: fill them in random_lm, to_empty leaves them uninitialised")
    return lm


@torch.no_grad()
def random_mimi(device, num_codebooks: int = 8, seed: int = 0):
    """The full-size Mimi (moshi's `get_mimi(None)` config) with random weights on `device`, fp32 as
    moshi runs it. Its only buffers are the codebooks: filled with N(0, 1) entries, marked initialised
    (an uninitialised codebook would give code 0 for everything)."""
    from moshi.models.loaders import get_mimi
    from moshi.quantization.core_vq import EuclideanCodebook

    mimi = on_device(lambda: get_mimi(None, device="meta", num_codebooks=32), device, seed)
    gen = torch.Generator(device=mimi_device(mimi)).manual_seed(seed + 1)
    for module in mimi.modules():
        if isinstance(module, EuclideanCodebook):
            module.embedding_sum.normal_(0.0, 1.0, generator=gen)
            module.cluster_usage.fill_(1.0)
            module._initialized.fill_(1.0)
            module._cached_initialized = False
    known = {"embedding_sum", "cluster_usage", "_initialized"}
    other = [n for n, _ in mimi.named_buffers() if n.rsplit(".", 1)[-1] not in known]
    if other:
        raise AssertionError(f"Mimi has buffers random_mimi does not fill: {other[:3]}")
    mimi.set_num_codebooks(num_codebooks)
    return mimi


def mimi_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class NumberedPieces:
    """A text tokenizer stand-in for random weights: token `i` reads `<i>` (no released vocabulary here)."""

    def id_to_piece(self, token: int) -> str:
        return f"<{int(token)}>"


def random_moshi(device, dtype: torch.dtype = torch.bfloat16, config: dict | None = None, seed: int = 0):
    """A `csmlab.moshi.Moshi` at the real size (default) with random weights, LM and Mimi on `device`."""
    from csmlab.moshi import REAL_CONFIG, Moshi

    config = config or REAL_CONFIG
    lm = random_lm(config, device, dtype, seed)
    mimi = random_mimi(device, num_codebooks=lm.n_q - lm.dep_q, seed=seed)
    why = f"random weights built on {device} for timing (csmlab.bench.on_device)"
    return Moshi(lm, mimi, NumberedPieces(), WeightsSource("moshi", "random", Path(f"random:moshi-{lm.dim}"), why))


def csm_processor():
    """CSM's processor around the offline tokenizer, built in memory in seconds (the offline checkpoint's
    own, without building that checkpoint: its Mimi calibration would cost a GPU lease minutes)."""
    from transformers import CsmProcessor, EncodecFeatureExtractor

    from csmlab.weights.offline.csm import CHAT_TEMPLATE, build_tokenizer

    features = EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_value=0.0)
    return CsmProcessor(features, build_tokenizer(), chat_template=CHAT_TEMPLATE)


def random_csm_voice(device, dtype: torch.dtype = torch.bfloat16, seed: int = 0, sizes: dict | None = None):
    """A `CsmVoice` of the real CSM-1B architecture (or `CsmConfig` `sizes`) with random weights on
    `device`, and the offline tokenizer's processor (its special ids in the config)."""
    from transformers import CsmConfig

    from csmlab.csm.architecture import random_csm
    from csmlab.csm.voice import CsmVoice
    from csmlab.weights.offline.csm import SPECIALS, silence_special_codes

    processor = csm_processor()
    ids = processor.tokenizer.convert_tokens_to_ids(SPECIALS)
    config = CsmConfig(bos_token_id=ids[0], pad_token_id=ids[2], audio_token_id=ids[2], audio_eos_token_id=ids[3],
                       **(sizes or {}))
    model = random_csm(config, dtype=dtype, device=device, seed=seed)
    silence_special_codes(model)  # a random head picks CSM's 3 non-Mimi codes as often as any: Mimi has no entry for them
    why = f"random weights built on {device} for timing (csmlab.bench.on_device)"
    source = WeightsSource("csm", "random", Path("random:csm-1b"), why)
    return CsmVoice(model, processor, source, WeightsSource("mimi", "random", Path("random:mimi"), why))
