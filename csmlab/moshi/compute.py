"""What Moshi costs per 80 ms step at real size, measured on a few layers and extrapolated to 32.

Compute does not depend on the weights' values, so we time `LMGen.step` on the real architecture
with random weights, truncated to a few temporal layers (the depformer, embeddings and heads stay
full size), and fit `fixed + layers x per_layer`.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from moshi.models import LMGen
from moshi.models.lm import LMModel
from moshi.modules.streaming import StreamingModule

from csmlab.metrics import frame_ms
from csmlab.moshi.architecture import REAL_CONFIG
from csmlab.moshi.stream import _eager


def real_size_lm(num_layers: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LMModel:
    """The real 7B architecture truncated to `num_layers` temporal layers, with random weights.

    Everything else is full size: the 32k text embedding and head, the 16 audio embeddings, and the
    whole depformer. Weights are drawn directly on the target device (no fp32 detour), so building
    costs memory only for what is measured.
    """
    lm = LMModel(device="meta", dtype=dtype, **(REAL_CONFIG | {"num_layers": num_layers}))
    lm = lm.to_empty(device=device)
    with torch.no_grad():
        for p in lm.parameters():
            p.fill_(1.0) if p.dim() == 1 else p.normal_(0.0, 0.02)  # norm gains 1, other weights small
    return lm.eval()


@torch.no_grad()
def measure_step_ms(lm: LMModel, steps: int = 8, warmup: int = 2, seed: int = 0, batch_size: int = 1) -> list[float]:
    """Wall-clock milliseconds of `steps` full `LMGen.step` calls (temporal + depformer + sampling),
    for `batch_size` conversations stepped together."""
    gen = LMGen(lm)
    shape = (batch_size, lm.n_q - lm.dep_q, 1)
    user = torch.randint(0, lm.card, shape, generator=torch.Generator().manual_seed(seed))
    times = []
    with gen.streaming(batch_size), _eager(lm.device):
        for i in range(warmup + steps):
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            gen.step(user.to(lm.device))
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(1000 * (time.perf_counter() - start))
    return times


def extrapolate(ms_by_layers: dict[int, float], num_layers: int = REAL_CONFIG["num_layers"]) -> dict[str, float]:
    """Fit step time = fixed + layers x per_layer on two or more depths, and predict the full model.

    `fixed` is everything that does not grow with depth: embeddings, the depformer's 8 sequential
    codebook steps, the text and audio heads, sampling. The real-time factor is the full step over
    the 80 ms of audio it produces: above 1, the model falls behind the conversation.
    """
    if len(ms_by_layers) < 2:
        raise ValueError("measure at least two depths (e.g. 1 and 3 layers) to separate per-layer from fixed cost")
    layers = np.array(sorted(ms_by_layers), dtype=float)
    per_layer, fixed = np.polyfit(layers, [ms_by_layers[n] for n in sorted(ms_by_layers)], 1)
    full = fixed + num_layers * per_layer
    return {"per_layer_ms": float(per_layer), "fixed_ms": float(fixed), "layers": num_layers,
            "full_step_ms": float(full), "rtf": float(full / frame_ms())}


def measure_depths(depths=(1, 3), dtype: torch.dtype = torch.float32, device: str = "cpu",
                   steps: int = 8, warmup: int = 2) -> dict[int, list[float]]:
    """Step times of the real-size model at each temporal depth in `depths`, one conversation."""
    return measure_depths_batched(depths, (1,), dtype, device, steps, warmup)[1]


def measure_depths_batched(depths=(1, 3), batch_sizes=(1, 8), dtype: torch.dtype = torch.float32,
                           device: str = "cpu", steps: int = 8, warmup: int = 2) -> dict[int, dict[int, list[float]]]:
    """Step times of the real-size model at each temporal depth, for each number of conversations
    stepped together: {batch size: {depth: times}}.

    Builds the deepest model once and removes top layers between measurements, so the 1.1 B
    parameters that every depth shares (embeddings, heads, depformer) are allocated once.
    """
    lm = real_size_lm(max(depths), dtype, device)
    times: dict[int, dict[int, list[float]]] = {b: {} for b in batch_sizes}
    for depth in sorted(depths, reverse=True):
        del lm.transformer.layers[depth:]
        for module in lm.modules():  # moshi caches each streaming module's children: forget the removed layers
            if isinstance(module, StreamingModule):
                module._cached_children = None
        for b in batch_sizes:
            times[b][depth] = measure_step_ms(lm, steps=steps, warmup=warmup, batch_size=b)
    return {b: dict(sorted(t.items())) for b, t in times.items()}
