"""Is the brain keeping up? The session's overload state, and the words that say so on screen.

A live session has 80 ms of compute per 80 ms step. When the median compute of the last `window` (12)
computed steps exceeds that budget, the session is **overloaded**: whatever the queue does, it
cannot keep up, and the page must say so (the widget and `csmlab serve`'s page turn red; the server
logs it once, exports `csmlab_overloaded` and sends an 0x05 notice). Above `behind` x budget it is
**behind** (amber): close to the limit, late steps likely. Hysteresis: an overloaded session is
back to ok once its median is under `recover` x budget.

What the session sheds while not ok (stated in `DuplexSession`'s policies, measured in
`tests/test_overload.py` and `csmlab bench overload`): a concealed step (silence standing in for a
frame the queue dropped) skips encode, brain and decode, and sends silence. Without it, every frame
the queue dropped came back as a concealed step at full compute, and the session spiralled (issue
22: 260 of 293 steps were concealment at full cost). The alternative, a declared lower rate (run
the brain on every other frame), was not taken: Moshi's and the codecs' states follow the 12.5 Hz
frame clock, so halving the rate changes what they hear, where skipping a concealed frame drops
only silence that was never said.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from csmlab.pipeline.brain import FRAME_MS

STATES = ("ok", "behind", "overloaded")
ADVICE = {"moshi": "try cascade", "cascade": "try loopback"}  # what to do instead, by brain


@dataclass
class Overload:
    """Tracks compute per computed step against the frame budget; `observe` returns a new state or None."""

    brain: str = "brain"
    budget_ms: float = FRAME_MS
    window: int = 12  # ~1 s of steps at the budget; at 136 ms a step, flagged 1.6 s after falling behind
    behind: float = 0.8
    recover: float = 0.7
    state: str = "ok"
    recent: deque = field(init=False)
    shed: bool = True  # the policy: skip the compute of concealed steps while not ok (False: measure without it)
    shed_steps: int = 0
    changes: int = 0

    def __post_init__(self):
        self.recent = deque(maxlen=self.window)

    @property
    def shedding(self) -> bool:
        return self.shed and self.state != "ok"

    @property
    def compute_ms(self) -> float:
        """Median compute of the last `window` computed steps (nan before any)."""
        return float(np.median(self.recent)) if self.recent else float("nan")

    def observe(self, total_ms: float) -> str | None:
        """One computed step's compute (ms); the new state when it changed."""
        self.recent.append(total_ms)
        if len(self.recent) < self.window:
            return None
        m, b = self.compute_ms, self.budget_ms
        if m > b:
            state = "overloaded"
        elif self.state == "overloaded" and m >= self.recover * b:
            state = "overloaded"
        elif m > self.behind * b:
            state = "behind"
        else:
            state = "ok"
        if state == self.state:
            return None
        self.state, self.changes = state, self.changes + 1
        return state

    def message(self) -> str:
        m, b = self.compute_ms, self.budget_ms
        if self.state == "overloaded":
            advice = ADVICE.get(self.brain, "close what else uses the CPU")
            return (f"this brain needs {m:.0f} ms per {b:.0f} ms step here: it cannot keep up on this machine; "
                    f"{advice}, or see `csmlab doctor`")
        if self.state == "behind":
            return f"this brain needs {m:.0f} of its {b:.0f} ms per step here: close to the limit, expect late steps"
        return f"keeping up: {m:.0f} ms per {b:.0f} ms step" if self.recent else ""

    def report(self) -> dict:
        m = self.compute_ms
        return {"state": self.state, "compute_ms": None if np.isnan(m) else round(m, 1), "budget_ms": self.budget_ms,
                "message": self.message(), "shed_steps": self.shed_steps, "changes": self.changes}
