"""Per-step latency of Moshi: the small model, real-size layers, and the full 7B extrapolated.

What does Moshi need to keep up with a conversation? Every 80 ms it must run its 7B temporal
transformer once and its depformer 8 times. We cannot load the 7B here, but compute does not
depend on the weights' values: we time `LMGen.step` on the real architecture truncated to a few
temporal layers (full-size depformer, embeddings and heads), fit `fixed + layers x per_layer`, and
extrapolate to 32 layers. The weights' memory comes from the `meta` model. Timings on a shared
machine are noisy: read the ratios, and rerun.
"""
from __future__ import annotations

import argparse
import gc

import numpy as np
import torch

from csmlab import moshi as M
from csmlab.metrics import frame_ms

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3], help="temporal depths to time (>= 2 values)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (after 2 warm-up steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-real", action="store_true", help="time the small model only")


def _row(label: str, ms: list[float]) -> float:
    median = float(np.median(ms))
    print(f"  {label:<34} {median:9.1f} ms/step   (min {min(ms):.1f}, max {max(ms):.1f}, n={len(ms)})", flush=True)
    return median


def _small(args) -> dict:
    model = M.load(device=args.device)
    print(model.source.banner())
    print(f"small model ({M.parameter_counts(model.lm)['total'] / 1e6:.1f} M parameters, {model.lm.dtype}):")
    median = _row("LMGen.step", M.measure_step_ms(model.lm, steps=args.steps))
    return {"step_ms": median, "rtf": median / frame_ms(), "parameters": M.parameter_counts(model.lm)["total"]}


def _real_size(args, dtype_name: str) -> dict:
    print(f"real-size architecture, random weights, {dtype_name} on {args.device}:")
    times = M.measure_depths(args.layers, DTYPES[dtype_name], args.device, steps=args.steps)
    ms_by_layers = {depth: _row(f"LMGen.step, {depth} temporal layer(s)", ms) for depth, ms in times.items()}
    gc.collect()
    fit = M.extrapolate(ms_by_layers)
    print(f"  => {fit['per_layer_ms']:.1f} ms per temporal layer + {fit['fixed_ms']:.1f} ms fixed (depformer, embeddings,"
          f" heads); {fit['layers']} layers: {fit['full_step_ms']:.0f} ms per 80 ms step, RTF {fit['rtf']:.1f}")
    return {"ms_by_layers": ms_by_layers, **fit}


def run(args) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    counts = M.parameter_counts(M.meta_model())
    memory = M.weight_gb(counts["total"])
    print(f"Moshi 7B (counted on meta): {counts['total'] / 1e9:.2f} B parameters; weights "
          + ", ".join(f"{k} {v:.1f} GB" for k, v in memory.items()))
    figures = {"parameters": counts, "weights_gb": memory, "small": _small(args)}
    if not args.skip_real:
        figures["real_size"] = {name: _real_size(args, name) for name in args.dtypes}
    return figures
