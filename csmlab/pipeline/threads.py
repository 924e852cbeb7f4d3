"""How many intra-op threads a duplex session's step runs on: measured at session start, cached per host.

A `MoshiBrain` step is three layers one after the other: the user's Mimi encode, Moshi's LM step and
the system's Mimi decode. On a 2-core machine the second core can help in two ways (issue 23):

- **intra-op threads**: every layer runs its ops on both cores. The frame's input-to-output time
  (what the deadline judges) shrinks; nothing else changes, tokens and audio included.
- **overlap**: the user's encode of frame t+1 runs on one core while the LM and the decode of frame t
  run on the other. That raises throughput (steps per second) but not the time one frame takes
  from input to output: each frame still goes through encode, LM and decode one after the other.
  A frame's output would come out one frame later than its input (its encode runs during the
  previous step), so an overlapped step must be judged against a deadline one frame later (160 ms
  after its frame is complete), and the conversation's latency grows by that frame (80 ms).

Measured on an idle Intel Xeon (full-size offline Mimi, small Moshi, DEVELOPERS.md "Two cores for a
duplex step"), intra-op threads gave the shorter step, and with no latency added; overlap lost. So a
session offers intra-op thread counts, and `step_threads` picks one by timing whole steps (encode, LM
step and decode, on fresh streams, the candidates taking turns: `csmlab.codec.tuning.choose`):
1 thread, or as many as the process may run on. On a busy machine one thread can win: two threads
then wait for each other's descheduled half at every op. Busy, overlap is what keeps up: at load 4
it took 64 ms per step against 102 on 1 thread and 485 on 2 intra-op threads, so an overlapping
session, judged against the later deadline, would hold real time where this one cannot. It is not
built yet (issue 23): the session's steps, shedding, flush and disconnect all assume one frame in
flight.

The choice is cached like Mimi's kernels (`<csmlab cache>/tuning/duplex-threads-<key>.json`, keyed by
CPU model, flags, torch and the models' shapes; not cached when measured busy). `threads=` on the
session, or `CSMLAB_STEP_THREADS`, overrides it. A brain that offers no trial step (`Brain.threads_trial`
returns None: every brain but Moshi's, and any brain on a GPU) keeps torch's thread count, as before.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from csmlab.codec import tuning
from csmlab.errors import ConfigError

ENV = "CSMLAB_STEP_THREADS"


@dataclass(frozen=True)
class StepThreads:
    """The threads a session's step runs on, and how that was decided."""

    count: int
    how: str  # "given", "environment", "measured", "cached", "measured busy, not cached", or "torch" (not measured)
    medians_ms: dict = field(default_factory=dict)  # per candidate, when measured now or read from the cache

    def report(self) -> dict:
        return {"threads": self.count, "how": self.how, "median_ms_per_step": self.medians_ms}

    def describe(self) -> str:
        timed = ", ".join(f"{k} thread(s) {v:.1f} ms" for k, v in self.medians_ms.items())
        return f"{self.count} intra-op thread(s) per step ({self.how}{': ' + timed if timed else ''})"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask; os.cpu_count() where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _count(value, where: str) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if isinstance(value, bool) or count < 1 or (not isinstance(value, str) and count != value):
        raise ConfigError(f"{where} is a whole number of threads >= 1, not {value!r}")
    return count


def step_threads(brain, codec, threads: int | None = None, folder=None, timer=time.perf_counter) -> StepThreads:
    """`threads` if given, else `CSMLAB_STEP_THREADS`, else the count measured fastest for `brain`'s
    step on this host (cached), else, for a brain that offers no trial, torch's current count."""
    if threads is not None:
        return StepThreads(_count(threads, "threads"), "given")
    if os.environ.get(ENV):
        return StepThreads(_count(os.environ[ENV], ENV), "environment")
    options = tuple(str(n) for n in sorted({1, usable_cores()}))
    if codec is None or len(options) == 1 or not brain.measures_threads(codec):
        return StepThreads(torch.get_num_threads(), "torch")
    key = tuning.host_key(torch.nn.ModuleList(brain.tuned_models(codec)), 0) + "-" + "-".join(options)
    if key not in _chosen:  # once per process: a choice measured busy (not cached) is not measured again
        best, record = tuning.cached_choice("duplex-threads", "threads", key, options,
                                            lambda n: brain.threads_trial(codec, int(n)), folder or tuning._folder(),
                                            timer, {"brain": brain.name, "codec": getattr(codec, "name", None)}, ENV,
                                            "ms per 80 ms step (encode, brain, decode)")
        medians = {k: round(v, 2) for k, v in record.get("median_ms_per_frame", {}).items()}
        _chosen.setdefault(key, StepThreads(int(best), record["how"], medians))
    return _chosen[key]


_chosen: dict[str, StepThreads] = {}  # key -> the choice, for this process
