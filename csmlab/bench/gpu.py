"""Moshi 7B, CSM-1B, Mimi and the duplex pipeline on one device, at real size: one run, one JSON per figure set.

    csmlab bench gpu --device cuda --size real --out DIR     # the GPU run (random weights built on the GPU)
    csmlab bench gpu --device cpu --size small --out DIR     # the same code on the small offline models, seconds

Five figure sets, each written to `DIR/gpu_<set>.json` with the device, driver, torch and the command:

1. `moshi_one`: one conversation, ms per 80 ms step split into the temporal transformer, the
   depformer and Mimi's encode and decode (p50/p95 after a warm-up), with and without moshi's own
   CUDA graphs (`LMGen` and Mimi capture them by default on CUDA), csmlab's `MoshiStream` step, and
   peak memory;
2. `moshi_batch`: `MoshiBatch` (what `ConversationPool` steps) at B conversations until memory or
   the 80 ms step runs out: ms per step and per conversation, KV memory per conversation, and how
   many real-time conversations the device holds; moshi's own batched `LMGen` (graphs) beside it;
3. `csm`: CSM-1B's ms per frame, time to first audio of a 2 s utterance (cold and warm), real-time
   factor, and the same with the 20-frame chunking of csm-streaming;
4. `pipeline`: `DuplexSession` + `MoshiBrain` on the real-time clock over the real call: step
   p50/p95, late %, and the device of every parameter and of the codes each layer received;
5. `mimi`: streaming encode + decode per frame at B streams (`CodecBatch`), and moshi's own
   streaming Mimi (graphs) beside it.

`--size real` builds random weights directly on the device (`csmlab.bench.on_device`): the same
compute as the released models; their audio and text are noise. `--size small` runs the offline
models (`csmlab.weights`). A figure set that fails writes its error into its file and the others
still run; the command then exits non-zero.
"""
from __future__ import annotations

import argparse
import gc
import json
import subprocess
import time
import traceback
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from moshi.utils.compile import no_compile, no_cuda_graph

from csmlab.bench import machine
from csmlab.metrics import frame_ms, latency_summary

SETS = ("moshi_one", "moshi_batch", "csm", "pipeline", "mimi")
TEXT = "Oh, I'm originally from Chicago also. I'm in New Jersey now though."
CHUNK_FRAMES = 20  # csm-streaming decodes every 20 frames
REAL_MOSHI: dict | None = None  # --size real's Moshi config; None: the released 7B (tests shrink it)
REAL_CSM: dict | None = None  # --size real's CsmConfig sizes; None: CSM-1B's (tests shrink them)
DEFAULTS = {  # (small, real)
    "steps": (4, 200), "warmup": (2, 10), "batch_steps": (3, 30), "batches": ([1, 2], [1, 4, 16, 64]),
    "mimi_batches": ([1, 2], [1, 64]), "seconds": (2.0, 60.0),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cuda = torch.cuda.is_available()
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for gpu_<set>.json")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--size", choices=("small", "real"), default=None,
                        help="real: random weights at real size built on the device (default on cuda); "
                             "small: the offline models (default on cpu)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="Moshi's and CSM's weights")
    parser.add_argument("--only", nargs="+", choices=SETS, default=list(SETS))
    parser.add_argument("--steps", type=int, help="timed steps per measurement (small 4, real 200)")
    parser.add_argument("--warmup", type=int, help="steps before timing (small 2, real 10)")
    parser.add_argument("--batch-steps", type=int, help="timed steps per batch size (small 3, real 30)")
    parser.add_argument("--batches", type=int, nargs="+", help="Moshi conversations per batch (real: 1 4 16 64)")
    parser.add_argument("--mimi-batches", type=int, nargs="+", help="Mimi streams per batch (real: 1 64)")
    parser.add_argument("--seconds", type=float, help="real-time pipeline run, seconds of the call (real: 60)")
    parser.add_argument("--csm-frames", type=int, default=25, help="CSM utterance length in frames (25 = 2 s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--compile", action="store_true",
                        help="let moshi torch.compile its small kernels (gating, rope) on CUDA; off by default: "
                             "each new shape recompiles, which would spend the run's minutes compiling")


def _settle(args) -> None:
    size = args.size or ("real" if torch.device(args.device).type == "cuda" else "small")
    args.size = size
    for name, pair in DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, pair[size == "real"])


# --------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timed:
    """A callable that records its own wall time in ms (device synchronised before and after)."""

    def __init__(self, fn, device: torch.device, into: list):
        self.fn, self.device, self.into = fn, device, into

    def __call__(self, *args):
        _sync(self.device)
        start = time.perf_counter()
        out = self.fn(*args)
        _sync(self.device)
        self.into.append(1000 * (time.perf_counter() - start))
        return out


def _eager_cpu(device: torch.device):
    """No torch.compile on the CPU (csmlab's policy, `csmlab.moshi.stream._eager`)."""
    return no_compile() if device.type == "cpu" else nullcontext()


def _graphs(on: bool):
    """moshi's CUDA graphs as moshi decides (on: captured on CUDA, never on CPU), or off."""
    return nullcontext() if on else no_cuda_graph()


def _summary(samples: list, warmup: int = 0) -> dict:
    return latency_summary(samples[warmup:]) if len(samples) > warmup else {"n": 0}


def _user_codes(lm, batch: int, count: int, seed: int = 0) -> torch.Tensor:
    """`count` frames of random user codes `[count, B, K, 1]` (timing on constant input can flatter)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, lm.card, (count, batch, lm.n_q - lm.dep_q, 1), generator=gen)


@torch.no_grad()
def lmgen_steps(lm, steps: int, warmup: int, batch: int = 1, graphs: bool = True, split: bool = True) -> dict:
    """moshi's own `LMGen.step` at `batch` rows: the whole step, and (with `split`) the temporal
    transformer and the depformer timed apart (each synchronised, which adds a little to the whole)."""
    from moshi.models import LMGen

    device = lm.device
    gen, total, parts = LMGen(lm), [], {"temporal": [], "depformer": []}
    user = _user_codes(lm, batch, 16).to(device)
    with _graphs(graphs), _eager_cpu(device), gen.streaming(batch):
        state = gen._streaming_state
        if split:
            state.graphed_main = _Timed(state.graphed_main, device, parts["temporal"])
            state.graphed_depth = _Timed(state.graphed_depth, device, parts["depformer"])
        for i in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            gen.step(user[i % len(user)])
            _sync(device)
            total.append(1000 * (time.perf_counter() - start))
    out = {"step": _summary(total, warmup)}
    if split:
        out |= {name: _summary(v, warmup) for name, v in parts.items()}
    return out


@torch.no_grad()
def mimi_frames(mimi, steps: int, warmup: int, batch: int = 1, graphs: bool = True) -> dict:
    """moshi's own streaming Mimi, one 80 ms frame per call: encode, then decode of those codes."""
    from csmlab.bench.on_device import mimi_device

    device = mimi_device(mimi)
    gen = torch.Generator().manual_seed(1)
    audio = (0.1 * torch.randn(8, batch, 1, 1920, generator=gen)).to(device)
    enc, dec = [], []
    with _graphs(graphs), _eager_cpu(device), mimi.streaming(batch):
        for i in range(warmup + steps):
            codes = _Timed(mimi.encode, device, enc)(audio[i % len(audio)])
            _Timed(mimi.decode, device, dec)(codes)
    return {"encode": _summary(enc, warmup), "decode": _summary(dec, warmup)}


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _memory(device: torch.device) -> dict:
    if device.type != "cuda":
        import psutil

        return {"process_rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3)}
    return {"peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 3),
            "allocated_gib": round(torch.cuda.memory_allocated(device) / 2**30, 3),
            "device_total_gib": round(torch.cuda.get_device_properties(device).total_memory / 2**30, 3)}


def _weights_gib(*modules) -> float:
    return round(sum(t.numel() * t.element_size() for m in modules for t in m.parameters()) / 2**30, 3)


def state_bytes(states) -> int:
    """Bytes of the tensors in streaming states (`{name: state}` dicts): KV caches, offsets, delay buffers."""
    total = 0
    for state in (s for group in states for s in group.values()):
        for value in vars(state).values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
        cache = getattr(state, "kv_cache", None)
        if cache is not None:
            total += sum(v.numel() * v.element_size() for v in vars(cache).values() if isinstance(v, torch.Tensor))
    return total


# --------------------------------------------------------------------------- the five figure sets
def moshi_one(models, args) -> dict:
    from csmlab.moshi import MoshiStream

    model, device = models.moshi(), models.device
    _peak_reset(device)
    out = {"weights_gib": {"lm": _weights_gib(model.lm), "mimi": _weights_gib(model.mimi)}}
    for graphs in (False, True) if device.type == "cuda" else (False,):
        key = "cuda_graphs" if graphs else "eager"
        lm = lmgen_steps(model.lm, args.steps, args.warmup, graphs=graphs)
        lm["step_unsplit"] = lmgen_steps(model.lm, args.steps, args.warmup, graphs=graphs, split=False)["step"]
        out[key] = {"lm": lm, "mimi": mimi_frames(model.mimi, args.steps, args.warmup, graphs=graphs)}
        parts = [lm["step_unsplit"]["p50"], out[key]["mimi"]["encode"]["p50"], out[key]["mimi"]["decode"]["p50"]]
        out[key]["step_p50_ms"] = round(sum(parts), 3)
        print(f"moshi one conversation, {key}: LM step p50 {parts[0]:.1f} ms (temporal {lm['temporal']['p50']:.1f}, "
              f"depformer {lm['depformer']['p50']:.1f}), Mimi encode {parts[1]:.1f} + decode {parts[2]:.1f}")
    stream, user = MoshiStream(model, seed=0), _user_codes(model.lm, 1, 16)
    times = [stream.step(user[i % 16][0, :, 0]).ms for i in range(args.warmup + args.steps)]
    out["csmlab_moshistream_step"] = _summary(times, args.warmup)
    stream.close()
    out["memory"] = _memory(device)
    return out


def moshi_batch(models, args) -> dict:
    from csmlab.moshi.batch import MoshiBatch

    model, device = models.moshi(), models.device
    budget, rows, held = frame_ms(), [], {"moshibatch": 0, "lmgen_graphs": 0}
    for size in args.batches:
        row = {"conversations": size}
        try:
            allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            batch = MoshiBatch(model, size)
            slots = [batch.join(seed=i) for i in range(size)]
            row["kv_state_mib_per_conversation"] = round(state_bytes(batch.states) / size / 2**20, 3)
            if device.type == "cuda":
                row["allocated_mib_per_conversation"] = round((torch.cuda.memory_allocated(device) - allocated) / size / 2**20, 3)
            user, times = _user_codes(model.lm, size, 16), []
            for i in range(args.warmup + args.batch_steps):
                frames = {slot: user[i % 16][slot, :, 0] for slot in slots}
                times.append(next(iter(batch.step(frames).values())).ms)
            batch.close()
            del batch
            row["moshibatch_step"] = _summary(times, args.warmup)
            row["moshibatch_ms_per_conversation"] = round(row["moshibatch_step"]["p50"] / size, 3)
            if device.type == "cuda":
                row["lmgen_graphs_step"] = lmgen_steps(model.lm, args.batch_steps, args.warmup, size, True, False)["step"]
        except Exception as err:  # noqa: BLE001 - out of memory ends the sweep (raised as a RuntimeError in a graph capture)
            if "out of memory" not in str(err).lower():
                raise
            row["stopped"] = f"out of memory: {str(err).splitlines()[0]}"
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"moshi batch {size}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k != "conversations"))
        for key, step in (("moshibatch", "moshibatch_step"), ("lmgen_graphs", "lmgen_graphs_step")):
            if step in row and row[step]["p95"] <= budget:
                held[key] = max(held[key], size)
        steps = [row[k]["p50"] for k in ("moshibatch_step", "lmgen_graphs_step") if k in row]
        if "stopped" in row or min(steps) > budget:  # no way of stepping this many is real-time: more won't be
            row.setdefault("stopped", f"every path's step p50 over {budget:.0f} ms")
            break
    return {"budget_ms": budget, "batches": rows, "realtime_conversations_held": held,
            "note": "held = the largest measured B whose LM step p95 fits 80 ms (Mimi's cost: gpu_mimi.json)",
            "memory": _memory(device)}


def csm(models, args) -> dict:
    voice, codec = models.csm()
    runs = {"cold": _speak(voice, codec, args.csm_frames, 1), "warm": _speak(voice, codec, args.csm_frames, 1),
            f"warm_chunk{CHUNK_FRAMES}": _speak(voice, codec, args.csm_frames, CHUNK_FRAMES)}
    for name, r in runs.items():
        print(f"csm {name}: first audio {r['first_audio_ms']:.0f} ms, frame p50 {r['frame_ms'].get('p50', 0):.1f} ms, "
              f"RTF {r['rtf']:.2f} ({r['frames']} frames)")
    return {"text": TEXT, "weights_gib": _weights_gib(voice.model), "model_dtype": str(voice.model.dtype),
            "runs": runs, "memory": _memory(models.device)}


def _speak(voice, codec, frames: int, chunk: int) -> dict:
    """One utterance of up to `frames` frames, decoded every `chunk` frames: first audio, ms per frame
    (generation alone; the first one includes the prompt's prefill), ms per decode, RTF."""
    from csmlab.csm import Sampling

    device, made, decoded, pending, first, samples = voice.model.device, [], [], [], None, 0

    def decode(frames_codes) -> int:
        begin = time.perf_counter()
        n = len(session.decode(torch.stack(frames_codes, 1).cpu()))
        decoded.append(1000 * (time.perf_counter() - begin))
        return n

    _sync(device)
    start = resume = time.perf_counter()
    with codec.stream() as session:
        for frame in voice.frames(TEXT, max_audio_ms=frames * 80, sampling=Sampling()):
            _sync(device)
            made.append(1000 * (time.perf_counter() - resume))
            pending.append(frame)
            if len(pending) == chunk:
                samples += decode(pending)
                pending, first = [], first or time.perf_counter()
            resume = time.perf_counter()
        if pending:
            samples += decode(pending)
            first = first or time.perf_counter()
    total = time.perf_counter() - start
    audio_s = samples / 24000
    return {"first_audio_ms": round(1000 * ((first or start) - start), 3),
            "prefill_and_first_frame_ms": round(made[0], 3) if made else None, "frame_ms": _summary(made[1:]),
            "decode_ms": _summary(decoded), "frames": len(made), "total_ms": round(1000 * total, 3),
            "audio_s": audio_s, "rtf": round(total / audio_s, 4) if audio_s else None, "chunk_frames": chunk}


def pipeline(models, args) -> dict:
    from csmlab.bench.duplex import USER, looped
    from csmlab.data import real_recording
    from csmlab.pipeline import DuplexSession
    from csmlab.pipeline.call import user_side
    from csmlab.pipeline.moshi_brain import MoshiBrain

    model, device = models.moshi(), models.device
    brain = MoshiBrain(model=model, seed=0)
    codec = brain.codec()
    seen: dict[str, set] = {"moshi lm (text ids)": set(), "mimi encoder (audio)": set(), "mimi decoder (latents)": set()}
    hooks = [module.register_forward_pre_hook(lambda _m, inputs, key=key: seen[key].add(str(inputs[0].device)))
             for key, module in (("moshi lm (text ids)", model.lm.text_emb), ("mimi encoder (audio)", codec.backend.model.encoder),
                                 ("mimi decoder (latents)", codec.backend.model.decoder))]
    side = user_side(real_recording(), USER)
    try:
        with DuplexSession(brain, clock="realtime") as session:
            for _ in session.feed(looped(side, args.seconds / 60)):
                pass
            report = session.report()
    finally:
        for hook in hooks:
            hook.remove()
    off = [f"{name}: {n} on {p.device}" for name, module in (("moshi", model.lm), ("mimi", codec.backend.model))
           for n, p in module.named_parameters() if p.device != device]
    seen_devices = {k: sorted(v) for k, v in seen.items()}
    expected = str(device)
    out = {"seconds": args.seconds, "report": report, "devices_seen": seen_devices,
           "parameters_off_device": off[:20], "all_on_device": not off and all(v == [expected] for v in seen_devices.values())}
    c = report["compute_ms"]
    print(f"pipeline real time, {args.seconds:g} s: step p50/p95 {c['total']['p50']:.1f}/{c['total']['p95']:.1f} ms, "
          f"late {report['late_pct']}%, all on {expected}: {out['all_on_device']}")
    if not out["all_on_device"]:
        raise AssertionError(f"not everything ran on {expected}: {seen_devices}, {off[:5]}")
    return out


def mimi(models, args) -> dict:
    from csmlab.codec.batch import CodecBatch
    from csmlab.pipeline.moshi_brain import moshi_codec

    model, device = models.moshi(), models.device
    codec, rows = moshi_codec(model), []
    gen = np.random.default_rng(2)
    for size in args.mimi_batches:
        batch = CodecBatch(codec, size)
        slots = [batch.join() for _ in range(size)]
        audio = (0.1 * gen.standard_normal((8, size, 1920))).astype(np.float32)
        enc, dec = [], []
        for i in range(args.warmup + args.batch_steps):
            start = time.perf_counter()
            codes = batch.encode({s: audio[i % 8][s] for s in slots})
            enc.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            batch.decode(codes)
            dec.append(1000 * (time.perf_counter() - start))
        row = {"streams": size, "codecbatch_encode": _summary(enc, args.warmup), "codecbatch_decode": _summary(dec, args.warmup)}
        if device.type == "cuda":
            row["moshi_graphs"] = mimi_frames(codec.backend.model, args.batch_steps, args.warmup, size, graphs=True)
        rows.append(row)
        print(f"mimi {size} streams: encode p50 {row['codecbatch_encode']['p50']:.1f} ms, "
              f"decode p50 {row['codecbatch_decode']['p50']:.1f} ms per step")
    return {"codec": repr(codec), "batches": rows, "memory": _memory(device)}


# --------------------------------------------------------------------------- models and the run
def on_index(device: torch.device) -> torch.device:
    """`cuda` as `cuda:N`: parameters report their device with its index, and `cuda` != `cuda:0`."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class Models:
    """The models of a run, built once on first use: real-size random weights on the device, or the offline ones."""

    def __init__(self, args):
        self.args, self.device = args, on_index(torch.device(args.device))
        self.dtype = getattr(torch, args.dtype)
        self._moshi = self._csm = None

    def sources(self) -> list[str]:
        """Which weights spoke: real, offline or random (say so in every file)."""
        out = [str(self._moshi.source)] if self._moshi is not None else []
        return out + ([str(self._csm[0].source)] if self._csm is not None else [])

    def moshi(self):
        if self._moshi is None:
            start = time.perf_counter()
            if self.args.size == "real":
                from csmlab.bench.on_device import random_moshi

                self._moshi = random_moshi(self.device, self.dtype, REAL_MOSHI)
            else:
                from csmlab import moshi

                self._moshi = moshi.load(device=str(self.device), dtype=self.dtype)
            print(f"moshi ({self._moshi.source.kind}) built in {time.perf_counter() - start:.1f} s")
        return self._moshi

    def csm(self):
        if self._csm is None:
            if self.args.size == "real":
                from csmlab.bench.on_device import random_csm_voice, random_mimi
                from csmlab.codec import Codec
                from csmlab.codec.backends import MoshiBackend

                voice = random_csm_voice(self.device, self.dtype, sizes=REAL_CSM)
                self._csm = voice, Codec(MoshiBackend.wrap(random_mimi(self.device, 32), 32), voice.mimi_source)
            else:
                from csmlab.csm import load_csm

                voice = load_csm(device=str(self.device), dtype=self.dtype)
                self._csm = voice, voice.codec()
        return self._csm


def device_description(device: torch.device) -> dict:
    """The device's name, driver, CUDA and torch versions (what a GPU figure means nothing without)."""
    out = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda, "name": None, "driver": None}
    if device.type == "cuda":
        out["name"] = torch.cuda.get_device_name(device)
        try:
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
            out["driver"] = subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        from csmlab.bench import cpu_model

        out["name"] = cpu_model()
    return out


FIGURES = {"moshi_one": moshi_one, "moshi_batch": moshi_batch, "csm": csm, "pipeline": pipeline, "mimi": mimi}


def run(args) -> dict:
    _settle(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = Models(args)
    device = models.device
    stamp = {"command": getattr(args, "command", "csmlab bench gpu"), "size": args.size, "dtype": args.dtype,
             "torch_compile": args.compile, **device_description(device)}
    summary, failed = {}, []
    with nullcontext() if args.compile else no_compile():  # one process-wide flag, for every thread
        for name in args.only:
            failed += _figure_set(name, models, args, stamp, out, summary)
    if failed:
        raise SystemExit(f"csmlab bench gpu: figure sets failed: {', '.join(failed)} (their errors are in their files)")
    return {"files": summary}


def _figure_set(name: str, models: Models, args, stamp: dict, out: Path, summary: dict) -> list[str]:
    """Measure one figure set and write its file (its error instead, if it fails); [name] if it failed."""
    start, failed = time.perf_counter(), []
    try:
        figures = FIGURES[name](models, args)
    except Exception as err:  # noqa: BLE001 - written into the set's file; the other sets still run
        traceback.print_exc()
        figures, failed = {"error": f"{type(err).__name__}: {err}"}, [name]
    record = {**stamp, "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "weights": models.sources(), "wall_s": round(time.perf_counter() - start, 2), **figures}
    path = out / f"gpu_{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str))
    summary[name] = str(path)
    print(f"wrote {path}")
    return failed
