"""Measurements that answer the course's questions with numbers: `csmlab bench <what>`.

Each submodule (`codec`, `moshi`, `csm`, `soak`, `duplex`, `gpu`) exposes `add_arguments(parser)` and `run(args) -> dict`.
`run` prints a table as it goes and returns the figures; the CLI writes them as JSON with
`--json PATH`, together with `machine()`, because absolute timings mean little without it.
Benchmarks compare implementations side by side in one run: ratios travel, milliseconds don't.
"""
from __future__ import annotations

import contextlib
import os
import platform

import psutil
import torch

from csmlab.host import cpu_flags, cpu_model

BENCHES = ("codec", "moshi", "csm", "soak", "duplex", "gpu")


def machine() -> dict:
    """What the figures were measured on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        "load_average_1min": round(os.getloadavg()[0], 2),  # > cpu_cores: a shared, busy machine; timings inflate
    }


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's intra-op thread count set to `threads` for a block (None: unchanged), then restored.
    One setting for the whole process (DEVELOPERS.md, "Threads")."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
