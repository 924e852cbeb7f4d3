"""An independent client of Moshi's websocket protocol (aiohttp + sphn), for tests, soak and latency.

It shares no code with the server on purpose: it is written from moshi 0.2.13's `client.py`, so a
test that passes with it says the server speaks Moshi's protocol, not merely that server and
client agree with each other.

    async with aiohttp.ClientSession() as http:
        client = await MoshiClient.connect(http, "ws://127.0.0.1:8998/api/chat")
        await client.send_pcm(frame)              # float32 [T] at 24 kHz
        kind, payload = await client.receive(5)   # "audio" (np.ndarray), "text"/"error" (str), "closed"
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import sphn

from csmlab.pipeline.overload import STATES as OVERLOAD_STATES

RATE = 24_000
FRAME = 1920
QUIET_S = 10.0  # after the last frame is sent, the answer is over once the server is this long quiet
_KINDS = {0: "handshake", 1: "audio", 2: "text", 5: "error"}


class Refused(Exception):
    """The server answered the connection with an error (0x05, or HTTP 401) instead of a handshake."""


class MoshiClient:
    """One connection: Opus encoder and decoder of its own, raw access for protocol tests."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse):
        self.ws = ws
        self.writer = sphn.OpusStreamWriter(RATE)
        self.reader = sphn.OpusStreamReader(RATE)

    @classmethod
    async def connect(cls, http: aiohttp.ClientSession, url: str, token: str | None = None,
                      timeout: float = 30.0) -> "MoshiClient":
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        try:
            ws = await http.ws_connect(url, headers=headers, timeout=aiohttp.ClientWSTimeout(ws_close=5))
        except aiohttp.WSServerHandshakeError as err:
            raise Refused(f"HTTP {err.status}: {err.message}") from err
        client = cls(ws)
        kind, payload = await client.receive(timeout)
        if kind != "handshake":
            await ws.close()
            raise Refused(f"{kind}: {payload}")
        return client

    async def send_pcm(self, pcm: np.ndarray) -> None:
        ogg = self.writer.append_pcm(np.asarray(pcm, np.float32))
        if ogg:
            await self.ws.send_bytes(b"\x01" + ogg)

    async def send_raw(self, data: bytes | str) -> None:
        await (self.ws.send_str(data) if isinstance(data, str) else self.ws.send_bytes(data))

    async def receive(self, timeout: float) -> tuple[str, object]:
        """The next message as (kind, payload); ("closed", close code) once the server closed."""
        message = await asyncio.wait_for(self.ws.receive(), timeout)
        if message.type == aiohttp.WSMsgType.CLOSE:
            return "closed", message.data  # the code the server closed with
        if message.type != aiohttp.WSMsgType.BINARY:
            return "closed", self.ws.close_code
        data = message.data
        kind = _KINDS.get(data[0], f"0x{data[0]:02x}") if data else "empty"
        if kind == "audio":
            return kind, self.reader.append_bytes(data[1:])
        if kind in ("text", "error"):
            return kind, data[1:].decode("utf-8")
        return kind, data[1:]

    async def close(self) -> None:
        await self.ws.close()


@dataclass
class Conversation:
    """What one streamed clip got back, with per-message turnaround times."""

    audio: np.ndarray  # [T] float32 at 24 kHz, everything the server sent
    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # 0x05 notices of the session's state ("overloaded: ..."), not errors
    turnaround_ms: list[float] = field(default_factory=list)  # send of message n -> audio message n
    frames_sent: int = 0
    close_code: int | None = None


async def _collect(client: MoshiClient, sent_at: list[float], talk: Conversation, done: asyncio.Event) -> None:
    pcm = []
    while True:
        try:
            kind, payload = await client.receive(timeout=QUIET_S if done.is_set() else 30.0)
        except asyncio.TimeoutError:
            break
        if kind == "closed":
            talk.close_code = payload
            break
        if kind == "audio":
            pcm.append(payload)
            n = len(talk.turnaround_ms)
            if n < len(sent_at):
                talk.turnaround_ms.append(1000 * (time.perf_counter() - sent_at[n]))
        elif kind == "text":
            talk.texts.append(payload)
        elif kind == "error":
            (talk.notices if _is_notice(payload) else talk.errors).append(payload)
        if done.is_set() and len(talk.turnaround_ms) >= len(sent_at):
            break
    talk.audio = np.concatenate(pcm) if pcm else np.zeros(0, np.float32)


def _is_notice(payload: str) -> bool:
    """The server's overload notices share 0x05 with errors (moshi's web UI shows both): `state: words`."""
    return payload.split(":", 1)[0] in OVERLOAD_STATES


async def converse(url: str, audio: np.ndarray, token: str | None = None, realtime: bool = True) -> Conversation:
    """Stream `audio` (24 kHz float32 [T]) in 80 ms messages, paced like a microphone when `realtime`."""
    talk = Conversation(audio=np.zeros(0, np.float32))
    async with aiohttp.ClientSession() as http:
        client = await MoshiClient.connect(http, url, token)
        sent_at: list[float] = []
        done = asyncio.Event()
        collector = asyncio.create_task(_collect(client, sent_at, talk, done))
        start = time.perf_counter()
        for i in range(len(audio) // FRAME):
            if realtime:
                await asyncio.sleep(max(0.0, start + i * FRAME / RATE - time.perf_counter()))
            if client.ws.closed or collector.done():
                break  # the server ended the session (a limit, shutdown): its reason is in talk.errors
            sent_at.append(time.perf_counter())
            try:
                await client.send_pcm(audio[i * FRAME:(i + 1) * FRAME])
            except aiohttp.ClientConnectionResetError:
                break
            talk.frames_sent += 1
        done.set()
        await collector
        await client.close()
    return talk
