"""The web server: `/api/chat` (Moshi's protocol), `/healthz`, `/metrics`, and its lifecycle.

`Server.start()` binds (behind `gate.py`'s cap per client and idle clock), then loads the brain in a worker thread: `/healthz` answers 503 and
`/api/chat` refuses with an 0x05 reason until it is ready. `Server.stop()` is the graceful path
SIGTERM takes: stop listening, close every session with an 0x05 reason and close code 1001, wait
for the worker threads, return. Limits are enforced where they bite: connections per client and
unfinished headers at the socket (`gate.py`), `Origin`/`Host` on every request (HTTP 403,
`access.py`), the token before the websocket upgrade (HTTP 401), the session count right after it (0x05 + close 1013), message size by
aiohttp's reader (close 1009), idle time and session length by each `Chat`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST

from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE
from csmlab.pipeline import Brain, DuplexSession, LoopbackBrain, make_brain
from csmlab.pipeline.brain import FRAME_MS
from csmlab.serve.access import RedactingAccessLogger, access_denied, details_allowed, foreign_request
from csmlab.serve.chat import CLOSE_TIMEOUT_S, Chat, refuse
from csmlab.serve.config import Settings
from csmlab.serve.gate import ConnectionGate
from csmlab.serve.metrics import ServerMetrics
from csmlab.serve.wires import FrameWire, OpusWire
from csmlab.widget.frames import AUDIO_JS

PAGE = Path(__file__).resolve().parent.parent / "assets" / "serve" / "index.html"

log = logging.getLogger("csmlab.serve")


def brain_factory(settings: Settings) -> Callable[[], Brain]:
    """A new brain per session, as the settings say. Models load here, once: every session's brain
    shares them (each has its own streaming state; csmlab.moshi and csmlab.codec lock per model)."""
    weights = settings.weights or None
    if settings.brain == "loopback":
        from csmlab.codec import load_codec

        codec = load_codec(8, weights=weights, listen=settings.listen)
        if settings.batch:
            from csmlab.pipeline.batching import SharedCodec

            codec = SharedCodec(codec, settings.max_sessions)
        return lambda: LoopbackBrain(codec=codec)
    if settings.brain == "moshi":
        from csmlab import moshi

        model = moshi.load(weights, device=settings.device)
        if settings.batch:
            from csmlab.pipeline.batching import ConversationPool

            return ConversationPool(model, settings.max_sessions).brain
        return lambda: make_brain("moshi", model=model)
    if settings.brain == "cascade":
        from csmlab.pipeline.voices import CsmSpeaker, make_voice

        if weights:
            from csmlab.csm import load_csm

            voice = CsmSpeaker(load_csm(weights, device=settings.device))
        else:
            voice = make_voice("auto")  # CSM with real weights when found, else espeak-ng (says so)
        return lambda: make_brain("cascade", voice=voice)
    if settings.brain == "moshi+csm":  # `weights` is Moshi's; CSM's are found as `load_csm()` finds them
        from csmlab import moshi
        from csmlab.csm import load_csm
        from csmlab.pipeline.voices import CsmSpeaker

        model, voice = moshi.load(weights, device=settings.device), CsmSpeaker(load_csm(device=settings.device))
        return lambda: make_brain("moshi+csm", model=model, voice=voice)
    return lambda: make_brain(settings.brain)


def _announce_weights(brain: Brain) -> str:
    """Say which weights speak; loudly, line by line, when they are not the released model's.
    Returns the one-line note that /healthz and the page show."""
    codec = brain.codec()
    if codec is None and brain.weights == "none":
        log.info("brain %s uses no model weights", brain.name)
        return "no model weights"
    banner = codec.weights.banner() if codec is not None else ""
    if codec is not None and codec.weights.is_real and brain.weights in ("local", "hub", "real"):
        log.info("brain %s on real weights: %s", brain.name, banner)
        return f"real weights ({brain.weights})"
    note = f"OFFLINE WEIGHTS ({brain.weights}), NOT the released model: its audio and text are not the real model's"
    log.warning("brain %r: %s", brain.name, note)
    for line in banner.splitlines():
        log.warning("%s", line)
    return note


CAPACITY_STEPS = 6  # warm steps timed at start-up to estimate how many sessions the machine holds


def _say_capacity(warm: DuplexSession, settings: Settings) -> int:
    """Time a few warm steps of one session and log how many sessions fit in real time on this
    machine's cores (each session computes on its own thread); warn when `max_sessions` is more.
    The default `max_sessions` cannot know the brain, the weights or the machine: this can."""
    steps = warm.push(np.zeros(CAPACITY_STEPS * FRAME_SIZE, np.float32), SAMPLE_RATE)
    step_ms = max(float(np.median([s.compute_ms["total"] for s in steps])), 1e-3)
    cores = max(1, len(os.sched_getaffinity(0)) // settings.threads)
    holds = int(cores * FRAME_MS // step_ms)
    log.info("one session's step costs %.1f ms of its %g ms: %d core(s) hold about %d session(s) in real time "
             "(max_sessions %d; measured at start-up, load average %.1f)", step_ms, FRAME_MS, cores, holds,
             settings.max_sessions, os.getloadavg()[0])
    if settings.max_sessions > holds:
        log.warning("max_sessions %d is more than this machine computes in real time (about %d): expect late "
                    "steps and dropped frames when full; set --max-sessions %d", settings.max_sessions, holds,
                    max(holds, 1))
    return holds


class Server:
    """One `csmlab serve` process: settings, brain, sessions, metrics.

    `new_brain` makes the brain of each session (default: from the settings); tests pass their own.
    """

    def __init__(self, settings: Settings, new_brain: Callable[[], Brain] | None = None):
        self.settings = settings
        self.new_brain = new_brain
        self.metrics = ServerMetrics()
        self.gate = ConnectionGate(settings.max_connections_per_client, settings.header_timeout_s, self.metrics.refused)
        self.executor = ThreadPoolExecutor(settings.max_sessions + 1, thread_name_prefix="csmlab-session")
        self.chats: set[Chat] = set()
        self.opening = 0
        self.ready = False
        self.weights = "loading"  # then what speaks, for /healthz and the page
        self.capacity: int | None = None  # sessions this machine computes in real time, measured at start
        self.stopping = False
        self.started = time.monotonic()
        self.runner: web.AppRunner | None = None
        self.listener: asyncio.Server | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._checked])
        app.router.add_get("/api/chat", partial(self._session, wire=OpusWire))  # Moshi's protocol
        app.router.add_get("/api/frames", partial(self._session, wire=FrameWire))  # the page's frames
        app.router.add_get("/", lambda request: web.FileResponse(PAGE))
        app.router.add_get("/assets/duplex-audio.js", lambda request: web.FileResponse(
            AUDIO_JS, headers={"Content-Type": "text/javascript"}))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> None:
        """Listen, then load the brain off the event loop; returns once the port is bound."""
        # handlers end within CLOSE_TIMEOUT_S of stop() (Chat cuts off clients that do not read);
        # this only bounds what is left, so that SIGTERM always finishes
        self.runner = web.AppRunner(self.app(), handle_signals=False, shutdown_timeout=2 * CLOSE_TIMEOUT_S,
                                    access_log_class=RedactingAccessLogger)
        await self.runner.setup()
        # aiohttp's public hook: the runner's server is an asyncio protocol factory (the docs' "low level
        # server"); the listening socket is ours, each connection's protocol wrapped by the gate
        self.listener = await asyncio.get_running_loop().create_server(
            self.gate.wrap(self.runner.server), self.settings.host, self.settings.port)
        self.port = self.listener.sockets[0].getsockname()[1]
        log.info("listening on http://%s:%d (websocket /api/chat)", self.settings.host, self.port)
        if not self.settings.loopback and not self.settings.token:
            log.warning("INSECURE: %s accepts anyone without a token (--insecure)", self.settings.host)
        self.loading = asyncio.get_running_loop().run_in_executor(self.executor, self._load)

    def _load(self) -> None:
        """Load the models once (every session's brain shares them), say which weights, warm up."""
        torch.set_num_threads(self.settings.threads)  # one setting for the whole process (DEVELOPERS.md)
        if self.new_brain is None:
            self.new_brain = brain_factory(self.settings)
        with self._open_session() as warm:
            self.weights = _announce_weights(warm.brain)
            warm.push(np.zeros(2 * FRAME_SIZE, np.float32), SAMPLE_RATE)  # first-call costs, paid before clients come
            self.capacity = _say_capacity(warm, self.settings)
        self.ready = True
        self.metrics.ready.set(1)
        log.info("brain %s ready", self.settings.brain)

    def _open_session(self) -> DuplexSession:
        return DuplexSession(self.new_brain(), clock="realtime", overload=self.settings.overload)

    async def stop(self, reason: str = "server shutting down") -> None:
        """Graceful: stop accepting, close sessions with `reason`, let worker threads finish."""
        self.stopping, self.ready = True, False
        self.metrics.ready.set(0)
        if self.listener is not None:
            self.listener.close()  # no new connections; open ones are closed by the runner's cleanup
        await asyncio.gather(*(c.close("shutdown", reason, WSCloseCode.GOING_AWAY) for c in list(self.chats)))
        if self.runner:
            await self.runner.cleanup()
        self.executor.shutdown(wait=True, cancel_futures=True)
        log.info("stopped")

    def _refusal(self) -> tuple[str, str] | None:
        if self.stopping:
            return "shutdown", "the server is shutting down; reconnect to another replica"
        if not self.ready:
            return "loading", "the brain is still loading; retry when GET /healthz says ready"
        live = sum(not chat.ended for chat in self.chats)  # a session winding down holds no slot
        if live + self.opening >= self.settings.max_sessions:
            return "full", (f"server full: all {self.settings.max_sessions} sessions are in use; "
                            "try again later or another replica")
        return None

    async def _session(self, request: web.Request, wire) -> web.StreamResponse:
        denied = access_denied(self.settings, request.headers, request.query)
        if denied:
            self.metrics.refused.labels("token").inc()
            raise web.HTTPUnauthorized(text=denied)
        ws = web.WebSocketResponse(max_msg_size=self.settings.max_message_bytes, timeout=CLOSE_TIMEOUT_S)
        try:
            await ws.prepare(request)
        except ConnectionError:  # the client left during the upgrade: a session that ended at once
            self.metrics.sessions.labels("disconnected").inc()
            return ws
        refusal = self._refusal()
        if refusal:
            self.metrics.refused.labels(refusal[0]).inc()
            await refuse(ws, request.transport, refusal[1], wire=wire)
            return ws
        self.opening += 1
        try:
            duplex = await asyncio.get_running_loop().run_in_executor(self.executor, self._open_session)
        finally:
            self.opening -= 1
        chat = Chat(ws, request.transport, duplex, self.executor, self.settings, self.metrics, wire())
        self.chats.add(chat)
        self.metrics.sessions_active.set(len(self.chats))
        try:
            outcome = await chat.run()
        finally:
            self.chats.discard(chat)
            self.metrics.sessions_active.set(len(self.chats))
            duplex.close()
        self.metrics.sessions.labels(outcome).inc()
        log.info("session ended: %s", outcome)
        return ws

    @web.middleware
    async def _checked(self, request: web.Request, handler) -> web.StreamResponse:
        """Every request: its connection's idle clock stops while it is served; browsers' rules first."""
        with self.gate.serving(request.transport):
            foreign = foreign_request(self.settings, request.headers)
            if foreign:
                self.metrics.refused.labels("origin").inc()
                raise web.HTTPForbidden(text=foreign)
            return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        """A status for anyone; beyond loopback, the details (brain, weights, load) only with the token."""
        body = {"ready": self.ready}
        if details_allowed(self.settings, request.headers, request.query):
            body |= {"brain": self.settings.brain, "weights": self.weights, "sessions": len(self.chats),
                     "max_sessions": self.settings.max_sessions, "capacity_estimate": self.capacity, "uptime_s": round(time.monotonic() - self.started, 1)}
        return web.json_response(body, status=200 if self.ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        denied = access_denied(self.settings, request.headers, request.query)
        if denied:
            raise web.HTTPUnauthorized(text=denied)
        return web.Response(body=self.metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _serve_until_signal(settings: Settings) -> int:
    server = Server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    signalled = asyncio.create_task(stop.wait())
    await asyncio.wait([signalled, server.loading], return_when=asyncio.FIRST_COMPLETED)
    if not signalled.done() and server.loading.exception():
        log.error("the brain failed to load: %s", server.loading.exception())
        signalled.cancel()
        await server.stop("the brain failed to load")
        return 1
    await signalled
    log.info("signal received: closing %d session(s)", len(server.chats))
    await server.stop()
    return 0


@contextmanager
def serve_in_thread(settings: Settings, new_brain: Callable[[], Brain] | None = None, ready_timeout: float = 600.0):
    """A `Server` running on its own event loop in a background thread (tests, notebooks).

    Yields the server once it is ready (`server.port` is the bound port); stops it gracefully on exit.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="csmlab-serve", daemon=True)
    thread.start()
    server = Server(settings, new_brain)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=30)
        asyncio.run_coroutine_threadsafe(asyncio.wait_for(server.loading, ready_timeout), loop).result()
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def run(settings: Settings) -> int:
    """Serve until SIGTERM or Ctrl-C; exit status 0 after a graceful stop, 1 if the brain cannot load."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve_until_signal(settings))
