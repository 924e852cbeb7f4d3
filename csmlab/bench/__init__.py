"""Measurements that answer the course's questions with numbers: `csmlab bench <what>`.

Each submodule (`codec`, `moshi`, `csm`, `soak`, `duplex`, `gpu`, `overload`, `live`) exposes `add_arguments(parser)` and `run(args) -> dict`.
`run` prints a table as it goes and returns the figures; the CLI writes them as JSON with
`--json PATH`, together with `machine()`, because absolute timings mean little without it.
Benchmarks compare implementations side by side in one run: ratios travel, milliseconds don't.
"""
from __future__ import annotations

import contextlib
import os
import platform
import time

import psutil
import torch

from csmlab.host import cpu_flags, cpu_model

BENCHES = ("codec", "moshi", "csm", "soak", "duplex", "gpu", "overload", "live")


def machine() -> dict:
    """What the figures were measured on."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpu": gpu,
        "torch": torch.__version__,
        **load_now(),
    }


def load_now() -> dict:
    """How busy the machine is, under the keys every record uses (`machine()`, `streams.conditions()`)."""
    return {"load_average_1min": round(os.getloadavg()[0], 2),  # > cpu_cores: a shared, busy machine; timings inflate
            "cpu_cores": os.cpu_count()}


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


LOAD_HIGH = 2.0  # 1-minute load average from which a committed notebook's timings count as measured busy


class Stamp:
    """Where and when a timing was taken, shown under it: machine, torch threads and load. The same
    figures travel in the output's metadata ("csmlab": {"timing_stamp": ...}), so that a test can
    refuse a committed notebook executed under load (`tests/test_notebooks.py`)."""

    def __init__(self, measured: dict | None = None, source: str = "executed", when: str | None = None,
                 where: str = "data/results"):
        self.machine = measured or machine()
        self.source = source  # "executed": measured by this run; "cached": read from `where`
        self.where = where
        self.utc = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())  # when it was measured

    @property
    def busy(self) -> bool:
        return self.machine.get("load_average_1min", 0.0) >= LOAD_HIGH

    def __repr__(self) -> str:
        m = self.machine
        load = m.get("load_average_1min")
        state = "busy: wall-clock times inflated" if self.busy else "quiet"
        when = "measured now" if self.source == "executed" else f"read from {self.where}"
        return (f"[timing {when}: {m.get('cpu_model') or m.get('processor')}, {m['cpu_cores']} cores, "
                f"{m.get('gpu') or 'no GPU'}, {m.get('torch_threads')} torch thread(s), load {load} ({state}); {self.utc}]")

    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"text/plain": repr(self)}, {"csmlab": {"timing_stamp": {"source": self.source, "utc": self.utc,
                                                                        **self.machine}}}


def stamp(result: dict | None = None) -> Stamp:
    """Display under a timing: `display(stamp())` after measuring, `display(stamp(result))` for a run
    read from data/results, which carries its own machine and date (a bare machine dict works too).
    A cached run stamped with today's time read as if measured now on this machine."""
    if result is None:
        return Stamp()
    return Stamp(result.get("machine", result), "cached", when=result.get("date"))
