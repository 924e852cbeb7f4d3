"""Which kernels stream Mimi on this host: measured once per processor, cached, logged, overridable.

What wins depends on the processor. csmlab's fast path (`csmlab.codec.fast`) was tuned on an AMD
EPYC with AVX2, where its convs as GEMMs and its `W @ x.T` linears beat moshi's own kernels by 2.5x;
on an Intel Xeon with AVX-512 and AMX, moshi's own `streaming()` was the faster one (issue 23). So a
CPU session's kernels are chosen by timing them in situ, on the model itself, once:

    "fast"          csmlab's fast path, transformers' linears as `W @ x.T`  (the choice before issue 23)
    "fast-flinear"  csmlab's fast path, transformers' linears as `F.linear` (torch's own layout)
    "flinear-all"   the same, and the short convs' products as `F.linear` too (`convs.conv1d_linear`)
    "by-shape"      `F.linear` too, and each conv's product in the layout measured fastest for its
                    shape: `F.linear` up to 4 rows, `W @ rows.T` above, long inputs as shifted products
    "native"        `by-shape`'s convs, and each transformer call as one C call (`csmlab.codec.native`;
                    only where a C compiler built it: `runnable()`)
    "moshi"         moshi's own modules and kernels (`MimiStream`)

Each candidate streams a few frames of noise on a fresh stream, the candidates taking turns; the one
with the least median time per frame wins, the earlier in `KERNELS` on a tie. The result is written
to `<csmlab cache>/tuning/` under a key of the CPU model, its vector flags, torch's version, the
thread count and the model's shapes, and logged (logger `csmlab.codec.tuning`). `CSMLAB_CODEC_KERNELS`
set to one of `KERNELS` overrides it (no timing). Whole frames, not one hot matrix: hot-cache
microbenchmarks picked the wrong layout before (DEVELOPERS.md, "BLAS layout"). It costs a second or
so per host, model and thread count, once; measured on a busy machine (load average above the cores,
or other processes running more than `OTHERS_MAX_CORES` of CPU during the trial itself: on 2 threads,
others' work then decides the ranking) it holds for that process only and is not cached.
Delete the folder to measure again.

Every candidate runs the same arithmetic up to float summation order: codes equal the batch path's
except at float near-ties, whichever wins (tests/test_codec_equivalence.py holds for each). The choice
does not change within a process once made.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from csmlab.errors import ConfigError
from csmlab.host import cpu_flags, cpu_model

log = logging.getLogger(__name__)

KERNELS = ("fast", "fast-flinear", "flinear-all", "by-shape", "native", "moshi")
ENV = "CSMLAB_CODEC_KERNELS"
ROUNDS = 5  # timed frames per candidate, after one warm-up frame each
BUDGET_S = 3.0  # no new round past this: 2 threads on a busy 2-core machine took 1.7 s per frame (issue 23)

_chosen: dict[str, str] = {}  # key -> kernels, for this process: it never changes once made


def choose(candidates: dict[str, Callable[[], None]], rounds: int = ROUNDS, timer=time.perf_counter,
           budget_s: float = BUDGET_S) -> tuple[str, dict]:
    """Run each candidate `rounds` times, taking turns (the order rotated every round, so that no
    candidate always follows the same one), fewer rounds (at least one) once `budget_s` is spent:
    (the name with the least median ms, {name: median ms})."""
    names, times, began = list(candidates), {name: [] for name in candidates}, timer()
    for r in range(rounds):
        if r and timer() - began > budget_s:
            break
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = timer()
            candidates[name]()
            times[name].append(1000 * (timer() - start))
    medians = {name: statistics.median(t) for name, t in times.items()}
    return min(names, key=lambda n: (medians[n], names.index(n))), medians


def runnable() -> tuple[str, ...]:
    """The `KERNELS` this machine can run: all but `native` where its C library could not be built
    (asking builds it, once per machine: under a second here; `host_key` asks too)."""
    from csmlab.codec import native

    return KERNELS if native.available() else tuple(k for k in KERNELS if k != "native")


def _load() -> float:
    return os.getloadavg()[0]


OTHERS_MAX_CORES = 0.5  # other processes' CPU during a trial above this: measured busy, not cached


def _cpu_seconds() -> tuple[float, float] | None:
    """(CPU seconds all processes have run, this process's own), or None off Linux. Their difference
    over a trial is what others ran meanwhile: the load average lags a minute behind and missed a
    neighbour starting during a trial (issue 23: a 2-thread trial at load 0.9 ran beside one)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), time.process_time()


def host_key(model: torch.nn.Module, threads: int) -> str:
    """What a measured choice holds for: this processor, torch, thread count and model shape."""
    shapes = [tuple(p.shape) for p in model.parameters()]
    text = json.dumps([cpu_model(), cpu_flags(), torch.__version__, threads, shapes, runnable()])  # new candidates: measure again
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def kernels_for(model: torch.nn.Module, threads: int, trial: Callable[[str], Callable[[], None]],
                folder: Path | None = None, timer=time.perf_counter) -> str:
    """The kernels a CPU stream of `model` on `threads` threads runs: `CSMLAB_CODEC_KERNELS`, else the
    choice cached for this host, else measured now with `trial(kernels)` (a callable that streams one
    frame on a fresh stream of those kernels) and cached."""
    override = os.environ.get(ENV)
    if override:
        if override not in KERNELS:
            raise ConfigError(f"{ENV} is one of {', '.join(KERNELS)}, not {override!r}")
        if override not in runnable():
            from csmlab.codec import native

            raise ConfigError(f"{ENV}={override!r}, but {native.unavailable_reason()}: "
                              f"choose one of {', '.join(runnable())}, or unset it")
        return override
    key = host_key(model, threads)
    if key not in _chosen:  # measured without a lock held (the trials take the model's); the first answer stays
        _chosen.setdefault(key, _cached_or_measured(key, threads, trial, folder or _folder(), timer))
    return _chosen[key]


def _folder() -> Path:
    from csmlab.weights import cache_dir

    return cache_dir() / "tuning"


def _cached_or_measured(key: str, threads: int, trial, folder: Path, timer) -> str:
    return cached_choice("mimi-stream", "kernels", key, runnable(), trial, folder, timer, {"threads": threads}, ENV,
                         f"ms per 80 ms frame, encoded and decoded, on {threads} thread(s)")[0]


def cached_choice(what: str, field: str, key: str, options: tuple[str, ...], trial, folder: Path, timer,
                  extra: dict, env: str, unit: str) -> tuple[str, dict]:
    """The option (one of `options`) recorded for `key` in `folder/<what>-<key>.json`, else the one that
    `choose` finds fastest with `trial(option)` now, written there unless the machine is busy (the
    load average above the cores: others' work decided it, so it holds for this process only).
    Shared by the Mimi stream's kernels and the duplex step's threads (`csmlab.pipeline.threads`).
    `unit` names what each trial's milliseconds are, in the log. The first measurement on a machine
    says so on stdout (it takes seconds, once): a learner's first call would otherwise sit silent.
    Returns (the option, its record, with "how": "cached", "measured" or "measured busy, not cached")."""
    path = folder / f"{what}-{key}.json"
    try:
        record = json.loads(path.read_text())
        if record.get(field) in options:
            log.info("%s %s %r (measured earlier on %s: %s)", what, field, record[field], record["cpu_model"], path)
            return record[field], {**record, "how": "cached", "path": str(path)}
    except (OSError, ValueError):
        pass  # not measured yet on this host, or an unreadable record: measure
    print(f"[csmlab] timing {len(options)} choices of {field} for {what} on this machine (once; then cached) ...",
          flush=True)
    trials = {option: trial(option) for option in options}
    cpu, began = _cpu_seconds(), timer()
    best, medians = choose(trials, timer=timer)
    after, wall = _cpu_seconds(), max(timer() - began, 1e-9)
    others = None if cpu is None or after is None else ((after[0] - cpu[0]) - (after[1] - cpu[1])) / wall
    record = {field: best, "median_ms_per_frame": medians, "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
              "torch": torch.__version__, **extra, "load_average_1min": round(_load(), 2),
              "others_cores": None if others is None else round(others, 2),
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if record["load_average_1min"] > (os.cpu_count() or 1) or (others or 0) > OTHERS_MAX_CORES:
        log.warning("%s %s measured on a busy machine (load %.1f, others ran %s cores during the trial): not cached",
                    what, field, record["load_average_1min"], record["others_cores"])
        return best, {**record, "how": "measured busy, not cached"}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1))
    except OSError as err:  # a read-only cache: the choice still holds for this process
        log.warning("could not cache the %s %s in %s: %s", what, field, path, err)
    log.info("%s %s %r, measured now on %s: %s %s (override: %s=...)", what, field, best,
             record["cpu_model"], {k: round(v, 1) for k, v in medians.items()}, unit, env)
    return best, {**record, "how": "measured", "path": str(path)}
