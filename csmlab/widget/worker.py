"""The kernel side of a live duplex session: a bounded queue in front of a session in its own thread.

    page --frame--> feed() [caller's thread, never blocks] --queue (bounded)--> worker thread:
        DuplexSession.push() -> Steps -> send(content, [system frame]) --> page

Widget messages arrive on the kernel's main thread, which must stay free for the next message, so
`feed` only decodes the 16-byte header, appends to the queue and returns. The session runs in a
worker thread (`csmlab-duplex-N`), which opens it and warms it up with one silent step before it
says "running". Backpressure: the queue holds at most `max_queue` frames; when
the kernel falls behind, the OLDEST frames are dropped and counted (`dropped`), so the latency stays
bounded and the session conceals the gap. Faults: a malformed frame is counted, reported through
`send` as an error message, and skipped; the session goes on. A brain that raises stops the session,
with its error on screen. A session that cannot keep up (`csmlab.pipeline.overload`) says so: each
change of its overload state goes to `send` as an `overload` message with the words to show. No frame for `idle_timeout_s` (the tab was closed, the microphone stopped)
stops the worker by itself, so nothing is left running. `stop()` is idempotent.

The transport is the caller's: `send(content: dict, buffers: list[bytes])` is called from the
worker thread (anywidget's `widget.send` in the notebook; a WebSocket in `csmlab serve`).
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from csmlab.errors import AudioFormatError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE
from csmlab.widget.frames import pack_system_frame, unpack_mic_frame

Send = Callable[[dict, list], None]
_ids = itertools.count(1)
STATS_EVERY_S = 0.5
WORKER_PREFIX = "csmlab-duplex-"


def _set_torch_threads(threads: int | None) -> None:
    """A new thread starts with torch's default thread count (see DEVELOPERS.md): set it here. torch is
    imported here, not found in `sys.modules`: in a fresh process nothing has imported it yet."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def open_session(brain, clock: str = "realtime", deadline_ms: float | None = None, overload: str = "skip",
                 **brain_kwargs):
    """A `DuplexSession` on `brain`: a name for `make_brain` ("loopback", "moshi", ...) or a brain;
    `overload` is its policy when the brain cannot keep up (`csmlab.pipeline.overload.POLICIES`)."""
    from csmlab.pipeline import DuplexSession, make_brain
    from csmlab.pipeline.brain import FRAME_MS

    brain = make_brain(brain, **brain_kwargs) if isinstance(brain, str) else brain
    return DuplexSession(brain, clock=clock, deadline_ms=FRAME_MS if deadline_ms is None else deadline_ms,
                         overload=overload)


class DuplexWorker:
    """Runs one live session. `feed(buffer)` from any thread; outputs go to `send` from the worker."""

    def __init__(self, brain, send: Send, *, max_queue: int = 4, idle_timeout_s: float = 5.0,
                 clock: str = "realtime", deadline_ms: float | None = None, threads: int | None = 1,
                 on_stats: Callable[[dict], None] | None = None, overload: str = "skip", **brain_kwargs):
        self.brain, self.send, self.max_queue, self.idle_timeout_s = brain, send, max_queue, idle_timeout_s
        self.deadline_ms = deadline_ms  # None: the session's (80 ms)
        self.clock, self.threads, self.on_stats, self.brain_kwargs = clock, threads, on_stats, brain_kwargs
        self.overload = overload  # the session's overload policy
        self.counts = {"received": 0, "dropped": 0, "malformed": 0, "steps": 0, "late": 0, "concealed": 0, "errors": 0}
        self.queue_max = 0
        self.warmup_ms: float | None = None
        self.status, self.reason = "starting", ""
        self.session = None
        self._session_report: dict | None = None
        self._frames: deque = deque()  # Frames, at most max_queue
        self._arrivals: dict[int, float] = {}  # seq -> arrival s, until a step consumes it
        self._cond = threading.Condition()
        self._stopping = False
        self._last_stats = 0.0
        self._overload_changes = 0
        self._pause_s = 0.0
        self._thread = threading.Thread(target=self._run, name=f"{WORKER_PREFIX}{next(_ids)}", daemon=True)

    def start(self) -> "DuplexWorker":
        self._thread.start()
        return self

    # -- caller's thread ----------------------------------------------------------------------------
    def feed(self, buffer) -> None:
        """Queue one mic frame; never blocks on the session. Malformed: counted, reported, skipped."""
        arrived = time.perf_counter()
        try:
            frame = unpack_mic_frame(buffer)
        except AudioFormatError as e:
            self.counts["malformed"] += 1
            self._error(str(e))
            return
        with self._cond:
            if self._stopping:
                return
            self.counts["received"] += 1
            if len(self._frames) >= self.max_queue:
                old = self._frames.popleft()
                self._arrivals.pop(old.seq, None)
                self.counts["dropped"] += 1
            self._frames.append(frame)
            self._arrivals[frame.seq] = arrived
            self.queue_max = max(self.queue_max, len(self._frames))
            self._cond.notify()

    def stop(self, wait: bool = False, timeout: float = 10.0) -> None:
        """Ask the worker to finish its step, close the session and exit. Idempotent."""
        with self._cond:
            self._stopping = True
            self._frames.clear()
            self._cond.notify()
        if wait and self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def pause(self, seconds: float) -> None:
        """A forced stall (tests, `csmlab bench live`): the worker sleeps `seconds` before its next step, as
        a kernel busy elsewhere would, while frames keep arriving into the bounded queue."""
        self._pause_s = seconds

    @property
    def queued(self) -> int:
        """Frames waiting for the session now (at most `max_queue`)."""
        return len(self._frames)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def report(self) -> dict:
        """Counts, queue, status; and the session's own report (per-layer compute, late, faults).

        From another thread while the worker runs, the session part is the one the worker published
        last (at most `STATS_EVERY_S` old): the session is not safe to read while it steps."""
        out = {"status": self.status, "reason": self.reason, "brain": str(self.brain), **self.counts,
               "queue": self.queued, "queue_max": self.queue_max, "max_queue": self.max_queue,
               "warmup_ms": self.warmup_ms}
        if self.session is not None and (threading.current_thread() is self._thread or not self.alive):
            self._session_report = self.session.report()
        if self._session_report is not None:
            out["session"] = self._session_report
        return out

    # -- worker thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        _set_torch_threads(self.threads)
        try:
            self.session = open_session(self.brain, self.clock, self.deadline_ms, self.overload, **self.brain_kwargs)
            self._warm_up()
            self._set_status("running")
            while (item := self._next()) is not None:
                if self._pause_s:
                    pause, self._pause_s = self._pause_s, 0.0
                    time.sleep(pause)
                self._step(item)
        except Exception as e:  # the brain or the transport failed: say so on screen, leave nothing running
            self.counts["errors"] += 1
            self._set_status("failed", f"{type(e).__name__}: {e}")
        finally:
            if self.session is not None:
                self.session.close()
            with self._cond:
                self._stopping = True
                self._frames.clear()
                self._arrivals.clear()
            if self.status != "failed":
                self._set_status("stopped", self.reason or "stopped")
            self._publish_stats(force=True)

    def _warm_up(self) -> None:
        """One silent, unnumbered step before the page streams: the cold first call (allocations, lazy
        loading) is paid here, not by the first frame of speech. Its cost is reported (`warmup_ms`)."""
        start = time.perf_counter()
        self.session.push(np.zeros(FRAME_SIZE, np.float32), SAMPLE_RATE)
        self.warmup_ms = 1000 * (time.perf_counter() - start)

    def _next(self):
        """The next queued frame, or None once stopping or after `idle_timeout_s` without a frame."""
        with self._cond:
            deadline = time.monotonic() + self.idle_timeout_s
            while not self._frames and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    self.reason = f"no audio from the page for {self.idle_timeout_s:g} s (tab closed or microphone stopped)"
                    return None
                self._cond.wait(left)
            return None if self._stopping else self._frames.popleft()

    def _step(self, frame) -> None:
        try:
            steps = self.session.push(frame.pcm, SAMPLE_RATE, seq=frame.seq)
        except AudioFormatError as e:
            self.counts["malformed"] += 1
            self._error(f"frame {frame.seq}: {e}")
            return
        for step in steps:
            self._send_step(step)
        overload = self.session.overload
        if overload.changes != self._overload_changes:
            self._overload_changes = overload.changes
            self.send({"type": "overload", **overload.report()}, [])
        self._publish_stats()

    def _send_step(self, step) -> None:
        self.counts["steps"] += 1
        self.counts["late"] += bool(step.late)
        if step.seq is None:
            self.counts["concealed"] += 1
            kernel_ms = 0.0
        else:
            with self._cond:
                arrived = self._arrivals.get(step.seq)
                for seq in [s for s in self._arrivals if s <= step.seq]:
                    del self._arrivals[seq]
            kernel_ms = 1000 * (time.perf_counter() - arrived) if arrived is not None else 0.0
        buffer = pack_system_frame(step, kernel_ms)
        content = {"type": "step", "index": step.index, "text": step.text, "late": bool(step.late), "concealed": step.seq is None, "shed": step.shed,
                   "compute_ms": {k: round(v, 3) for k, v in step.compute_ms.items()}, "queue": len(self._frames)}
        self.send(content, [buffer])

    def _error(self, message: str) -> None:
        self.send({"type": "error", "message": message, "malformed": self.counts["malformed"]}, [])

    def _set_status(self, status: str, reason: str = "") -> None:
        self.status, self.reason = status, reason
        self.send({"type": "status", "status": status, "reason": reason}, [])

    def _publish_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_stats >= STATS_EVERY_S:
            self._last_stats = now
            report = self.report()  # in the worker thread: this also refreshes the session part
            if self.on_stats is not None:
                self.on_stats(report)
