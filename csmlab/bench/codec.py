"""Mimi streaming latency per 80 ms frame: csmlab's session vs moshi's streaming() vs rustymimi, and batch.

All figures come from one run on the same audio (the real recording, resampled to 24 kHz), fed one
1920-sample frame at a time as a microphone would. Each streaming path encodes the frame and decodes
its codes; its latency is that round trip. The batch path encodes and decodes the whole clip at once,
and its cost is divided by the number of frames: the cost per frame when latency does not matter.
A real-time factor (RTF) below 1 keeps up with real time.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from csmlab import metrics
from csmlab.bench import torch_threads
from csmlab.bench.streams import conditions, parse_streams, scaling, state_mb
from csmlab.codec import FRAME_SIZE, load_codec
from csmlab.codec.batch import CodecBatch, agreement
from csmlab.codec import tuning
from csmlab.codec.fast import host_kernels, stream_of
from csmlab.codec.precision import PRECISIONS
from csmlab.data import real_recording

FRAME_S = FRAME_SIZE / 24_000


def add_arguments(parser) -> None:
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length to stream (default 10 s)")
    parser.add_argument("--codebooks", type=int, default=8, help="Mimi codebooks (default 8, as Moshi)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--warmup", type=int, default=3, help="frames run before timing each path")
    parser.add_argument("--streams", type=parse_streams, default=None, metavar="B,B,...",
                        help="instead: streams stepped together in one forward (e.g. 1,2,4,8,16), with --seconds "
                             "of audio each (default 4 s here)")
    parser.add_argument("--kernels", action="store_true", help="also every CPU stream kernel choice "
                        "(csmlab.codec.tuning) on 1 and 2 threads, all taking turns frame by frame")
    parser.add_argument("--listen", action="store_true", help="with --streams: the small trained Mimi")
    parser.add_argument("--precision", default=None, choices=sorted(set(PRECISIONS) - {"fp32"}),
                        help="instead: a reduced-precision codec next to fp32 (per-frame cost, cold frame, memory, "
                             "agreement of codes, log-mel distance); 1 thread unless --threads")


def _frames(seconds: float) -> np.ndarray:
    audio = real_recording(24_000).audio[8 * 24_000 :]  # from 8 s: the call opens with 7 s of line hiss
    n = max(1, int(seconds * 24_000) // FRAME_SIZE)
    reps = -(-n * FRAME_SIZE // len(audio))
    return np.tile(audio, reps)[: n * FRAME_SIZE].reshape(n, FRAME_SIZE)  # [n, 1920]


def _timed(step, frames: np.ndarray, warmup: int) -> tuple[list[float], list]:
    """Run `step(frame)` on every frame after `warmup` untimed frames: (latencies in ms, outputs)."""
    for frame in frames[:warmup]:
        step(frame)
    latencies, outputs = [], []
    for frame in frames:
        start = time.perf_counter()
        outputs.append(step(frame))
        latencies.append(1000 * (time.perf_counter() - start))
    return latencies, outputs


def csmlab_session(codec, frames, warmup, threads: int | None = None):
    """csmlab's `codec.stream(threads)` session, fed one frame at a time."""
    with codec.stream(threads) as s:
        _timed(lambda f: s.decode(s.encode(f, 24_000)), frames[:warmup], 0)
        s.reset()
        return _timed(lambda f: (codes := s.encode(f, 24_000), s.decode(codes))[0], frames, 0)


@torch.inference_mode()
def moshi_streaming(model, frames, warmup):
    """moshi's own `streaming()` API on its `MimiModel`, one 1920-sample frame per call."""

    def step(frame):
        codes = model.encode(torch.from_numpy(frame)[None, None])
        model.decode(codes)
        return codes[0].numpy()

    with model.streaming(1):
        _timed(step, frames[:warmup], 0)
        model.reset_streaming()
        return _timed(step, frames, 0)


def rustymimi_steps(path, frames, warmup):
    """rustymimi's `Tokenizer.encode_step` / `decode_step`; warmed up on a first tokenizer, timed on a
    fresh one, because rustymimi 0.4.1's `reset()` leaves state behind (first frame's codes differ)."""
    import rustymimi

    def stepper(tok):
        def step(frame):
            codes = tok.encode_step(frame[None, None])
            tok.decode_step(codes)
            return codes[0].astype(np.int64)

        return step

    _timed(stepper(rustymimi.Tokenizer(str(path))), frames[:warmup], 0)
    return _timed(stepper(rustymimi.Tokenizer(str(path))), frames, 0)


@torch.inference_mode()
def weight_read_floor(model, repeats: int = 7) -> dict[str, float]:
    """The least a streaming frame can cost in fp32: every weight matrix times one vector, once.

    Why it bounds streaming: each 80 ms frame runs every layer, so a session reads all of Mimi's
    weights from memory once per frame, while batch reads them once per clip and is bound by
    arithmetic instead. A matrix-vector product does the least arithmetic a weight read allows, so
    the fastest of `repeats` passes (caches warm) is a floor no exact fp32 streaming path goes under.
    """
    matrices = [p.detach().reshape(p.shape[0], -1) for p in model.parameters() if p.dim() >= 2]
    vectors = [torch.ones(m.shape[1]) for m in matrices]
    passes = []
    for _ in range(repeats):
        start = time.perf_counter()
        for m, v in zip(matrices, vectors):
            torch.mv(m, v)
        passes.append(1000 * (time.perf_counter() - start))
    megabytes = sum(m.numel() * m.element_size() for m in matrices) / 1e6
    return {"ms_per_frame": min(passes), "weights_mb": megabytes, "gb_per_s": megabytes / min(passes)}


def taking_turns(streams: dict, frames, warmup: int) -> dict:
    """Each of `streams` ({name: (step: frame -> codes [K, n], reset)}) fed every frame, taking turns
    frame by frame (the order rotated every frame), each warmed up on `warmup` frames and reset first:
    {name: (latencies ms, codes [K, n])}, the codes comparable with the batch path's.

    On a shared machine a run minutes later meets another load; turns in one run keep ratios honest."""
    names = list(streams)
    for step, reset in streams.values():
        _timed(step, frames[:warmup], 0)
        reset()
    latencies, codes = {n: [] for n in names}, {n: [] for n in names}
    for i, frame in enumerate(frames):
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter()
            codes[name].append(streams[name][0](frame))
            latencies[name].append(1000 * (time.perf_counter() - start))
    return {n: (latencies[n], np.concatenate(codes[n], axis=1)) for n in names}


def session_threads_ab(codec, frames, warmup: int, kernels: bool = False) -> dict:
    """csmlab sessions on 1 and on 2 threads taking turns (`taking_turns`): {"1": ..., "2": ...}; with
    `kernels`, also a bare stream of each of `tuning.runnable()` on each count ("fast-flinear 2t", ...)."""
    sessions = {str(n): codec.stream(threads=n) for n in (1, 2)}
    streams = {name: (lambda f, s=s: (codes := s.encode(f, 24_000), s.decode(codes))[0], s.reset)
               for name, s in sessions.items()}
    for n in (1, 2) if kernels else ():
        for k in tuning.runnable():
            bare = stream_of(k, codec.backend.model, n)
            streams[f"{k} {n}t"] = (lambda f, b=bare: (codes := b.encode(f), b.decode(codes))[0], bare.reset)
    try:
        return taking_turns(streams, frames, warmup)
    finally:
        for s in sessions.values():
            s.close()


def thread_goals(session_p50_ms: dict[int, float], floor_1_thread_ms: float) -> dict:
    """Issue 23's two ratios for the csmlab session: on 1 thread, its p50 over the weight-read floor
    measured on 1 thread (goal <= 2); the speed-up from 1 to 2 threads (goal >= 1.6)."""
    return {
        "session_1t_over_floor_1t": session_p50_ms[1] / floor_1_thread_ms,
        "session_1t_over_floor_1t_max": 2.0,
        "speedup_2t_over_1t": session_p50_ms[1] / session_p50_ms[2],
        "speedup_2t_over_1t_min": 1.6,
    }


def batch_costs(codec, frames) -> dict[str, float]:
    """Whole-clip encode and decode cost divided by the number of frames, warm, in ms: wall clock, and
    this thread's CPU time (`*_cpu_ms`).

    The warm-up runs the whole clip: oneDNN builds its kernels per input shape, and a first call at a
    new length cost 35% more here (the cold call is reported apart)."""
    audio = frames.reshape(-1)
    codec.decode(codec.encode(audio, 24_000))  # warm up, at this length
    start, cpu = time.perf_counter(), time.thread_time()
    codes = codec.encode(audio, 24_000)
    encode_ms, encode_cpu_ms = 1000 * (time.perf_counter() - start), 1000 * (time.thread_time() - cpu)
    start, cpu = time.perf_counter(), time.thread_time()
    codec.decode(codes)
    decode_ms, decode_cpu_ms = 1000 * (time.perf_counter() - start), 1000 * (time.thread_time() - cpu)
    per_frame = {"encode_ms": encode_ms, "decode_ms": decode_ms, "encode_cpu_ms": encode_cpu_ms, "decode_cpu_ms": decode_cpu_ms}
    return {**{k: v / len(frames) for k, v in per_frame.items()}, "codes": codes}


def measure(seconds: float = 10.0, num_codebooks: int = 8, warmup: int = 3, threads: int | None = None,
            turns: bool = False, kernels: bool = False) -> dict:
    """Every path on the same frames: latencies (ms per frame) and whether their codes equal batch.

    `threads` sets torch's intra-op threads for every path during the run, csmlab's session included
    (it is given the same count); None keeps the process's setting. With `turns` (the CLI's run),
    csmlab's session on 1 and on 2 threads also takes turns frame by frame, for issue 23's two ratios
    (`thread_goals`); with `kernels`, bare streams of every candidate of `csmlab.codec.tuning` on 1 and
    2 threads take those turns too (an A/B of the kernels on this host, the load the same for all).
    Off by default: on a busy 2-core machine a 2-thread frame can take seconds (notebook 01 calls this).
    """
    with torch_threads(threads):
        out = _measure(seconds, num_codebooks, warmup)
        if turns or kernels:
            out.update(_turns(load_codec(num_codebooks, "moshi"), _frames(seconds), warmup, out.pop("batch_codes"), kernels))
        out.pop("batch_codes", None)
        return out


def _turns(codec, frames, warmup: int, batch_codes: np.ndarray, kernels: bool) -> dict:
    """The sessions (and with `kernels` each kernel choice) on 1 and 2 threads taking turns; the floor
    on 1 thread; issue 23's ratios."""
    model = codec.backend.model
    chosen = {str(n): host_kernels(model, n) for n in sorted({1, 2, torch.get_num_threads()})}
    rows = {name: {**metrics.percentiles(lat), "codes_equal_batch": float((c == batch_codes).mean()), "latencies_ms": lat}
            for name, (lat, c) in session_threads_ab(codec, frames, warmup, kernels).items()}
    with torch_threads(1):
        floor_1t = weight_read_floor(model)
    return {"session_kernels": chosen, "session_threads": rows, "weight_read_floor_1_thread": floor_1t,
            "thread_goals": thread_goals({n: rows[str(n)]["p50"] for n in (1, 2)}, floor_1t["ms_per_frame"])}


def _measure(seconds: float, num_codebooks: int, warmup: int) -> dict:
    codec = load_codec(num_codebooks, "moshi")
    frames = _frames(seconds)
    batch = batch_costs(codec, frames)
    paths = {
        "csmlab session": csmlab_session(codec, frames, warmup, torch.get_num_threads()),
        "moshi streaming()": moshi_streaming(codec.backend.model, frames, warmup),
    }
    if num_codebooks == 8:
        paths["rustymimi step"] = rustymimi_steps(codec.weights.path, frames, warmup)
    out = {
        "frames": len(frames),
        "num_codebooks": num_codebooks,
        "torch_threads": torch.get_num_threads(),
        "weights": str(codec.weights),
        "streaming": {},
    }
    for name, (latencies, outputs) in paths.items():
        codes = np.concatenate(outputs, axis=1)
        out["streaming"][name] = {
            **metrics.percentiles(latencies),
            "rtf": metrics.real_time_factor(float(np.median(latencies)) / 1000, FRAME_S),
            "codes_equal_batch": float((codes == batch["codes"]).mean()),
            "latencies_ms": latencies,
        }
    per_frame = batch["encode_ms"] + batch["decode_ms"]
    out["batch"] = {
        "encode_ms_per_frame": batch["encode_ms"],
        "decode_ms_per_frame": batch["decode_ms"],
        "ms_per_frame": per_frame,
        "rtf": metrics.real_time_factor(per_frame / 1000, FRAME_S),
    }
    out["weight_read_floor"] = weight_read_floor(codec.backend.model)
    out["batch_codes"] = batch["codes"]
    ours = out["streaming"]["csmlab session"]["p50"]
    out["goal"] = {
        "floor_over_batch": out["weight_read_floor"]["ms_per_frame"] / per_frame,
        "session_over_batch": ours / per_frame,
        "session_over_batch_max": 1.6,  # issue 16's single-stream goal
        "faster_than_rustymimi": ("rustymimi step" in paths) and ours < out["streaming"]["rustymimi step"]["p50"],
    }
    return out


def print_table(figures: dict, goal: bool = True) -> None:
    """The figures as a table; `goal=False` leaves out the developers' target line (the course's view)."""
    print(f"Mimi, {figures['num_codebooks']} codebooks, {figures['frames']} frames of 80 ms; {figures['weights']}")
    print(f"torch threads for every path: {figures['torch_threads']}, csmlab's session included")
    print(f"{'path':<20}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'RTF':>7}{'codes = batch':>15}")
    for name, f in figures["streaming"].items():
        print(
            f"{name:<20}{f['p50']:>9.1f}{f['p95']:>9.1f}{f['max']:>9.1f}{f['rtf']:>7.2f}{f['codes_equal_batch']:>14.2%}"
        )
    b = figures["batch"]
    print(
        f"{'batch (per frame)':<20}{b['ms_per_frame']:>9.1f}{'':>18}{b['rtf']:>7.2f}"
        f"   (encode {b['encode_ms_per_frame']:.1f} + decode {b['decode_ms_per_frame']:.1f})"
    )
    w = figures["weight_read_floor"]
    print(
        f"{'weight-read floor':<20}{w['ms_per_frame']:>9.1f}{'':>18}{'':>7}"
        f"   (all {w['weights_mb']:.0f} MB of weights once per frame, at {w['gb_per_s']:.1f} GB/s)"
    )
    if "session_threads" in figures:
        _print_turns(figures, goal)
    if not goal:
        return
    g = figures["goal"]
    print(
        f"goal: session / batch = {g['session_over_batch']:.2f} (target <= {g['session_over_batch_max']}; "
        f"the weight-read floor alone is {g['floor_over_batch']:.2f}); faster than rustymimi: {g['faster_than_rustymimi']}"
    )


def _print_turns(figures: dict, goal: bool) -> None:
    print("taking turns frame by frame: the csmlab session on 1 and 2 threads" +
          (", and each kernel choice" if len(figures["session_threads"]) > 2 else ""))
    for name, f in figures["session_threads"].items():
        label = f"session, {name} thread{'s' * (name != '1')}" if name in ("1", "2") else f"  {name}"
        print(f"{label:<20}{f['p50']:>9.1f}{f['p95']:>9.1f}{f['max']:>9.1f}{'':>7}{f['codes_equal_batch']:>14.2%}")
    print(f"{'':<20}kernels chosen on this host (csmlab.codec.tuning): "
          + ", ".join(f"{n} thread(s) {k!r}" for n, k in figures["session_kernels"].items()))
    w1 = figures["weight_read_floor_1_thread"]
    print(f"{'floor, 1 thread':<20}{w1['ms_per_frame']:>9.1f}{'':>25}   ({w1['gb_per_s']:.1f} GB/s)")
    if not goal:
        return
    t = figures["thread_goals"]
    print(f"goal (issue 23): session on 1 thread / floor on 1 thread = {t['session_1t_over_floor_1t']:.2f} "
          f"(target <= {t['session_1t_over_floor_1t_max']}); 1 -> 2 threads speed-up = {t['speedup_2t_over_1t']:.2f} "
          f"(target >= {t['speedup_2t_over_1t_min']})")


def run(args) -> dict:
    if args.precision:
        from csmlab.bench import codec_precision

        figures = codec_precision.measure(args.precision, _frames(args.seconds), args.codebooks, args.warmup,
                                          args.threads or 1)
        codec_precision.print_report(figures)
        return figures
    if args.streams:
        figures = measure_streams(args.streams, args.seconds if args.seconds != 10.0 else 4.0, args.codebooks,
                                  args.listen, args.threads or 1)
        print_streams(figures)
        return figures
    figures = measure(args.seconds, args.codebooks, args.warmup, args.threads, turns=True, kernels=args.kernels)
    print_table(figures)
    return figures


def measure_streams(sizes: list[int], seconds: float = 4.0, num_codebooks: int = 8, listen: bool = False,
                    threads: int = 1) -> dict:
    """Encode + decode of B streams per forward (`CodecBatch`), for each B in `sizes`, next to the batch
    cost per frame and a plain single session, all in one run on `threads` torch threads.

    Stream s of a batch plays the clip from frame 7 s on, so the streams carry different audio.
    A plain `codec.stream()` session is timed in the same rounds, and the first stream of the
    largest batch is checked against it (same frames)."""
    with torch_threads(threads):
        return _measure_streams(sizes, seconds, num_codebooks, listen)


def _measure_streams(sizes, seconds, num_codebooks, listen) -> dict:
    began = conditions()
    start = time.perf_counter()
    codec = load_codec(num_codebooks, "moshi", listen=listen)
    load_s = time.perf_counter() - start
    frames = _frames(seconds)
    n = len(frames)
    start = time.perf_counter()
    codec.decode(codec.encode(frames[0], 24_000))
    first_batch_ms = 1000 * (time.perf_counter() - start)
    largest, first_stream = max(sizes), []

    def make(b):
        batch = CodecBatch(codec, b)
        slots = [batch.join() for _ in range(b)]

        def step(i):
            codes = batch.encode({s: frames[(i + 7 * s) % n] for s in slots})
            batch.decode(codes)
            if b == largest and i < n:
                first_stream.append(codes[slots[0]])

        return step, state_mb(batch.state)

    session, alone = codec.stream(), []

    def single(i):  # a plain csmlab session, timed in the same rounds
        codes = session.encode(frames[i % n], 24_000)
        session.decode(codes)
        alone.append(codes)

    # Batch is timed 3 times before the streams and 3 after (runs differed by up to 30% here): the median.
    batch_ms = [_batch_frame_ms(codec, frames) for _ in range(3)]
    rows = scaling(make, sizes, steps=n, extra={"session": single})
    batch_ms += [_batch_frame_ms(codec, frames) for _ in range(3)]
    batch_frame_ms = float(np.median([wall for wall, _ in batch_ms]))
    batch_frame_cpu_ms = float(np.median([cpu for _, cpu in batch_ms]))
    single = rows.pop("session")
    at = {b: rows[str(b)]["per_stream_frame_ms"]["p50"] / batch_frame_ms for b in sizes}
    at_cpu = {b: rows[str(b)]["per_stream_frame_cpu_ms"]["p50"] / batch_frame_cpu_ms for b in sizes}
    return {
        "title": f"{'small' if listen else 'full-size'} Mimi ({codec.weights.kind} weights), {num_codebooks} codebooks, "
                 f"encode + decode, {torch.get_num_threads()} thread",
        "weights": str(codec.weights),
        "conditions": {"start": began, "end": conditions()},
        "num_codebooks": num_codebooks,
        "frames_per_stream": n,
        "torch_threads": torch.get_num_threads(),
        "streams": rows,
        "batch_frame_ms": batch_frame_ms,
        "batch_frame_cpu_ms": batch_frame_cpu_ms,
        "batch_frame_ms_runs": batch_ms,
        "single_session_ms": single["per_step_ms"],
        "single_session_cpu_ms": single["per_step_cpu_ms"],
        "cold": {"load_s": load_s, "first_batch_call_ms": first_batch_ms,
                 "first_step_ms": {b: rows[str(b)]["first_step_ms"] for b in sizes}},
        "largest_batch_first_stream_vs_alone": agreement(np.stack(first_stream, 1), np.concatenate(alone[:n], 1)),
        "goal": {
            "per_stream_over_batch": at,
            "per_stream_over_batch_cpu": at_cpu,
            "b8_over_batch_max": 1.3,
            "single_session_over_batch": single["per_step_ms"]["p50"] / batch_frame_ms,
            "single_session_over_batch_cpu": single["per_step_cpu_ms"]["p50"] / batch_frame_cpu_ms,
            "single_over_batch_max": 1.6,
        },
    }


def _batch_frame_ms(codec, frames) -> tuple[float, float]:
    """Whole-clip encode + decode per frame, warm: (wall ms, this thread's CPU ms)."""
    costs = batch_costs(codec, frames)
    return costs["encode_ms"] + costs["decode_ms"], costs["encode_cpu_ms"] + costs["decode_cpu_ms"]


def print_streams(figures: dict) -> None:
    print(figures["weights"])
    start, end = figures["conditions"]["start"], figures["conditions"]["end"]
    print(f"{start['utc']} to {end['utc']}; load average {start['load_average_1min']:.1f} -> "
          f"{end['load_average_1min']:.1f} on {start['cpu_cores']} cores: compare the CPU columns and ratios")
    print(f"{figures['title']}; {figures['frames_per_stream']} frames per stream, one forward per step")
    print(f"{'streams':>8}{'step p50':>10}{'step p95':>10}{'per stream-frame p50':>22}{'p95':>8}{'/ batch':>9}"
          f"{'CPU p50':>9}{'state MB/stream':>17}{'RSS MB/stream':>15}{'cold step':>11}")
    for key, f in figures["streams"].items():
        ratio = figures["goal"]["per_stream_over_batch"][f["streams"]]
        print(f"{key:>8}{f['per_step_ms']['p50']:>10.1f}{f['per_step_ms']['p95']:>10.1f}"
              f"{f['per_stream_frame_ms']['p50']:>22.1f}{f['per_stream_frame_ms']['p95']:>8.1f}{ratio:>9.2f}"
              f"{f['per_stream_frame_cpu_ms']['p50']:>9.1f}{f['state_mb_per_stream']:>17.2f}"
              f"{f['rss_mb_per_stream']:>15.1f}{f['first_step_ms']:>11.0f}")
    g, c = figures["goal"], figures["cold"]
    print(f"batch (whole clip) per frame: {figures['batch_frame_ms']:.1f} ms wall, {figures['batch_frame_cpu_ms']:.1f} ms "
          "CPU (median of " + ", ".join(f"{w:.1f}/{c:.1f}" for w, c in figures["batch_frame_ms_runs"]) + " in this run)")
    print(f"single csmlab session (same rounds): p50 {figures['single_session_ms']['p50']:.1f} ms per frame = "
          f"{g['single_session_over_batch']:.2f} x batch wall, {g['single_session_over_batch_cpu']:.2f} x batch CPU "
          f"(goal <= {g['single_over_batch_max']})")
    if 8 in g["per_stream_over_batch"]:
        print(f"B = 8: {g['per_stream_over_batch'][8]:.2f} x batch per stream-frame wall, "
              f"{g['per_stream_over_batch_cpu'][8]:.2f} x CPU (goal <= {g['b8_over_batch_max']})")
    a = figures["largest_batch_first_stream_vs_alone"]
    print(f"largest batch, stream 0 vs alone: codebook 0 {a['codebook0']:.2%} equal, all codes {a['overall']:.2%}")
    print(f"cold: load {c['load_s']:.1f} s, first batch call {c['first_batch_call_ms']:.0f} ms, first step "
          + ", ".join(f"B={b}: {ms:.0f} ms" for b, ms in c["first_step_ms"].items()))



def plot_latencies(figures: dict, ax=None):
    """Box plot of per-frame streaming latency per path, with the 80 ms real-time line and batch cost."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.2))[1]
    names = list(figures["streaming"])
    ax.boxplot([figures["streaming"][n]["latencies_ms"] for n in names], vert=False, showfliers=True)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.axvline(1000 * FRAME_S, color="red", ls="--", label="80 ms: real time")
    ax.axvline(figures["batch"]["ms_per_frame"], color="green", ls=":", label="batch cost per frame")
    ax.axvline(figures["weight_read_floor"]["ms_per_frame"], color="0.4", ls="-.", label="weight-read floor")
    ax.set_xlabel("encode + decode latency per 80 ms frame (ms)")
    ax.legend(loc="lower right", fontsize=8)
    return ax
