"""A brain that cannot keep up, live: what each overload policy buys, and how soon it is flagged.

A page's pace (one 80 ms mic frame every 80 ms, numbered) goes into the widget's own kernel handler
(`DuplexWorker`, bounded queue of 4) for `--seconds`, once per policy on the same brain, side by side
(`csmlab.pipeline.overload`): `skip` (while not ok, a concealed step skips encode, brain and decode),
`rate` (once overloaded, the brain runs at a declared lower rate, silence between) and `none` (every
step computed, as before issue 22). For each run: frames sent, frames answered with their own audio
(on time, neither concealed nor shed nor late), frames the queue dropped, concealed steps, shed
steps, brain calls, the compute spent on concealed steps, late steps, the declared rate, and the
seconds from the first frame to the overload notice. `--brain slow` is a stand-in that sleeps
`--cost-ms` per step (it holds no CPU, so it measures the policy, not this machine); `loopback`,
`moshi`, `cascade` are the real brains (offline weights: real compute).
"""
from __future__ import annotations

import argparse
import time

from csmlab.data import real_recording
from csmlab.audio import to_mimi
from csmlab.metrics import FRAME_SIZE, frame_ms
from csmlab.pipeline import BRAINS, Brain, Said, make_brain
from csmlab.pipeline.overload import POLICIES
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


NAMES = {"skip": "skip concealed steps", "rate": "declared lower rate", "none": "compute every step"}


def measure(args, policy: str) -> dict:
    """One paced run under the overload `policy` (`"none"`: the before-22 behaviour)."""
    rec = real_recording()
    pcm = to_mimi(rec.audio, rec.sample_rate)
    frames = pcm[: len(pcm) // FRAME_SIZE * FRAME_SIZE].reshape(-1, FRAME_SIZE)  # [N, 1920]
    sent = []
    worker = DuplexWorker(_brain(args), lambda content, buffers: sent.append((time.perf_counter(), content)),
                          deadline_ms=frame_ms() + JITTER_MS, overload=policy).start()
    while worker.status == "starting":
        time.sleep(0.01)
    brain = worker.session.brain
    calls_before = getattr(brain, "calls", None)
    start = time.perf_counter()
    n = int(args.seconds * 1000 / frame_ms())
    for seq in range(n):
        worker.feed(pack_frame(KIND_MIC, seq, seq * frame_ms(), frames[seq % len(frames)]))
        time.sleep(max(0.0, start + (seq + 1) * frame_ms() / 1000 - time.perf_counter()))
    worker.stop(wait=True)
    report = worker.report()
    notices = [(t, c) for t, c in sent if c["type"] == "overload"]
    flagged = [t for t, c in notices if c["state"] == "overloaded"]
    steps = [c for _, c in sent if c["type"] == "step"]
    session = report.get("session", {})
    overload = session.get("overload", {})
    return {
        "policy": policy, "name": NAMES[policy], "frames_sent": n,
        "answered": sum(not (c["concealed"] or c["shed"] or c["late"]) for c in steps), "dropped": report["dropped"],
        "concealed_steps": report["concealed"], "shed_steps": overload.get("shed_steps"),
        "brain_calls": None if calls_before is None else brain.calls - calls_before,
        "concealed_compute_ms": round(sum(c["compute_ms"].get("total", 0.0) for c in steps if c["concealed"]), 1),
        "late": report["late"], "compute_p50_ms": session.get("compute_ms", {}).get("total", {}).get("p50"),
        "overload": overload.get("state"), "declared_every": max((c["every"] for _, c in notices), default=1),
        "flagged_after_s": round(flagged[0] - start, 2) if flagged else None,
        "notices": [[round(t - start, 2), c["state"], c["compute_ms"], c["message"]] for t, c in notices],
    }


def run(args) -> dict:
    runs = [measure(args, policy) for policy in POLICIES]
    print(f"{'policy':<22}{'sent':>6}{'answered':>10}{'dropped':>9}{'concealed':>11}{'shed':>6}{'brain calls':>13}"
          f"{'concealed ms':>14}{'late':>6}{'rate':>8}{'flagged s':>11}")
    for r in runs:
        print(f"{r['name']:<22}{r['frames_sent']:>6}{r['answered']:>10}{r['dropped']:>9}{r['concealed_steps']:>11}"
              f"{r['shed_steps'] or 0:>6}{str(r['brain_calls']):>13}{r['concealed_compute_ms']:>14.0f}{r['late']:>6}"
              f"{'1/' + str(r['declared_every']):>8}{str(r['flagged_after_s']):>11}")
    for r in runs:
        if r["declared_every"] > 1:
            print(f"{r['name']}: \"{r['notices'][-1][3]}\"")
    return {"brain": args.brain, "cost_ms": args.cost_ms if args.brain == "slow" else None, "seconds": args.seconds,
            "runs": runs}
