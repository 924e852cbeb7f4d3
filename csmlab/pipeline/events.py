"""The one event log every layer of a duplex session writes to: bounded, counted, JSON-able.

Each layer (`input`, `encode`, `brain`, `decode`, `clock`, `session`) reports what happened to it as
an `Event`: a concealed frame, a duplicate, a brain that raised, a barge-in. The newest `capacity`
events are kept for reading (so a session of hours does not grow); the count of every kind is kept
for ever, so `report()` never under-counts.
"""
from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import asdict, dataclass

log = logging.getLogger("csmlab.pipeline")


@dataclass(frozen=True)
class Event:
    """Something one layer did or suffered at one step (`t_ms`: the session clock, ms)."""

    step: int
    t_ms: float
    layer: str
    kind: str
    detail: str = ""


class EventLog:
    """Bounded list of the newest events plus an unbounded count per `(layer, kind)`."""

    def __init__(self, capacity: int = 2000):
        self._events: deque[Event] = deque(maxlen=capacity)
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, step: int, t_ms: float, layer: str, kind: str, detail: str = "") -> Event:
        event = Event(step, round(t_ms, 3), layer, kind, detail)
        self._events.append(event)
        self.counts[layer, kind] += 1
        log.debug("step %d %s/%s %s", step, layer, kind, detail)
        return event

    def __iter__(self):
        return iter(list(self._events))

    def __len__(self) -> int:
        return len(self._events)

    def of(self, kind: str, layer: str | None = None) -> list[Event]:
        """The kept events of one kind (and layer)."""
        return [e for e in self._events if e.kind == kind and layer in (None, e.layer)]

    def count(self, kind: str, layer: str | None = None) -> int:
        """All events of one kind ever logged (kept or not)."""
        return sum(n for (lay, k), n in self.counts.items() if k == kind and layer in (None, lay))

    def to_list(self) -> list[dict]:
        return [asdict(e) for e in self._events]
