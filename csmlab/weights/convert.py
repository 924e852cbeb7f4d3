"""A moshi-format Mimi checkpoint as a transformers `MimiModel`: the bridge between two worlds.

Sesame's CSM lives in transformers and embeds Mimi as `CsmForConditionalGeneration.codec_model`, a
transformers `MimiModel`; Moshi and rustymimi read Kyutai's own safetensors. This module converts
the one into the other, after transformers' `convert_mimi_checkpoint_to_pytorch.py`:

- keys are renamed (`RENAMES`, the upstream script's list, applied in order);
- each attention `in_proj_weight` [3*D, D] is split into q, k, v; q and k get the **RoPE permute**,
  because moshi rotates interleaved pairs (x0, x1), (x2, x3), ... while transformers' `rotate_half`
  pairs x_i with x_{i + d/2}. Reordering the rows of Wq and Wk turns one layout into the other; v is
  not rotated, so it is copied as is.

One more thing makes the two agree beyond 10 s. Mimi's transformers attend to the last 250 steps
only (`context=250` in moshi, `sliding_window=250` in `MimiConfig`, 10 s at 25 Hz). transformers
4.57.6's `MimiTransformerModel.forward` builds its mask with `create_causal_mask`, which ignores
the sliding window: a batch encode of a longer clip lets every step see the whole past, and codes
drift from moshi's. `fix_sliding_window()` points that call at `create_sliding_window_causal_mask`;
`to_transformers_mimi` applies it (once, process-wide, only to Mimi's transformer).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file

from csmlab.errors import WeightsNotFoundError

# (old, new) substrings, applied in this order: the upstream conversion script's mapping.
RENAMES = [
    ("conv.conv.conv", "conv"),
    ("convtr.convtr.convtr", "conv"),
    ("conv.conv", "conv"),
    ("convtr.convtr", "conv"),
    ("quantizer.rvq_first.vq", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_first", "quantizer.semantic_residual_vector_quantizer"),
    ("quantizer.rvq_rest.vq", "quantizer.acoustic_residual_vector_quantizer"),
    ("quantizer.rvq_rest", "quantizer.acoustic_residual_vector_quantizer"),
    ("_codebook", "codebook"),
    ("_initialized", "initialized"),
    ("embedding_sum", "embed_sum"),
    ("encoder.model", "encoder.layers"),
    ("decoder.model", "decoder.layers"),
    ("encoder_transformer.transformer", "encoder_transformer"),
    ("decoder_transformer.transformer", "decoder_transformer"),
    ("linear1", "mlp.fc1"),
    ("linear2", "mlp.fc2"),
    ("self_attn.out_proj", "self_attn.o_proj"),
    ("norm1", "input_layernorm"),
    ("norm2", "post_attention_layernorm"),
    ("layer_scale_1", "self_attn_layer_scale"),
    ("layer_scale_2", "mlp_layer_scale"),
]
_ACOUSTIC_LAYER = "quantizer.acoustic_residual_vector_quantizer.layers."


def rope_permute(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Reorder the rows of a q or k projection from interleaved RoPE pairs to rotate-half pairs."""
    out_dim, in_dim = weight.shape  # [H * head_dim, D]
    return weight.view(num_heads, out_dim // num_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def _rename(key: str) -> str:
    for old, new in RENAMES:
        key = key.replace(old, new)
    return key


def _keep(key: str, num_codebooks: int) -> bool:
    """Drop the acoustic codebooks beyond `num_codebooks` (codebook 0 is the semantic one)."""
    if not key.startswith(_ACOUSTIC_LAYER):
        return True
    return int(key[len(_ACOUSTIC_LAYER) :].split(".")[0]) < num_codebooks - 1


def convert_state(moshi_state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """moshi-format Mimi tensors (released naming) -> transformers `MimiModel` tensors for `config`."""
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    state = {}
    for key, value in moshi_state.items():
        key, value = _rename(key), value.float()
        if not _keep(key, config.num_quantizers):
            continue
        if key.endswith("in_proj_weight"):
            q, k, v = value.split([heads * config.head_dim, kv_heads * config.head_dim, kv_heads * config.head_dim])
            state[key.replace("in_proj_weight", "q_proj.weight")] = rope_permute(q, heads)
            state[key.replace("in_proj_weight", "k_proj.weight")] = rope_permute(k, kv_heads)
            state[key.replace("in_proj_weight", "v_proj.weight")] = v
        else:
            state[key] = value
    return state


def _load_moshi_state(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"no Mimi checkpoint at {path}: pass a moshi-format .safetensors file, e.g. resolve('mimi').path"
        )
    state = load_file(str(path))
    if not any(k.endswith("in_proj_weight") for k in state):
        raise WeightsNotFoundError(
            f"{path} is not in the released Mimi naming (no `self_attn.in_proj_weight`): save moshi modules "
            "with csmlab.weights.checkpoint.save_checkpoint"
        )
    return state


def transformers_mimi_state(moshi_checkpoint_path: str | Path, num_codebooks: int = 32):
    """`(MimiConfig, state_dict)` for a transformers `MimiModel`, e.g. to embed it as CSM's `codec_model`."""
    from transformers import MimiConfig

    config = MimiConfig(num_quantizers=num_codebooks)
    return config, convert_state(_load_moshi_state(moshi_checkpoint_path), config)


def to_transformers_mimi(moshi_checkpoint_path: str | Path, num_codebooks: int = 32, use_cache: bool = False):
    """A transformers `MimiModel` (eval mode) with the weights of a moshi-format checkpoint.

    `use_cache=True` is what streaming needs: without a KV cache no context carries between frames.
    The sliding-window mask fix is applied, so batch codes match moshi's beyond 10 s too.
    """
    from transformers import MimiModel

    config, state = transformers_mimi_state(moshi_checkpoint_path, num_codebooks)
    config.use_cache = use_cache
    fix_sliding_window()
    model = MimiModel(config)
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def transformers_latent(model, x: torch.Tensor) -> torch.Tensor:
    """A transformers `MimiModel`'s latent before quantization, `[1, 512, T]` at 12.5 Hz, for `x` [1, 1, T']."""
    h = model.encoder(x)
    h = model.encoder_transformer(h.transpose(1, 2), return_dict=False)[0].transpose(1, 2)
    return model.downsample(h)


@torch.no_grad()
def window_drift(moshi_mimi, hf_model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-frame max |latent - moshi's latent| for transformers with and without the window fix: `[T]` each."""
    ref = moshi_mimi._encode_to_unquantized_latent(x)
    was_fixed = sliding_window_fixed()
    drift = {}
    try:
        for fixed in (False, True):
            fix_sliding_window(fixed)
            drift["sliding window (fixed)" if fixed else "causal mask (4.57.6)"] = (
                (transformers_latent(hf_model, x) - ref).abs().amax(dim=1)[0]
            )
    finally:
        fix_sliding_window(was_fixed)
    return drift


def _sliding_window_mask(config, *args, **kwargs):
    """`create_causal_mask`'s signature, answered with the sliding-window mask Mimi was trained with."""
    from transformers.masking_utils import create_sliding_window_causal_mask

    return create_sliding_window_causal_mask(config, *args, **kwargs)


def sliding_window_fixed() -> bool:
    """Whether transformers' Mimi transformer currently honours `sliding_window`."""
    from transformers.models.mimi import modeling_mimi

    return modeling_mimi.create_causal_mask is _sliding_window_mask


def fix_sliding_window(enable: bool = True) -> None:
    """Make transformers' Mimi transformer use its sliding window (idempotent; `False` undoes it).

    Only `transformers.models.mimi.modeling_mimi` is touched, so other models keep their masks.
    """
    from transformers.masking_utils import create_causal_mask
    from transformers.models.mimi import modeling_mimi

    if enable and not _needs_fix():
        return
    modeling_mimi.create_causal_mask = _sliding_window_mask if enable else create_causal_mask


def _needs_fix() -> bool:
    """True when this transformers still builds Mimi's mask without the window (4.57.x does)."""
    import inspect

    from transformers.models.mimi import modeling_mimi

    if sliding_window_fixed():
        return False
    source = inspect.getsource(modeling_mimi.MimiTransformerModel.forward)
    needs = "create_causal_mask(" in source
    if not needs:
        warnings.warn("transformers' Mimi no longer calls create_causal_mask; csmlab's sliding-window fix is skipped")
    return needs
