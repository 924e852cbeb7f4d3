"""A session that cannot keep up, seen from the server: logged once, exported, told to the client.

The pipeline decides (`csmlab.pipeline.overload`: median compute per step against the 80 ms budget);
the server reports each change of a session's state: a log line the first time the session is
overloaded, the `csmlab_overloaded_sessions` gauge and `csmlab_overload_events` counter in
`/metrics`, and a notice to the client (Moshi's protocol: an 0x05 message; the page's frames: a JSON
`{"type": "overload", "state", "message"}` that the page shows in amber or red).
"""
from __future__ import annotations

import logging

log = logging.getLogger("csmlab.serve")


class OverloadWatch:
    """One per session: `check(duplex)` returns the messages to send when the state changed."""

    def __init__(self, metrics, wire):
        self.metrics, self.wire = metrics, wire
        self.changes, self.state, self.logged = 0, "ok", False

    def check(self, duplex) -> list:
        overload = duplex.overload
        if overload.changes == self.changes:
            return []
        self.changes = overload.changes
        was, self.state = self.state, overload.state
        if (was == "overloaded") != (self.state == "overloaded"):
            self.metrics.overloaded.inc() if self.state == "overloaded" else self.metrics.overloaded.dec()
        if self.state == "overloaded":
            self.metrics.overload_events.inc()
            if not self.logged:
                self.logged = True
                log.warning("session overloaded (brain %s): %s", overload.brain, overload.message())
        return [self.wire.notice(overload.state, overload.message())]

    def close(self) -> None:
        if self.state == "overloaded":
            self.metrics.overloaded.dec()
