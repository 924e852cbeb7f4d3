"""Checks for notebook 04's exercises: each says "not answered yet", gives a hint, or confirms.

A check returns True only for a right answer, so a solution cell can `assert` it; it never raises
on a learner's answer, so an unanswered notebook still runs top to bottom.
"""
from __future__ import annotations

from csmlab.pipeline.jitter import JitterBuffer

ARRIVALS = [0, 1, 3, 4, 5, 2, 5, 6]  # exercise 1: the seqs, in the order they arrive
WINDOW = 3


def _unanswered(answer) -> bool:
    if answer is ...:
        print("not answered yet: replace `...` with your answer")
        return True
    return False


def jitter_truth(arrivals=ARRIVALS, window: int = WINDOW) -> dict[str, int]:
    """What a `JitterBuffer(window)` counts for these arrivals (silence-length frames)."""
    import numpy as np

    jb = JitterBuffer(window=window)
    for seq in arrivals:
        jb.push(seq, np.zeros(4, np.float32))
    jb.flush()
    c = jb.counts
    return {"consumed": c.consumed, "concealed": c.concealed, "late": c.late, "duplicate": c.duplicate}


def check_jitter(answer) -> bool:
    """Exercise 1: a dict of consumed / concealed / late / duplicate counts."""
    if _unanswered(answer):
        return False
    truth = jitter_truth()
    if not isinstance(answer, dict) or set(answer) != set(truth):
        print(f"hint: answer with a dict with exactly the keys {sorted(truth)}")
        return False
    wrong = [k for k in truth if answer[k] != truth[k]]
    if wrong:
        print(f"not quite: {', '.join(wrong)} wrong. Hint: seq 2 is waited for while fewer than {WINDOW} later "
              "frames are held; what happens to it when it finally arrives, and to the second 5?")
        return False
    print("right: every one of the", len(ARRIVALS), "arrivals is consumed, late or a duplicate; the gap was concealed")
    return True


def check_moshi_latency(answer, report: dict) -> bool:
    """Exercise 2: MoshiBrain's algorithmic latency in ms, read from a session report."""
    if _unanswered(answer):
        return False
    truth = sum(report["latency_ms"]["algorithmic"].values())
    if answer != truth:
        print("hint: add up what the report lists under latency_ms -> algorithmic: the frame, and how many "
              "steps Moshi's acoustic codebooks lag behind its semantic one")
        return False
    print(f"right: {truth} ms before compute, as the Moshi paper says")
    return True


def check_hang_over(answer, measure) -> bool:
    """Exercise 3: an `end_silence_ms` that gets the cascade's p50 response under 300 ms
    (`measure(end_silence_ms) -> (p50 response ms, turns detected, turns in the RTTM)`)."""
    if _unanswered(answer):
        return False
    if not isinstance(answer, (int, float)) or answer <= 0:
        print("hint: a hang-over is a positive number of milliseconds")
        return False
    p50, turns, reference = measure(answer)
    if p50 is None or p50 >= 300:
        print(f"not yet: p50 response {p50} ms. The hang-over is part of every response: shorten it")
        return False
    print(f"right: p50 response {p50:.0f} ms, {turns} turns detected for {reference} in the RTTM")
    return True


def measure_hang_over(side, end_silence_ms: float) -> tuple[float | None, int, int]:
    """The cascade (espeak-ng voice, rule replies) on one side of the call with this hang-over:
    (p50 response latency ms or None, user turns it detected, the side's RTTM turns)."""
    from csmlab.pipeline.cascade import CascadeBrain
    from csmlab.pipeline.session import DuplexSession

    brain = CascadeBrain(voice="espeak", end_silence_ms=end_silence_ms, transcript=side.transcript)
    with DuplexSession(brain) as session:
        for _ in session.run(side.audio, side.sample_rate):
            pass
        response = session.report()["latency_ms"].get("response")
    return (response["p50"] if response else None), session.events.count("turn_end"), len(side.turns)
