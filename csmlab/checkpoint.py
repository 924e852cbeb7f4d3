"""Saving moshi modules in the file format of Kyutai's released checkpoints.

A real Mimi/Moshi checkpoint names each attention projection
`...self_attn.in_proj_weight` and `...self_attn.out_proj.weight`, while moshi 0.2.13's modules call
them `in_projs.0.weight` and `out_projs.0.weight`. moshi's loader maps the old names onto the new
ones, but rustymimi reads only the checkpoint naming: a `state_dict()` saved as is will not load
there. `save_checkpoint` writes the released naming, so one file serves every implementation.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import save_file

_MODULE_TO_CHECKPOINT = [
    (re.compile(r"\.in_projs\.0\.weight$"), ".in_proj_weight"),
    (re.compile(r"\.out_projs\.0\.weight$"), ".out_proj.weight"),
]


def checkpoint_key(module_key: str) -> str:
    """The name a released checkpoint gives to the parameter moshi's module calls `module_key`."""
    for pattern, replacement in _MODULE_TO_CHECKPOINT:
        module_key = pattern.sub(replacement, module_key)
    return module_key


def checkpoint_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`module.state_dict()` renamed to the released checkpoint naming, as contiguous tensors."""
    return {checkpoint_key(k): v.detach().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(module: torch.nn.Module, path: str | Path) -> Path:
    """Write `module` as a safetensors file in the released checkpoint naming."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state(module), str(path))
    return path
