"""What processor this is: the same 2-core box has been an AMD EPYC (AVX2) one day and an Intel Xeon
(AVX-512, AMX) the next, and the fastest kernels and layouts differ between them (issues 16, 23).
`csmlab.bench` records it with every figure; `csmlab.codec.tuning` keys its measured choices on it.
"""
from __future__ import annotations

import platform
from pathlib import Path


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
