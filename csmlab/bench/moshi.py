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
import time

import numpy as np
import torch

from csmlab import metrics
from csmlab import moshi as M
from csmlab.bench.streams import conditions, held_in_real_time, parse_streams, scaling, state_mb
from csmlab.codec.batch import CodecBatch
from csmlab.metrics import frame_ms
from csmlab.moshi.batch import MoshiBatch
from csmlab.moshi.compute import measure_depths_batched
from csmlab.pipeline.moshi_brain import moshi_codec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 3], help="temporal depths to time (>= 2 values)")
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per configuration (after 2 warm-up steps)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--skip-real", action="store_true", help="time the small model only")
    parser.add_argument("--streams", type=parse_streams, default=None, metavar="B,B,...",
                        help="instead: conversations stepped together (e.g. 1,2,4,8), small Moshi + Mimi per step, "
                             "and real-size per-layer cost at the sizes of --real-streams")
    parser.add_argument("--real-streams", type=parse_streams, default=None, metavar="B,B,...",
                        help="with --streams: batch sizes for the real-size (7B) arithmetic (default: 1 and the "
                             "largest of --streams, at most 8; --skip-real to skip)")


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
    if args.streams:
        return run_streams(args)
    counts = M.parameter_counts(M.meta_model())
    memory = M.weight_gb(counts["total"])
    print(f"Moshi 7B (counted on meta): {counts['total'] / 1e9:.2f} B parameters; weights "
          + ", ".join(f"{k} {v:.1f} GB" for k, v in memory.items()))
    figures = {"parameters": counts, "weights_gb": memory, "small": _small(args)}
    if not args.skip_real:
        figures["real_size"] = {name: _real_size(args, name) for name in args.dtypes}
    return figures


# --------------------------------------------------------------------------- many conversations
def run_streams(args) -> dict:
    """Conversations per forward: small Moshi + Mimi (encode the user, step Moshi, decode Moshi) at
    each B, how many of them this machine holds in real time, and the same arithmetic for the 7B."""
    began = conditions()
    model = M.load(device=args.device)
    codec = moshi_codec(model)
    print(model.source.banner())
    print(codec.weights.banner())
    make, moshi_ms = _conversations(model, codec)
    rows = scaling(make, args.streams, steps=args.steps * 3)
    for key, f in rows.items():
        f["moshi_step_ms"] = metrics.percentiles(moshi_ms[f["streams"]][-len(f["step_ms"]):])  # the timed steps
    held, free = held_in_real_time(rows), held_in_real_time(rows, "real_time_on_a_free_core")
    figures = {"title": f"small Moshi ({model.source.kind}) + Mimi per step, {torch.get_num_threads()} thread(s)",
               "streams": rows, "conversations_in_real_time": held, "conversations_in_real_time_per_free_core": free,
               "torch_threads": torch.get_num_threads(), "conditions": {"start": began, "end": conditions()}}
    print(f"small Moshi ({M.parameter_counts(model.lm)['total'] / 1e6:.1f} M parameters) + Mimi, one forward each per step:")
    print(f"{'B':>4}{'step p50':>10}{'step p95':>10}{'CPU p50':>9}{'CPU p95':>9}{'Moshi p50':>11}"
          f"{'per conversation p50':>22}{'CPU':>7}{'state MB/conv':>15}")
    for key, f in rows.items():
        print(f"{key:>4}{f['per_step_ms']['p50']:>10.1f}{f['per_step_ms']['p95']:>10.1f}{f['per_step_cpu_ms']['p50']:>9.1f}"
              f"{f['per_step_cpu_ms']['p95']:>9.1f}{f['moshi_step_ms']['p50']:>11.1f}{f['per_stream_frame_ms']['p50']:>22.1f}"
              f"{f['per_stream_frame_cpu_ms']['p50']:>7.1f}{f['state_mb_per_stream']:>15.2f}")
    print(f"load average {began['load_average_1min']:.1f} -> {figures['conditions']['end']['load_average_1min']:.1f} "
          f"on {began['cpu_cores']} cores")
    print(f"=> real-time conversations (p95 step <= 80 ms) in one process on {torch.get_num_threads()} thread: {held} "
          f"by the wall clock on this shared machine, {free} by CPU time (a core to itself); measured up to B = "
          f"{max(args.streams)}")
    real = args.real_streams or [1, min(8, max(args.streams))]
    if not args.skip_real:
        figures["real_size"] = _real_size_batched(args, sorted(set(real)))
    return figures


def _conversations(model, codec):
    """`make(B)` for `scaling`: B conversations, each step encoding B user frames, stepping Moshi
    once for all, and decoding B frames of Moshi's codes; Moshi's own share is kept apart."""
    moshi_ms: dict[int, list[float]] = {}
    k = model.num_user_codebooks

    def make(b):
        moshi, mimi = MoshiBatch(model, b), CodecBatch(codec, b)
        slots = [moshi.join(seed=s) for s in range(b)]
        for _ in slots:
            mimi.join()
        audio = torch.randn(b, 1920, generator=torch.Generator().manual_seed(b)).numpy() * 0.1
        moshi_ms[b] = []

        def step(i):
            user = mimi.encode({s: audio[s] for s in slots})
            start = time.perf_counter()
            out = moshi.step({s: user[s][:k] for s in slots})
            moshi_ms[b].append(1000 * (time.perf_counter() - start))
            mimi.decode({s: (out[s].audio.numpy() if out[s].audio is not None else user[s]) for s in slots})

        return step, sum(map(state_mb, moshi.states)) + state_mb(mimi.state)

    return make, moshi_ms


def _real_size_batched(args, sizes: list[int]) -> dict:
    """7B arithmetic at B conversations per forward: time the real-size model truncated to a few
    temporal layers at each B, fit fixed + 32 x per-layer, and count the conversations that fit 80 ms."""
    dtype = args.dtypes[0]
    clock = time.thread_time if args.device == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    print(f"real-size architecture, random weights, {dtype} on {args.device}, conversations per forward {sizes}, "
          f"{'CPU time' if clock is time.thread_time else 'wall clock'}:")
    times = measure_depths_batched(args.layers, sizes, DTYPES[dtype], args.device, steps=args.steps, clock=clock)
    gc.collect()
    out = {"dtype": dtype, "device": args.device, "clock": clock.__name__, "by_streams": {}}
    for b, by_depth in times.items():
        fit = M.extrapolate({d: float(np.median(ms)) for d, ms in by_depth.items()})
        per_conv = fit["full_step_ms"] / b
        out["by_streams"][str(b)] = {**fit, "ms_by_layers": {d: float(np.median(ms)) for d, ms in by_depth.items()},
                                     "per_conversation_ms": per_conv}
        print(f"  B={b}: {fit['per_layer_ms']:.1f} ms per temporal layer + {fit['fixed_ms']:.1f} ms fixed; 32 layers: "
              f"{fit['full_step_ms']:.0f} ms per step, {per_conv:.0f} ms per conversation-step "
              f"(real time needs <= {frame_ms():.0f} ms per step)")
    return out
