"""A brain that cannot keep up, live: what shedding concealed steps buys, and how soon it is flagged.

A page's pace (one 80 ms mic frame every 80 ms, numbered) goes into the widget's own kernel handler
(`DuplexWorker`, bounded queue of 4) for `--seconds`, twice on the same brain: with the session's
overload policy (`csmlab.pipeline.overload`: while overloaded, a concealed step skips encode, brain
and decode), and without it (every concealed step computed, as before issue 22). For each run:
frames sent, frames answered with their own audio, frames the queue dropped, concealed steps (and
how many were shed), brain calls, the compute spent on concealed steps, late steps, and the seconds
from the first frame to the overload notice. `--brain slow` is a stand-in that sleeps `--cost-ms`
per step (it holds no CPU, so it measures the policy, not this machine); `loopback`, `moshi`,
`cascade` are the real brains (offline weights: real compute).
"""
from __future__ import annotations

import argparse
import time


from csmlab.data import real_recording
from csmlab.audio import to_mimi
from csmlab.metrics import FRAME_SIZE, frame_ms
from csmlab.pipeline import BRAINS, Brain, Said, make_brain
from csmlab.widget.frames import KIND_MIC, pack_frame
from csmlab.widget.worker import DuplexWorker

JITTER_MS = 60.0  # the widget's playback margin: its deadline is a frame plus this (DuplexWidget.jitter_ms)


class SlowBrain(Brain):
    """Says back what it heard after `cost_ms` of sleep: a brain over budget by a known amount."""

    name = "slow"

    def __init__(self, cost_ms: float):
        super().__init__()
        self.cost_s, self.calls = cost_ms / 1000, 0

    def step(self, heard):
        self.calls += 1
        time.sleep(self.cost_s)
        return Said(pcm=heard.pcm)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brain", choices=("slow", *BRAINS), default="slow")
    parser.add_argument("--cost-ms", type=float, default=136.0, help="the slow brain's cost per step (issue 22's moshi: 136)")
    parser.add_argument("--seconds", type=float, default=10.0, help="of paced audio per run")


def _brain(args) -> Brain:
    return SlowBrain(args.cost_ms) if args.brain == "slow" else make_brain(args.brain)


def measure(args, shed: bool) -> dict:
    """One paced run; `shed=False` turns the session's overload policy off (the before-22 behaviour)."""
    rec = real_recording()
    pcm = to_mimi(rec.audio, rec.sample_rate)
    frames = pcm[: len(pcm) // FRAME_SIZE * FRAME_SIZE].reshape(-1, FRAME_SIZE)  # [N, 1920]
    sent, flagged = [], None
    worker = DuplexWorker(_brain(args), lambda content, buffers: sent.append((time.perf_counter(), content)),
                          deadline_ms=frame_ms() + JITTER_MS).start()
    while worker.status == "starting":
        time.sleep(0.01)
    worker.session.overload.shed = shed
    brain = worker.session.brain
    calls_before = getattr(brain, "calls", None)
    start = time.perf_counter()
    n = int(args.seconds * 1000 / frame_ms())
    for seq in range(n):
        worker.feed(pack_frame(KIND_MIC, seq, seq * frame_ms(), frames[seq % len(frames)]))
        time.sleep(max(0.0, start + (seq + 1) * frame_ms() / 1000 - time.perf_counter()))
    worker.stop(wait=True)
    report = worker.report()
    notices = [t for t, c in sent if c["type"] == "overload" and c["state"] == "overloaded"]
    flagged = round(notices[0] - start, 2) if notices else None
    steps = [c for _, c in sent if c["type"] == "step"]
    concealed_compute = sum(c["compute_ms"].get("total", 0.0) for c in steps if c.get("concealed"))
    session = report.get("session", {})
    return {
        "shed": shed, "frames_sent": n, "answered": report["steps"] - report["concealed"], "dropped": report["dropped"],
        "concealed_steps": report["concealed"], "shed_steps": session.get("overload", {}).get("shed_steps"),
        "brain_calls": None if calls_before is None else brain.calls - calls_before,
        "concealed_compute_ms": round(concealed_compute, 1), "late": report["late"],
        "compute_p50_ms": session.get("compute_ms", {}).get("total", {}).get("p50"),
        "overload": session.get("overload", {}).get("state"), "flagged_after_s": flagged,
        "notices": [[round(t - start, 2), c["state"], c["compute_ms"]] for t, c in sent if c["type"] == "overload"],
    }


def run(args) -> dict:
    runs = [measure(args, shed) for shed in (True, False)]
    print(f"{'policy':<22}{'sent':>6}{'answered':>10}{'dropped':>9}{'concealed':>11}{'shed':>6}{'brain calls':>13}"
          f"{'concealed ms':>14}{'late':>6}{'flagged s':>11}")
    for r in runs:
        name = "shed concealed steps" if r["shed"] else "compute every step"
        print(f"{name:<22}{r['frames_sent']:>6}{r['answered']:>10}{r['dropped']:>9}{r['concealed_steps']:>11}"
              f"{r['shed_steps'] or 0:>6}{str(r['brain_calls']):>13}{r['concealed_compute_ms']:>14.0f}{r['late']:>6}"
              f"{str(r['flagged_after_s']):>11}")
    return {"brain": args.brain, "cost_ms": args.cost_ms if args.brain == "slow" else None, "seconds": args.seconds,
            "runs": runs}
