"""The session's clock: simulated (as fast as compute allows) or real time (the wall clock).

Both offer the same two calls, so the session runs the same code under either:
`now()` (seconds since the session started) and `wait_until(t)` (return at time `t`). The simulated
clock jumps: waiting is free and compute takes no simulated time, so no step is ever late and a
notebook plays 10 minutes of conversation in as long as the compute takes. The real-time clock
sleeps until `t`, and compute costs what it costs.
"""
from __future__ import annotations

import time

from csmlab.errors import ConfigError


class SimulatedClock:
    """Simulated time: `wait_until` jumps forward, compute costs nothing."""

    kind = "simulated"

    def __init__(self):
        self._now = 0.0

    def now(self) -> float:
        return self._now

    def wait_until(self, t: float) -> None:
        self._now = max(self._now, t)


class RealtimeClock:
    """Wall-clock time since the first call (`time.perf_counter`)."""

    kind = "realtime"

    def __init__(self):
        self._start: float | None = None

    def now(self) -> float:
        if self._start is None:
            self._start = time.perf_counter()
        return time.perf_counter() - self._start

    def wait_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            time.sleep(delay)


CLOCKS = {"simulated": SimulatedClock, "realtime": RealtimeClock}


def make_clock(clock) -> SimulatedClock | RealtimeClock:
    """`"simulated"`, `"realtime"`, or a clock object with `now()` and `wait_until()`."""
    if isinstance(clock, str):
        if clock not in CLOCKS:
            raise ConfigError(f"clock must be one of {sorted(CLOCKS)}, not {clock!r}")
        return CLOCKS[clock]()
    if not (callable(getattr(clock, "now", None)) and callable(getattr(clock, "wait_until", None))):
        raise ConfigError(f"a clock needs now() and wait_until(t); got {clock!r}. Use 'simulated' or 'realtime'")
    return clock
