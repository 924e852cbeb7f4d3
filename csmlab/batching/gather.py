"""Many threads' requests, one forward pass: how N conversations share one model per 80 ms step.

Each conversation runs in its own thread and asks for one step at a time (`gather.submit(slot,
item)`). Stepping them one by one reads every weight N times; stepping them together reads them
once. A `Gather` collects the requests that arrive together and runs them as one batch:

    thread 1: submit(0, a) ─┐
    thread 2: submit(1, b) ─┼─> run({0: a, 1: b, 2: c}) -> each thread gets its own result back
    thread 3: submit(2, c) ─┘

The first request of a round waits until every member (a slot that has submitted before and not
left) has submitted, or `window_ms` has passed, then runs the round on its own thread; the others
sleep until their result is there. A member that is slow (its brain, its network) costs the others
at most `window_ms` per step and is then served in a later round. If `run` raises, every request of
that round gets the exception; the next round starts clean.

A conversation goes through several gathers in turn (encode, brain, decode). Waiting for all
members in each would deadlock until the window ran out whenever conversations sit in different
gathers (some in encode, the others in the brain), and they would stay out of step. Gathers that one
set of conversations shares form a `GatherGroup`: a round then closes as soon as every conversation
waits in some round of the group (nobody else can come), and otherwise waits for the ones still
computing, so the conversations fall into step after a few rounds.

In real time a conversation also spends most of each 80 ms between steps, waiting for its next
frame. Only the group's first gather (`stage="entry"`) waits for such a conversation, up to the
window: its frame may be about to arrive, and batching it is the point. The later gathers do not:
once a conversation has left the last gather (`stage="exit"`) it will not come before its next
step, so a brain or decode round closes as soon as everyone *in* a step waits. (On a real-time
server this cut the wait from up to one window per stage to one window per step.) The count is
bookkeeping for waiting only: whoever a round leaves out is served in the next, so results never
depend on it. It counts requests, not conversations (each gather numbers its slots its own way), so
a step that never reaches the exit (Moshi still silent, a failed brain) takes back a credit it never
gave; the rounds after it then wait their window again, as they all did before.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class GatherGroup:
    """The gathers that the same `members()` conversations go through, one after another."""

    def __init__(self, members: Callable[[], int]):
        self.members = members
        self.cond = threading.Condition()  # one lock for the group's gathers: an arrival wakes every leader
        self.pending = 0  # requests waiting in a round not yet run, across the group
        self.between_steps = 0  # conversations that left the exit gather and have not entered again

    def everyone_waits(self, entry: bool) -> bool:
        """Nobody else will come to a round: every conversation waits in the group or, past the
        entry, is between steps."""
        return self.pending + (0 if entry else self.between_steps) >= self.members()


class Gather:
    """Combine concurrent `submit(slot, item)` calls into `run({slot: item}) -> {slot: result}`."""

    STAGES = ("entry", "middle", "exit")

    def __init__(self, run: Callable[[dict], dict], window_ms: float = 20.0, group: GatherGroup | None = None,
                 stage: str = "middle"):
        if stage not in self.STAGES:
            raise ValueError(f"stage must be one of {self.STAGES}, not {stage!r}")
        self._run, self.window_ms, self._group, self.stage = run, window_ms, group, stage
        self._cond = group.cond if group is not None else threading.Condition()
        self._pending: dict = {}  # slot -> item, the round being gathered
        self._members: set = set()  # slots expected in every round
        self._round = 0  # id of the round being gathered
        self._done: dict[int, tuple[dict | None, BaseException | None]] = {}  # round -> (results, error)
        self._waiting: dict[int, int] = {}  # round -> callers still to collect their result
        self.rounds = 0  # rounds run, and how many requests they held: batch occupancy
        self.requests = 0

    def submit(self, slot, item):
        """Run `item` for `slot` in the next batch; block until its result is back (or raise its error)."""
        with self._cond:
            returning = slot in self._members  # it has stepped before
            self._members.add(slot)
            while slot in self._pending:  # this slot already waits in the round being gathered
                self._cond.wait()
            round_id = self._round
            self._pending[slot] = item
            self._waiting[round_id] = self._waiting.get(round_id, 0) + 1
            if self._group is not None:
                self._group.pending += 1
                self._enter(returning)
            self._cond.notify_all()  # the leaders (of this gather, and in a group of the others) count arrivals
            batch = self._lead() if len(self._pending) == 1 else None
        if batch is not None:
            self._finish(round_id, batch)
        return self._collect(round_id, slot)

    def _lead(self) -> dict:
        """As the round's first caller: wait for the members (or the window), then close the round."""
        deadline = time.monotonic() + self.window_ms / 1000
        while not self._complete() and (left := deadline - time.monotonic()) > 0:
            self._cond.wait(left)
        batch, self._pending = self._pending, {}
        if self._group is not None:
            self._group.pending -= len(batch)
        self._round += 1
        self._cond.notify_all()  # slots that wait to join the next round
        return batch

    def _enter(self, returning: bool) -> None:
        """At the entry, a conversation that stepped before comes back from between steps."""
        if self.stage == "entry" and returning and self._group.between_steps > 0:
            self._group.between_steps -= 1

    def _complete(self) -> bool:
        """Nobody else will come: every member is here (or, in a group, waits in some round)."""
        if self._group is not None:
            return self._group.everyone_waits(entry=self.stage == "entry")
        return self._members <= self._pending.keys()

    def _finish(self, round_id: int, batch: dict) -> None:
        try:
            outcome = (self._run(batch), None)
        except BaseException as err:  # noqa: BLE001 - every caller of the round re-raises it
            outcome = (None, err)
        with self._cond:
            self._done[round_id] = outcome
            self.rounds += 1
            self.requests += len(batch)
            self._cond.notify_all()

    def _collect(self, round_id: int, slot):
        with self._cond:
            while round_id not in self._done:
                self._cond.wait()
            results, error = self._done[round_id]
            self._waiting[round_id] -= 1
            if not self._waiting[round_id]:
                del self._done[round_id], self._waiting[round_id]
            if self._group is not None and self.stage == "exit":
                self._group.between_steps = min(self._group.between_steps + 1, self._group.members())
                self._cond.notify_all()  # later-stage leaders: one fewer to wait for
        if error is not None:
            raise error
        return results[slot]

    def leave(self, slot) -> None:
        """`slot` will submit no more: rounds stop waiting for it."""
        with self._cond:
            self._members.discard(slot)
            if self._group is not None and self.stage == "exit" and self._group.between_steps > 0:
                self._group.between_steps -= 1  # a conversation ends between steps, after its last exit
            self._cond.notify_all()

    @property
    def occupancy(self) -> float:
        """Mean requests per round so far: how well the batch fills."""
        return self.requests / self.rounds if self.rounds else 0.0
