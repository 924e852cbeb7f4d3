"""What a connection may do before it is a request: a cap per client address and an idle clock.

aiohttp waits for a request's headers as long as a client cares to send them, one byte at a time
(slowloris: 400 of 500 such sockets were still open after 100 s, and a silent TCP connection after
20 s). `ConnectionGate` wraps aiohttp's protocol for each connection:

- a client address with `per_client` connections open already is dropped on arrival;
- a connection with no request in progress (its headers still coming, or idle between requests)
  is dropped after `idle_s`; a request being served (a websocket session included) stops the clock.

Both are counted in `csmlab_refused_total` ("connections", "header_timeout"). It hooks in through
aiohttp's public API only (checked on aiohttp 3.14.5): `AppRunner.server` is the documented low-level
server, an asyncio protocol factory, and `Server.start` listens with
`loop.create_server(gate.wrap(runner.server), host, port)` instead of a `TCPSite`. Behind a reverse
proxy every client has the proxy's address: raise the cap, and let the proxy limit per client.
"""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from contextlib import contextmanager

log = logging.getLogger("csmlab.serve")


class ConnectionGate:
    """Counts open connections per client address and hands out `Guarded` protocols."""

    def __init__(self, per_client: int, idle_s: float, refused):
        self.per_client, self.idle_s = per_client, idle_s
        self.refused = refused  # the refusals counter, by reason
        self.open: Counter[str] = Counter()
        self.guards: dict[object, Guarded] = {}  # transport -> its guard

    def wrap(self, factory):
        """A protocol factory for `loop.create_server`: aiohttp's protocols, guarded."""
        return lambda: Guarded(factory(), self)

    @contextmanager
    def serving(self, transport):
        """A request is being served on `transport`: its idle clock waits until the response is out."""
        guard = self.guards.get(transport)
        if guard is not None:
            guard.begin()
        try:
            yield
        finally:
            if guard is not None:
                guard.end()


class Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the gate's cap and idle clock."""

    def __init__(self, inner: asyncio.Protocol, gate: ConnectionGate):
        self.inner, self.gate = inner, gate
        self.transport = self.timer = None
        self.peer, self.admitted, self.requests = "?", False, 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "?"
        if self.gate.open[self.peer] >= self.gate.per_client:
            self.gate.refused.labels("connections").inc()
            log.warning("%s has %d connections open already: dropped another", self.peer, self.gate.per_client)
            transport.abort()
            return
        self.admitted = True
        self.gate.open[self.peer] += 1
        self.gate.guards[transport] = self
        self.inner.connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        if not self.admitted:
            return
        self._disarm()
        self.gate.open[self.peer] -= 1
        if self.gate.open[self.peer] <= 0:
            del self.gate.open[self.peer]
        self.gate.guards.pop(self.transport, None)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def begin(self) -> None:
        self.requests += 1
        self._disarm()

    def end(self) -> None:
        self.requests -= 1
        if self.requests == 0 and not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self.timer = asyncio.get_running_loop().call_later(self.gate.idle_s, self._expire)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expire(self) -> None:
        self.gate.refused.labels("header_timeout").inc()
        log.info("%s sent no whole request for %g s: connection closed", self.peer, self.gate.idle_s)
        self.transport.abort()
