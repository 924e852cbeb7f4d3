"""`csmlab serve` over loopback with the independent client: handshake, audio, limits, bad messages.

Every connection goes to 127.0.0.1. After each bad case, the same connection (or, where the
protocol closes it, a new one) must still stream audio: the server answers and survives.
"""
import asyncio
import signal
import time

import aiohttp
import numpy as np
import pytest

from csmlab.pipeline import ScriptedBrain, Utterance
from csmlab.serve import Settings
from csmlab.serve.app import serve_in_thread
from csmlab.serve.client import FRAME, MoshiClient, Refused, converse

RATE = 24_000
TIMEOUT = 10.0


def tone(seconds: float, hz: float = 440.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def settings(**overrides) -> Settings:
    return Settings(**{"port": 0, "listen": True, **overrides})


SCRIPT = [Utterance(0, tone(0.32, amplitude=0.3), RATE, "hello"), Utterance(400, tone(0.32, 880, 0.05), RATE, " world")]


def scripted() -> ScriptedBrain:
    """Known audio and text at known steps, and no codec: the protocol's own behaviour, cheaply."""
    return ScriptedBrain(SCRIPT)


def url(server, path: str = "/api/chat") -> str:
    return f"ws://127.0.0.1:{server.port}{path}"


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(settings(max_sessions=2, idle_timeout_s=5), scripted) as running:
        yield running


async def _audio_round_trip(client: MoshiClient, frames: int = 4) -> int:
    """Send `frames` 80 ms frames on a connection and count the samples that come back."""
    for i in range(frames):
        await client.send_pcm(tone(0.08 * frames)[i * FRAME:(i + 1) * FRAME])
    got = 0
    while got < frames * FRAME:
        kind, payload = await client.receive(TIMEOUT)
        assert kind in ("audio", "text"), (kind, payload)
        got += len(payload) if kind == "audio" else 0
    return got


async def _with_client(server, body, **connect):
    async with aiohttp.ClientSession() as http:
        client = await MoshiClient.connect(http, url(server), **connect)
        try:
            return await body(client)
        finally:
            await client.close()


def test_handshake_then_streamed_audio_and_text_come_back(server):
    audio = tone(1.2)
    talk = asyncio.run(converse(url(server), audio, realtime=False))
    assert talk.errors == [] and talk.frames_sent == len(audio) // FRAME == 15
    assert len(talk.audio) == talk.frames_sent * FRAME  # one 80 ms step out per 80 ms in
    assert talk.texts == ["hello", " world"]
    rms = np.sqrt((talk.audio.reshape(-1, FRAME) ** 2).mean(axis=1))  # [15] level of each step, through Opus
    assert np.all(rms[1:4] > 0.15) and np.all((0.01 < rms[6:9]) & (rms[6:9] < 0.06)) and np.all(rms[11:] < 0.01)


def test_loopback_brain_from_the_settings_round_trips_through_the_codec():
    with serve_in_thread(settings()) as echo:  # the default brain: loopback on the small trained Mimi
        talk = asyncio.run(converse(url(echo), tone(0.8), realtime=False))
        metrics = echo.metrics.text().decode()
    assert talk.errors == [] and len(talk.audio) == talk.frames_sent * FRAME
    for layer in ("encode", "brain", "decode"):  # every step went through the codec and the brain
        assert f'csmlab_step_compute_seconds_count{{layer="{layer}"}} {talk.frames_sent}.0' in metrics


BAD_MESSAGES = {
    "unknown kind byte": b"\x07hello",
    "handshake kind from a client": b"\x00",
    "empty message": b"",
    "audio kind without audio": b"\x01",
    "non-Ogg audio": b"\x01" + b"RIFF" + bytes(200),
    "truncated Ogg page": lambda page: page[: len(page) // 2],  # built from a real page below
    "corrupted Ogg page (bad CRC)": lambda page: page[:-1] + bytes([page[-1] ^ 0x40]),
    "text frame": "hello",
}


@pytest.mark.parametrize("case", BAD_MESSAGES)
def test_bad_message_is_answered_and_the_connection_keeps_working(server, case):
    async def body(client: MoshiClient):
        bad = BAD_MESSAGES[case]
        if callable(bad):
            bad = b"\x01" + bad(client.writer.append_pcm(tone(0.08)))
        await client.send_raw(bad)
        kind, text = await client.receive(TIMEOUT)
        assert kind == "error" and len(text) > 20, (kind, text)
        return text, await _audio_round_trip(client)

    text, samples = asyncio.run(_with_client(server, body))
    assert samples >= 4 * FRAME
    assert "0x01" in text or "Ogg" in text or "encoder" in text  # the message says what to send instead


def test_oversized_message_closes_with_1009_and_a_new_connection_works():
    with serve_in_thread(settings(max_message_bytes=4096)) as small:
        async def oversized(client: MoshiClient):
            await client.send_raw(b"\x01" + bytes(8192))
            return await client.receive(TIMEOUT)

        assert asyncio.run(_with_client(small, oversized)) == ("closed", 1009)
        assert asyncio.run(_with_client(small, _audio_round_trip)) >= 4 * FRAME
        assert 'csmlab_errors_total{kind="oversized"} 1.0' in small.metrics.text().decode()


def test_client_leaving_mid_stream_frees_its_session(server):
    async def leave():
        http = aiohttp.ClientSession()
        client = await MoshiClient.connect(http, url(server))
        for _ in range(3):
            await client.send_pcm(tone(0.08))
        await http.close()  # drops the TCP connection without a websocket close

    asyncio.run(leave())
    deadline = time.monotonic() + TIMEOUT
    while server.chats and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not server.chats
    assert asyncio.run(_with_client(server, _audio_round_trip)) >= 4 * FRAME


def test_a_client_that_hangs_up_and_calls_again_at_once_gets_the_slot(csmlab_serve):
    """Its old session is still winding down (sending the close, its worker finishing) for a few ms:
    a slot held until then refused 3 of 5 immediate calls back with "server full" (the soak's client
    calls back at once, and failed on it under load)."""
    async def calls(server):
        for _ in range(5):
            talk = await converse(url(server), tone(0.4), realtime=False)
            assert talk.errors == [] and len(talk.audio) == talk.frames_sent * FRAME

    server = csmlab_serve("--brain", "loopback", "--listen", "--max-sessions", "1")
    asyncio.run(calls(server))
    server.stop()


def test_sessions_beyond_the_maximum_get_an_error_and_a_close_not_a_wait(server):
    async def crowd():
        async with aiohttp.ClientSession() as http:
            holders = [await MoshiClient.connect(http, url(server)) for _ in range(server.settings.max_sessions)]
            started = time.monotonic()
            with pytest.raises(Refused, match="server full") as refused:
                await MoshiClient.connect(http, url(server), timeout=TIMEOUT)
            waited = time.monotonic() - started
            await holders[0].close()
            while len(server.chats) >= server.settings.max_sessions:
                await asyncio.sleep(0.02)
            late = await MoshiClient.connect(http, url(server))  # a freed slot is usable again
            samples = await _audio_round_trip(late)
            for client in holders[1:] + [late]:
                await client.close()
            return waited, samples

    waited, samples = asyncio.run(crowd())
    assert waited < 2.0 and samples >= 4 * FRAME


def test_idle_session_is_closed_with_a_reason():
    with serve_in_thread(settings(idle_timeout_s=0.3)) as quick:
        async def idle(client: MoshiClient):
            return [await client.receive(TIMEOUT), await client.receive(TIMEOUT)]

        (kind, reason), closed = asyncio.run(_with_client(quick, idle))
        assert kind == "error" and "no message for 0.3 s" in reason
        assert closed == ("closed", 1008)


def test_session_over_its_length_limit_is_closed_with_a_reason():
    with serve_in_thread(settings(max_session_s=0.5)) as short:
        talk = asyncio.run(converse(url(short), tone(1.5), realtime=True))
        assert any("0.5 s limit" in e for e in talk.errors) and talk.close_code == 1008
        assert len(talk.audio) < len(tone(1.5))


def test_healthz_and_metrics_report_sessions_steps_and_errors(server):
    asyncio.run(converse(url(server), tone(0.4), realtime=False))

    async def fetch():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{server.port}/healthz") as health:
                status, body = health.status, await health.json()
            async with http.get(f"http://127.0.0.1:{server.port}/metrics") as metrics:
                return status, body, await metrics.text()

    status, body, text = asyncio.run(fetch())
    assert status == 200 and body["ready"] and body["max_sessions"] == 2
    for metric in ("csmlab_sessions_active", 'csmlab_sessions_total{outcome="completed"}', "csmlab_steps_total",
                   "csmlab_step_compute_seconds_bucket", "csmlab_late_frames_total", "csmlab_dropped_frames_total"):
        assert metric in text
    steps = float(next(line.split()[-1] for line in text.splitlines() if line.startswith("csmlab_steps_total")))
    assert steps >= 5


def test_token_on_a_non_loopback_bind_is_required_and_checked():
    """Binds all interfaces (so the token rule applies) but connects through 127.0.0.1 only."""
    with serve_in_thread(settings(host="0.0.0.0", token="s3cret-token")) as exposed:
        async def attempts():
            results = {}
            async with aiohttp.ClientSession() as http:
                for name, token in (("missing", None), ("wrong", "s3cret-tokeX")):
                    with pytest.raises(Refused, match="401"):
                        await MoshiClient.connect(http, url(exposed), token=token)
                    headers = {"Authorization": f"Bearer {token}"} if token else {}
                    async with http.get(f"http://127.0.0.1:{exposed.port}/api/chat", headers=headers) as plain:
                        results[name] = await plain.text()  # the reason, readable without a websocket
                client = await MoshiClient.connect(http, url(exposed), token="s3cret-token")
                results["bearer"] = await _audio_round_trip(client)
                await client.close()
                client = await MoshiClient.connect(http, url(exposed) + "?token=s3cret-token")
                results["query"] = await _audio_round_trip(client)
                await client.close()
            return results

        results = asyncio.run(attempts())
        assert results["bearer"] >= 4 * FRAME and results["query"] >= 4 * FRAME
        assert "token is required" in results["missing"] and "wrong access token" in results["wrong"]


def test_sigterm_closes_sessions_with_a_reason_and_exits_0(csmlab_serve):
    server = csmlab_serve("--brain", "scripted")

    async def hold_then_term():
        async with aiohttp.ClientSession() as http:
            client = await MoshiClient.connect(http, f"ws://127.0.0.1:{server.port}/api/chat")
            await _audio_round_trip(client)
            server.process.send_signal(signal.SIGTERM)
            return [await client.receive(TIMEOUT), await client.receive(TIMEOUT)]

    (kind, reason), closed = asyncio.run(hold_then_term())
    assert server.process.wait(timeout=30) == 0
    assert kind == "error" and "shutting down" in reason and closed == ("closed", 1001)


def test_the_page_and_the_widget_frames_endpoint(server):
    """GET / serves the page and the widget's own duplex-audio.js; /api/frames speaks its frames."""
    from csmlab.widget.frames import KIND_MIC, KIND_SYSTEM, pack_frame, unpack_frame

    async def page_then_frames():
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/") as page, http.get(base + "/assets/duplex-audio.js") as script:
                html, js = await page.text(), await script.text()
            async with http.ws_connect(base.replace("http", "ws") + "/api/frames") as ws:
                ready = await ws.receive_json(timeout=TIMEOUT)
                await ws.send_bytes(b"\x01\x01")  # a broken frame: an error, and the session goes on
                error = await ws.receive_json(timeout=TIMEOUT)
                for seq in range(3):
                    await ws.send_bytes(pack_frame(KIND_MIC, seq, 0.0, tone(0.08)))
                replies = [await ws.receive(timeout=TIMEOUT) for _ in range(4)]  # "hello" text + 3 frames
        return html, js, ready, error, replies

    html, js, ready, error, replies = asyncio.run(page_then_frames())
    assert 'from "./assets/duplex-audio.js"' in html and "export class DuplexAudio" in js
    assert ready == {"type": "ready"} and error["type"] == "error" and "16-byte header" in error["message"]
    frames = [unpack_frame(r.data, kind=KIND_SYSTEM) for r in replies if r.type == aiohttp.WSMsgType.BINARY]
    texts = [r.json()["text"] for r in replies if r.type == aiohttp.WSMsgType.TEXT]
    assert [f.seq for f in frames] == [0, 1, 2] and texts == ["hello"]
    assert np.sqrt(np.mean(frames[1].pcm ** 2)) > 0.15  # the script's tone, not re-encoded
