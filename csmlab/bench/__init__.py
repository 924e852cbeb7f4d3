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
from pathlib import Path

import psutil
import torch

BENCHES = ("codec", "moshi", "csm", "soak", "duplex", "gpu")


def _cpuinfo(field: str) -> str | None:
    """The first `field` of /proc/cpuinfo (Linux), or None."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), None)


def cpu_model() -> str:
    """The CPU's model name: the same 2-core box can be an Intel or an AMD machine from one day to the
    next, and the fastest matrix layouts, BLAS paths and memory bandwidth differ between them."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_flags() -> list[str]:
    """The CPU's vector-unit flags that decide which kernels win (AVX2 vs AVX-512 and AMX, issue 23)."""
    flags = (_cpuinfo("flags") or "").split()
    return [f for f in SIMD_FLAGS if f in flags]


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
