"""Issue 23, goal 2: the paths tried for Mimi's CPU stream, each against the current one in whole frames
taking turns (full-size offline Mimi, 1 thread), with the codes compared. DEVELOPERS.md records what each
measured ("Lessons measured"); the ones that won became tuning candidates (`csmlab.codec.tuning`).

    python scripts/codec_trials.py convs     # short convs' products: W @ rows.T vs F.linear (won: flinear-all)
    python scripts/codec_trials.py onednn    # transformers' linears: F.linear vs oneDNN's prepacked MkldnnLinear
    python scripts/codec_trials.py compile   # torch.compile (inductor) of the FFN block vs eager (lost)

Timings under load are ratios at best: run quiet, and read the load printed with them.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

FRAMES = 40


def turns(streams: dict, contexts: dict) -> None:
    """Each stream encodes and decodes the same frames, taking turns; medians and code agreement."""
    frames = np.random.default_rng(0).normal(0, 0.1, (FRAMES, 1920)).astype(np.float32)
    names, times, codes = list(streams), {k: [] for k in streams}, {k: [] for k in streams}
    for r in range(FRAMES):
        for name in names[r % len(names):] + names[: r % len(names)]:
            with contexts.get(name, contextlib.nullcontext)():
                start = time.perf_counter()
                c = streams[name].encode(frames[r])
                streams[name].decode(c)
                times[name].append(1000 * (time.perf_counter() - start))
            codes[name].append(c)
    ref = np.concatenate(codes[names[0]], 1)
    for name in names:
        same = (np.concatenate(codes[name], 1) == ref).mean()
        print(f"{name:<28} {statistics.median(times[name][2:]):7.1f} ms per frame (p50)   codes = {names[0]}: {same:.2%}")
    print(f"load average {os.getloadavg()[0]:.1f}, {torch.get_num_threads()} thread(s)")


def main(what: str) -> None:
    from csmlab.codec import fast, lean, load_codec

    torch.set_num_threads(1)
    model = load_codec(8, "moshi").backend.model
    if what == "convs":
        turns({"fast-flinear (W @ rows.T)": fast.stream_of("fast-flinear", model, 1),
               "flinear-all (F.linear)": fast.stream_of("flinear-all", model, 1)}, {})
    elif what == "onednn":
        from torch.utils.mkldnn import MkldnnLinear

        linears = [m for m in model.modules() if type(m) is nn.Linear]
        packed = {m: MkldnnLinear(m, torch.float32) for m in linears}

        @contextlib.contextmanager
        def onednn():
            for m in linears:
                vars(m)["forward"] = packed[m].forward
            try:
                yield
            finally:
                for m in linears:
                    del vars(m)["forward"]

        turns({"F.linear": fast.stream_of("flinear-all", model, 1),
               "oneDNN MkldnnLinear": fast.stream_of("flinear-all", model, 1)}, {"oneDNN MkldnnLinear": onednn})
    elif what == "compile":
        eager_layer = lean._layer  # RoPE is one complex product now: only the FFN block is left to fuse

        def ffn(layer, x):
            return layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))

        compiled_ffn = torch.compile(ffn, dynamic=False)

        def layer(layer, x, call):
            x = x + layer.layer_scale_1(lean._attention(layer.self_attn, layer.norm1(x), call))
            return x + layer.layer_scale_2(compiled_ffn(layer, x))

        @contextlib.contextmanager
        def compiled():
            lean._layer = layer
            try:
                yield
            finally:
                lean._layer = eager_layer

        streams = {"eager": fast.stream_of("flinear-all", model, 1), "torch.compile": fast.stream_of("flinear-all", model, 1)}
        with compiled():
            start = time.perf_counter()
            streams["torch.compile"].decode(streams["torch.compile"].encode(np.zeros(1920, np.float32)))
            print(f"first frame, compiling: {time.perf_counter() - start:.1f} s")
        streams["eager"].decode(streams["eager"].encode(np.zeros(1920, np.float32)))
        turns(streams, {"torch.compile": compiled})
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
