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


async def send(ws: web.WebSocketResponse, message: Message) -> None:
    await (ws.send_str(message) if isinstance(message, str) else ws.send_bytes(message))


async def refuse(ws: web.WebSocketResponse, reason: str, wire, code: int = aiohttp.WSCloseCode.TRY_AGAIN_LATER) -> None:
    """Tell a client why (an 0x05 message on Moshi's protocol), then close: never leave it waiting."""
    if not ws.closed:
        await send(ws, wire.error(reason))
        await ws.close(code=code, message=reason.encode()[:120])


class Chat:
    """A websocket bound to its own `DuplexSession`; `run()` returns how the session ended."""

    def __init__(self, ws: web.WebSocketResponse, duplex, executor: Executor, settings, metrics: ServerMetrics, wire):
        self.ws, self.duplex, self.executor = ws, duplex, executor
        self.settings, self.metrics = settings, metrics
        self.wire = wire  # OpusWire (Moshi's protocol) or FrameWire (the page's frames)
        self.backlog: asyncio.Queue[tuple[np.ndarray, int | None] | None] = asyncio.Queue()
        self.backlog_samples = 0
        self.outcome: str | None = None
        self.overload = OverloadWatch(metrics, wire)

    async def run(self) -> str:
        await send(self.ws, self.wire.handshake())
        worker = asyncio.create_task(self._work_loop())
        try:
            await self._receive_loop()
        finally:
            self.backlog.put_nowait(None)
            await worker
            self.overload.close()
        return self.outcome or "completed"

    async def close(self, outcome: str, reason: str, code: int) -> None:
        """End the session from anywhere (limits, shutdown): the first reason given is the one kept."""
        if self.outcome is None:
            self.outcome = outcome
            log.info("closing session: %s", reason)
            await refuse(self.ws, reason, self.wire, code)

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
            if message.type == aiohttp.WSMsgType.ERROR:  # aiohttp closed it: oversized, bad framing
                too_big = getattr(message.data, "code", None) == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
                self.metrics.errors.labels("oversized" if too_big else "websocket").inc()
                self.outcome = self.outcome or "protocol_error"
                return
            await self._accept(message.data)

    async def _accept(self, data) -> None:
        try:
            pcm, seq = self.wire.decode(data)
        except ProtocolError as err:
            self.metrics.errors.labels(err.kind).inc()
            await send(self.ws, self.wire.error(str(err)))
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
            if self.ws.closed:
                continue  # the client left: drain without computing
            try:
                messages, steps = await loop.run_in_executor(self.executor, self._compute, *item)
            except AudioFormatError as err:  # one chunk was not audio (push changed nothing): say so, go on
                self.metrics.errors.labels("bad_audio").inc()
                await self._send([self.wire.error(str(err))], [])
                continue
            except Exception as err:  # the session's boundary: one failing brain must not take the server down
                if not isinstance(err, CsmlabError):
                    log.exception("unexpected failure in a session's pipeline")
                self.metrics.errors.labels(type(err).__name__).inc()
                await self.close("error", f"the pipeline failed: {err}", aiohttp.WSCloseCode.INTERNAL_ERROR)
                continue
            await self._send(messages, steps)

    def _compute(self, pcm: np.ndarray, seq: int | None) -> tuple[list[Message], list]:
        """Runs in a worker thread: the pipeline's steps for this audio, and their messages."""
        steps = self.duplex.push(pcm, SAMPLE_RATE, seq)
        return self.wire.encode(steps), steps

    async def _send(self, messages: list[Message], steps: list) -> None:
        if self.ws.closed:
            return
        for step in steps:
            self.metrics.observe_step(step)
        messages = messages + self.overload.check(self.duplex)
        try:
            for message in messages:
                await send(self.ws, message)
        except ConnectionError:  # the client left mid-stream: nothing to deliver to
            self.outcome = self.outcome or "disconnected"
