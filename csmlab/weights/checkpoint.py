"""Saving moshi modules in the file format of Kyutai's released checkpoints.

A released Mimi/Moshi checkpoint stores each attention's projections as one
`...self_attn.in_proj_weight` and one `...self_attn.out_proj.weight`, while moshi 0.2.13's modules
hold them as lists, `in_projs.{i}.weight` / `out_projs.{i}.weight`: one entry for Mimi, one per
codebook in Moshi's depth transformer (`weights_per_step`), stacked in the file. moshi's loader
splits the stacked names back; rustymimi reads only the released naming, so a `state_dict()`
saved as is will not load there. `save_checkpoint` writes the released layout, so one file
serves every implementation.
"""
from __future__ import annotations

from pathlib import Path

import torch
from moshi.modules.transformer import StreamingMultiheadAttention
from safetensors.torch import save_file

_RELEASED = (("in_projs", "in_proj_weight"), ("out_projs", "out_proj.weight"))


def checkpoint_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` in the released naming: each attention's projections stacked."""
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    for name, attn in module.named_modules():
        if isinstance(attn, StreamingMultiheadAttention):
            for projs, released in _RELEASED:
                parts = [state.pop(f"{name}.{projs}.{i}.weight") for i in range(len(getattr(attn, projs)))]
                state[f"{name}.{released}"] = torch.cat(parts).contiguous()
    return state


def save_checkpoint(module: torch.nn.Module, path: str | Path) -> Path:
    """Write `module` as a safetensors file in the released checkpoint layout."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state(module), str(path))
    return path
