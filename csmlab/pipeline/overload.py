"""Is the brain keeping up? The session's overload state, and the words that say so on screen.

A live session has 80 ms of compute per 80 ms step. When the median compute of the last `window` (12)
computed steps exceeds that budget, the session is **overloaded**: whatever the queue does, it
cannot keep up, and the page must say so (the widget and `csmlab serve`'s page turn red; the server
logs it once, exports `csmlab_overloaded` and sends an 0x05 notice). Above `behind` x budget it is
**behind** (amber): close to the limit, late steps likely. Hysteresis: an overloaded session is
back to ok once its median is under `recover` x budget.

What the session sheds (`policy`, stated in `DuplexSession`'s policies, measured side by side in
`tests/test_overload.py` and `csmlab bench overload`):
- `"skip"` (the default): while not ok, a concealed step (silence standing in for a frame the queue
  dropped) skips encode, brain and decode, and sends silence. Without it, every frame the queue
  dropped came back as a concealed step at full compute, and the session spiralled (issue 22: 260 of
  293 steps were concealment at full cost). It drops only silence that was never said, but what the
  brain hears still depends on which frames the queue happened to drop.
- `"rate"`: a declared lower rate. When the session becomes overloaded it declares that the brain
  runs on every `every`-th frame (`every` = compute / budget, rounded up, at most `max_every`), says
  so in words, and the frames between go out as silence without encode, brain or decode; a computed
  step then has the frames it skips as extra time before it is late. The brain hears a regular
  1-in-`every` sample of the call (Moshi's and the codecs' states follow the 12.5 Hz frame clock, so
  that changes what they hear, and the learner is told), and the output comes in bursts a step apart.
  If it still cannot keep up, the rate is lowered again; back to ok, the full rate returns.
- `"none"`: every step computed (before issue 22; `csmlab bench overload` measures it).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from csmlab.errors import CsmlabError
from csmlab.pipeline.brain import FRAME_MS

STATES = ("ok", "behind", "overloaded")
POLICIES = ("skip", "rate", "none")
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
    policy: str = "skip"  # what the session sheds: one of POLICIES (see above)
    max_every: int = 4  # the lowest declared rate: one frame in 4 (3.1 steps/s)
    every: int = 1  # the declared rate: the brain runs on one frame in `every` (1: all of them)
    shed_steps: int = 0
    changes: int = 0

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise CsmlabError(f"overload policy {self.policy!r}: choose one of {', '.join(POLICIES)}")
        self.recent = deque(maxlen=self.window)

    def sheds(self, index: int, concealed: bool) -> bool:
        """Whether step `index` runs no encode, brain or decode under the policy now (silence goes out)."""
        if self.policy == "skip":
            return concealed and self.state != "ok"
        return index % self.every != 0

    @property
    def slack_ms(self) -> float:
        """Extra time before a computed step is late: at a declared rate, the frames it skips."""
        return (self.every - 1) * self.budget_ms

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
        every = self._declared_rate(state)
        if state == self.state and every == self.every:
            return None
        self.state, self.every, self.changes = state, every, self.changes + 1
        return state

    def _declared_rate(self, state: str) -> int:
        """One frame in how many the brain runs on: lowered (never raised) while overloaded, full once not,
        so that a rate once declared holds until the machine really has room again (the hysteresis above)."""
        if self.policy != "rate" or state != "overloaded":
            return 1
        return max(self.every, min(self.max_every, math.ceil(self.compute_ms / self.budget_ms)))

    def message(self) -> str:
        m, b = self.compute_ms, self.budget_ms
        if self.state == "overloaded":
            advice = ADVICE.get(self.brain, "close what else uses the CPU")
            return (f"this brain needs {m:.0f} ms per {b:.0f} ms step here: it cannot keep up on this machine; "
                    f"{self._rate_words()}{advice}, or see `csmlab doctor`")
        if self.state == "behind":
            return f"this brain needs {m:.0f} of its {b:.0f} ms per step here: close to the limit, expect late steps"
        return f"keeping up: {m:.0f} ms per {b:.0f} ms step" if self.recent else ""

    def _rate_words(self) -> str:
        if self.every == 1:
            return ""
        rate = 1000 / (self.every * self.budget_ms)
        return (f"running it on 1 frame in {self.every} ({rate:.1f} steps/s instead of {1000 / self.budget_ms:.1f}), "
                "silence between; ")

    def report(self) -> dict:
        m = self.compute_ms
        return {"state": self.state, "compute_ms": None if np.isnan(m) else round(m, 1), "budget_ms": self.budget_ms,
                "message": self.message(), "policy": self.policy, "every": self.every, "shed_steps": self.shed_steps,
                "changes": self.changes}
