"""Soak: real speech through `csmlab serve` for minutes, as a client would send it.

Does the service hold? A server process is started on a free loopback port; clients (the
independent aiohttp + sphn client) stream the real telephone call in 80 ms Ogg/Opus messages at
real-time pace, one session per clip, reconnecting until the time is up. Meanwhile the server's
RSS is sampled. At the end its `/metrics` give late and dropped frames and errors by kind, the
clients give their own errors and per-message turnaround (send -> answer), and SIGTERM must stop
the server with exit status 0. A leak shows as RSS growth over the second half of the run.
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import aiohttp
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from csmlab.data import real_recording
from csmlab.serve.client import RATE, converse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to stream (CI: 1)")
    parser.add_argument("--brain", default="loopback", help="the server's brain")
    parser.add_argument("--listen", action="store_true", help="offline: the small trained Mimi instead of the full-size one")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent clients")
    parser.add_argument("--clip-s", type=float, default=15.0, help="seconds per session before reconnecting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per session in the server")
    parser.add_argument("--every-s", type=float, default=1.0, help="RSS sampling period")


class Served:
    """A `csmlab serve` process: its port, and its log lines so far (read in a thread, so that
    the process never blocks on a full pipe)."""

    def __init__(self, process: subprocess.Popen, port: int, log: list[str], reader: threading.Thread):
        self.process, self.port, self.log, self._reader = process, port, log, reader

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, the graceful path; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code


READY = re.compile(r"brain \S+ ready$")


def start_server(*flags: str, env: dict | None = None, timeout_s: float = 600) -> Served:
    """`csmlab serve --port 0 *flags` in a subprocess on a free loopback port, returned once its brain
    is ready (the soak bench and the tests' `csmlab_serve` fixture both start servers this way)."""
    process = subprocess.Popen([sys.executable, "-m", "csmlab.cli", "serve", "--port", "0", *flags],
                               env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    port, ready, done = None, threading.Event(), threading.Event()

    def read_log():
        nonlocal port
        for line in process.stderr:
            lines.append(line.rstrip())
            if "listening on" in line:
                port = int(line.rsplit(":", 1)[1].split()[0])
            if READY.search(line.rstrip()):
                ready.set()
        done.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout_s
    while not ready.wait(0.1) and not done.is_set() and time.monotonic() < deadline:
        pass
    if not ready.is_set() or port is None:
        process.kill()
        raise RuntimeError(f"csmlab serve was not ready (exit status {process.wait()}):\n" + "\n".join(lines[-20:]))
    return Served(process, port, lines, reader)


@contextmanager
def server_process(*flags: str):
    """`start_server` for a `with` block: yields (process, port, log lines) and kills the process after."""
    served = start_server(*flags)
    try:
        yield served.process, served.port, served.log
    finally:
        if served.process.poll() is None:
            served.process.kill()


def _counters(text: str) -> dict:
    """Prometheus text -> {'late': n, 'dropped': n, 'steps': n, 'errors': {kind: n}, 'compute_ms': {layer: mean}}."""
    out = {"errors": {}, "compute_ms": {}}
    sums = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name in ("csmlab_late_frames_total", "csmlab_dropped_frames_total", "csmlab_steps_total"):
                out[name.split("_")[1]] = value
            elif name == "csmlab_errors_total":
                out["errors"][labels["kind"]] = value
            elif name.startswith("csmlab_step_compute_seconds_") and name[-3:] in ("sum", "unt"):
                sums.setdefault(labels["layer"], {})[name[-3:]] = value
    out["compute_ms"] = {k: 1000 * v["sum"] / v["unt"] for k, v in sums.items() if v.get("unt")}
    return out


async def _sample_rss(pid: int, every_s: float, until: float, series: list) -> None:
    process, start = psutil.Process(pid), time.monotonic()
    with tqdm(total=round(until - start), unit="s", desc="soak") as bar:
        while (now := time.monotonic()) < until:
            series.append((round(now - start, 1), process.memory_info().rss / 2**20))
            bar.n = round(now - start)
            bar.refresh()
            await asyncio.sleep(every_s)


async def _client(url: str, clip: np.ndarray, until: float, talks: list) -> None:
    while (left := until - time.monotonic()) > 1.0:
        talks.append(await converse(url, clip[: int(min(left, len(clip) / RATE) * RATE)]))


async def _soak(port: int, pid: int, args, clip: np.ndarray) -> tuple[list, list, str]:
    until = time.monotonic() + 60 * args.minutes
    url = f"ws://127.0.0.1:{port}/api/chat"
    rss, talks = [], []
    await asyncio.gather(_sample_rss(pid, args.every_s, until, rss),
                         *(_client(url, clip, until, talks) for _ in range(args.sessions)))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            return rss, talks, await response.text()


def _growth_mib_per_min(rss: list) -> float:
    """Slope of RSS over the second half of the run: start-up allocations excluded, leaks included."""
    half = [(t, m) for t, m in rss if t >= rss[-1][0] / 2]
    if len(half) < 3:
        return float("nan")
    t, m = np.array(half).T
    return float(np.polyfit(t / 60, m, 1)[0])


def summarize(args, rss: list, talks: list, metrics: dict, exit_code: int, log: list[str]) -> dict:
    whole = [t for t in talks if len(t.turnaround_ms) == t.frames_sent]  # after a drop, answer n is not frame n's
    turnaround = np.concatenate([t.turnaround_ms for t in whole] or [np.zeros(0)])
    sent = sum(t.frames_sent for t in talks)
    return {
        "minutes": args.minutes, "brain": args.brain, "listen": args.listen, "sessions": args.sessions, "conversations": len(talks),
        "frames_sent": sent, "frames_received": int(sum(len(t.audio) for t in talks) // 1920),
        "steps": metrics.get("steps", 0), "late_frames": metrics.get("late", 0), "dropped_frames": metrics.get("dropped", 0),
        "server_errors": metrics["errors"], "client_errors": [e for t in talks for e in t.errors],
        "compute_ms_mean": metrics["compute_ms"],
        "turnaround_ms": {q: float(np.percentile(turnaround, p)) for q, p in (("p50", 50), ("p95", 95), ("max", 100))}
        if turnaround.size else {},
        "turnaround_sessions": len(whole),  # sessions with every frame answered, the ones timed
        "rss_mib": [[t, round(m, 1)] for t, m in rss], "rss_start_mib": rss[0][1], "rss_end_mib": rss[-1][1],
        "rss_growth_mib_per_min": _growth_mib_per_min(rss), "exit_code": exit_code,
        "offline_weights": any("OFFLINE" in line for line in log),
    }


def _print(fig: dict) -> None:
    print(f"soak: {fig['minutes']:g} min, brain {fig['brain']}, {fig['sessions']} concurrent client(s), "
          f"{fig['conversations']} sessions")
    print(f"  frames sent {fig['frames_sent']}, received {fig['frames_received']}, late {fig['late_frames']:g}, "
          f"dropped {fig['dropped_frames']:g}")
    print(f"  errors: server {fig['server_errors'] or 'none'}, client {fig['client_errors'] or 'none'}")
    if fig["turnaround_ms"]:
        print(f"  turnaround (send -> answer, {fig['turnaround_sessions']} sessions without drops) ms: "
              + ", ".join(f"{k} {v:.1f}" for k, v in fig["turnaround_ms"].items()))
    print(f"  server RSS {fig['rss_start_mib']:.0f} -> {fig['rss_end_mib']:.0f} MiB, "
          f"second-half growth {fig['rss_growth_mib_per_min']:+.2f} MiB/min; SIGTERM exit status {fig['exit_code']}")


def run(args) -> dict:
    clip = real_recording(RATE).audio[: int(args.clip_s * RATE)]  # [T] float32, the real call at 24 kHz
    flags = ("--brain", args.brain, "--threads", str(args.threads), "--max-sessions", str(args.sessions),
             "--max-session-s", str(60 * args.minutes + 60), *(("--listen",) if args.listen else ()))
    with server_process(*flags) as (proc, port, log):
        rss, talks, text = asyncio.run(_soak(port, proc.pid, args, clip))
        proc.terminate()
        exit_code = proc.wait(timeout=60)
    figures = summarize(args, rss, talks, _counters(text), exit_code, log)
    _print(figures)
    return figures
