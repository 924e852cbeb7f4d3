"""The live widget in a real browser: Chromium with a speech wav as the microphone.

First duplex-audio.js alone (as `csmlab serve` uses it) on a plain page, with the echo made in the
page: framing matches Python's byte for byte, and at 24 kHz and at the device rate (resampled) the
played audio is the captured audio, delayed by the round trip the page measures.

Then notebook 05 in JupyterLab: its live widget runs the loopback brain; the test checks that frames reached the kernel (the kernel's own
count), that the echoed audio came back to the page and matches the input once the loopback delay is
aligned, that the round-trip latency the page shows is finite (and consistent with that alignment),
that a malformed frame from the page is shown and the session goes on, that stopping leaves no
worker thread, and that the console has no JavaScript error. In the same JupyterLab, a second widget
then runs on the real-time clock (the widget's default): its echo is aligned too, and after a forced
400 ms stall its round trip is back near its value before within 2 s. The latency
figures go to `out/browser/latency_<clock>.json` and `stall_<clock>.json` with the screenshot; `csmlab bench` is where latency is judged.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import time

import numpy as np
import pytest

from browser_support import REPO, chromium_path, fake_mic_wav, jupyter_lab, launch_chromium, static_server
from csmlab.bench.browser import open_notebook, printed_json, stall, start_widget
from csmlab.bench.live import recovery
from test_overload import SleepyBrain  # 2.5x over the 80 ms budget on any machine
from csmlab.widget.frames import KIND_MIC, KIND_SYSTEM, pack_frame, unpack_frame
from csmlab.widget.replay import best_lag, log_energy

AUDIO_JS = REPO / "csmlab" / "assets" / "widget" / "duplex-audio.js"
NOTEBOOK = REPO / "notebooks" / "05_live_duplex_demo.ipynb"
SPEECH = REPO / "data" / "real" / "sample.wav"
OUT = REPO / "out" / "browser"
LISTEN_S = 12  # seconds of fake microphone streamed through the kernel
MIN_CORRELATION = 0.9  # the page's own echo against its input, per window (median): 0.99998 measured here
LAG_TOLERANCE_MS = 25  # echo lag vs measured round trip: two render quanta of 128 samples + margin
# Through the kernel the echo passes the small trained Mimi, which keeps the energy envelope, not the
# waveform: envelopes in 10 ms hops. Offline they correlate 0.96 (DuplexSession on the real call) and
# 0.94 (notebook 05's twin) at exactly the loopback delay. Through the browser the real-time clock
# sends silence for a step over 80 ms: on this project's shared 2-core machine at load 10-37 nearly
# every step was late, so no in-browser value is recorded yet; the small Mimi costs 26 ms CPU a step.
# Recorded: quiet fresh-clone runs here gave 0.67, 0.73 and 0.76 (0.37-0.46 with the machine loaded by
# other work); the call's input against 12 s of its own unrelated speech gives 0.26, against noise 0.13.
ENVELOPE_MS = 10
# A second of input below -50 dBFS is the call's silence: the envelope of silence against the codec's
# noise floor correlates by chance (0.01-0.33 in the windows where the 12 s recorded started in a
# pause), and counting those windows made the median depend on where the recording began. Speech
# windows only, two recordings of the adaptive buffer (one of them had failed at 0.39): 0.66 and 0.70;
# the call's other speech in place of the echo 0.24 and 0.33, noise 0.13.
SPEECH_RMS = 10 ** (-50 / 20)
# Under load the playback buffer sheds and underruns through JupyterLab, so the echo's lag moves by
# tens of ms inside the 3 s a window spans (370-510 ms in one simulated-clock recording at load 4.7),
# and one lag per window judged the echo 0.46-0.58 on recordings at load 3.2-5.1 (two of them under
# 0.5), on either clock. So each second of speech is correlated alone, at its best lag within
# LAG_TRACK_MS of the recording's median lag: the same three recordings 0.74-0.80; the call's other
# speech in place of the echo 0.03-0.35, the echo reversed 0.04-0.24, noise 0.15. At load 8.3 the
# real-time run gave 0.79 and the simulated one 0.41: its bursts moved the lag 350-1540 ms.
LAG_TRACK_MS = 100
LIVE_CELL = "DuplexWidget(brain=brain)"  # the brain the cell before it picked for this machine
# The copy runs the loopback brain: its reply is the input's echo, which this test correlates (the
# notebook's live cell starts with the brain that answers, whose replies are not an echo).
# Its loopback waits 240 ms, not the default: notebook 05 shows this run's screenshot above the exercise
# whose answer is the default delay (the echo's lag is judged against the delay the kernel reports).
LIVE_COPY = ('DuplexWidget(brain=\\"loopback\\", clock=\\"simulated\\", '
             'brain_kwargs={\\"delay_ms\\": 240, \\"listen\\": True})')
MIN_ENVELOPE_CORRELATION = 0.5
STALL_CELL = "live.worker.pause(0.4)  # a forced 400 ms stall of the kernel's worker (this test's copy only)"
STALL_WATCH_S = 5.0  # seconds watched after the cell ran: the stall, then 2 s, then 1 s to measure
# The notebook's own report cell prints `live.summary()` (words for the learner); this test reads the same
# report as JSON from a cell of its own, added to its copy beside the live cell.
REPORT_CELL = "import json\nlive.stop(wait=True)\nprint(json.dumps(live.report()))  # this test's copy only: the report as JSON"
# The real-time run, in cells of its own after the simulated one, in the same kernel and JupyterLab:
# the widget as a learner starts it (clock="realtime" is its default), stalled once, then its report.
REALTIME_CELLS = {
    "realtime-widget": 'live_rt = DuplexWidget(brain="loopback")  # the real-time clock (this test\'s copy only)\nlive_rt',
    "realtime-stall": "live_rt.worker.pause(0.4)  # a forced 400 ms stall on the real-time clock (this test's copy only)",
    "realtime-report": "import json\nlive_rt.stop(wait=True)\nprint(json.dumps(live_rt.report()))  # this test's copy only",
}
CLOCKS = ("simulated", "realtime")
# "Back near its value before": within this, 2-3 s after the worst frame. Without shedding the stall's
# excess stays (~1000 ms on the simulated clock); measured with it, at load 4.7: +77 ms (simulated) and
# +137 ms (real time), whose worst frames came +527 and +887 ms above the round trip before.
STALL_BACK_MS = 200




def _fetch_recording(element, audio: str = "el.duplex") -> dict:
    """The page's last seconds of mic input and speaker output (base64 float32: quick to move)."""
    js = """el => AUDIO.recording().then(r => {
        const b64 = (a) => { let s = ""; const u = new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
            for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode(...u.subarray(i, i + 0x8000));
            return btoa(s); };
        return {input: b64(r.input), output: b64(r.output), rate: r.rate}; })"""
    got = element.evaluate(js.replace("AUDIO", audio))
    return {k: np.frombuffer(base64.b64decode(got[k]), dtype="<f4") for k in ("input", "output")} | {"rate": got["rate"]}


def _echo_alignment(recording: dict, max_lag_s: float = 2.0, envelope_ms: float | None = None) -> dict:
    """Best lag and correlation of the page's speaker output against its mic input, per 1 s window;
    on the waveform, or on the log-energy envelope (`envelope_ms` hops) when a codec is in the loop."""
    x, y, rate = np.asarray(recording["input"]), np.asarray(recording["output"]), recording["rate"]
    raw, hop = x, 1
    if envelope_ms:
        hop = round(rate * envelope_ms / 1000)
        x, y, rate = log_energy(x, hop), log_energy(y, hop), rate / hop
    lags, corrs, starts = [], [], []
    max_lag = int(max_lag_s * rate)
    step = round(rate)
    for start in range(0, len(x) - step - max_lag, step):
        window = slice(start, start + step + max_lag)
        said = raw[start * hop:(start + step) * hop]  # the second of input this window aligns
        if said.std() < (SPEECH_RMS if envelope_ms else 1e-3):  # silence in the recording: nothing to align
            continue
        lag, corr = best_lag(x[window], y[window], max_lag)
        lags.append(lag)
        corrs.append(corr)
        starts.append(start)
    lag = int(np.median(lags))
    if envelope_ms:
        track = round(LAG_TRACK_MS * rate / 1000)
        corrs = [_near_lag(x[start:start + step], y, start, lag, track) for start in starts]
    return {"windows": len(corrs), "lag_ms": 1000 * lag / rate, "correlation": float(np.median(corrs))}


def _near_lag(said: np.ndarray, y: np.ndarray, start: int, lag: int, track: int) -> float:
    """The best correlation of `said` (x from `start`) with `y` at a lag within `track` of `lag`."""
    ends = range(max(0, lag - track), lag + track + 1)
    return max(float(np.corrcoef(said, y[start + k:start + k + len(said)])[0, 1]) for k in ends)


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    chromium_path()  # skips with its reason when there is none
    if not SPEECH.exists():
        pytest.skip(f"{SPEECH} is missing: run `python data/fetch.py`")
    root = tmp_path_factory.mktemp("lab")
    # JupyterLab may save the notebook: run a copy, never the repository's. In the copy the live cell
    # keeps every step's audio (clock="simulated"): with the real-time clock a step that overruns its
    # deadline sends silence, and on a 2-core CI machine that also runs JupyterLab and Chromium that
    # decides how much echo comes back. The real-time clock runs after it, in cells of its own
    # (REALTIME_CELLS), judged by the same loose assertions; its policy is also tested without a browser.
    source = NOTEBOOK.read_text()
    assert LIVE_CELL in source, f"notebook 05 no longer has the live cell {LIVE_CELL!r}"
    notebook = json.loads(source.replace(LIVE_CELL, LIVE_COPY))
    live = next(i for i, c in enumerate(notebook["cells"]) if "DuplexWidget(brain=" in "".join(c["source"]))
    added = (("forced-stall", STALL_CELL), ("json-report", REPORT_CELL), *REALTIME_CELLS.items())
    for at, (name, cell) in enumerate(added, start=live + 1):
        notebook["cells"].insert(at, {"cell_type": "code", "id": name, "metadata": {}, "execution_count": None,
                                      "outputs": [], "source": [cell]})
    (root / NOTEBOOK.name).write_text(json.dumps(notebook))
    for picture in NOTEBOOK.parent.glob(f"{NOTEBOOK.name[:2]}_*.png"):  # the pictures its Markdown shows (else a 404)
        shutil.copy(picture, root / picture.name)
    OUT.mkdir(parents=True, exist_ok=True)
    errors, result = [], {}
    with jupyter_lab(root) as (url, token), sync_playwright() as p:
        browser = launch_chromium(p, fake_mic_wav(SPEECH, root))
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        try:
            open_notebook(page, url, token, NOTEBOOK.name)
            widget = start_widget(page, "live = DuplexWidget(")
            time.sleep(LISTEN_S)
            result["page"] = widget.evaluate("el => el.duplex.stats()")
            result["shown"] = widget.locator(".csmlab-figures").inner_text()
            result["selector_locked"] = widget.locator(".csmlab-brain").is_disabled()
            widget.screenshot(path=str(OUT / "widget_running.png"))  # before the faults below: notebook 05 shows it
            widget.evaluate("el => el.duplex.send(new ArrayBuffer(10))")  # a malformed frame, as a broken page would
            page.wait_for_function("el => el.textContent.includes('16-byte header')",
                                   arg=widget.locator(".csmlab-error").element_handle(), timeout=30_000)
            result["error_shown"] = widget.locator(".csmlab-error").inner_text()
            page.wait_for_function("([el, n]) => el.duplex.stats().counts.played > n", arg=[widget.element_handle(), result["page"]["counts"]["played"]], timeout=30_000)
            result["recording"] = _fetch_recording(widget)
            result["timeline"] = widget.evaluate("el => el.duplex.timeline")  # [started, round trip, ...] per frame
            result["stall"] = _stall(page, widget, STALL_CELL)
            widget.screenshot(path=str(OUT / "widget.png"))
            widget.locator(".csmlab-start").click()  # Stop
            result["after_stop"] = {"counts": widget.locator(".csmlab-counts:not(.csmlab-player)").inner_text(),
                                    "player": widget.locator(".csmlab-player").inner_text(),
                                    "selector_locked": widget.locator(".csmlab-brain").is_disabled()}
            final = printed_json(page, "print(json.dumps(live.report()))")
            result["kernel"], result["page_final"] = final["kernel"], final["page"]
            page.screenshot(path=str(OUT / "notebook.png"), full_page=True)
            result["realtime"] = _realtime_run(page)
        except Exception:
            page.screenshot(path=str(OUT / "failure.png"))
            raise
        finally:
            browser.close()
    result["errors"] = errors
    (OUT / "run.json").write_text(json.dumps({k: v for k, v in result.items() if k not in ("recording", "stall", "timeline", "realtime")}, indent=1))
    return result


def _stall(page, widget, cell: str) -> dict:
    """Stall the kernel's worker from `cell`, watch `STALL_WATCH_S`: the player's counts around it and the timeline."""
    player = "el => el.duplex.stats().player"
    before = widget.evaluate(player)
    at = stall(page, widget, cell)
    time.sleep(STALL_WATCH_S)
    return {"at": at, "before": before, "after": widget.evaluate(player), "timeline": widget.evaluate("el => el.duplex.timeline")}


def _realtime_run(page) -> dict:
    """The widget on the real-time clock, as `csmlab bench live` runs it, shorter: talk, record, stall, stop."""
    widget = start_widget(page, "live_rt = DuplexWidget(")
    time.sleep(LISTEN_S)
    run = {"page": widget.evaluate("el => el.duplex.stats()"), "shown": widget.locator(".csmlab-figures").inner_text(),
           "recording": _fetch_recording(widget), "timeline": widget.evaluate("el => el.duplex.timeline")}
    run["stall"] = _stall(page, widget, REALTIME_CELLS["realtime-stall"])
    widget.locator(".csmlab-start").click()  # Stop
    run["kernel"] = printed_json(page, "print(json.dumps(live_rt.report()))")["kernel"]
    return run


def _clock(browser_run, clock: str) -> dict:
    """The run on `clock`: the simulated one is the fixture's main run, the real-time one its second."""
    return browser_run if clock == "simulated" else browser_run["realtime"]


def test_frames_reach_the_kernel(browser_run):
    kernel = browser_run["kernel"]
    assert kernel["received"] >= 0.7 * LISTEN_S * 12.5, kernel  # 12.5 frames per second of speech
    assert kernel["received"] <= browser_run["page_final"]["counts"]["sent"]
    assert kernel["malformed"] == 1 and kernel["errors"] == 0  # the one malformed frame the test sent
    assert kernel["steps"] >= kernel["received"] - kernel["dropped"] - kernel["max_queue"]


def test_a_malformed_frame_is_shown_and_the_session_goes_on(browser_run):
    assert "16-byte header" in browser_run["error_shown"]
    assert browser_run["kernel"]["status"] == "stopped" and browser_run["kernel"]["reason"] == "stopped"


def test_the_brain_selector_is_locked_while_running_and_the_counts_stay_after_stop(browser_run):
    after = browser_run["after_stop"]
    assert browser_run["selector_locked"] and not after["selector_locked"]
    sent = int(re.search(r"frames sent (\d+)", after["counts"]).group(1))
    assert sent >= browser_run["page"]["counts"]["sent"] > 0, after  # the page's own count, not reset by Stop
    assert "shed" in after["player"] and "underruns" in after["player"], after


@pytest.mark.parametrize("clock", CLOCKS)
def test_stop_leaves_no_worker_thread(browser_run, clock):
    kernel = _clock(browser_run, clock)["kernel"]
    assert kernel["status"] == "stopped" and not kernel["alive"] and kernel["threads"] == [], kernel


@pytest.mark.parametrize("clock", CLOCKS)
def test_echo_comes_back_and_matches_the_input(browser_run, clock):
    run = _clock(browser_run, clock)
    page, kernel = run["page"], run["kernel"]
    echo = _echo_alignment(run["recording"], envelope_ms=ENVELOPE_MS)
    round_trip = page["latency"]["roundTrip"]["median"]
    delay_ms = kernel["session"]["latency_ms"]["algorithmic"]["loopback delay"]
    figures = {  # the round trip is matched by seq, so it is the latency added on top of the loopback delay
        "clock": clock, "machine": {"cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
        "loopback_delay_ms": delay_ms, "round_trip_ms": round_trip, "echo": echo,
        "parts_ms": {k: v["median"] for k, v in page["latency"].items()},
        "kernel_compute_ms": kernel["session"]["compute_ms"], "device": page["device"], "player": page["player"],
        "page_counts": page["counts"], "kernel_counts": {k: kernel[k] for k in ("received", "dropped", "steps", "late", "concealed", "queue_max")},
    }
    (OUT / f"latency_{clock}.json").write_text(json.dumps(figures, indent=1))
    np.savez_compressed(OUT / f"recording_{clock}.npz", **run["recording"])  # to study the echo offline
    print(json.dumps(figures, indent=1))
    output = run["recording"]["output"]
    assert page["counts"]["played"] > 0 and np.sqrt(np.mean(output ** 2)) > 1e-3, "no echo came back to the speaker"
    why = (f"{echo}; the kernel was late on {kernel['late']} of {kernel['steps']} steps (a step over 80 ms sends "
           f"silence) at load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    assert echo["windows"] >= 3 and echo["correlation"] > MIN_ENVELOPE_CORRELATION, why
    shown = re.search(r"round trip\s+(\d+) ms", run["shown"])  # what the widget displays
    assert shown and np.isfinite(round_trip) and round_trip > 0, run["shown"]
    # The page's playback buffer absorbs bursts of late steps and sheds what it holds beyond its target,
    # so the echo's lag over the recorded seconds lies between the path's fixed part (one captured
    # frame plus the loopback delay) and the largest round trip measured meanwhile, plus that delay.
    fixed = page["latency"]["capture"]["median"] + delay_ms
    started, trips = np.array(run["timeline"])[:, :2].T
    recorded = started > started[-1] - 1000 * len(output) / run["recording"]["rate"]
    longest = trips[recorded].max() + delay_ms
    assert fixed - ENVELOPE_MS <= echo["lag_ms"] <= longest + LAG_TOLERANCE_MS + ENVELOPE_MS, (echo, fixed, longest)


@pytest.mark.parametrize("clock", CLOCKS)
def test_after_a_forced_400_ms_stall_the_round_trip_is_back_within_2_s_and_the_shed_audio_counted(browser_run, clock):
    """The kernel's worker stops for 400 ms; the replies then come in a burst. The playback buffer
    sheds the excess: 2 s after the stall the round trip is back near its value before it (loosely:
    the machine is loaded, and the transport through JupyterLab has its own bursts). On the real-time
    clock the steps that the stall made late go out as silence, but they still go out, in the burst."""
    watched = _clock(browser_run, clock)["stall"]
    back = recovery(watched["timeline"], watched["at"], STALL_BACK_MS)  # as `csmlab bench live` measures it
    removed = {k: watched["after"][k] - watched["before"][k] for k in ("shedMs", "droppedMs", "underrunMs")}
    figures = {"clock": clock, "load_1min": os.getloadavg()[0], **back, **removed}
    (OUT / f"stall_{clock}.json").write_text(json.dumps(figures, indent=1))
    print(figures)
    assert back["worst_ms"] > back["before_ms"] + STALL_BACK_MS, figures  # the stall reached the speaker
    assert back["after_2s_ms"] < back["before_ms"] + STALL_BACK_MS, figures  # ... and 2 s later no longer
    assert removed["shedMs"] + removed["droppedMs"] >= STALL_BACK_MS, figures  # by shedding audio, counted


def test_no_javascript_errors(browser_run):
    assert browser_run["errors"] == []


PAGE = """<!doctype html><meta charset="utf-8"><title>duplex-audio.js</title><link rel="icon" href="data:,">
<script type="module">import * as duplex from "./duplex-audio.js"; window.duplex = duplex;</script>"""

# The page echoes each mic frame back as a system frame at once: the loopback, without a kernel.
START_ECHO = """async (contextRate) => {
    const d = window.duplex;
    const audio = new d.DuplexAudio({contextRate, send: (buffer) => {
        const f = d.unpackFrame(buffer);
        const echo = d.packFrame(d.KIND_SYSTEM, f.seq, 0.25, f.samples);
        setTimeout(() => audio.receive(echo), 0);
    }});
    await audio.start();
    window.audio = audio;
}"""


@pytest.fixture(scope="module")
def plain_page(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    chromium_path()
    if not SPEECH.exists():
        pytest.skip(f"{SPEECH} is missing: run `python data/fetch.py`")
    root = tmp_path_factory.mktemp("page")
    shutil.copy(AUDIO_JS, root / AUDIO_JS.name)
    (root / "index.html").write_text(PAGE)
    errors = []
    with static_server(root) as url, sync_playwright() as p:
        browser = launch_chromium(p, fake_mic_wav(SPEECH, root))
        page = browser.new_page()
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/index.html")
        page.wait_for_function("window.duplex !== undefined")
        yield page
        browser.close()
    assert errors == [], errors


def test_frames_are_the_same_bytes_in_javascript_and_python(plain_page):
    samples = [0.0, 0.5, -1.0, 1e-3]
    js = base64.b64decode(plain_page.evaluate(
        """(s) => { const b = new Uint8Array(window.duplex.packFrame(1, 7, 12.5, Float32Array.from(s)));
                    return btoa(String.fromCharCode(...b)); }""", samples))
    assert js == pack_frame(KIND_MIC, 7, 12.5, np.array(samples))
    frame = pack_frame(KIND_SYSTEM, 2**32 - 1, -3.0, np.array(samples), flags=3)
    got = plain_page.evaluate(
        """(b64) => { const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                      const padded = new Uint8Array(raw.length + 3); padded.set(raw, 3);  // unaligned view
                      const f = window.duplex.unpackFrame(new DataView(padded.buffer, 3, raw.length));
                      return {...f, samples: Array.from(f.samples)}; }""", base64.b64encode(frame).decode())
    back = unpack_frame(frame)
    assert (got["kind"], got["seq"], got["timeMs"], got["flags"]) == (back.kind, back.seq, back.time_ms, back.flags)
    assert got["samples"] == back.pcm.tolist() and got["noSeq"] and got["late"]


@pytest.mark.parametrize("context_rate", [24000, None], ids=["24kHz-context", "device-rate-resampled"])
def test_played_audio_is_the_captured_audio_delayed_by_the_measured_round_trip(plain_page, context_rate):
    plain_page.evaluate(START_ECHO, context_rate)
    try:
        time.sleep(6)
        stats = plain_page.evaluate("window.audio.stats()")
        recording = _fetch_recording(plain_page.locator("body"), "window.audio")
    finally:
        plain_page.evaluate("window.audio.stop()")
    assert (stats["device"]["contextRate"] == 24000) == (context_rate == 24000), stats["device"]
    echo = _echo_alignment(recording)
    round_trip = stats["latency"]["roundTrip"]["median"]
    print(context_rate, echo, {k: round(v["median"], 1) for k, v in stats["latency"].items()}, stats["player"])
    assert echo["correlation"] > MIN_CORRELATION, echo
    assert abs(echo["lag_ms"] - round_trip) < LAG_TOLERANCE_MS, (echo, round_trip)
    assert stats["counts"]["played"] >= 0.8 * stats["counts"]["sent"] - 3


def test_serve_page_turns_red_with_words_when_the_brain_cannot_keep_up_and_keeps_its_counts_after_stop(plain_page):
    from csmlab.serve import Settings
    from csmlab.serve.app import serve_in_thread

    browser = plain_page.context.browser  # the plain page's Chromium, with its fake microphone
    errors = []
    with serve_in_thread(Settings(port=0), SleepyBrain) as server:
        page = insecure = None
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.click("#start")
            page.wait_for_selector("#status[data-state='overloaded']", timeout=30_000)
            notice = page.inner_text("#notice")
            page.wait_for_function("document.getElementById('mic').style.width !== '0%'", timeout=10_000)
            page.click("#stop")
            counts = page.inner_text("#counts")
            figures = page.inner_text("#figures")
            page.screenshot(path=str(OUT / "serve_overloaded.png"), full_page=True)

            insecure = browser.new_page()  # as on http://<remote host>: no navigator.mediaDevices
            insecure.add_init_script("Object.defineProperty(navigator, 'mediaDevices', {value: undefined})")
            insecure.on("pageerror", lambda e: errors.append(str(e)))
            insecure.goto(f"http://127.0.0.1:{server.port}/")
            insecure.click("#start")
            insecure.wait_for_selector("#status[data-state='failed']", timeout=10_000)
            time.sleep(0.5)  # the socket's close comes after the microphone's failure
            insecure_error = insecure.inner_text("#error")
        finally:
            for opened in (page, insecure):
                if opened is not None:
                    opened.close()
    assert "cannot keep up" in notice and "ms per 80 ms step" in notice, notice
    assert re.search(r"frames sent [1-9]", counts) and "shed" in counts, counts  # still there after Stop
    assert "network" in figures and "server (queue + compute)" in figures, figures
    assert "https:// or localhost" in insecure_error and f"ssh -L {server.port}:localhost:{server.port}" in insecure_error, insecure_error
    assert errors == [], errors
