"""Which brains keep real time on *this* machine: a short bench, a verdict per model, cached per host.

    from csmlab.bench import realtime
    record = realtime.measured()          # seconds the first time, then read from the cache
    print("\\n".join(realtime.report_lines(record)))
    brain, why = realtime.default_brain(record)

A live session has 80 ms for each 80 ms step (encode, brain, decode). The same brain keeps up on one
machine and falls behind on the next, so `csmlab doctor` measures it here: each model is built as the
live widget builds it (`csmlab.widget.worker.open_session`, the widget's defaults, weights as
`csmlab.weights` finds them, on the device the notebooks use: CUDA when present), fed 2 s of the real call (speech, then the silence that ends
a turn, so the cascade answers), and timed step by step after two warm-up steps. The codec alone
(full-size Mimi: encode + decode of one frame) is the floor under every brain that speaks codes.

Verdicts, from the figures: **real time** when the p95 step fits the frame; **tight** when it fits but
the median needs more than `TIGHT` of it (the widget's amber "behind"); **too slow** otherwise, with
the speed-up it would need. For an offline stand-in the released model's own figure (data/results,
measured at real size) says what the real one needs. Models whose weights are not here yet (a hub
download pending) are not measured: nothing is downloaded.

Cached like `csmlab.codec.tuning`: under `<csmlab cache>/realtime/`, keyed on the CPU model, its vector
flags, torch's version, the thread count and the weights each model uses; measured on a busy machine
(load average above the cores) it holds for that call only and is not cached. Delete the folder to
measure again.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from csmlab.host import cpu_flags, cpu_model
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE, frame_ms

MODELS = ("codec", "loopback", "cascade", "moshi", "moshi+csm")
# the brains that answer, soonest first: Moshi while you speak, Moshi+CSM a phrase later, the cascade after your turn
ANSWERING = ("moshi", "moshi+csm", "cascade")
FRAME_MS = frame_ms()  # 80
TIGHT = 0.8  # the widget's amber: a median step over 80% of the frame leaves no room for a hiccup
WARM_STEPS = 2  # first calls build kernels and caches: not counted
STEPS = 25  # 2 s of audio: the turn ends inside it
MIN_STEPS = 5  # counted steps before the budget may stop a slow model
BUDGET_S = 6.0  # per model, after loading: a real 7B on a laptop CPU takes seconds per step
STAND_INS = ("offline", "small", "random")  # weights kinds that are not the released model's
WHAT = {"codec": "Mimi alone (encode + decode a frame)", "loopback": "your voice back through Mimi",
        "cascade": "turn taking, a reply spoken", "moshi": "Moshi, full duplex",
        "moshi+csm": "Moshi's words in CSM's voice"}


@dataclass
class Figures:
    """One model's measurement: ms per 80 ms step (None: not measured, and `note` says why)."""

    model: str
    weights: str  # which weights speak ("offline", "small", "hub", "local", "espeak-ng", ...)
    p50_ms: float | None = None
    p95_ms: float | None = None
    steps: int = 0
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.p50_ms is None:
            return "not measured"
        if self.p95_ms >= FRAME_MS:
            return "too slow"
        return "tight" if self.p50_ms > TIGHT * FRAME_MS else "real time"

    @property
    def keeps_up(self) -> bool:
        return self.verdict in ("real time", "tight")

    @property
    def stand_in(self) -> bool:
        """Offline or small weights: compute like the real model, say nothing meaningful."""
        return any(kind in STAND_INS for kind in self.weights.split("+"))


def time_steps(step: Callable[[np.ndarray], object], frames: list[np.ndarray], timer=time.perf_counter,
               budget_s: float = BUDGET_S) -> list[float]:
    """ms per call of `step(frame)` over `frames`, the first `WARM_STEPS` not counted; stops early once
    `budget_s` is spent and `MIN_STEPS` are counted (a model seconds per step would take minutes)."""
    began, counted = timer(), []
    for i, frame in enumerate(frames):
        if len(counted) >= MIN_STEPS and timer() - began > budget_s:
            break
        start = timer()
        step(frame)
        if i >= WARM_STEPS:
            counted.append(1000 * (timer() - start))
    return counted


def figures(model: str, weights: str, ms: list[float]) -> Figures:
    return Figures(model, weights, statistics.median(ms), float(np.percentile(ms, 95)), len(ms))


def speech_frames() -> list[np.ndarray]:
    """`STEPS` frames at 24 kHz: 1.2 s of the real call's first speaker, then silence (the turn ends)."""
    from csmlab.audio import to_mimi
    from csmlab.data import real_recording

    call = real_recording()
    start = int(min(t.start for t in call.turns) * call.sample_rate)
    speech = to_mimi(call.audio[start: start + int(1.2 * call.sample_rate)], call.sample_rate)
    pcm = np.zeros(STEPS * FRAME_SIZE, np.float32)
    pcm[: len(speech)] = speech[: len(pcm)]
    return [pcm[i * FRAME_SIZE: (i + 1) * FRAME_SIZE] for i in range(STEPS)]


def weights_of(model: str):
    """The `WeightsSource`s the model would load here (`locate`: nothing downloaded or built)."""
    from csmlab.weights import locate, locate_listening

    if model == "codec":
        return [locate("mimi")]
    if model == "loopback":
        return [locate_listening()]
    if model == "cascade":
        csm = locate("csm")
        return [csm] if csm.is_real else []  # espeak-ng otherwise
    return {"moshi": [locate("moshi")], "moshi+csm": [locate("moshi"), locate("csm")]}[model]


def _weights_label(sources) -> str:
    return "+".join(s.kind for s in sources) or "espeak-ng"


def measure(model: str, timer=time.perf_counter) -> Figures:
    """Build `model` as the widget does and time its steps on `speech_frames()`."""
    sources = weights_of(model)
    label = _weights_label(sources)
    pending = [s for s in sources if s.kind == "hub" and not s.path.exists()]  # `locate`'s hf://<repo>
    if pending:
        return Figures(model, label, note=f"not measured: {', '.join(s.model for s in pending)} not downloaded yet "
                                           "(the first run that loads it downloads it)")
    frames = speech_frames()
    if model == "codec":
        import torch

        from csmlab.codec import load_codec

        with load_codec(8).stream(threads=torch.get_num_threads()) as session:
            ms = time_steps(lambda f: session.decode(session.encode(f, SAMPLE_RATE)), frames, timer)
        return figures(model, label, ms)
    from csmlab.widget.widget import BRAIN_DEFAULTS
    from csmlab.widget.worker import open_session

    session = open_session(model, clock="simulated", **BRAIN_DEFAULTS.get(model, {}))
    try:
        found = figures(model, label, time_steps(lambda f: session.push(f, SAMPLE_RATE), frames, timer))
    finally:
        session.close()
    if session.threads.how != "torch":  # Moshi's session picks its own thread count at start
        found.note = f"its session chose {session.threads.count} intra-op thread(s) per step ({session.threads.how})"
    return found


def host_key(threads: int, weights: dict[str, str]) -> str:
    """What a measurement holds for: this processor, torch, thread count and each model's weights."""
    import torch

    text = json.dumps([cpu_model(), cpu_flags(), torch.__version__, threads, weights, STEPS, WARM_STEPS])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _folder() -> Path:
    from csmlab.weights import cache_dir

    return cache_dir() / "realtime"


def _load() -> float:
    return os.getloadavg()[0]


def measured(models=MODELS, threads: int = 1, folder: Path | None = None, timer=time.perf_counter,
             measure: Callable[..., Figures] = measure, weights: dict[str, str] | None = None) -> dict:
    """The figures for `models` on this host on `threads` torch threads: from the cache, else measured
    now (seconds) and cached unless the machine was busy. Returns the record: figures, machine, date,
    `"cached"` (read from the cache) and `"busy"` (measured under load, so not cached)."""
    from csmlab.bench import machine, torch_threads

    weights = weights if weights is not None else {m: str([str(s.path) for s in weights_of(m)]) for m in models}
    path = (folder or _folder()) / f"realtime-{host_key(threads, weights)}.json"
    try:
        record = json.loads(path.read_text())
        if [f["model"] for f in record["figures"]] == list(models):
            return {**record, "figures": [Figures(**f) for f in record["figures"]], "cached": True, "path": str(path)}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not measured yet here, or an unreadable record: measure
    load_before = _load()
    with torch_threads(threads):
        found = [measure(model, timer=timer) for model in models]
        host = machine()
    load = max(load_before, _load())
    busy = load > (os.cpu_count() or 1)
    record = {"figures": found, "machine": {**host, "load_average_1min": round(load, 2)}, "threads": threads,
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cached": False, "busy": busy, "path": str(path)}
    if not busy:  # others' work would have decided it: this call only
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({**record, "figures": [asdict(f) for f in found]}, indent=1))
        except OSError:
            record["path"] = ""  # a read-only cache: the figures still hold for this call
    return record


RELEASED = {"moshi": ("bench_moshi",), "moshi+csm": ("bench_moshi", "bench_csm"), "cascade": ("bench_csm",)}


def _released_frame(bench: str) -> str:
    """One released model's cheapest real-size figure in data/results, in words ('' when missing)."""
    from csmlab.bench import results
    from csmlab.errors import CsmlabError

    try:
        r = results.load(bench)
        ms = {dtype: v.get("full_step_ms", v.get("frame_ms")) for dtype, v in r["real_size"].items()}
    except (CsmlabError, KeyError, ValueError, AttributeError):
        return ""
    dtype = min(ms, key=ms.get)
    name = {"bench_moshi": "Moshi-7B", "bench_csm": "CSM-1B"}[bench]
    return (f"the released {name} took {ms[dtype]:.0f} ms per frame ({dtype}, real size, "
            f"{r['machine']['cpu_model']}, {ms[dtype] / FRAME_MS:.0f}x the budget)")


def stamp(record: dict):
    """The timing stamp to show under the figures: measured now, or read from the cache with its own date."""
    from csmlab.bench import Stamp

    if record["cached"]:
        return Stamp(record["machine"], "cached", when=record["date"], where="the doctor's cache")
    return Stamp(record["machine"], when=record["date"])


def released(model: str) -> str:
    """What the released models behind `model` need, from their real-size figures in data/results."""
    found = [text for text in map(_released_frame, RELEASED.get(model, ())) if text]
    return "; ".join(found) + ": a GPU" if found else ""


def needs(f: Figures) -> str:
    """What this model needs beyond this machine, rendered from its figures."""
    if f.verdict == "not measured":
        return f.note
    if f.verdict == "too slow":
        what = f"needs {f.p95_ms / FRAME_MS:.1f}x this machine's speed per step (p95 {f.p95_ms:.0f} ms of {FRAME_MS:.0f})"
    elif f.verdict == "tight":
        what = f"fits, with {FRAME_MS - f.p50_ms:.0f} ms to spare at the median: close other work, or a faster CPU"
    else:
        what = f"{FRAME_MS / f.p95_ms:.1f}x headroom at p95"
    real = released(f.model) if f.stand_in or f.weights == "espeak-ng" else ""
    if real and f.model == "cascade":
        real = f"with CSM's voice instead of espeak-ng, {real}"
    return "; ".join(part for part in (what, f.note, real) if part)


def report_lines(record: dict) -> list[str]:
    """`csmlab doctor`'s real-time section: one line per model, then where the figures came from."""
    lines = [f"real time here (ms per {FRAME_MS:.0f} ms step, p50 / p95, {record['threads']} torch thread(s) "
             "unless a model's line says its session chose more):"]
    for f in record["figures"]:
        ms = "–" if f.p50_ms is None else f"{f.p50_ms:6.1f} / {f.p95_ms:6.1f}"
        lines.append(f"  {f.model:<10} {f.verdict:<12} {ms:>15}  [{f.weights}] {WHAT[f.model]}")
        lines.append(f"  {'':<10} {needs(f)}")
    m = record["machine"]
    source = f"cached from {record['date']}" if record["cached"] else f"measured now, {record['date']}"
    busy = f"; BUSY (load {m['load_average_1min']} > {m['cpu_cores']} cores): not cached, figures inflated" if record.get("busy") else ""
    lines.append(f"  ({source} on {m['cpu_model']}, load {m['load_average_1min']}{busy}; "
                 f"cache: {record['path'] or 'not written'})")
    return lines


def default_brain(record: dict) -> tuple[str, str]:
    """The live widget's brain here: the soonest-answering brain that keeps real time with weights that
    really answer, else the cascade; with the reason in words."""
    by_model = {f.model: f for f in record["figures"]}
    passed = []
    for name in ANSWERING:
        f = by_model.get(name)
        if f is None:
            passed.append(f"{name}: not measured")
        elif name != "cascade" and f.stand_in:
            passed.append(f"{name}: offline stand-in weights ({f.weights}), so it would not answer")
        elif not f.keeps_up:
            passed.append(f"{name}: {f.verdict} here ({needs(f)})")
        else:
            why = f"{name} keeps real time here ({f.verdict}, p95 {f.p95_ms:.0f} ms of {FRAME_MS:.0f})"
            return name, "; ".join(passed + [why])
    return "cascade", "; ".join(passed) + "; so the cascade, whose turn taking costs little"
