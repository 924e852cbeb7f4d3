"""Moshi's own client against `csmlab serve`: moshi 0.2.13's `moshi/client.py`, unchanged, headless.

moshi's client reaches its microphone and speaker through `sounddevice` (PortAudio), and that is
all that is replaced here: a fake `sounddevice` module feeds a recorded utterance to the client's
own input callback in 80 ms blocks at real time (the client Opus-encodes it with sphn and sends
0x01 pages) and pulls what the client queued for its speaker (decoded from the server's 0x01
pages). URL, websocket, message kinds and Opus are moshi's code. The server is `csmlab serve` in a
process of its own with the loopback brain on the small trained Mimi: what comes back is the
utterance through Mimi, one 80 ms step out per step in. The client stops as on Ctrl-C (asyncio
cancels its task; aiohttp closes the websocket with code 1000), or the server ends the session.
"""
import argparse
import asyncio
import importlib
import re
import sys
import threading
import time
import types

import aiohttp
import numpy as np
import pytest

from csmlab.data import DATA_DIR, load_wav
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE

UTTERANCE = DATA_DIR / "speech" / "thanks_en+f3_24k.wav"  # 2.7 s of espeak-ng speech at 24 kHz
QUIET_S = 0.8  # after the last block spoken, the reply is over once the speaker gets nothing this long
IDLE_S = 3.0  # the server's idle limit: well beyond QUIET_S, so only the idle test meets it
TIMEOUT_S = 20.0


class FakeStream:
    """A PortAudio stream stand-in: while open, calls `callback` with one block per block's duration,
    from a thread of its own, as PortAudio does; `block(n)` is one call."""

    def __init__(self, samplerate, channels, blocksize, callback):
        self.rate, self.shape, self.callback = samplerate, (blocksize, channels), callback
        self.errors: list[BaseException] = []
        self.opened = self.closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.opened = True
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.closed = True

    def _run(self):
        period, start, n = self.shape[0] / self.rate, time.monotonic(), 0
        while not self._stop.wait(max(0.0, start + n * period - time.monotonic())):
            try:
                if not self.block(n):
                    return
            except BaseException as err:  # the client's callback failed: the test reports it
                self.errors.append(err)
                return
            n += 1


class Microphone(FakeStream):
    """Speaks `audio` in whole blocks (the last one zero-padded), then runs dry."""

    def __init__(self, audio: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.audio, self.spoken = audio, 0  # blocks spoken so far

    def block(self, n: int) -> bool:
        chunk = self.audio[n * self.shape[0]:(n + 1) * self.shape[0]]
        if not chunk.size:
            return False
        data = np.zeros(self.shape, np.float32)
        data[:len(chunk), 0] = chunk
        self.callback(data, self.shape[0], None, None)
        self.spoken = n + 1
        return True


class Speaker(FakeStream):
    """Plays what the client hands it; a block the client had nothing for is a lag on `printer`."""

    def __init__(self, printer: "RecordingPrinter", **kwargs):
        super().__init__(**kwargs)
        self.printer = printer
        self.played: list[np.ndarray] = []  # [FRAME_SIZE] blocks the client had audio for
        self.last_played = time.monotonic()

    def block(self, n: int) -> bool:
        data, lags = np.full(self.shape, np.nan, np.float32), self.printer.lags
        self.callback(data, self.shape[0], None, None)
        if self.printer.lags == lags:
            self.played.append(data[:, 0].copy())
            self.last_played = time.monotonic()
        return True


class RecordingPrinter:
    """moshi's `RawPrinter` surface (what the client calls to show the session), recorded in order."""

    def __init__(self):
        self.events: list[tuple[str, str]] = []
        self.lags = 0

    def print_header(self):
        self.events.append(("header", ""))

    def print_token(self, token: str):
        self.events.append(("token", token))

    def log(self, level: str, msg: str):
        self.events.append((level, msg))

    def print_lag(self):
        self.lags += 1

    def print_pending(self):
        self.events.append(("pending", ""))  # after each audio message


@pytest.fixture
def devices(monkeypatch):
    """A fake `sounddevice` module (no PortAudio needed): its microphone speaks `devices.speech`,
    its speaker tells lags by `devices.printer`; `devices.opened` lists the streams opened."""
    devices = types.SimpleNamespace(speech=load_wav(UTTERANCE, SAMPLE_RATE)[0], printer=RecordingPrinter(), opened=[])

    def opened(stream: FakeStream) -> FakeStream:
        devices.opened.append(stream)
        return stream

    module = types.ModuleType("sounddevice")
    module.InputStream = lambda **kwargs: opened(Microphone(devices.speech, **kwargs))
    module.OutputStream = lambda **kwargs: opened(Speaker(devices.printer, **kwargs))
    monkeypatch.setitem(sys.modules, "sounddevice", module)
    return devices


@pytest.fixture
def moshi_client(devices, monkeypatch):
    """moshi's `client` module, imported afresh against the fake `sounddevice`; afterwards the
    module (or its absence) that was there before is put back."""
    import moshi

    monkeypatch.setitem(sys.modules, "moshi.client", None)  # records what to put back ...
    del sys.modules["moshi.client"]  # ... and leaves room for a fresh import
    monkeypatch.setattr(moshi, "client", None, raising=False)
    return importlib.import_module("moshi.client")


def moshi_args(port: int) -> argparse.Namespace:
    """What moshi's `client.main()` parses from `--host 127.0.0.1 --port PORT`."""
    return argparse.Namespace(host="127.0.0.1", port=port, https=False, url=None)


async def talk(client, printer: RecordingPrinter, port: int, opened: list) -> None:
    """Run moshi's `client.run` until the utterance is spoken and the reply is over, then stop it as
    Ctrl-C does: cancel the task, so that aiohttp closes the websocket on the way out."""
    task = asyncio.create_task(client.run(printer, moshi_args(port)))
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.05)
        if len(opened) == 2:
            mic, speaker = opened
            spoken = mic.spoken * mic.shape[0] >= len(mic.audio)
            if spoken and time.monotonic() - speaker.last_played > QUIET_S:
                break
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def server_metrics(port: int) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            return await response.text()


def sessions(port: int, outcome: str) -> float:
    """How many sessions the server has counted with `outcome` ("completed", "idle", ...)."""
    found = re.search(rf'^csmlab_sessions_total{{outcome="{outcome}"}} (\S+)$', asyncio.run(server_metrics(port)), re.M)
    return float(found.group(1)) if found else 0.0


def counted(port: int, outcome: str, expected: float, tries: int = 50) -> float:
    """`sessions(port, outcome)` once it reaches `expected`, or its value after `tries` x 0.1 s: the server
    counts a session when its handler has wound down, which can be just after the client has left."""
    for _ in range(tries):
        value = sessions(port, outcome)
        if value >= expected:
            break
        time.sleep(0.1)
    return value


@pytest.fixture(scope="module")
def server(csmlab_serve):
    """`csmlab serve` on a free loopback port: the loopback brain on the small trained Mimi."""
    served = csmlab_serve("--brain", "loopback", "--listen", "--idle-timeout-s", str(IDLE_S))
    yield served
    assert served.stop() == 0, served.log[-20:]  # SIGTERM: a graceful stop


def envelope(audio: np.ndarray) -> np.ndarray:
    """RMS of each 80 ms frame: [frames]."""
    frames = len(audio) // FRAME_SIZE
    return np.sqrt((audio[:frames * FRAME_SIZE].reshape(frames, FRAME_SIZE) ** 2).mean(axis=1))


def test_moshi_client_talks_to_csmlab_serve(moshi_client, devices, server):
    speech, printer = devices.speech, devices.printer
    completed = sessions(server.port, "completed")

    asyncio.run(talk(moshi_client, printer, server.port, devices.opened))

    mic, speaker = devices.opened
    assert mic.errors == [] and speaker.errors == []  # moshi's callbacks took our blocks as PortAudio's
    assert mic.opened and mic.closed and speaker.closed  # moshi's client opened and left its streams

    # Handshake: moshi 0.2.13's client has no case for 0x00 (it logs it as an unknown kind) and
    # streams from the upgrade on; csmlab serve sends 0x00 first, as moshi's server does.
    handshake = ("warning", "unknown message kind 0")
    received = [e for e in printer.events if e[0] in ("pending", "warning")]  # one per message, in order
    assert printer.events.index(("info", "connected!")) < printer.events.index(handshake)
    assert received[0] == handshake and received.count(handshake) == 1
    assert [e for e in received if e[0] == "warning"] == [handshake]  # nothing else moshi's client did not know

    # Audio: one 80 ms step back per step spoken (Opus's pre-skip and Mimi's delay may cost a frame
    # or two), non-silent, and following the utterance's loudness.
    sent = mic.spoken
    heard = np.concatenate(speaker.played)
    assert sent - 3 <= len(speaker.played) <= sent, (len(speaker.played), sent)
    assert np.isfinite(heard).all() and np.abs(heard).max() <= 1.0
    level_in, level_out = envelope(speech), envelope(heard)
    assert level_out.max() > 0.2 * level_in.max()  # audible (the small Mimi gave 0.42 of the input's peak level)
    n = min(len(level_in), len(level_out))
    best = max(np.corrcoef(level_in[:n - lag], level_out[lag:n])[0, 1] for lag in range(4))  # up to 240 ms late
    assert best > 0.5, best  # the reply follows the speech (measured 0.86, 160 ms late), not noise

    # Clean close: no error on either side; the server saw the client's close (outcome "completed").
    assert not [e for e in printer.events if e[0] == "error"], printer.events
    assert counted(server.port, "completed", completed + 1) == completed + 1
    assert "csmlab_errors_total{" not in asyncio.run(server_metrics(server.port))


def test_moshi_client_run_returns_when_csmlab_serve_ends_the_session(moshi_client, devices, server):
    """Nothing spoken: csmlab serve closes the idle session with an 0x05 reason and close code
    1008; moshi's `run()` returns by itself, without a lost-connection error. Its client has no
    case for 0x05 (moshi's server never sends one), so it logs the reason as an unknown kind."""
    devices.speech = np.zeros(0, np.float32)
    idle = sessions(server.port, "idle")
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(moshi_client.run(devices.printer, moshi_args(server.port)), TIMEOUT_S))
    took = time.monotonic() - started

    events = devices.printer.events
    assert IDLE_S <= took < IDLE_S + 5
    assert [e for e in events if e[0] == "warning"] == [("warning", "unknown message kind 0"),
                                                        ("warning", "unknown message kind 5")]
    assert not [e for e in events if e[0] == "error"], events
    assert all(stream.closed for stream in devices.opened) and len(devices.opened) == 2
    assert sessions(server.port, "idle") == idle + 1
