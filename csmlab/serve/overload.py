"""A session that cannot keep up, seen from the server: logged once, exported, told to the client.

The pipeline decides (`csmlab.pipeline.overload`: median compute per step against the 80 ms budget);
the server reports each change of a session's state: a log line the first time the session is
overloaded, the `csmlab_overloaded_sessions` and `csmlab_reduced_rate_sessions` gauges and the
`csmlab_overload_events` counter in `/metrics` (`csmlab_shed_steps` is counted per step), and a
notice to the client (Moshi's protocol: an 0x05 message; the page's frames: a JSON
`{"type": "overload", "state", "message"}` that the page shows in amber or red; the message says a
declared lower rate in words).
"""
from __future__ import annotations

import logging

log = logging.getLogger("csmlab.serve")


class OverloadWatch:
    """One per session: `check(duplex)` returns the messages to send when the state changed."""

    def __init__(self, metrics, wire):
        self.metrics, self.wire = metrics, wire
        self.changes, self.state, self.every, self.logged = 0, "ok", 1, False

    def check(self, duplex) -> list:
        overload = duplex.overload
        if overload.changes == self.changes:
            return []
        self.changes = overload.changes
        was, self.state = self.state, overload.state
        reduced, self.every = self.every > 1, overload.every
        _follow(self.metrics.overloaded, was == "overloaded", self.state == "overloaded")
        _follow(self.metrics.reduced_rate, reduced, self.every > 1)
        if self.state == "overloaded" and was != "overloaded":
            self.metrics.overload_events.inc()
            if not self.logged:
                self.logged = True
                log.warning("session overloaded (brain %s): %s", overload.brain, overload.message())
        return [self.wire.notice(overload.state, overload.message())]

    def close(self) -> None:
        _follow(self.metrics.overloaded, self.state == "overloaded", False)
        _follow(self.metrics.reduced_rate, self.every > 1, False)


def _follow(gauge, was: bool, now: bool) -> None:
    """A gauge of sessions in some condition: +1 as one enters it, -1 as it leaves."""
    if now != was:
        gauge.inc() if now else gauge.dec()
