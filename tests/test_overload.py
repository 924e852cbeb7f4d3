"""A brain that cannot keep up: the session sheds work and says so, in the worker and in `csmlab serve`,
by either policy: skipping concealed frames, or running the brain at a declared lower rate.

`SleepyBrain` sleeps `SLEEP_S` per step, several times the 80 ms budget on any machine, so nothing
here depends on this machine's speed; it echoes what it heard and counts its calls.
"""
import asyncio
import logging
import math
import re
import time

import aiohttp
import numpy as np
import pytest

from csmlab.errors import CsmlabError
from csmlab.metrics import FRAME_SIZE
from csmlab.pipeline import Brain, DuplexSession, Said
from csmlab.pipeline.overload import Overload
from csmlab.serve import Settings
from csmlab.serve.app import serve_in_thread
from csmlab.widget import DuplexWorker
from csmlab.widget.frames import KIND_MIC, pack_frame

SLEEP_S = 0.2  # 2.5x the 80 ms budget, whatever the machine
WINDOW = Overload.window  # computed steps the overload state looks at


class SleepyBrain(Brain):
    name = "sleepy"

    def __init__(self):
        super().__init__()
        self.calls = 0

    def step(self, heard):
        self.calls += 1
        time.sleep(SLEEP_S)
        return Said(pcm=heard.pcm)


def _frame(value=0.1):
    return np.full(FRAME_SIZE, value, np.float32)


def test_an_overloaded_session_skips_the_brain_for_concealed_frames_and_says_why():
    """On the real-time clock (a simulation measures compute and judges nothing)."""
    brain = SleepyBrain()
    with DuplexSession(brain, clock="realtime", window=1) as session:
        for seq in range(WINDOW):
            session.push(_frame(), 24000, seq=seq)
        assert session.overload.state == "overloaded"
        calls = brain.calls
        # 10 frames lost (a queue dropped them): with one later frame held, the jitter buffer conceals them
        steps = session.push(_frame(), 24000, seq=WINDOW + 10)
        report = session.report()
    assert len(steps) == 11 and all(s.concealed and np.all(s.pcm == 0) for s in steps[:10])
    assert not steps[10].concealed
    assert brain.calls == calls + 1  # the concealed steps cost no brain call: silence went out
    overload = report["overload"]
    assert overload["state"] == "overloaded" and overload["shed_steps"] == 10
    assert overload["compute_ms"] >= 1000 * SLEEP_S
    needs = re.search(r"needs (\d+) ms per 80 ms step", overload["message"])
    assert needs and abs(int(needs.group(1)) - overload["compute_ms"]) <= 1, overload
    assert "cannot keep up" in overload["message"] and "csmlab doctor" in overload["message"]
    assert report["faults"]["clock/overload_overloaded"] == 1


def test_at_a_declared_lower_rate_the_brain_runs_on_one_frame_in_n_and_every_frame_is_accounted_for():
    """On the real-time clock: once overloaded, the session declares a rate the brain can keep up
    with, calls it on exactly one frame in `every`, and sends silence (a shed step) for the others."""
    brain = SleepyBrain()
    with DuplexSession(brain, clock="realtime", window=1, overload="rate") as session:
        steps = [s for seq in range(WINDOW) for s in session.push(_frame(), 24000, seq=seq)]
        overload = session.overload
        assert overload.state == "overloaded" and overload.every == min(overload.max_every, math.ceil(overload.compute_ms / 80))
        every, calls = overload.every, brain.calls
        more = 3 * every
        steps += [s for seq in range(WINDOW, WINDOW + more) for s in session.push(_frame(), 24000, seq=seq)]
        report = session.report()
    assert every >= 3  # 200 ms a step needs at least 3 frames' time
    assert [s.index for s in steps] == list(range(WINDOW + more))  # one step per frame, none lost
    assert [s.seq for s in steps] == list(range(WINDOW + more)) and not any(s.concealed for s in steps)
    assert brain.calls - calls == more // every  # the brain ran at the declared rate
    shed = [s for s in steps[WINDOW:] if s.shed]
    assert len(shed) == more - more // every and all(np.all(s.pcm == 0) and "brain" not in s.compute_ms for s in shed)
    said = report["overload"]
    assert said["policy"] == "rate" and said["every"] == every and said["shed_steps"] == len(shed)
    assert f"running it on 1 frame in {every} ({12.5 / every:.1f} steps/s instead of 12.5)" in said["message"], said
    assert report["frames"]["received"] == report["frames"]["consumed"] == WINDOW + more


def test_the_declared_rate_is_lowered_while_overloaded_and_the_full_rate_returns_once_ok():
    overload = Overload("moshi", policy="rate")
    for ms in [136] * WINDOW:
        overload.observe(ms)
    assert (overload.state, overload.every, overload.slack_ms) == ("overloaded", 2, 80)
    assert all(overload.sheds(i, concealed=False) == (i % 2 == 1) for i in range(6))
    for ms in [200] * WINDOW:  # slower still: one frame in 3
        overload.observe(ms)
    assert overload.every == 3 and "1 frame in 3" in overload.message()
    for ms in [90] * WINDOW:  # faster, but still over budget: the declared rate holds
        overload.observe(ms)
    assert overload.every == 3
    for ms in [40] * WINDOW:
        overload.observe(ms)
    assert (overload.state, overload.every, overload.slack_ms) == ("ok", 1, 0) and not overload.sheds(1, concealed=True)


def test_the_skip_policy_sheds_only_concealed_frames_and_none_sheds_nothing():
    skip, none = Overload("moshi"), Overload("moshi", policy="none")
    for overload in (skip, none):
        for ms in [136] * WINDOW:
            overload.observe(ms)
    assert skip.every == none.every == 1 and skip.slack_ms == 0
    assert skip.sheds(5, concealed=True) and not skip.sheds(5, concealed=False)
    assert not none.sheds(5, concealed=True)
    with pytest.raises(CsmlabError, match="choose one of skip, rate, none"):
        Overload("moshi", policy="half")


def test_the_worker_tells_the_page_when_the_brain_cannot_keep_up():
    sent = []
    worker = DuplexWorker(SleepyBrain(), lambda content, buffers: sent.append(content), max_queue=4).start()
    try:
        deadline = time.monotonic() + 30
        seq = 0
        while not any(m["type"] == "overload" for m in sent) and time.monotonic() < deadline:
            worker.feed(pack_frame(KIND_MIC, seq, 80.0 * seq, _frame()))  # a page's pace: a frame per 80 ms
            seq += 1
            time.sleep(0.08)
        report = worker.report()
    finally:
        worker.stop(wait=True)
    notices = [m for m in sent if m["type"] == "overload"]
    assert notices and notices[0]["state"] == "overloaded" and "cannot keep up" in notices[0]["message"], sent[-3:]
    assert report["dropped"] > 0  # the page sent faster than the brain could answer


@pytest.mark.parametrize("policy", ["skip", "rate"])
def test_the_server_logs_once_exports_and_notifies_an_overloaded_session(caplog, policy):
    caplog.set_level(logging.WARNING, logger="csmlab.serve")

    async def talk(port):
        notices = []
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{port}/api/frames") as ws:
                assert (await ws.receive_json(timeout=10))["type"] == "ready"
                for seq in range(200):
                    await ws.send_bytes(pack_frame(KIND_MIC, seq, 80.0 * seq, _frame()))
                    await asyncio.sleep(0.08)
                    while True:
                        try:
                            msg = await ws.receive(timeout=0.001)
                        except asyncio.TimeoutError:
                            break
                        if msg.type == aiohttp.WSMsgType.TEXT and msg.json()["type"] == "overload":
                            notices.append(msg.json())
                    if notices:
                        break
                async with http.get(f"http://127.0.0.1:{port}/metrics") as metrics:  # while the session lives
                    text = await metrics.text()
        return notices, text

    with serve_in_thread(Settings(port=0, overload=policy), SleepyBrain) as server:
        notices, text = asyncio.run(talk(server.port))
    assert notices and notices[0]["state"] == "overloaded" and "cannot keep up" in notices[0]["message"]
    assert "csmlab_overload_events_total 1.0" in text and "csmlab_overloaded_sessions 1.0" in text
    reduced = policy == "rate"
    assert f"csmlab_reduced_rate_sessions {float(reduced)}" in text
    assert ("running it on 1 frame in" in notices[0]["message"]) == reduced, notices[0]
    overloaded = [r for r in caplog.records if "overloaded" in r.getMessage()]
    assert len(overloaded) == 1 and "needs" in overloaded[0].getMessage()


def test_a_simulation_judges_nothing():
    with DuplexSession(SleepyBrain(), clock="simulated") as session:
        session.overload.window = 1  # would be overloaded after one step, were it judged
        session.push(_frame(), 24000, seq=0)
        assert session.overload.state == "ok" and session.report()["faults"] == {}


def test_the_overload_state_goes_amber_then_red_and_back_with_hysteresis():
    overload = Overload("moshi")
    states = [overload.observe(ms) or overload.state for ms in [40] * WINDOW + [70] * WINDOW + [136] * WINDOW]
    assert states[WINDOW - 1] == "ok" and "behind" in states and states[-1] == "overloaded"
    assert "needs 136 ms per 80 ms step" in overload.message() and "try cascade" in overload.message()
    for ms in [60] * WINDOW:  # under the budget, but not under 70% of it: still overloaded
        overload.observe(ms)
    assert overload.state == "overloaded"
    for ms in [40] * WINDOW:
        overload.observe(ms)
    assert overload.state == "ok" and overload.changes == 3
