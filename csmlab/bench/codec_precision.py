"""`csmlab bench codec --precision int8`: a reduced-precision Mimi next to fp32, in one run.

Streaming cost: an fp32 and a reduced session take turns on the same frames (one frame each per
round), so machine load falls on both alike; the cold first frame is each codec's first frame after
loading (fp32 goes first, so it also pays the process's one-time costs: compare cold figures
with that in mind). Fidelity: the espeak-ng utterances of data/speech, encoded in batch by both, on the
full-size Mimi and on the small trained one (`listen=True`): how many codes agree with fp32's
(codebook 0, which Moshi listens to most, and all), and the log-mel distance of the reduced round
trip (its encode, its decode) from fp32's round trip, next to fp32's own distance from the input
for scale. Memory is what the model holds (weights, scales, all 32 codebooks). The offline
full-size Mimi has random weights, whose codebook choices sit much nearer
to ties than a trained model's: its agreement is a pessimistic figure.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from csmlab import metrics
from csmlab.audio import to_mimi
from csmlab.bench import torch_threads
from csmlab.bench.streams import conditions
from csmlab.codec import load_codec
from csmlab.codec.batch import agreement
from csmlab.data import speech_utterances
from csmlab.errors import ConfigError


def measure(precision: str, frames: np.ndarray, num_codebooks: int = 8, warmup: int = 3, threads: int = 1) -> dict:
    """Side-by-side streaming cost and fidelity of `precision` against fp32, on `threads` torch threads."""
    if precision == "fp32":
        raise ConfigError("--precision compares a reduced precision with fp32: pass --precision int8")
    with torch_threads(threads):
        return _measure(precision, frames, num_codebooks, warmup)


def _measure(precision, frames, num_codebooks, warmup) -> dict:
    began = conditions()
    codecs, cold, sessions = {}, {}, {}
    for name in ("fp32", precision):
        start = time.perf_counter()
        codecs[name] = load_codec(num_codebooks, precision=name)
        load_s = time.perf_counter() - start
        sessions[name] = codecs[name].stream()
        start = time.perf_counter()
        _step(sessions[name], frames[0])
        cold[name] = {"load_s": load_s, "first_frame_ms": 1000 * (time.perf_counter() - start)}
    streaming = _streaming(sessions, frames, warmup)
    fp32, reduced = streaming["fp32"], streaming[precision]
    return {
        "precision": precision,
        "reduced": repr(codecs[precision]),
        "weights": str(codecs["fp32"].weights),
        "num_codebooks": num_codebooks,
        "frames": len(frames),
        "torch_threads": torch.get_num_threads(),
        "conditions": {"start": began, "end": conditions()},
        "streaming": streaming,
        "per_frame_ratio": {q: reduced[q] / fp32[q] for q in ("p50", "p95")},
        "cold": cold,
        "weight_mb": {"fp32": codecs[precision].backend.fp32_megabytes, precision: codecs[precision].backend.megabytes},
        "matrix_mb_read_per_frame": {"fp32": codecs[precision].backend.fp32_matrix_megabytes,
                                     precision: codecs[precision].backend.matrix_megabytes},
        "stream_vs_batch": {name: agreement(streaming[name].pop("codes"), codecs[name].encode(frames.reshape(-1), 24_000))
                            for name in codecs},
        "fidelity": {"full-size": fidelity(codecs["fp32"], codecs[precision]),
                     "small": fidelity(load_codec(num_codebooks, listen=True),
                                       load_codec(num_codebooks, listen=True, precision=precision))},
    }


def _step(session, frame: np.ndarray) -> np.ndarray:
    codes = session.encode(frame, 24_000)
    session.decode(codes)
    return codes


def _streaming(sessions: dict, frames: np.ndarray, warmup: int) -> dict:
    """Each session's per-frame encode + decode latencies, the sessions taking turns frame by frame."""
    for session in sessions.values():
        for frame in frames[:warmup]:
            _step(session, frame)
        session.reset()
    latencies = {name: [] for name in sessions}
    codes = {name: [] for name in sessions}
    for frame in frames:
        for name, session in sessions.items():
            start = time.perf_counter()
            codes[name].append(_step(session, frame))
            latencies[name].append(1000 * (time.perf_counter() - start))
    for session in sessions.values():
        session.close()
    return {name: {**metrics.percentiles(latencies[name]), "latencies_ms": latencies[name],
                   "codes": np.concatenate(codes[name], axis=1)} for name in sessions}


def fidelity(fp32, reduced) -> dict:
    """Codes and audio of `reduced` against `fp32` over the data/speech utterances (batch calls)."""
    codes, distances, own = {"fp32": [], "reduced": []}, [], []
    for audio, rate, _ in speech_utterances().values():
        x = to_mimi(audio, rate)
        ours, theirs = reduced.encode(x, 24_000), fp32.encode(x, 24_000)
        codes["reduced"].append(ours)
        codes["fp32"].append(theirs)
        reference = fp32.decode(theirs)
        distances.append(metrics.log_mel_distance(reference, reduced.decode(ours), 24_000))
        own.append(metrics.log_mel_distance(x, reference, 24_000))
    return {
        "weights": str(fp32.weights),
        "frames": sum(c.shape[1] for c in codes["fp32"]),
        "codes_vs_fp32": agreement(np.concatenate(codes["reduced"], 1), np.concatenate(codes["fp32"], 1)),
        "log_mel_vs_fp32_round_trip": float(np.mean(distances)),
        "fp32_log_mel_vs_input": float(np.mean(own)),
    }


def print_report(f: dict) -> None:
    start, end = f["conditions"]["start"], f["conditions"]["end"]
    print(f["weights"])
    print(f"{f['reduced']}")
    print(f"{start['utc']}: load average {start['load_average_1min']:.1f} -> {end['load_average_1min']:.1f} on "
          f"{start['cpu_cores']} cores; {f['frames']} frames of 80 ms, {f['torch_threads']} thread, sessions taking turns")
    print(f"{'precision':<11}{'p50 ms':>8}{'p95 ms':>8}{'cold frame ms':>15}{'MB held':>12}{'stream = batch cb0/all':>24}")
    for name, s in f["streaming"].items():
        a = f["stream_vs_batch"][name]
        print(f"{name:<11}{s['p50']:>8.1f}{s['p95']:>8.1f}{f['cold'][name]['first_frame_ms']:>15.0f}"
              f"{f['weight_mb'][name]:>12.0f}{a['codebook0']:>15.1%} / {a['overall']:.1%}")
    m = f["matrix_mb_read_per_frame"]
    print(f"weight matrices read per frame: fp32 {m['fp32']:.0f} MB, {f['precision']} {m[f['precision']]:.0f} MB")
    r = f["per_frame_ratio"]
    print(f"{f['precision']} / fp32 per frame: p50 x{r['p50']:.2f}, p95 x{r['p95']:.2f}")
    for model, d in f["fidelity"].items():
        a = d["codes_vs_fp32"]
        print(f"{model} Mimi, data/speech ({d['frames']} frames): codes equal fp32's: codebook 0 {a['codebook0']:.1%}, "
              f"all {a['overall']:.1%}; log-mel distance from fp32's round trip {d['log_mel_vs_fp32_round_trip']:.3f} "
              f"(fp32's own from the input: {d['fp32_log_mel_vs_input']:.3f})")
