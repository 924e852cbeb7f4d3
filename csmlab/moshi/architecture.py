"""The real Moshi 7B on PyTorch's `meta` device: its 17 streams, parameter counts and weight memory.

`meta` tensors have shapes and dtypes but no storage, so `LMModel(device="meta", **config)` builds
the full 7.7 B-parameter model in a second and zero bytes. We count it per component and check
the count against a formula worked out by hand from the config (`expected_parameter_counts`):
if either the formula or our reading of moshi's code is wrong, the two disagree.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from moshi.models import loaders
from moshi.models.lm import LMModel

from csmlab.metrics import frame_ms

REAL_CONFIG = dict(loaders._lm_kwargs)  # moshiko / moshika 7B, as moshi's loader builds it
SYSTEM, USER = "moshi", "user"

# Which top-level `LMModel` children make up each component of the parameter table.
COMPONENTS = {
    "text embedding": ("text_emb",),
    "audio embeddings": ("emb",),
    "temporal transformer": ("transformer", "out_norm"),
    "depformer": ("depformer_in", "depformer_text_emb", "depformer_emb", "depformer", "depformer_norms"),
    "text head": ("text_linear",),
    "audio heads": ("linears",),
}
BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "int8": 1, "int4": 0.5}


def lm_kwargs(config: dict) -> dict:
    """The `LMModel` keyword arguments of a `config.json`-style dict (file names dropped)."""
    return {k: v for k, v in config.items() if not k.endswith("_name") and k != "model_type"}


def meta_model(config: dict = REAL_CONFIG, dtype: torch.dtype = torch.bfloat16) -> LMModel:
    """The model on the `meta` device: every shape of the 7B, no weights, no memory, a second."""
    return LMModel(device="meta", dtype=dtype, **lm_kwargs(config))


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per component (`COMPONENTS`), plus `total`; works on `meta` models."""
    children = dict(model.named_children())
    counts = {
        name: sum(p.numel() for child in parts if children.get(child) is not None for p in children[child].parameters())
        for name, parts in COMPONENTS.items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    if counts["total"] != sum(v for k, v in counts.items() if k != "total"):
        raise AssertionError("a component of LMModel is missing from COMPONENTS")
    return counts


def _gated_ffn(dim: int, dim_feedforward: int) -> int:
    """SiLU-gated FFN: `linear_in` dim -> 2h and `linear_out` h -> dim, h = 2/3 dim_ff (moshi/modules/gating.py)."""
    hidden = (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3
    return 3 * dim * hidden


def _layer(dim: int, dim_feedforward: int, copies: int = 1) -> int:
    """One transformer layer: q,k,v + output projections (4 d², no bias), gated FFN, two RMS norms.

    The depformer keeps `copies` (= 8, one per codebook) of the projections and FFN, sharing norms.
    """
    return copies * (4 * dim * dim + _gated_ffn(dim, dim_feedforward)) + 2 * dim


def expected_parameter_counts(config: dict = REAL_CONFIG) -> dict[str, int]:
    """Parameter counts worked out by hand from the config, to check `parameter_counts(meta_model())`."""
    if config["gating"] == "none" or not config["norm"].startswith("rms_norm"):
        raise ValueError("the formula covers Moshi's SiLU-gated, RMS-normed transformers only")
    d, dd, card, text = config["dim"], config["depformer_dim"], config["card"], config["text_card"]
    steps = config["dep_q"] if config["depformer_weights_per_step"] else 1
    depformer_ff = config.get("depformer_dim_feedforward") or int(config["hidden_scale"] * dd)
    counts = {
        "text embedding": (text + 1) * d,  # +1: the start-of-sequence token
        "audio embeddings": config["n_q"] * (card + 1) * d,
        "temporal transformer": config["num_layers"] * _layer(d, int(config["hidden_scale"] * d)) + d,
        "depformer": (config["dep_q"] if config["depformer_multi_linear"] else 1) * d * dd  # depformer_in
        + (text + 1) * dd + (config["dep_q"] - 1) * (card + 1) * dd  # its own text and audio embeddings
        + config["depformer_num_layers"] * _layer(dd, depformer_ff, copies=steps),
        "text head": d * text,
        "audio heads": config["dep_q"] * dd * card,
    }
    return counts | {"total": sum(counts.values())}


def weight_gb(num_params: int) -> dict[str, float]:
    """Weight memory in GB (10^9 bytes) per storage type; int8/int4 ignore the small scale tables."""
    return {kind: num_params * size / 1e9 for kind, size in BYTES_PER_PARAM.items()}


@dataclass(frozen=True)
class Stream:
    """One of the 17 token streams: its name, who it belongs to, its codebook and its delay in steps."""

    name: str
    owner: str  # "text", SYSTEM or USER
    codebook: int | None
    delay: int


def stream_layout(config: dict = REAL_CONFIG) -> list[Stream]:
    """The 1 + n_q streams in the order the model stacks them: text, Moshi's audio, the user's audio."""
    dep_q, delays = config["dep_q"], config["delays"]
    streams = [Stream("text", "text", None, delays[0])]
    for k in range(config["n_q"]):
        owner, cb = (SYSTEM, k) if k < dep_q else (USER, k - dep_q)
        streams.append(Stream(f"{owner} audio {cb}", owner, cb, delays[1 + k]))
    return streams


def latency_budget_ms(step_ms: float, config: dict = REAL_CONFIG) -> dict[str, float]:
    """Moshi's latency: one Mimi frame, plus the acoustic delay in frames, plus the compute of a step."""
    frame = frame_ms()
    budget = {"mimi frame": frame, "acoustic delay": max(config["delays"]) * frame, "compute per step": step_ms}
    return budget | {"total": sum(budget.values())}
