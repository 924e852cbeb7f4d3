"""`Chat`, one client's session (csmlab/serve/chat.py), on an in-process aiohttp server with a fake
pipeline and a readable text wire: every message's fate, the limits, the closing handshake and
the slow consumer, in well under a second each. The real server (`csmlab serve` in a process,
real sockets that never read) is tested in test_serve*.py; these tests are the ones `make
mutation` runs against chat.py."""
import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from csmlab.errors import AudioFormatError, CsmlabError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE
from csmlab.pipeline.overload import Overload
from csmlab.pipeline.session import Step
from csmlab.serve import chat as chat_module
from csmlab.serve.chat import OUTBOX_LIMIT, Chat, RealTimeBudget, refuse
from csmlab.serve.metrics import ServerMetrics
from csmlab.serve.protocol import ProtocolError


class TextWire:
    """Messages a test can read: "<samples>:<seq>" in (seq may be empty), "step:<index>" out."""

    handshake = staticmethod(lambda: "ready")
    error = staticmethod(lambda text: "error:" + text)
    notice = staticmethod(lambda state, text: f"notice:{state}")

    def decode(self, data):
        if isinstance(data, bytes) or ":" not in data:
            raise ProtocolError("bad_thing", f"not a message: {data!r}")
        n, seq = data.split(":")
        return np.full(int(n), 0.1, np.float32), int(seq) if seq else None

    def encode(self, steps):
        return [f"step:{s.index}" for s in steps]


class FakeDuplex:
    """Each push: one step per whole frame of what it got; `fail` decides a push's fate by its size."""

    def __init__(self, fail=None):
        self.pushed, self.fail, self.index, self.threads = [], fail or {}, 0, set()
        self.overload = Overload("fake")

    def push(self, pcm, rate, seq):
        assert rate == SAMPLE_RATE
        if pcm.size in self.fail:
            raise self.fail[pcm.size]
        self.pushed.append((pcm.size, seq))
        self.threads.add(threading.current_thread().name)
        steps = []
        for _ in range(pcm.size // FRAME_SIZE):
            steps.append(Step(self.index, np.zeros(FRAME_SIZE, np.float32), "", seq, self.index == 1,
                              {"brain": 1.0}, fault="brain_error" if self.index == 2 else None))
            self.index += 1
        return steps


def counter(metric, *labels):
    sample = (metric.labels(*labels) if labels else metric).collect()[0].samples[0]
    return sample.value


@contextlib.asynccontextmanager
async def served(*, idle=5.0, length=60.0, duplex=None, max_msg=0):
    """Serve one Chat on a real socket; yield (state, host, port); state gets the chat and its outcome."""
    state = SimpleNamespace(duplex=duplex or FakeDuplex(), metrics=ServerMetrics(), outcome=None, chat=None)
    executor = ThreadPoolExecutor(1, thread_name_prefix="chat-test")

    async def handler(request):
        ws = web.WebSocketResponse(max_msg_size=max_msg, timeout=chat_module.CLOSE_TIMEOUT_S)  # as the server
        await ws.prepare(request)
        state.chat = Chat(ws, request.transport, state.duplex, executor,
                          SimpleNamespace(idle_timeout_s=idle, max_session_s=length), state.metrics, TextWire())
        state.outcome = await state.chat.run()
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    # as `csmlab serve` runs it (aiohttp's test server would cancel the handler when the client leaves)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield state, host, port
    finally:
        await runner.cleanup()
        executor.shutdown()


async def outcome(state, tries=1000):
    """Wait (up to tries x 10 ms) for the session to end; its outcome or None."""
    for _ in range(tries):
        if state.outcome is not None:
            break
        await asyncio.sleep(0.01)
    return state.outcome


async def session(client_does, **serving):
    """Serve one Chat; run `client_does(ws, state)` as its client; return the state (chat, outcome)."""
    async with served(**serving) as (state, host, port), aiohttp.ClientSession() as client:
        ws = await client.ws_connect(f"http://{host}:{port}/")
        assert (await ws.receive_str(timeout=5)) == "ready"
        await client_does(ws, state)
        await ws.close()
        await outcome(state)
    return state


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def replies(ws, n):
    return [await ws.receive_str(timeout=5) for _ in range(n)]


# ---- messages -------------------------------------------------------------------------------
def test_audio_becomes_steps_and_their_messages_in_order():
    async def client(ws, state):
        await ws.send_str(f"{2 * FRAME_SIZE}:7")
        await ws.send_str(f"{FRAME_SIZE + 5}:")
        assert await replies(ws, 3) == ["step:0", "step:1", "step:2"]
        assert state.chat.ended is False  # a live session holds its slot

    state = run(session(client))
    assert state.duplex.threads == {"chat-test_0"}  # computed in the server's pool, off the event loop
    assert state.chat.ended is True and state.chat.backlog.qsize() == 0
    assert state.duplex.pushed == [(2 * FRAME_SIZE, 7), (FRAME_SIZE + 5, None)]
    assert state.outcome == "completed"
    m = state.metrics
    assert counter(m.steps) == 3 and counter(m.late) == 1 and counter(m.errors, "brain_error") == 1


def test_a_bad_message_is_answered_and_the_session_goes_on():
    async def client(ws, state):
        await ws.send_bytes(b"\x01zz")
        assert await replies(ws, 1) == ["error:not a message: b'\\x01zz'"]
        await ws.send_str("0:3")  # no audio: nothing to compute
        await ws.send_str(f"{FRAME_SIZE}:4")
        assert await replies(ws, 1) == ["step:0"]

    state = run(session(client))
    assert counter(state.metrics.errors, "bad_thing") == 1 and state.duplex.pushed == [(FRAME_SIZE, 4)]


def test_audio_ahead_of_real_time_is_refused_whole_and_counted():
    async def client(ws, state):
        await ws.send_str(f"{int(2.5 * SAMPLE_RATE)}:0")
        assert await replies(ws, 1) == ["error:2.50 s of audio dropped: it would run more than 2 s ahead of real "
                                        "time; send audio as it is recorded"]
        await ws.send_str(f"{FRAME_SIZE}:1")
        assert await replies(ws, 1) == ["step:0"]

    state = run(session(client))
    assert counter(state.metrics.errors, "ahead_of_real_time") == 1
    assert counter(state.metrics.dropped) == 2.5 * SAMPLE_RATE / FRAME_SIZE
    assert state.duplex.pushed == [(FRAME_SIZE, 1)]


def test_audio_the_pipeline_refuses_is_answered_and_the_session_goes_on():
    duplex = FakeDuplex(fail={100: AudioFormatError("peak of 1e20")})

    async def client(ws, state):
        await ws.send_str("100:0")
        assert await replies(ws, 1) == ["error:peak of 1e20"]
        await ws.send_str(f"{FRAME_SIZE}:1")
        assert await replies(ws, 1) == ["step:0"]

    state = run(session(client, duplex=duplex))
    assert counter(state.metrics.errors, "bad_audio") == 1 and state.outcome == "completed"


@pytest.mark.parametrize("err,logged", [(RuntimeError("broken"), True), (CsmlabError("broken"), False)])
def test_a_failing_pipeline_ends_the_session_with_its_reason(err, logged, caplog):
    duplex = FakeDuplex(fail={100: err})

    async def client(ws, state):
        await ws.send_str("100:0")
        await ws.send_str(f"{FRAME_SIZE}:1")  # not computed: the session is closing
        assert await replies(ws, 1) == ["error:the pipeline failed: broken"]
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.INTERNAL_ERROR
        assert msg.extra == "the pipeline failed: broken"

    with caplog.at_level(logging.INFO, "csmlab.serve"):
        state = run(session(client, duplex=duplex))
    assert state.outcome == "error" and state.duplex.pushed == []
    assert counter(state.metrics.errors, type(err).__name__) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert ("unexpected failure in a session's pipeline" in messages) == logged
    assert "closing session: the pipeline failed: broken" in messages
    assert state.chat.backlog.qsize() == 0  # the work loop drained the rest without computing it


def test_an_overloaded_pipeline_is_told_to_the_client():
    duplex = FakeDuplex()

    async def client(ws, state):
        duplex.overload.state, duplex.overload.changes = "overloaded", 1
        await ws.send_str(f"{FRAME_SIZE}:0")
        assert await replies(ws, 2) == ["step:0", "notice:overloaded"]
        assert counter(state.metrics.overloaded) == 1

    state = run(session(client, duplex=duplex))
    assert counter(state.metrics.overloaded) == 0  # the session is over: no longer overloaded


# ---- limits and endings ---------------------------------------------------------------------
def test_an_idle_client_is_told_and_closed():
    async def client(ws, state):
        assert await replies(ws, 1) == ["error:no message for 0.2 s"]
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION
        assert msg.extra == "no message for 0.2 s"

    assert run(session(client, idle=0.2)).outcome == "idle"


def test_a_session_ends_at_its_length_limit_even_while_busy():
    async def client(ws, state):
        for seq in range(40):
            await ws.send_str(f"10:{seq}")
            await asyncio.sleep(0.02)
            if state.chat.closing:
                break
        assert "error:session reached its 0.3 s limit" in await replies(ws, 1)
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.POLICY_VIOLATION

    state = run(session(client, idle=5.0, length=0.3))
    assert state.outcome == "length"


def test_the_first_reason_given_is_the_one_kept(caplog):
    async def client(ws, state):
        await state.chat.close("shutdown", "server shutting down", aiohttp.WSCloseCode.GOING_AWAY)
        await state.chat.close("idle", "later reason", aiohttp.WSCloseCode.POLICY_VIOLATION)
        assert await replies(ws, 1) == ["error:server shutting down"]
        msg = await ws.receive(timeout=5)
        assert msg.data == aiohttp.WSCloseCode.GOING_AWAY and msg.extra == "server shutting down"

    with caplog.at_level(logging.INFO, "csmlab.serve"):
        state = run(session(client))
    assert state.outcome == "shutdown" and "later reason" not in caplog.text


def test_an_oversized_message_ends_the_session_as_a_protocol_error():
    async def client(ws, state):
        await ws.send_str("9" * 200)
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG

    state = run(session(client, max_msg=100))
    assert state.outcome == "protocol_error" and counter(state.metrics.errors, "oversized") == 1


def test_a_client_that_leaves_completes_its_session():
    async def client(ws, state):
        await ws.send_str(f"{FRAME_SIZE}:0")
        assert await replies(ws, 1) == ["step:0"]

    state = run(session(client))
    assert state.outcome == "completed" and state.chat.ended and not state.chat.cut
    assert counter(state.metrics.errors, "slow_consumer") == 0


# ---- a client that does not read (no network: a websocket that never takes a message) --------
class StuckWs:
    """A websocket whose sends never finish (its client stopped reading) or fail (it left)."""

    def __init__(self, fail=None):
        self.closed, self.sent, self.fail = False, [], fail
        self.close_calls = []

    async def send_str(self, message):
        if self.fail:
            raise self.fail
        self.sent.append(message)
        await asyncio.sleep(3600)

    async def send_bytes(self, message):
        await self.send_str(("bytes", message))

    async def close(self, code, message):
        self.close_calls.append((code, message))
        await asyncio.sleep(3600)


class Transport:
    def __init__(self):
        self.aborted = 0

    def abort(self):
        self.aborted += 1


def bare_chat(ws):
    return Chat(ws, Transport(), FakeDuplex(), None, SimpleNamespace(idle_timeout_s=5, max_session_s=60),
                ServerMetrics(), TextWire())


def test_a_full_outbox_cuts_the_client_off_once(caplog):
    chat = bare_chat(StuckWs())
    for i in range(OUTBOX_LIMIT):
        chat._post(f"m{i}")
    assert chat.transport.aborted == 0 and chat.outbox.qsize() == OUTBOX_LIMIT
    with caplog.at_level(logging.WARNING, "csmlab.serve"):
        chat._post("one too many")
        chat._post("and another")
    assert chat.transport.aborted == 1 and chat.cut and chat.closing and chat.outcome == "slow_consumer"
    assert chat.outbox.qsize() == OUTBOX_LIMIT and counter(chat.metrics.errors, "slow_consumer") == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"dropping a client that does not read: {OUTBOX_LIMIT} messages waiting"]


def test_a_send_that_does_not_finish_cuts_the_client_off(monkeypatch, caplog):
    monkeypatch.setattr(chat_module, "SEND_TIMEOUT_S", 0.05)
    caplog.set_level(logging.WARNING, "csmlab.serve")

    async def go():
        chat = bare_chat(StuckWs())
        chat._post(b"audio")
        await asyncio.wait_for(chat._send_loop(), 5)
        return chat

    chat = run(go())
    assert [r.getMessage() for r in caplog.records] == [
        "dropping a client that does not read: one message took over 0.05 s to send"]
    assert chat.ws.sent == [("bytes", b"audio")] and chat.cut and chat.outcome == "slow_consumer" and chat.transport.aborted == 1


def test_a_client_that_left_mid_send_is_disconnected():
    async def go():
        chat = bare_chat(StuckWs(fail=ConnectionResetError("gone")))
        chat._post("x")
        await asyncio.wait_for(chat._send_loop(), 5)
        return chat

    chat = run(go())
    assert chat.outcome == "disconnected" and not chat.cut


def test_closing_a_client_that_does_not_read_returns_in_bounded_time(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "csmlab.serve")
    monkeypatch.setattr(chat_module, "CLOSE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(chat_module, "SEND_TIMEOUT_S", 10)

    async def go():
        chat = bare_chat(StuckWs())
        chat.sender = asyncio.create_task(chat._send_loop())
        chat._post("audio nobody hears")
        await asyncio.sleep(0)
        chat._post("queued audio")
        await asyncio.wait_for(chat.close("shutdown", "bye", 1001), 5)
        assert chat.sender.done()  # cut off and awaited, not left running
        return chat

    chat = run(go())
    assert chat.outcome == "shutdown" and chat.cut and chat.transport.aborted == 1
    assert chat.sender.cancelled() and chat.outbox.qsize() == 2  # queued audio dropped: the reason, then the close
    assert chat.ws.sent == ["audio nobody hears"]
    assert [r.getMessage() for r in caplog.records] == [
        "closing session: bye", "dropping a client that does not read: the client did not take the closing messages"]


def test_finish_without_a_send_loop_returns_and_closes_politely():
    async def go():
        chat = bare_chat(SimpleNamespace(closed=False))
        await chat._finish()
        assert not chat.closing
        sent = []

        async def close(code, message):
            sent.append((code, message))

        chat.ws = SimpleNamespace(closed=False, close=close)
        chat.sender = asyncio.create_task(chat._send_loop())
        await chat._finish()
        return chat, sent

    chat, sent = run(go())
    assert sent == [(aiohttp.WSCloseCode.OK, b"")] and chat.closing and not chat.cut and chat.outcome is None


def test_refuse_says_why_then_closes_and_cuts_off_one_that_does_not_read(monkeypatch):
    class Ws:
        closed = False

        def __init__(self):
            self.got = []

        async def send_str(self, m):
            self.got.append(m)

        async def close(self, code, message):
            self.got.append((code, message))

    async def go():
        ws, transport = Ws(), Transport()
        await refuse(ws, transport, "server full", TextWire())
        assert ws.got == ["error:server full", (aiohttp.WSCloseCode.TRY_AGAIN_LATER, b"server full")]
        ws.closed, ws.got = True, []
        await refuse(ws, transport, "x", TextWire())
        assert ws.got == [] and transport.aborted == 0
        monkeypatch.setattr(chat_module, "CLOSE_TIMEOUT_S", 0.05)
        await refuse(StuckWs(), transport, "x", TextWire(), code=1001)
        assert transport.aborted == 1
        await refuse(StuckWs(fail=ConnectionResetError()), transport, "x", TextWire())
        assert transport.aborted == 2
        chat_module.abort(None)  # no transport: nothing to drop

    run(go())


def test_a_long_reason_fits_a_close_frame():
    got = []

    async def close(code, message):
        got.append(message)

    run(chat_module.close_frame(SimpleNamespace(close=close), 1000, "é" * 100))
    assert got == ["é".encode() * 60]


# ---- the backlog and the budget --------------------------------------------------------------
def test_the_backlog_drops_the_oldest_audio_beyond_two_seconds():
    chat = bare_chat(StuckWs())
    second = SAMPLE_RATE
    chat._queue(np.zeros(second), 0)
    chat._queue(np.zeros(second), 1)
    assert chat.backlog.qsize() == 2 and chat.backlog_samples == 2 * second
    chat._queue(np.zeros(FRAME_SIZE), 2)
    assert [chat.backlog.get_nowait()[1] for _ in range(chat.backlog.qsize())] == [1, 2]
    assert chat.backlog_samples == second + FRAME_SIZE
    assert counter(chat.metrics.dropped) == second / FRAME_SIZE
    two = bare_chat(StuckWs())
    two._queue(np.zeros(second), 0)
    two._queue(np.zeros(3 * second // 2), 1)  # two messages, 2.5 s: the older goes
    assert [two.backlog.get_nowait()[1] for _ in range(two.backlog.qsize())] == [1]
    big = bare_chat(StuckWs())
    big._queue(np.zeros(3 * second), 0)  # one message alone is kept, however long
    assert big.backlog.qsize() == 1 and counter(big.metrics.dropped) == 0


def test_the_work_loop_skips_audio_once_the_session_is_closing():
    async def go():
        chat = bare_chat(SimpleNamespace(closed=False))
        chat.closing = True
        chat._queue(np.zeros(FRAME_SIZE), 0)
        chat._queue(np.zeros(FRAME_SIZE), 1)
        chat.backlog.put_nowait(None)
        await chat._work_loop()
        return chat

    chat = run(go())
    assert chat.duplex.pushed == [] and chat.backlog_samples == 0 and chat.backlog.qsize() == 0


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_the_budget_allows_real_time_plus_two_seconds_all_or_nothing():
    clock = Clock()
    budget = RealTimeBudget(clock=clock)
    assert budget.capacity == 2 * SAMPLE_RATE and budget.left == 2 * SAMPLE_RATE and budget.at == 100.0
    assert budget.take(SAMPLE_RATE) and budget.left == SAMPLE_RATE
    assert not budget.take(SAMPLE_RATE + 1) and budget.left == SAMPLE_RATE  # nothing spent
    assert budget.take(SAMPLE_RATE) and budget.left == 0
    clock.t += 0.5
    assert not budget.take(SAMPLE_RATE // 2 + 1) and budget.take(SAMPLE_RATE // 2)
    clock.t += 100
    assert budget.take(0) and budget.left == 2 * SAMPLE_RATE  # refilled, never beyond the burst
    assert RealTimeBudget(ahead_s=0.5, clock=clock).capacity == SAMPLE_RATE / 2


def test_the_receive_timeout_is_the_idle_limit_until_the_length_limit_is_nearer(monkeypatch):
    chat = bare_chat(StuckWs())
    monkeypatch.setattr(chat_module.time, "monotonic", lambda: 1000.0)
    assert chat._timeout(1060.0) == (5, False)
    assert chat._timeout(1004.0) == (4.0, True)
    assert chat._timeout(1005.0) == (5, False)


def test_a_close_frame_the_client_does_not_take_cuts_it_off(monkeypatch):
    monkeypatch.setattr(chat_module, "CLOSE_TIMEOUT_S", 0.05)

    async def go():
        chat = bare_chat(StuckWs())
        chat.outbox.put_nowait(chat_module._Close(1000, ""))
        await asyncio.wait_for(chat._send_loop(), 5)
        return chat

    chat = run(go())
    assert chat.cut and chat.transport.aborted == 1 and chat.ws.close_calls == [(1000, b"")]


def test_past_its_length_limit_a_session_reads_nothing_more():
    async def client(ws, state):
        await ws.send_str(f"{FRAME_SIZE}:0")
        got = [await ws.receive(timeout=5) for _ in range(2)]
        assert got[0].data == "error:session reached its 0 s limit" and got[1].type == aiohttp.WSMsgType.CLOSE

    state = run(session(client, length=0))
    assert state.outcome == "length" and state.duplex.pushed == []


def test_bad_websocket_framing_ends_the_session_counted_as_websocket():
    """Invalid UTF-8 in a text frame, written by hand (aiohttp's client cannot send one)."""
    async def go():
        async with served() as (state, host, port):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
            assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
            mask, payload = b"\x01\x02\x03\x04", b"\xff\xfe"
            writer.write(bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
            await writer.drain()
            await outcome(state, tries=500)
            writer.close()
        return state

    state = run(go())
    assert state.outcome == "protocol_error" and counter(state.metrics.errors, "websocket") == 1


def test_a_websocket_error_without_a_close_code_ends_the_session_counted():
    """aiohttp hands any exception from its reader as an ERROR message (a reset, not only a WebSocketError)."""
    class Ws:
        closed = False

        async def receive(self):
            return aiohttp.WSMessage(aiohttp.WSMsgType.ERROR, ConnectionResetError("reset"), None)

    async def go():
        chat = bare_chat(Ws())
        await asyncio.wait_for(chat._receive_loop(), 5)
        return chat

    chat = run(go())
    assert chat.outcome == "protocol_error" and counter(chat.metrics.errors, "websocket") == 1
