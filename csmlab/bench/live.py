"""The live path in a real browser, as a learner hears it: through JupyterLab and through `csmlab serve`.

Chromium (headless, driven by Playwright) takes a speech wav as its microphone and talks for
`--seconds` to (1) the notebook widget (`DuplexWidget`, real-time clock) in JupyterLab and (2) the
page of `csmlab serve`, both on the loopback brain with the small trained Mimi. In the JupyterLab run
the kernel's worker is stalled for 400 ms `--stalls` times, evenly spaced (`DuplexWorker.pause`).
Per path, from the page's per-frame figures: mouth to ear (round trip + the brain's delay + the
device latency the AudioContext reports), added latency (transport + kernel or server + playback
buffer) p50 and p95, the playback buffer's shed, dropped and underrun ms; after each stall, the
round trip before it, the worst, and the seconds from the worst frame until the round trip stays
within `--recovered-ms` of its value before. `--cascade` adds a `csmlab serve --brain cascade` run
for the response time (end of speech to first reply audio heard). Needs Chromium (scripts/install.sh).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from csmlab.bench.browser import (REPO, fake_mic_wav, jupyter_lab, launch_chromium, open_notebook, printed_json,
                                  stall, start_widget)
from csmlab.metrics import latency_summary

SPEECH = REPO / "data" / "real" / "sample.wav"
STALL_S = 0.4
CELLS = ["from csmlab.widget import DuplexWidget\nlive = DuplexWidget(brain='loopback')\nlive",
         f"live.worker.pause({STALL_S})  # a forced stall of the kernel's worker",
         "import json\nprint(json.dumps(live.report()))"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="of talking per path")
    parser.add_argument("--stalls", type=int, default=3, help="forced 400 ms stalls in the JupyterLab run")
    parser.add_argument("--recovered-ms", type=float, default=20.0, help="back within this of the round trip before a stall")
    parser.add_argument("--path", nargs="+", choices=("jupyterlab", "serve"), default=["jupyterlab", "serve"])
    parser.add_argument("--cascade", action="store_true", help="also the cascade through csmlab serve (response time)")


def frames(timeline: list, brain_delay_ms: float, device_ms: float) -> dict:
    """Summaries over every frame the page matched: [started, round trip, capture, transport, kernel, playback]."""
    t = np.array(timeline, dtype=float).reshape(-1, 6)
    added = t[:, 3] + t[:, 4] + t[:, 5]
    return {"frames": len(t), "round_trip_ms": latency_summary(t[:, 1]), "added_ms": latency_summary(added),
            "mouth_to_ear_ms": latency_summary(t[:, 1] + brain_delay_ms + device_ms),
            "parts_p50_ms": {k: round(float(np.median(t[:, i])), 1)
                             for i, k in enumerate(["capture", "transport", "kernel", "playback"], 2)}}


def recovery(timeline: list, at_ms: float, tolerance_ms: float) -> dict:
    """A stall requested at page time `at_ms`: round trip before, worst, and seconds until back."""
    t = np.array(timeline, dtype=float).reshape(-1, 6)
    started, rt = t[:, 0], t[:, 1]
    before = float(np.median(rt[(started > at_ms - 3000) & (started <= at_ms)]))
    hit = np.flatnonzero((started > at_ms) & (started < at_ms + 2500))
    worst = hit[np.argmax(rt[hit])]
    off = np.flatnonzero((rt > before + tolerance_ms) & (np.arange(len(rt)) >= worst) & (started < started[worst] + 5000))
    back = off.max() + 1 if len(off) else worst
    later = rt[(started > started[worst] + 2000) & (started < started[worst] + 3000)]
    return {"before_ms": round(before, 1), "worst_ms": round(float(rt[worst]), 1),
            "after_2s_ms": round(float(np.median(later)), 1) if len(later) else None,  # median over the 3rd second
            "recovered_s": round((started[back] - started[worst]) / 1000, 2) if back < len(rt) else None}


def _device_ms(stats: dict) -> float:
    d = stats.get("device", {})
    return d.get("baseLatencyMs", 0) + d.get("outputLatencyMs", 0) + d.get("inputLatencyMs", 0)


def jupyterlab(browser, args, root: Path) -> dict:
    notebook = {"cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "execution_count": None, "outputs": [],
                           "source": [src]} for i, src in enumerate(CELLS)],
                "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}},
                "nbformat": 4, "nbformat_minor": 5}
    (root / "live.ipynb").write_text(json.dumps(notebook))
    with jupyter_lab(root) as (url, token):
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        open_notebook(page, url, token, "live.ipynb")
        widget = start_widget(page, "live = DuplexWidget(")
        start, stalls = time.monotonic(), []
        for k in range(args.stalls):
            time.sleep(max(0.0, start + (k + 1) * args.seconds / (args.stalls + 1) - time.monotonic()))
            stalls.append(stall(page, widget, "live.worker.pause("))
        time.sleep(max(0.0, start + args.seconds - time.monotonic()))
        stats, timeline = widget.evaluate("el => el.duplex.stats()"), widget.evaluate("el => el.duplex.timeline")
        widget.locator(".csmlab-start").click()  # Stop
        kernel = printed_json(page, "print(json.dumps(live.report()))")["kernel"]
    algorithmic = kernel["session"]["latency_ms"]["algorithmic"]
    delay = sum(v for k, v in algorithmic.items() if k != "frame")
    return {"brain_delay_ms": delay, "device_ms": _device_ms(stats), **frames(timeline, delay, _device_ms(stats)),
            "player": stats["player"], "stalls": [recovery(timeline, at, args.recovered_ms) for at in stalls],
            "kernel": {k: kernel[k] for k in ("received", "dropped", "steps", "late", "concealed")},
            "kernel_compute_ms": kernel["session"]["compute_ms"].get("total")}


def serve(browser, args, brain: str) -> dict:
    from csmlab.serve import Settings
    from csmlab.serve.app import serve_in_thread

    with serve_in_thread(Settings(port=0, brain=brain, listen=True)) as server:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.port}/")
        page.click("#start")
        page.wait_for_selector("#status[data-state='running']", timeout=60_000)
        time.sleep(args.seconds)
        stats = page.evaluate("window.csmlab.audio.stats()")
        timeline = page.evaluate("window.csmlab.audio.timeline")
        brains = [c.duplex.brain for c in server.chats]
        responses = [list(b.responses) for b in brains if hasattr(b, "responses")]
        # the loopback's echo comes its delay later; the cascade answers instead (response time below)
        delay = sum(brains[0].algorithmic_ms().values()) if brain == "loopback" and brains else 0.0
        page.click("#stop")
    out = {"brain": brain, "brain_delay_ms": delay, "device_ms": _device_ms(stats),
           **frames(timeline, delay, _device_ms(stats)), "player": stats["player"]}
    if responses and responses[0]:
        heard = np.array(responses[0]) + out["round_trip_ms"]["p50"] - stats["latency"]["capture"]["median"] + out["device_ms"]
        out["response_heard_ms"] = latency_summary(heard)
    return out


def run(args) -> dict:
    from playwright.sync_api import sync_playwright

    out = {"seconds": args.seconds, "stall_ms": 1000 * STALL_S, "load_1min_before": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        root = Path(tmp)
        browser = launch_chromium(p, fake_mic_wav(SPEECH, root))
        try:
            if "jupyterlab" in args.path:
                out["jupyterlab"] = jupyterlab(browser, args, root)
            if "serve" in args.path:
                out["serve"] = serve(browser, args, "loopback")
            if args.cascade:
                out["serve_cascade"] = serve(browser, args, "cascade")
        finally:
            browser.close()
    out["load_1min_after"] = round(os.getloadavg()[0], 2)  # the machine is shared: timings inflate with load
    for name in ("jupyterlab", "serve", "serve_cascade"):
        if name in out:
            r = out[name]
            print(f"{name:<14} added p50 {r['added_ms']['p50']:.0f} ms, p95 {r['added_ms']['p95']:.0f} ms; "
                  f"mouth to ear p50 {r['mouth_to_ear_ms']['p50']:.0f} ms; shed {r['player']['shedMs']:.0f} ms, "
                  f"dropped {r['player']['droppedMs']:.0f} ms, underruns {r['player']['underruns']}"
                  + (f"; response heard p50 {r['response_heard_ms']['p50']:.0f} ms" if "response_heard_ms" in r else ""))
            for s in r.get("stalls", []):
                print(f"    stall: round trip {s['before_ms']:.0f} -> {s['worst_ms']:.0f} ms, {s['after_2s_ms']} ms 2 s later; "
                      f"back within {args.recovered_ms:g} ms after {s['recovered_s']} s")
    return out
