"""One client's session: audio in from the websocket, the duplex pipeline off the event loop, audio out.

    websocket -> wire.decode (Opus or widget frames) -> backlog -> [worker thread] DuplexSession.push
              <- messages  <- wire.encode <- Steps

Failure policy: a bad message, or audio the pipeline refuses (`AudioFormatError`: int16 PCM sent as
float, a peak of 1e20), is answered with an 0x05 error and the session goes on; the session
ends with an 0x05 reason and a websocket close code when it is idle too long, reaches its length
limit, the pipeline fails, or the server shuts down. Compute runs in the server's thread pool, one
call at a time per session, so the event loop keeps serving every other client meanwhile.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor

import aiohttp
import numpy as np
from aiohttp import web

from csmlab.errors import AudioFormatError, CsmlabError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE
from csmlab.serve.metrics import ServerMetrics
from csmlab.serve.overload import OverloadWatch
from csmlab.serve.protocol import ProtocolError
from csmlab.serve.wires import Message

log = logging.getLogger("csmlab.serve")
BACKLOG_S = 2.0  # audio waiting for compute beyond this is dropped, oldest first, and counted
AHEAD_S = 2.0  # audio a client may send ahead of real time (its burst); beyond it a message is refused
SEND_TIMEOUT_S = 2.0  # a client that takes longer to accept one message has stopped reading
CLOSE_TIMEOUT_S = 2.0  # a closing handshake (reason, close frame, the peer's reply) gets this long
OUTBOX_LIMIT = 64  # messages waiting for a client (~2.5 s of steps); beyond it the client is not reading


async def send(ws: web.WebSocketResponse, message: Message) -> None:
    await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))


async def refuse(ws: web.WebSocketResponse, transport, reason: str, wire,
                 code: int = aiohttp.WSCloseCode.TRY_AGAIN_LATER) -> None:
    """Tell a client why (an 0x05 message on Moshi's protocol), then close: never leave it waiting,
    and never wait on it either: a client that does not read within `CLOSE_TIMEOUT_S` is cut off."""
    async def say_and_close() -> None:
        await send(ws, wire.error(reason))
        await close_frame(ws, code, reason)

    if ws.closed:
        return
    try:
        await asyncio.wait_for(say_and_close(), CLOSE_TIMEOUT_S)
    except (asyncio.TimeoutError, ConnectionError):
        abort(transport)


async def close_frame(ws: web.WebSocketResponse, code: int, reason: str) -> None:
    """The websocket close handshake (the reason fits a close frame's 123 bytes)."""
    await ws.close(code=code, message=reason.encode()[:120])


def abort(transport) -> None:
    """Drop a connection now: `close()` would wait to flush what a non-reading client never takes."""
    if transport is not None:
        transport.abort()


class RealTimeBudget:
    """Compute bounded by real input: a session may send the audio of the time it has been open,
    plus `ahead_s`. The bound is on decoded seconds, whatever the bytes: a 109-byte Ogg page of 41
    one-byte SILK packets decodes to 4.9 s, and would cost 61 steps of compute for nothing.

    `take(n)` is all or nothing per message: True and the samples are spent, or False and nothing
    is (the caller drops the message and counts it)."""

    def __init__(self, ahead_s: float = AHEAD_S, clock=time.monotonic):
        self.capacity = ahead_s * SAMPLE_RATE
        self.left, self.clock, self.at = self.capacity, clock, clock()

    def take(self, samples: int) -> bool:
        now = self.clock()
        self.left, self.at = min(self.capacity, self.left + (now - self.at) * SAMPLE_RATE), now
        if samples > self.left:
            return False
        self.left -= samples
        return True


class _Close:
    """The outbox's last item: close the websocket with this code and reason."""

    def __init__(self, code: int, reason: str):
        self.code, self.reason = code, reason


class Chat:
    """A websocket bound to its own `DuplexSession`; `run()` returns how the session ended.

    Three tasks, none waiting on another's peer: the receive loop (it owns the idle and length
    timers, and only ever awaits the client's next message), the work loop (compute, in the
    executor) and the send loop (the outbox, each message within `SEND_TIMEOUT_S`). A client that
    stops reading fills the outbox or times a send out: it is cut off and its slot freed
    (outcome "slow_consumer"), whatever the other loops are doing.
    """

    def __init__(self, ws: web.WebSocketResponse, transport, duplex, executor: Executor, settings,
                 metrics: ServerMetrics, wire):
        self.ws, self.transport, self.duplex, self.executor = ws, transport, duplex, executor
        self.settings, self.metrics = settings, metrics
        self.wire = wire  # OpusWire (Moshi's protocol) or FrameWire (the page's frames)
        self.backlog: asyncio.Queue[tuple[np.ndarray, int | None] | None] = asyncio.Queue()
        self.backlog_samples = 0
        self.budget = RealTimeBudget()
        self.outbox: asyncio.Queue[Message | _Close] = asyncio.Queue()
        self.closing = False  # the reason and close frame are queued: nothing else goes out
        self.cut = False  # the connection was dropped for not reading
        self.outcome: str | None = None
        self.ended = False  # the client is gone or told to go: its slot is free for the next one
        self.overload = OverloadWatch(metrics, wire)
        self.sender: asyncio.Task | None = None

    async def run(self) -> str:
        self.sender = asyncio.create_task(self._send_loop())
        worker = asyncio.create_task(self._work_loop())
        try:
            self._post(self.wire.handshake())
            await self._receive_loop()
        finally:
            self.ended = True
            self.backlog.put_nowait(None)
            await worker
            self.overload.close()
            await self._finish()
        return self.outcome or "completed"

    async def close(self, outcome: str, reason: str, code: int) -> None:
        """End the session from anywhere (limits, shutdown): the first reason given is the one kept.
        Returns within `CLOSE_TIMEOUT_S`: unsent audio is dropped, the reason and the close frame go
        out, and a client that does not take them in time is cut off."""
        if self.outcome is None:
            self.outcome = outcome
            log.info("closing session: %s", reason)
        if not self.closing:
            self.closing = True
            while not self.outbox.empty():  # audio nobody will hear: the reason goes out first
                self.outbox.get_nowait()
            self.outbox.put_nowait(self.wire.error(reason))
            self.outbox.put_nowait(_Close(code, reason))
        await self._finish()

    async def _finish(self) -> None:
        """Wait (at most `CLOSE_TIMEOUT_S`) for the send loop to deliver what is queued, then cut off."""
        if self.sender is None:
            return
        if not self.closing:
            self.closing = True
            self.outbox.put_nowait(_Close(aiohttp.WSCloseCode.OK, ""))
        done, _ = await asyncio.wait({self.sender}, timeout=CLOSE_TIMEOUT_S)
        if not done:
            self._cut_off("the client did not take the closing messages")
            self.sender.cancel()
            await asyncio.gather(self.sender, return_exceptions=True)

    def _cut_off(self, why: str) -> None:
        """The client stopped reading: drop its connection (its receive loop then ends) and count it."""
        if not self.cut:
            self.cut = True
            self.metrics.errors.labels("slow_consumer").inc()
            log.warning("dropping a client that does not read: %s", why)
        self.outcome = self.outcome or "slow_consumer"
        self.closing = True
        abort(self.transport)

    def _post(self, message: Message) -> None:
        """Queue a message for the send loop; never waits on the client."""
        if self.closing:
            return
        if self.outbox.qsize() >= OUTBOX_LIMIT:
            self._cut_off(f"{OUTBOX_LIMIT} messages waiting")
            return
        self.outbox.put_nowait(message)

    async def _send_loop(self) -> None:
        while True:
            item = await self.outbox.get()
            try:
                if isinstance(item, _Close):
                    await asyncio.wait_for(close_frame(self.ws, item.code, item.reason), CLOSE_TIMEOUT_S)
                    return
                await asyncio.wait_for(send(self.ws, item), SEND_TIMEOUT_S)
            except asyncio.TimeoutError:
                self._cut_off(f"one message took over {SEND_TIMEOUT_S:g} s to send")
                return
            except ConnectionError:  # the client left mid-stream: nothing to deliver to
                self.outcome = self.outcome or "disconnected"
                return

    def _timeout(self, deadline: float) -> tuple[float, bool]:
        left = deadline - time.monotonic()
        return (left, True) if left < self.settings.idle_timeout_s else (self.settings.idle_timeout_s, False)

    async def _receive_loop(self) -> None:
        deadline = time.monotonic() + self.settings.max_session_s
        while not self.ws.closed:
            timeout, by_length = self._timeout(deadline)
            try:
                message = await asyncio.wait_for(self.ws.receive(), max(timeout, 0))
            except asyncio.TimeoutError:
                if by_length:
                    await self.close("length", f"session reached its {self.settings.max_session_s:g} s limit", aiohttp.WSCloseCode.POLICY_VIOLATION)
                else:
                    await self.close("idle", f"no message for {self.settings.idle_timeout_s:g} s", aiohttp.WSCloseCode.POLICY_VIOLATION)
                return
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                return
            if self.cut:
                return
            if message.type == aiohttp.WSMsgType.ERROR:  # aiohttp closed it: oversized, bad framing
                too_big = getattr(message.data, "code", None) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                self.metrics.errors.labels("oversized" if too_big else "websocket").inc()
                self.outcome = self.outcome or "protocol_error"
                return
            self._accept(message.data)

    def _accept(self, data) -> None:
        try:
            pcm, seq = self.wire.decode(data)
        except ProtocolError as err:
            self.metrics.errors.labels(err.kind).inc()
            self._post(self.wire.error(str(err)))
            return
        if not self.budget.take(pcm.size):
            self.metrics.errors.labels("ahead_of_real_time").inc()
            self.metrics.dropped.inc(pcm.size / FRAME_SIZE)
            self._post(self.wire.error(f"{pcm.size / SAMPLE_RATE:.2f} s of audio dropped: it would run more than "
                                       f"{AHEAD_S:g} s ahead of real time; send audio as it is recorded"))
            return
        if pcm.size:
            self._queue(pcm, seq)

    def _queue(self, pcm: np.ndarray, seq: int | None) -> None:
        self.backlog.put_nowait((pcm, seq))
        self.backlog_samples += pcm.size
        while self.backlog_samples > BACKLOG_S * SAMPLE_RATE and self.backlog.qsize() > 1:
            dropped, _ = self.backlog.get_nowait()
            self.backlog_samples -= dropped.size
            self.metrics.dropped.inc(dropped.size / FRAME_SIZE)

    async def _work_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while (item := await self.backlog.get()) is not None:
            self.backlog_samples -= item[0].size
            if self.ws.closed or self.closing:
                continue  # the client left: drain without computing
            try:
                messages, steps = await loop.run_in_executor(self.executor, self._compute, *item)
            except AudioFormatError as err:  # one chunk was not audio (push changed nothing): say so, go on
                self.metrics.errors.labels("bad_audio").inc()
                self._post(self.wire.error(str(err)))
                continue
            except Exception as err:  # the session's boundary: one failing brain must not take the server down
                if not isinstance(err, CsmlabError):
                    log.exception("unexpected failure in a session's pipeline")
                self.metrics.errors.labels(type(err).__name__).inc()
                await self.close("error", f"the pipeline failed: {err}", aiohttp.WSCloseCode.INTERNAL_ERROR)
                continue
            self._send(messages, steps)

    def _compute(self, pcm: np.ndarray, seq: int | None) -> tuple[list[Message], list]:
        """Runs in a worker thread: the pipeline's steps for this audio, and their messages."""
        steps = self.duplex.push(pcm, SAMPLE_RATE, seq)
        return self.wire.encode(steps), steps

    def _send(self, messages: list[Message], steps: list) -> None:
        for step in steps:
            self.metrics.observe_step(step)
        messages = messages + self.overload.check(self.duplex)
        for message in messages:
            self._post(message)
