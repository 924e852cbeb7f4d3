"""The duplex pipeline on the real call: per-layer compute, response latency, late frames, memory.

One speaker of the 30 s two-party call (`csmlab.data.real_recording`) is the user; the call is
played in a loop for `--minutes`, through a `DuplexSession` with each brain. For each it reports
per-layer compute (p50/p95), the real-time factor, late and dropped frames, the cascade's response
latency, and the process's RSS sampled every 10 s of audio (growth after the first loop, which
warms caches up). `--clock realtime` runs on the wall clock (a 60 s run takes 60 s): the test of
whether the machine holds real time. `--split` measures whether running Moshi's user encode on a
second thread, beside the LM and the decode, pays. `--brain moshi+csm` measures the lag of CSM
voicing Moshi's words per phrase policy (`csmlab.bench.moshi_csm`). `--real-size` adds the real Moshi-7B and CSM-1B per-step
figures (random weights, the same compute) next to the brains' measured codec and VAD costs.
Offline, Mimi, Moshi and CSM have random weights: compute is real, audio and text are not.
"""
from __future__ import annotations

import argparse
import time
from typing import Iterator

import numpy as np
import psutil
import torch
from tqdm.auto import tqdm

from csmlab.data import real_recording
from csmlab.metrics import frame_ms
from csmlab.weights import resolve
from csmlab.pipeline import BRAINS, DuplexSession, Packet, make_brain
from csmlab.pipeline.call import Side, replay_side, user_side

USER, OTHER = "Diane", "Sheila"  # the call's first speaker plays the user


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--brain", nargs="+", choices=BRAINS, default=["loopback", "moshi", "cascade"])
    parser.add_argument("--minutes", type=float, default=1.0, help="audio per brain (the 30 s call, looped)")
    parser.add_argument("--clock", choices=("simulated", "realtime"), default="simulated")
    parser.add_argument("--voice", default="auto", help="the cascade's voice: auto (CSM when real, else espeak-ng), csm, espeak")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads per step (default: Moshi's brain measures 1 and all cores at session start, "
                             "cached per host; other brains keep torch's count)")
    parser.add_argument("--real-size", action="store_true", help="also time Moshi-7B and CSM-1B per step (minutes, ~8 GB)")
    parser.add_argument("--policies", nargs="+", default=None, metavar="POLICY",
                        help="moshi+csm: phrase policies to compare (k<N> words, punct, pause; default k1 k2 k3 k5 punct pause)")
    parser.add_argument("--split", type=float, default=0.0, metavar="SECONDS",
                        help="also measure Moshi's layers on two threads (user encode beside LM + decode) over this much audio")


def looped(side: Side, minutes: float, chunk_ms: float = 80.0) -> Iterator[Packet]:
    """The user's side of the call, again and again, as numbered 80 ms packets (made on the fly)."""
    size = round(side.sample_rate * chunk_ms / 1000)
    per_loop = len(side.audio) // size
    for seq in range(int(minutes * 60_000 / chunk_ms)):
        i = seq % per_loop
        yield Packet((seq + 1) * chunk_ms / 1000, side.audio[i * size:(i + 1) * size], side.sample_rate, seq)


def _brain(name: str, side: Side, args, shared: dict):
    if name == "moshi":
        from csmlab import moshi

        shared.setdefault("moshi", moshi.load())
        return make_brain("moshi", model=shared["moshi"])
    if name == "cascade":
        return make_brain("cascade", voice=args.voice, transcript=side.transcript)
    if name == "scripted":
        return replay_side(real_recording(), OTHER)  # the other speaker's real turns, at their times
    return make_brain(name)


def measure(name: str, side: Side, args, shared: dict) -> dict:
    """One brain, `--minutes` of the call: the session's report plus RSS and wall time."""
    brain = _brain(name, side, args, shared)
    process = psutil.Process()
    rss, every = [], round(10_000 / frame_ms())  # a sample per 10 s of audio
    loop_steps = round(len(side.audio) / side.sample_rate * 1000 / frame_ms())
    total = int(args.minutes * 60_000 / frame_ms())
    start = time.perf_counter()
    with DuplexSession(brain, clock=args.clock, threads=args.threads) as session:
        print(f"{name}: {session.threads.describe()}")
        for step in tqdm(session.feed(looped(side, args.minutes)), total=total, desc=name, unit="step", leave=False, mininterval=5):
            if step.index % every == 0:
                rss.append((step.index, process.memory_info().rss / 2**20))
        report = session.report()
    report["wall_s"] = round(time.perf_counter() - start, 2)
    warm = [mb for index, mb in rss if index >= loop_steps] or [mb for _, mb in rss]
    report["rss_mb"] = {"after_first_loop": round(warm[0], 1), "end": round(warm[-1], 1),
                        "growth": round(warm[-1] - warm[0], 1), "max": round(max(warm), 1), "samples": rss}
    return report


def split_gain(model, side: Side, seconds: float) -> dict:
    """Three ways to run Moshi's layers on this machine, side by side, over the same frames: encode ->
    LM -> decode one after the other on 1 thread; the same on all cores (intra-op threads); and the
    user's encode of frame t+1 on a second thread (1 intra-op thread each) while the LM and the decode
    run frame t (overlap).

    Every frame is available at once (a backlog), so this measures throughput: ms per step. For the
    first two that is also a frame's input-to-output time; the overlap's frames still take encode + LM
    + decode each (plus waits), and live it would cost one frame (80 ms) of latency. All three must
    give the same tokens (checked)."""
    from concurrent.futures import ThreadPoolExecutor

    from csmlab.audio import to_mimi
    from csmlab.codec.mimi_stream import stream_threads
    from csmlab.metrics import FRAME_SIZE
    from csmlab.moshi import MoshiStream
    from csmlab.pipeline.moshi_brain import moshi_codec
    from csmlab.pipeline.threads import usable_cores

    audio = to_mimi(side.audio[: int(seconds * side.sample_rate)], side.sample_rate)
    frames = audio[: len(audio) // FRAME_SIZE * FRAME_SIZE].reshape(-1, FRAME_SIZE)  # [T, 1920]
    codec, cores = moshi_codec(model), usable_cores()

    def one_way(pool, threads: int) -> tuple[float, list]:
        tokens = []
        with codec.stream(threads=threads) as enc, codec.stream(threads=threads) as dec, MoshiStream(model) as lm:
            start = time.perf_counter()
            pending = pool.submit(enc.encode, frames[0], 24000) if pool else None
            for t in range(len(frames)):
                if pool:
                    codes = pending.result()
                    if t + 1 < len(frames):
                        pending = pool.submit(enc.encode, frames[t + 1], 24000)
                else:
                    codes = enc.encode(frames[t], 24000)
                with stream_threads(threads):
                    out = lm.step(torch.from_numpy(codes[:, 0]))
                tokens.append(out.text_token)
                if out.audio is not None:
                    dec.decode(out.audio.numpy()[:, None])
            return 1000 * (time.perf_counter() - start) / len(frames), tokens

    with ThreadPoolExecutor(1) as pool:
        one_way(None, 1)  # warm-up
        ways = {"1 thread": (None, 1), f"{cores} intra-op threads": (None, cores), "overlap 1+1": (pool, 1)}
        ms, tokens = {}, {}
        for _ in range(2):  # taking turns, twice: the better of each
            for name, (way_pool, threads) in ways.items():
                step_ms, tokens[name] = one_way(way_pool, threads)
                ms[name] = min(ms.get(name, float("inf")), step_ms)
    same = len({tuple(t) for t in tokens.values()}) == 1
    out = {"steps": len(frames), "ms_per_step": {k: round(v, 1) for k, v in ms.items()}, "same_tokens": same,
           "speedup_vs_1_thread": {k: round(ms["1 thread"] / v, 2) for k, v in ms.items()}}
    print(f"Moshi's layers, {len(frames)} steps, all frames ready (ms per step, the better of two turns): "
          + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()) + f"; same tokens: {same}")
    return out


def _print(name: str, r: dict) -> None:
    c = r["compute_ms"]
    layers = "  ".join(f"{k} {v['p50']:.1f}/{v['p95']:.1f}" for k, v in c.items() if k != "total")
    print(f"{name:<9} weights {r['weights']:<9} {r['audio_s']:6.0f} s audio in {r['wall_s']:6.1f} s   "
          f"step p50/p95 {c['total']['p50']:6.1f}/{c['total']['p95']:6.1f} ms   RTF {r['real_time_factor']:.2f}")
    print(f"{'':<9} per layer p50/p95 ms: {layers}")
    f = r["frames"]
    print(f"{'':<9} late {r['steps_late']} ({r['late_pct']:.2f}%), concealed {f['concealed']}, dropped {f['dropped']};"
          f" RSS growth {r['rss_mb']['growth']:+.1f} MB after the first loop (max {r['rss_mb']['max']:.0f} MB)")
    if "response" in r["latency_ms"]:
        resp = r["latency_ms"]["response"]
        print(f"{'':<9} response latency p50/p95 {resp['p50']:.0f}/{resp['p95']:.0f} ms (n={resp['n']}), "
              f"algorithmic {r['latency_ms']['algorithmic']}")


def real_size(brains: dict) -> dict:
    """Moshi-7B and CSM-1B per 80 ms step at real size (random weights), and what a real-size brain would cost."""
    from csmlab import moshi as M
    from csmlab.bench.csm import real_size as csm_real_size

    print("real size, random weights (same compute as the released models), fp32 on CPU:")
    ms = {depth: float(np.median(v)) for depth, v in M.measure_depths((1, 2), torch.float32, "cpu", steps=4).items()}
    moshi_ms = M.extrapolate(ms)["full_step_ms"]
    print(f"  Moshi-7B LMGen.step  {moshi_ms:8.0f} ms per step  RTF {moshi_ms / frame_ms():.1f} (extrapolated from 1-2 layers)")
    csm_ms = csm_real_size(3, ["float32"], "cpu")["float32"]["frame_ms"]
    out = {"moshi_7b_step_ms": moshi_ms, "csm_1b_frame_ms": csm_ms}
    if "moshi" in brains:  # the codec layers were measured at full size already
        c = brains["moshi"]["compute_ms"]
        step = c["encode"]["p50"] + moshi_ms + c["decode"]["p50"]
        out["moshi_brain_real_step_ms"] = step
        print(f"  => MoshiBrain at real size: Mimi encode + Moshi-7B + Mimi decode = {step:.0f} ms, RTF {step / frame_ms():.1f}")
    if "cascade" in brains:
        step = brains["cascade"]["compute_ms"]["brain"]["p50"] + csm_ms
        out["cascade_csm_real_step_ms"] = step
        print(f"  => CascadeBrain with CSM-1B: VAD + CSM-1B frame = {step:.0f} ms, RTF {step / frame_ms():.1f}")
    return out


GOAL_P95_MS, GOAL_LATE_PCT = 70.0, 1.0  # issue 23: Moshi's brain on the real-time clock, quiet


def deadline_note(r: dict) -> str:
    """How the step's time and its deadline relate (the session runs its layers one after the other)."""
    return ("a step's layers run one after the other (each on the step's intra-op threads), so its compute is the "
            "frame's input-to-output time, due 80 ms after the frame is complete; overlapping layers (encoding the "
            "next frame beside this one's LM and decode) would raise throughput, not shorten that time, and would "
            "push each output one frame later (due 160 ms after its frame)")


def goal_line(r: dict, load: tuple[float, float]) -> str:
    p95, late = r["compute_ms"]["total"]["p95"], r["late_pct"]
    met = p95 <= GOAL_P95_MS and late <= GOAL_LATE_PCT
    busy = max(load) > (psutil.cpu_count() or 1)
    return (f"goal (real-time clock, quiet): step p95 {p95:.1f} <= {GOAL_P95_MS:g} ms and late {late:.2f}% <= "
            f"{GOAL_LATE_PCT:g}%: {'met' if met else 'not met'}; load average {load[0]:.1f} at start, {load[1]:.1f} "
            f"at end{' (BUSY: not a quiet figure)' if busy else ''}")


def run(args) -> dict:
    import os

    from csmlab.bench import machine

    torch.set_num_threads(args.threads or 1)  # brains that measure nothing keep this (1: fastest on a busy machine)
    side = user_side(real_recording(), USER)
    print(f"the real call, {USER} as the user; {args.minutes:g} min per brain, {args.clock} clock, "
          f"threads {args.threads or 'measured at session start'}; {machine()['cpu_model']}, load average "
          f"{os.getloadavg()[0]:.1f}")
    shared, figures = {}, {}
    for name in args.brain:
        if name == "moshi+csm":  # the call once per phrase policy (the replay follows the call, not a loop)
            from csmlab.bench import moshi_csm

            args.policies = args.policies or list(moshi_csm.POLICIES)
            figures[name] = moshi_csm.measure(side, args, shared, OTHER)
            continue
        load_start = os.getloadavg()[0]
        figures[name] = measure(name, side, args, shared)
        figures[name]["load_average_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)}
        _print(name, figures[name])
        if name == "moshi" and args.clock == "realtime":
            figures[name]["goal"] = goal_line(figures[name], (load_start, os.getloadavg()[0]))
            figures[name]["deadline"] = deadline_note(figures[name])
            print(f"{'':<9} {figures[name]['goal']}\n{'':<9} {figures[name]['deadline']}")
    if args.split:
        from csmlab import moshi

        figures["split"] = split_gain(shared.get("moshi") or moshi.load(), side, args.split)
    if "moshi" in shared or args.split:
        print(resolve("moshi").banner())
    if args.real_size:
        figures["real_size"] = real_size(figures)
    return {"user": USER, "minutes": args.minutes, "clock": args.clock, "brains": figures}
