"""`csmlab bench duplex --brain moshi+csm`: the lag of CSM voicing Moshi's words, per phrase policy.

The call is played once per phrase policy through a `DuplexSession` on `MoshiCsmBrain`, Diane as the
user. With Moshi's real weights Moshi speaks; offline (random weights: random words at random
steps) the REPLAY of Sheila's words in the call stands in for its text stream, and says so. For
each policy: the lag per phrase (from the step Moshi sampled its first word to the end of the step
that carried its first frame, CSM's compute included) at p50/p95, the same against Moshi's own voice
(which comes `delay` steps after its text), CSM's compute per frame and for a phrase's first frame,
whether CSM keeps up, what became of the words, and the continuity: consecutive phrases of one
stretch of Moshi's speech that join without a silent step, and the gaps where CSM waited for words.

`real_size_arithmetic()` then asks whether CSM-1B voices Moshi in real time, from the real-size
figures `csmlab bench csm` and `csmlab bench moshi` cached in data/results/ (this CPU) and
published GPU figures, marked as published.
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np

from csmlab.metrics import frame_ms, latency_summary

FRAME_MS = frame_ms()
POLICIES = ("k1", "k2", "k3", "k5", "punct", "pause")
TAIL_S = 4.0  # silence after the call, so that the last phrases can finish

# Published GPU figures (not measured here): whoever published them, on what, and where.
PUBLISHED = {
    "moshi": {"figure": "160 ms theoretical latency, 200 ms in practice, on an L4 GPU",
              "source": "Kyutai, Moshi paper (Defossez et al. 2024) and the kyutai-labs/moshi README", "published": True},
    "csm_1b": {"figure": "real-time factor 0.87 (transformers, eager) and 0.46 (torch.compile + CUDA graphs) on an RTX 5090",
               "rtf_eager": 0.87, "rtf_compiled": 0.46,
               "source": "third party: the D3velop-llc/csm-rtx5090 README (Sesame publishes no speed figure)", "published": True},
}


def continuity(phrases) -> dict:
    """Consecutive phrases whose words Moshi said while the first was still being voiced: joined in
    the same step (no silent step), or a gap where CSM waited for the policy to close the next one."""
    joined, gaps = 0, []
    for p, q in zip(phrases, phrases[1:]):
        if p.status != "voiced" or q.start_step is None or q.first_word_step >= p.end_step:
            continue  # cut, never voiced, or Moshi itself paused before the next words
        gap = q.start_step - p.end_step
        joined += gap == 0
        if gap:
            gaps.append(gap * FRAME_MS)
    return {"joined": joined, "gaps": len(gaps), "gap_ms": latency_summary(gaps, digits=1) if gaps else {}}


def run_policy(spec: str, side, voice, clock: str, model=None, replay: str | None = None, ms_per_word: int = 400) -> dict:
    """The call once through `MoshiCsmBrain` with phrase policy `spec`: lags, compute, words, continuity."""
    from csmlab.pipeline import DuplexSession, make_brain

    source = {"replay": replay} if model is None else {"model": model}
    brain = make_brain("moshi+csm", policy=spec, voice=voice, transcript=side.transcript, ms_per_word=ms_per_word, **source)
    audio = np.concatenate([side.audio, np.zeros(int(TAIL_S * side.sample_rate), np.float32)])
    with DuplexSession(brain, clock=clock) as session:
        for _ in session.run(audio, side.sample_rate):
            pass
        report = session.report()
    lags = brain.lags()
    frame = lags["frame_ms"]
    out = {**lags, "keeps_up": bool(frame) and frame["p95"] <= FRAME_MS, "words": dict(Counter(f for *_, f in brain.word_fates())),
           **continuity(list(brain.phrases)), "steps_late": report["steps_late"], "steps": report["steps"],
           "text_source": repr(brain.stream), "weights": brain.weights}
    lag, vs, wait = lags["lag_ms"], lags["lag_vs_moshi_voice_ms"], lags["wait_ms"]
    print(f"  {spec:<6} {lags['phrases']:3d} phrases ({lags['started']} voiced)  lag p50/p95 {lag.get('p50', 0):7.0f}/{lag.get('p95', 0):7.0f} ms"
          f" (waited {wait.get('p50', 0):5.0f}/{wait.get('p95', 0):5.0f})  vs Moshi's voice {vs.get('p50', 0):7.0f}/{vs.get('p95', 0):7.0f}  CSM frame p50/p95 {frame.get('p50', 0):6.1f}/{frame.get('p95', 0):6.1f} ms"
          f"  joined {out['joined']}, gaps {out['gaps']}  words {out['words']}")
    return out


def measure(side, args, shared: dict, replay: str) -> dict:
    """Every phrase policy of `args.policies` on the call; Moshi when its weights are real, else the replay."""
    from csmlab.csm import load_csm
    from csmlab.pipeline.voices import CsmSpeaker
    from csmlab.weights import resolve

    load_at_start = round(os.getloadavg()[0], 2)  # machine() records the load at the end
    voice = CsmSpeaker(load_csm())
    real = resolve("moshi").is_real
    if real:
        from csmlab import moshi

        shared.setdefault("moshi", moshi.load())
    label = "Moshi (real weights)" if real else f"the REPLAY of {replay}'s words (offline: Moshi's random weights say nothing)"
    pace = 400 if voice.voice.source.is_real else pace_ms(replay)
    print(f"moshi+csm: text from {label}; CSM {voice.label}, at most {pace} ms per word; {args.clock} clock")
    policies = {spec: run_policy(spec, side, voice, args.clock, shared.get("moshi") if real else None, None if real else replay, pace)
                for spec in args.policies}
    out = {"text_source": label, "csm": voice.label, "clock": args.clock, "ms_per_word": pace,
           "load_average_1min_at_start": load_at_start, "policies": policies}
    out["real_size"] = real_size_arithmetic(policies)
    return out


def pace_ms(speaker: str) -> int:
    """Random-weight CSM never says its end-of-audio frame: each phrase lasts its whole budget. The budget
    is then the replayed speaker's own pace (whole frames), so that CSM takes as long as they did."""
    from csmlab.data import real_recording
    from csmlab.pipeline.replay import speaking_pace_ms

    return int(round(speaking_pace_ms(real_recording(), speaker) / FRAME_MS) * FRAME_MS)


def real_size_arithmetic(policies: dict) -> dict:
    """Does CSM-1B voice Moshi in real time? Per 80 ms step, Moshi's step and CSM's frame, from the cached
    real-size runs (this CPU) and the published GPU figures."""
    from csmlab.bench import results

    try:
        csm, moshi = results.load("bench_csm"), results.load("bench_moshi")
    except Exception as err:  # noqa: BLE001 - the arithmetic is optional; say why it is missing
        print(f"  real size: {err}")
        return {"missing": str(err)}
    frames = {dtype: r["frame_ms"] for dtype, r in csm["real_size"].items()}
    moshi_ms = moshi["real_size"]["float32"]["full_step_ms"]
    small = [p["frame_ms"]["p50"] for p in policies.values() if p["frame_ms"]]
    out = {"cpu": {"csm_1b_frame_ms": frames, "moshi_7b_step_ms_fp32": moshi_ms,
                   "step_ms": {dtype: ms + moshi_ms for dtype, ms in frames.items()},
                   "times_real_time": {dtype: (ms + moshi_ms) / FRAME_MS for dtype, ms in frames.items()},
                   "measured": [results.provenance(csm), results.provenance(moshi)]},
           "small_csm_frame_ms_p50": float(np.median(small)) if small else None,
           "published_gpu": PUBLISHED,
           "gpu_csm_frame_ms": {k: PUBLISHED["csm_1b"][k] * FRAME_MS for k in ("rtf_eager", "rtf_compiled")}}
    for dtype, ms in frames.items():
        print(f"  real size on this CPU: CSM-1B {dtype} {ms:.0f} ms per frame + Moshi-7B fp32 {moshi_ms:.0f} ms per step"
              f" = {ms + moshi_ms:.0f} ms per 80 ms step: {(ms + moshi_ms) / FRAME_MS:.0f}x slower than real time")
    g = out["gpu_csm_frame_ms"]
    print(f"  published (not measured here): CSM-1B {g['rtf_eager']:.0f} ms (eager) / {g['rtf_compiled']:.0f} ms (compiled) per frame on an "
          f"RTX 5090; Moshi holds real time on an L4. On one GPU, CSM fits beside Moshi if Moshi's step leaves it that much of 80 ms.")
    return out
