"""`csmlab serve` under a hostile client (issue 25): the protocol suite's half that misbehaves on purpose.

Each case is a reproduction from the probe of issue 25, against a real server on 127.0.0.1: a
client that never reads (a raw socket with a tiny receive buffer), tokens and headers that must not
leak or crash, connections dropped right after the upgrade, foreign `Origin`/`Host`, and sockets
that never finish their headers. After each, the server must still serve a well-behaved client.
"""
import asyncio
import logging
import base64
import os
import signal
import socket
import struct
import time

import aiohttp
import numpy as np
import pytest

from csmlab.pipeline import ScriptedBrain
from csmlab.serve.app import serve_in_thread
from csmlab.serve.client import FRAME, MoshiClient
from test_serve import TIMEOUT, _audio_round_trip, _with_client, scripted, settings, url

TEXT_FROM_CLIENT = b"\x02" + b"z" * 10  # not accepted from a client: each one earns an 0x05 reply


class Deaf:
    """A websocket client on a raw socket that never reads: 1 KB receive buffer, no recv() after the
    upgrade's status line. What it sends is masked, as RFC 6455 requires of clients."""

    def __init__(self, port: int, path: str = "/api/chat", headers: dict | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        self.sock.settimeout(TIMEOUT)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
                 f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.status = self.sock.recv(12).decode()  # "HTTP/1.1 101": the last bytes this client reads

    def send(self, payload: bytes, times: int = 1) -> bool:
        """Send `payload` as `times` masked binary frames; False once the server has dropped us."""
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frame = struct.pack("!BB", 0x82, 0x80 | len(payload)) + mask + masked
        try:
            self.sock.sendall(frame * times)
            return True
        except OSError:  # reset or timed out: the server cut us off
            return False

    def close(self) -> None:
        self.sock.close()


def _wait_for(condition, timeout: float = 3 * TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _flood(deaf: Deaf, stop, bursts: int = 200) -> None:
    """Bursts of 5,000 replies' worth of bad messages (the probe's reproduction) until `stop()`."""
    for _ in range(bursts):
        if stop() or not deaf.send(TEXT_FROM_CLIENT, 5000):
            return


# ---- 1. a client that stops reading ---------------------------------------------------------------
def test_a_client_that_never_reads_loses_its_slot_and_the_next_client_is_served():
    with serve_in_thread(settings(max_sessions=1, idle_timeout_s=60), scripted) as server:
        deaf = Deaf(server.port)
        try:
            assert deaf.status.endswith("101") and _wait_for(lambda: server.chats)
            _flood(deaf, lambda: not server.chats)
            assert _wait_for(lambda: not server.chats), "the non-reading client still holds the only slot"
            assert asyncio.run(_with_client(server, _audio_round_trip)) >= 4 * FRAME
        finally:
            deaf.close()
        text = server.metrics.text().decode()
    assert 'csmlab_sessions_total{outcome="slow_consumer"} 1.0' in text
    assert 'csmlab_errors_total{kind="slow_consumer"} 1.0' in text


def test_sigterm_with_clients_that_never_read_exits_0(csmlab_serve):
    from csmlab.serve.chat import CLOSE_TIMEOUT_S

    served = csmlab_serve("--brain", "scripted", "--max-sessions", "2")
    flooding, silent = Deaf(served.port), Deaf(served.port)
    try:
        time.sleep(0.5)  # let both sessions open (a refusal would end them early, and the test too)
        for _ in range(20):  # keep the server's writes to it blocked (or get it cut off)
            if not flooding.send(TEXT_FROM_CLIENT, 5000):
                break
        started = time.monotonic()
        served.process.send_signal(signal.SIGTERM)
        code = served.process.wait(timeout=5 * CLOSE_TIMEOUT_S)  # hung until the clients hung up before
        took = time.monotonic() - started
    finally:
        flooding.close()
        silent.close()
    assert code == 0, "".join(served.log[-20:])
    print(f"SIGTERM to exit with two non-reading clients: {took:.2f} s")


# ---- 3. a client that drops right after the upgrade -------------------------------------------------
def _counted(text: str, metric: str) -> float:
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(metric + "{"))


def test_clients_dropping_right_after_the_upgrade_are_each_counted_and_raise_nothing(caplog):
    attempts = 5
    with serve_in_thread(settings(max_sessions=2), scripted) as server:
        for _ in range(attempts):
            deaf = Deaf(server.port)  # returns once the server's "101" arrived: the handler has begun
            deaf.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            deaf.close()  # a reset, not a goodbye
            assert _wait_for(lambda: not server.chats and not server.opening)
        assert asyncio.run(_with_client(server, _audio_round_trip)) >= 4 * FRAME

        def ended() -> float:  # every upgrade reached an outcome (+1: the round trip)
            text = server.metrics.text().decode()
            return _counted(text, "csmlab_sessions_total") + _counted(text, "csmlab_refused_total")
        assert _wait_for(lambda: ended() == attempts + 1), server.metrics.text().decode()
    assert not [r for r in caplog.records if r.levelname == "ERROR"], [r.getMessage() for r in caplog.records]


# ---- 2. the token: never in the log, and any bytes in its header are just wrong --------------------
SECRET = "s3cret-token-never-logged"


def _raw_get(port: int, path: str, header: bytes) -> str:
    """A GET with a header of raw bytes (not UTF-8); the status line that comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\n\r\n")
        return sock.recv(64).decode("latin-1").split("\r\n")[0]


def test_the_token_in_a_url_is_redacted_from_the_access_log(caplog):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    with serve_in_thread(settings(host="0.0.0.0", token=SECRET), scripted) as exposed:
        async def body():
            async with aiohttp.ClientSession() as http:
                client = await MoshiClient.connect(http, url(exposed) + f"?token={SECRET}")
                samples = await _audio_round_trip(client)
                await client.close()
                async with http.get(f"http://127.0.0.1:{exposed.port}/metrics?token={SECRET}") as metrics:
                    return samples, metrics.status

        assert asyncio.run(body()) >= (4 * FRAME, 200)
        assert _wait_for(lambda: not exposed.chats)
    logged = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("/api/chat?token=<redacted>" in line for line in logged), logged
    assert any("/metrics?token=<redacted>" in line for line in logged), logged
    assert not [line for line in logged if SECRET in line]


@pytest.mark.parametrize("path", ["/metrics", "/api/chat"])
def test_a_bearer_token_that_is_not_utf8_gets_401_not_500(path, caplog):
    with serve_in_thread(settings(host="0.0.0.0", token=SECRET), scripted) as exposed:
        status = _raw_get(exposed.port, path, b"Authorization: Bearer \xff\xfe\xed\xa0\x80-" + SECRET.encode())
        assert asyncio.run(_with_client(exposed, _audio_round_trip, token=SECRET)) >= 4 * FRAME
    assert status.split()[1] == "401", status
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


# ---- 4. compute bounded by real input -------------------------------------------------------------
def ogg_page(serial: int, seq: int, granule: int, packets: list[bytes], flags: int = 0) -> bytes:
    """One Ogg page (RFC 3533), its CRC computed here bit by bit, independently of the server's."""
    lacing = b"".join(bytes([255] * (len(p) // 255) + [len(p) % 255]) for p in packets)
    page = bytearray(struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, seq, 0, len(lacing)) + lacing
                     + b"".join(packets))
    crc = 0
    for byte in page:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    page[22:26] = struct.pack("<I", crc)
    return bytes(page)


SILK_120MS = bytes([(3 << 3) | 1])  # TOC only: SILK narrowband 60 ms, two empty frames = 120 ms of audio


def test_a_tiny_page_of_silk_packets_is_refused_not_computed():
    """The probe's 109-byte page of 41 one-byte packets decodes to 4.9 s: more than the session may
    send ahead of real time, so it is dropped and counted, and the session goes on."""
    with serve_in_thread(settings(), scripted) as server:
        async def body(client: MoshiClient):
            first = client.writer.append_pcm(np.zeros(FRAME, np.float32))  # headers + one page
            await client.send_raw(b"\x01" + first)
            assert (await client.receive(TIMEOUT))[0] in ("audio", "text")
            serial, = struct.unpack_from("<I", first, 14)
            last = max(i for i in range(len(first)) if first.startswith(b"OggS", i))
            page_seq, = struct.unpack_from("<I", first, last + 18)
            granule, = struct.unpack_from("<q", first, last + 6)
            tiny = ogg_page(serial, page_seq + 1, granule + 41 * 5760, [SILK_120MS] * 41)
            assert len(tiny) == 109
            await client.send_raw(b"\x01" + tiny)
            reply = await client.receive(TIMEOUT)
            while reply[0] in ("audio", "text"):  # what the first page still brings
                reply = await client.receive(TIMEOUT)
            return reply, await _audio_round_trip(client)

        (kind, text), samples = asyncio.run(_with_client(server, body))
        metrics = server.metrics.text().decode()
    assert kind == "error" and "ahead of real time" in text, text
    assert samples >= 4 * FRAME
    assert 'csmlab_errors_total{kind="ahead_of_real_time"} 1.0' in metrics
    steps = _counted(metrics.replace("csmlab_steps_total ", "csmlab_steps_total{} "), "csmlab_steps_total")
    assert steps < 30, "the 4.9 s were computed"


def test_a_seq_jump_on_the_frames_endpoint_is_not_fifty_concealed_steps():
    from csmlab.widget.frames import KIND_MIC, KIND_SYSTEM, pack_frame, unpack_frame

    with serve_in_thread(settings(), scripted) as server:
        async def jump():
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(url(server, "/api/frames")) as ws:
                    await ws.receive_json(timeout=TIMEOUT)
                    for seq in (0, 1, 51, 52, 53):  # 49 frames "lost" between 1 and 51
                        await ws.send_bytes(pack_frame(KIND_MIC, seq, 0.0, np.zeros(FRAME, np.float32)))
                    frames = []
                    while True:
                        try:
                            reply = await ws.receive(timeout=2.0)
                        except asyncio.TimeoutError:
                            return frames
                        if reply.type == aiohttp.WSMsgType.BINARY:
                            frames.append(unpack_frame(reply.data, kind=KIND_SYSTEM))

        frames = asyncio.run(jump())
    assert len(frames) <= 5, f"{len(frames)} steps for 5 frames in"


# ---- 6. smaller points --------------------------------------------------------------------------
def test_the_ogg_crc_is_the_rfc_3533_checksum_and_a_flipped_bit_is_refused():
    import sphn

    from csmlab.serve.protocol import ProtocolError, check_ogg_pages, ogg_crc

    writer = sphn.OpusStreamWriter(24_000)
    pages = writer.append_pcm(np.zeros(FRAME, np.float32)) + writer.append_pcm(np.ones(FRAME, np.float32) * 0.1)
    check_ogg_pages(pages)  # the encoder's own pages pass
    mine = ogg_page(7, 3, 960, [b"\x19", bytes(300)])  # a packet over 255 bytes: lacing 255 + 45
    assert ogg_crc(mine) == struct.unpack_from("<I", mine, 22)[0]
    for at in (5, 30, len(pages) - 1):  # header, lacing, payload
        bad = pages[:at] + bytes([pages[at] ^ 0x01]) + pages[at + 1:]
        with pytest.raises(ProtocolError) as caught:
            check_ogg_pages(bad)
        assert caught.value.kind in ("bad_crc", "not_ogg", "truncated_audio")
    bad = pages[:-1] + bytes([pages[-1] ^ 0x01])
    with pytest.raises(ProtocolError, match="CRC"):
        check_ogg_pages(bad)


# ---- 5. what the default exposes -------------------------------------------------------------------
def _status(port: int, path: str, headers: dict) -> int:
    async def get():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}{path}", headers=headers) as response:
                return response.status
    return asyncio.run(get())


def test_foreign_origins_and_rebound_hosts_are_refused_on_the_default_server():
    with serve_in_thread(settings(), scripted) as server:
        own = f"http://127.0.0.1:{server.port}"
        assert _status(server.port, "/metrics", {"Host": "attacker.example"}) == 403  # DNS rebinding
        assert _status(server.port, "/metrics", {"Host": "attacker.example:8998"}) == 403
        assert _status(server.port, "/api/chat", {"Origin": "https://evil.example"}) == 403  # any web page
        assert _status(server.port, "/metrics", {"Host": f"localhost:{server.port}"}) == 200
        assert _status(server.port, "/metrics", {"Origin": own}) == 200  # the server's own page

        async def from_page(origin):
            async with aiohttp.ClientSession() as http:
                async with http.ws_connect(url(server), headers={"Origin": origin}) as ws:
                    return (await ws.receive(timeout=TIMEOUT)).data
        assert asyncio.run(from_page(own)) == b"\x00"  # the handshake
        with pytest.raises(aiohttp.WSServerHandshakeError, match="403"):
            asyncio.run(from_page("https://evil.example"))
        text = server.metrics.text().decode()
    assert 'csmlab_refused_total{reason="origin"} 4.0' in text


def test_allowed_origins_and_hosts_widen_the_rule():
    with serve_in_thread(settings(allowed_origins=("https://app.example",), allowed_hosts=("chat.example",)),
                         scripted) as server:
        assert _status(server.port, "/metrics", {"Origin": "https://app.example"}) == 200
        assert _status(server.port, "/metrics", {"Host": "chat.example"}) == 200
        assert _status(server.port, "/metrics", {"Origin": "https://other.example"}) == 403


def test_healthz_beyond_loopback_says_only_ready_without_the_token():
    with serve_in_thread(settings(host="0.0.0.0", token=SECRET), scripted) as exposed:
        async def both():
            async with aiohttp.ClientSession() as http:
                base = f"http://127.0.0.1:{exposed.port}/healthz"
                async with http.get(base) as anyone, http.get(base + f"?token={SECRET}") as holder:
                    return await anyone.json(), await holder.json()

        anyone, holder = asyncio.run(both())
    assert anyone == {"ready": True}
    assert holder["ready"] and {"brain", "weights", "sessions", "max_sessions", "uptime_s"} <= set(holder)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed or reset the connection (recv gives b"" or an error)."""
    sock.settimeout(3 * TIMEOUT)
    try:
        sock.recv(1024)  # b"" (closed) or bytes: an error page is not an open connection either
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slowloris_and_silent_connections_are_closed_and_counted():
    with serve_in_thread(settings(header_timeout_s=0.5), scripted) as server:
        partial = socket.create_connection(("127.0.0.1", server.port))
        partial.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-a: ")  # and then nothing
        silent = socket.create_connection(("127.0.0.1", server.port))
        try:
            assert _closed_by_server(partial) and _closed_by_server(silent)
        finally:
            partial.close()
            silent.close()
        assert asyncio.run(_with_client(server, _audio_round_trip)) >= 4 * FRAME  # a session is a request in progress
        text = server.metrics.text().decode()
    assert 'csmlab_refused_total{reason="header_timeout"}' in text


def test_connections_per_client_are_capped():
    with serve_in_thread(settings(max_connections_per_client=3, header_timeout_s=60), scripted) as server:
        held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3)]
        extra = socket.create_connection(("127.0.0.1", server.port))
        try:
            assert _closed_by_server(extra)
        finally:
            for sock in held + [extra]:
                sock.close()
        assert _wait_for(lambda: not server.gate.open)
        assert asyncio.run(_with_client(server, _audio_round_trip)) >= 4 * FRAME
        text = server.metrics.text().decode()
    assert 'csmlab_refused_total{reason="connections"} 1.0' in text


def test_binding_beyond_loopback_without_a_token_is_one_line_and_a_nonzero_exit():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CSMLAB_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "csmlab.cli", "serve", "--host", "0.0.0.0", "--port", "0"],
                          env={**env, "CSMLAB_OFFLINE": "1"}, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "CSMLAB_TOKEN" in lines[0] and "--insecure" in lines[0], done.stderr


class _Slow(ScriptedBrain):
    """A brain whose every step takes 50 ms of wall time: few sessions fit in 80 ms per step."""

    def step(self, heard):
        time.sleep(0.05)
        return super().step(heard)


def test_the_startup_log_says_how_many_sessions_the_machine_holds(caplog):
    caplog.set_level(logging.INFO, logger="csmlab.serve")
    with serve_in_thread(settings(max_sessions=64), _Slow) as server:
        holds = server.capacity
    said = " ".join(r.getMessage() for r in caplog.records if r.name == "csmlab.serve")
    cores = len(os.sched_getaffinity(0))
    assert 0 <= holds <= cores * 80 // 50 and f"hold about {holds} session(s) in real time" in said
    assert any(r.levelname == "WARNING" and "max_sessions 64 is more than" in r.getMessage() for r in caplog.records)
