"""duplex-audio.js's adaptive playback buffer (`PlayoutBuffer`), without a browser.

`tests/js/playout_sim.mjs` drives it on a simulated clock (frames every 80 ms, a random transport
jitter, forced stalls) and reports each frame's round trip; it runs under node, or, where there is
no node, in Chromium (the same module, imported by a page). Nothing here depends on this machine's
speed: the clock is the simulation's.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from browser_support import REPO

SIM = REPO / "tests" / "js" / "playout_sim.mjs"
STALL_AT, STALL_MS = 4000, 400
TOLERANCE_MS = 15  # one 10 ms shedding block, plus a 128-sample render quantum


@pytest.fixture(scope="module")
def simulate():
    node = shutil.which("node")
    if node:
        yield lambda **opts: json.loads(subprocess.run([node, str(SIM), json.dumps(opts)], capture_output=True,
                                                       text=True, check=True, timeout=60).stdout)
        return
    from playwright.sync_api import sync_playwright

    from browser_support import chromium_path, static_server

    with static_server(REPO) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(f"{url}/tests/js/")
        yield lambda **opts: page.evaluate("async (o) => (await import('./playout_sim.mjs')).simulate(o)", opts)
        browser.close()


def _recovery(run: dict, stall_end: float) -> tuple[float, float, float]:
    """(round trip before the stall (median), worst after it, ms from the stall's end until every later
    frame's round trip is within TOLERANCE_MS of the pre-stall one)."""
    rt = np.array([np.nan if x is None else x for x in run["roundTrip"]])
    captured = np.arange(len(rt)) * run["frameMs"]
    before = np.nanmedian(rt[(captured > 2000) & (captured < STALL_AT - 200)])
    off = ~(np.abs(rt - before) <= TOLERANCE_MS) & (captured > STALL_AT - 200)
    last_off = np.flatnonzero(off).max()
    if last_off + 1 == len(rt):
        return before, np.nanmax(rt[captured > STALL_AT - 200]), np.inf  # never back
    back_at = captured[last_off + 1] + rt[last_off + 1]  # when the first frame back on time started to play
    return before, np.nanmax(rt[captured > STALL_AT - 200]), back_at - stall_end


@pytest.mark.parametrize("signal", ["speech", "noisy", "tone"])
def test_after_a_400_ms_stall_the_round_trip_is_back_within_2_s_and_the_shed_audio_is_counted(simulate, signal):
    run = simulate(stalls=[[STALL_AT, STALL_MS]], signal=signal, seconds=10)
    before, worst, recovery_ms = _recovery(run, STALL_AT + STALL_MS)
    stats, counts = run["stats"], run["counts"]
    assert worst > before + 300, (before, worst)  # the stall did hold the audio back
    assert recovery_ms <= 2000, (signal, before, recovery_ms, stats)
    assert stats["shedMs"] >= 300 and stats["droppedMs"] == 0, stats  # the held-back audio was shed, not cut
    assert counts["pushed"] == counts["played"] + counts["shed"] + counts["dropped"] + stats["bufferedMs"] * 24, counts


def test_shedding_is_cross_faded_never_a_click(simulate):
    """A continuous tone has no quiet stretch: the buffer must cut into it. Its largest sample-to-sample
    step stays within twice the tone's own (a hard cut steps up to twice the amplitude)."""
    run = simulate(stalls=[[STALL_AT, STALL_MS]], signal="tone", seconds=8)
    assert run["stats"]["shedCuts"] > 10
    assert run["maxStep"] <= 2 * run["toneStep"], run["maxStep"]  # the fade adds at most its own slope


def test_one_stall_does_not_raise_the_target_but_recurring_jitter_does(simulate):
    quiet = simulate(stalls=[[STALL_AT, STALL_MS]], seconds=8)["stats"]["targetMs"]
    jittery = simulate(jitterMs=120, seconds=8)["stats"]["targetMs"]
    assert quiet < 40 and jittery > 80, (quiet, jittery)
