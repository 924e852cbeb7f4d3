"""What B streams stepped together cost: per step, per stream-frame, and memory per added stream.

Shared by `csmlab bench codec --streams 1,2,4,8,16` and `csmlab bench moshi --streams ...`. Each
batch size gets its own stepper (a `CodecBatch`, a `MoshiBatch`), and the timed steps run in
`ROUNDS` interleaved rounds (B=1, 2, 4, ..., then again), so that a load change on a shared
machine hits every B alike: read the ratios, which travel, more than the milliseconds.

Each step is timed twice: wall clock (what a user waits, here on a machine shared with other jobs)
and this thread's CPU time (`time.thread_time`: what the step costs when it has a core to itself,
torch running on 1 thread). On a busy machine the wall clock is mostly waiting for a core.
"""
from __future__ import annotations

import gc
import time
from typing import Callable

import numpy as np
import psutil
import torch

from csmlab import metrics
from csmlab.metrics import frame_ms

ROUNDS = 3


def parse_streams(text: str) -> list[int]:
    """`"1,2,4,8"` -> [1, 2, 4, 8]; batch sizes of at least 1, in increasing order."""
    try:
        sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1:
        raise SystemExit(f"--streams takes batch sizes >= 1 separated by commas (e.g. 1,2,4,8), not {text!r}")
    return sizes


def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def state_mb(state: dict) -> float:
    """Bytes of the streaming-state tensors (KV caches, conv buffers, offsets) of a moshi module tree."""
    total = 0
    for s in state.values():
        for value in vars(s).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
        cache = getattr(s, "kv_cache", None)
        if cache is not None:
            total += cache.cache.numel() * cache.cache.element_size()
    return total / 2**20


def scaling(make: Callable[[int], tuple[Callable[[int], None], float]], sizes: list[int], steps: int,
            warmup: int = 2, extra: dict[str, Callable[[int], None]] | None = None) -> dict[str, dict]:
    """Time `steps` steps at each batch size in `sizes`.

    `make(B)` builds a stepper for B streams and returns (`step(i)`: one step of all B streams on
    their i-th frame, the state's size in MB). Reports per B (keyed `str(B)`, as in JSON): the first (cold) step, per-step and
    per-stream-frame p50/p95, and memory: the state's exact size and the RSS growth, per stream.
    `extra`: other single-stream steppers (name -> `step(i)`) timed in the same rounds, for reference.
    """
    steppers, out = {}, {}
    builders = [(str(b), b, lambda b=b: make(b)) for b in sizes]
    builders += [(name, 1, lambda step=step: (step, 0.0)) for name, step in (extra or {}).items()]
    for key, b, build in builders:
        before = _rss_mb()
        step, mb = build()
        start = time.perf_counter()
        step(0)
        first = 1000 * (time.perf_counter() - start)
        for i in range(1, warmup):
            step(i)
        steppers[key] = step
        out[key] = {"streams": b, "first_step_ms": first, "state_mb_per_stream": mb / b,
                  "rss_mb_per_stream": (_rss_mb() - before) / b, "step_ms": [], "cpu_ms": []}
    per_round = -(-steps // ROUNDS)
    for r in range(ROUNDS):
        for key, step in steppers.items():
            for i in range(warmup + r * per_round, warmup + min(steps, (r + 1) * per_round)):
                start, cpu = time.perf_counter(), time.thread_time()
                step(i)
                out[key]["step_ms"].append(1000 * (time.perf_counter() - start))
                out[key]["cpu_ms"].append(1000 * (time.thread_time() - cpu))
    for f in out.values():
        step_ms, cpu_ms = np.asarray(f["step_ms"]), np.asarray(f["cpu_ms"])
        f["per_step_ms"] = metrics.percentiles(step_ms)
        f["per_stream_frame_ms"] = metrics.percentiles(step_ms / f["streams"])
        f["per_step_cpu_ms"] = metrics.percentiles(cpu_ms)
        f["per_stream_frame_cpu_ms"] = metrics.percentiles(cpu_ms / f["streams"])
        f["real_time"] = bool(f["per_step_ms"]["p95"] <= frame_ms())
        f["real_time_on_a_free_core"] = bool(f["per_step_cpu_ms"]["p95"] <= frame_ms())
    return out


def conditions() -> dict:
    """When, and how busy the machine was (1-minute load average per core): the context the
    milliseconds need. Call it at the start and the end of a run."""
    import datetime

    from csmlab.bench import load_now

    return {"utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **load_now()}


def held_in_real_time(rows: dict[str, dict], clock: str = "real_time") -> int:
    """The largest measured batch size whose p95 step fits in one 80 ms frame (0 if none does), by the
    wall clock (`clock="real_time"`) or by CPU time (`"real_time_on_a_free_core"`)."""
    return max((f["streams"] for f in rows.values() if f[clock]), default=0)



def plot_scaling(figures: dict, ax=None, title: str | None = None):
    """Per-stream-frame cost against streams per forward (wall clock p50 with a bar to p95, and CPU
    time p50), with the batch cost per frame: how close streaming together gets to batch."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6.5, 3.4))[1]
    rows = figures["streams"]
    sizes = sorted(f["streams"] for f in rows.values())
    p50 = np.array([rows[str(b)]["per_stream_frame_ms"]["p50"] for b in sizes])
    p95 = np.array([rows[str(b)]["per_stream_frame_ms"]["p95"] for b in sizes])
    ax.errorbar(sizes, p50, yerr=[np.zeros(len(sizes)), p95 - p50], marker="o", capsize=3,
                label="streaming, wall clock per stream-frame (p50, bar to p95)")
    if all("per_stream_frame_cpu_ms" in rows[str(b)] for b in sizes):
        ax.plot(sizes, [rows[str(b)]["per_stream_frame_cpu_ms"]["p50"] for b in sizes], "s--", color="C1",
                label="streaming, CPU time per stream-frame (p50)")
    if figures.get("batch_frame_ms"):
        ax.axhline(figures["batch_frame_ms"], color="green", ls=":", label="batch (whole clip), wall clock per frame")
    if figures.get("batch_frame_cpu_ms"):
        ax.axhline(figures["batch_frame_cpu_ms"], color="C1", ls=":", label="batch, CPU time per frame")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_xlabel("streams stepped together (one forward per 80 ms)")
    ax.set_ylabel("ms per stream-frame")
    ax.set_ylim(bottom=0)
    ax.set_title(title or figures.get("title", ""), fontsize=9)
    ax.legend(fontsize=7)
    return ax
