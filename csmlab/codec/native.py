"""Mimi's streaming transformer call and quantizer search in C: one call each, nothing between.

A streaming frame brings 2 tokens to each of Mimi's two 8-layer transformers. `csmlab.codec.lean` runs
moshi's arithmetic with as few PyTorch ops as it can (257 per transformer call), and still, on 1
thread, the ops around the weight products took about a third of the transformers' time: each
product streams megabytes through the caches, and the next small op finds its code and data evicted
(a GELU on 2 tokens: 48 us in a frame, 8 us warm; DEVELOPERS.md, "Where a Mimi CPU frame goes").
`native_forward` runs the norms, products, rotations, cache writes, attention, GELU and residuals of
all layers in `native.c`, one call per transformer call; `rvq_encode` runs the quantizer's residual
loop, 8 nearest-centroid searches, in one call. Measured while developing it, frames of the two
kernel sets taking turns in one process (Intel Xeon, full-size Mimi): 1 thread 52.4 -> 42.4 ms a
frame, 2 threads 32.0 -> 26.4 (the quiet benches' figures: the README's hardware table). On 2 threads the
products, attention heads and centroid blocks split across PyTorch's own OpenMP threads (the
library binds to PyTorch's libgomp; where PyTorch runs another runtime it is built single-threaded
rather than start a second pool), each output computed whole by one thread: the same bits on 1 and 2.

The arithmetic is moshi's in another order: outputs agree to float rounding, not bit for bit, and a
stream's codes equal the batch path's (tests: the small trained Mimi, full-size offline Mimi). It
serves one stream whose one row executes, fp32 on the CPU, the layer shape `supports` checks;
anything else (several rows, a row masked out, a model moved off the CPU or out of fp32 since its
stream was made, a layer swapped for another kind: checked at every call) takes the lean step. C
reads raw memory, so every tensor it reads is checked for size, type, layout and place at every
call; a parameter replaced by one of another size is an error, not a crash. The kernel set `native`
(`csmlab.codec.tuning`) uses both; the tuning picks it only where it measured fastest.

The library is built on first use with the system's C compiler (`CC`, else `cc`) for this processor
(-march=native), once, into `<csmlab cache>/native/` under a key of the source, the compiler and the
processor. Without a compiler `available()` is False, `unavailable_reason()` says why (so does
`csmlab doctor`), and the other kernel sets run.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from csmlab.codec import lean
from csmlab.host import cpu_flags, cpu_model

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native.c")
MAX_STEPS = 4  # native.c's MAX_STEPS: tokens per call
MAX_CAPACITY = 4096  # native.c's MAX_CAPACITY: ring-cache slots (each head keeps a row of weights per query on its stack)
PARAMS = 11  # native.c's PARAMS: pointers per layer, in `_Plan`'s order
OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp")


class _Library:
    """The built library's two entry points, or why there is none."""

    def __init__(self, step=None, rvq=None, reason: str = "", threaded: bool = False):
        self.step, self.rvq, self.reason, self.threaded = step, rvq, reason, threaded

    def threads(self) -> int:
        """Threads a call may use: PyTorch's count for the calling thread, 1 for a build without OpenMP."""
        return torch.get_num_threads() if self.threaded else 1


def available() -> bool:
    """Whether the native step could be built and loaded on this machine."""
    return _library().step is not None


def unavailable_reason() -> str:
    """Why `available()` is False ("" when it is True)."""
    return _library().reason


def supports(transformer) -> bool:
    """Whether `transformer` (moshi's `StreamingTransformer`) is a shape `native.c` runs: `lean.supports`'s
    layers, each with plain LayerNorms, LayerScales, exact GELU and bias-free `nn.Linear`s (not int8
    ones, `csmlab.codec.precision`), all alike, fp32 on the CPU, sizes in 16s."""
    layers = transformer.layers
    if not layers or not lean.supports(transformer):
        return False
    first, hidden = layers[0], layers[0].linear1.out_features
    dim, heads = first.self_attn.embed_dim, first.self_attn.num_heads
    return (all(_layer_fits(layer, first) for layer in layers)
            and all(p.dtype == torch.float32 and p.device.type == "cpu" for p in transformer.parameters())
            and dim % heads == 0 and (dim // heads) % 16 == 0 and hidden % 16 == 0)


def _layer_fits(layer, first) -> bool:
    """`layer` is the kind native.c computes, with `first`'s sizes and settings."""
    attn, linears = layer.self_attn, (layer.linear1, layer.linear2, layer.self_attn.in_projs[0],
                                      layer.self_attn.out_projs[0])
    return (all(type(m) is nn.Linear and m.bias is None for m in linears)
            and type(layer.norm1) is nn.LayerNorm and type(layer.norm2) is nn.LayerNorm
            and layer.norm1.eps == layer.norm2.eps == first.norm1.eps
            and all(hasattr(s, "scale") and s.channel_last for s in (layer.layer_scale_1, layer.layer_scale_2))
            and layer.activation is F.gelu and layer.linear1.out_features == first.linear1.out_features
            and (attn.embed_dim, attn.num_heads, attn.context, attn.rope.max_period)
            == (first.self_attn.embed_dim, first.self_attn.num_heads, first.self_attn.context,
                first.self_attn.rope.max_period))


def native_forward(transformer, x: torch.Tensor) -> torch.Tensor:
    """`transformer(x)` while streaming one row, [1, T, C] -> [1, T, C]; `lean_forward` otherwise
    (not streaming, several rows or a row masked out, more than `MAX_STEPS` tokens, a cache too large,
    not fp32 on the CPU, a layer swapped for a kind `supports` refuses: checked at every call)."""
    library, state = _library(), transformer._streaming_state
    plan = None if library.step is None or state is None else _plan(transformer)
    if plan is None or not _one_row(state, x, plan.dim):
        return lean.lean_forward(transformer, x)
    attn, steps = transformer.layers[0].self_attn, x.shape[1]
    cache = attn._streaming_state.kv_cache
    if cache.capacity > MAX_CAPACITY:
        return lean.lean_forward(transformer, x)
    tensors = plan.tensors(cache.capacity)  # held until the call returns: C reads them
    out = x.contiguous().clone()  # [1, T, C], updated in place
    scratch = torch.empty(steps * (5 * plan.dim + plan.hidden), dtype=torch.float32)
    frequencies = lean._frequencies(plan.dim // plan.heads, attn.rope.max_period)
    status = library.step(library.threads(), len(transformer.layers),
                          (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors]), out.data_ptr(),
                          scratch.data_ptr(), steps, plan.dim, plan.heads, plan.hidden, cache.capacity, attn.context,
                          attn._streaming_state.offset.item(), cache.end_offset.item(), frequencies.data_ptr(),
                          plan.eps)
    if status:
        raise RuntimeError(f"native.c refused a call that csmlab.codec.native checked (status {status}): a bug")
    lean._advance_all(transformer, state, steps)
    return out


def _one_row(state, x: torch.Tensor, dim: int) -> bool:
    """A call native.c takes: one executing row of up to `MAX_STEPS` fp32 tokens of `dim` on the CPU."""
    return (x.dim() == 3 and x.shape[0] == 1 and 1 <= x.shape[1] <= MAX_STEPS and x.shape[2] == dim
            and x.dtype == torch.float32 and x.device.type == "cpu"
            and state.exec_mask.shape[0] == 1 and bool(state.exec_mask.item()))


class _Plan:
    """Where one transformer's tensors live, found once (walking the modules' attributes took 120 us a
    call): for each layer, its parameters as (its module's parameter dict, its name, the floats native.c
    reads) and its attention module (whose ring cache is the session's own); and every module on the
    way with its parent's module dict, to notice a layer swapped for another."""

    def __init__(self, transformer):
        layers = transformer.layers
        first = layers[0]
        self.dim, self.heads = first.self_attn.embed_dim, first.self_attn.num_heads
        self.hidden, self.eps = first.linear1.out_features, first.norm1.eps
        self.layers, self.path = [], [(transformer._modules, "layers", layers)]
        for i, layer in enumerate(layers):
            attn = layer.self_attn
            self.path += [(layers._modules, str(i), layer), (attn._modules, "in_projs", attn.in_projs),
                          (attn._modules, "out_projs", attn.out_projs), (attn.in_projs._modules, "0", attn.in_projs[0]),
                          (attn.out_projs._modules, "0", attn.out_projs[0])]
            self.path += [(layer._modules, name, getattr(layer, name)) for name in
                          ("self_attn", "norm1", "norm2", "linear1", "linear2", "layer_scale_1", "layer_scale_2")]
        self.supported = supports(transformer)
        for layer in layers if self.supported else ():
            attn, d, h = layer.self_attn, self.dim, self.hidden
            parameters = [(m._parameters, name, size) for m, name, size in (
                (layer.norm1, "weight", d), (layer.norm1, "bias", d), (attn.in_projs[0], "weight", 3 * d * d),
                (attn.out_projs[0], "weight", d * d), (layer.layer_scale_1, "scale", d), (layer.norm2, "weight", d),
                (layer.norm2, "bias", d), (layer.linear1, "weight", h * d), (layer.linear2, "weight", d * h),
                (layer.layer_scale_2, "scale", d))]
            self.layers.append((parameters, attn))

    def current(self) -> bool:
        """No module on the way was swapped since the plan was made."""
        return all(modules.get(name) is module for modules, name, module in self.path)

    def tensors(self, capacity: int) -> list[torch.Tensor]:
        """Each layer's parameters then its ring cache, in native.c's order, checked: C reads raw memory,
        so a tensor of another size, type, layout or place is an error here, not a crash there."""
        found = []
        for parameters, attn in self.layers:
            found += [(modules[name], size) for modules, name, size in parameters]
            found.append((vars(attn)["_streaming_state"].kv_cache.cache, 2 * capacity * self.dim))
        if not all(t.numel() == n and t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"
                   for t, n in found):
            raise ValueError("a transformer parameter changed size, type, layout or device after its stream was made: "
                             "make a new stream (codec.stream())")
        return [t for t, _ in found]


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # transformer -> _Plan


def _plan(transformer) -> _Plan | None:
    """The transformer's plan, or None where native.c does not run it; made again, and `supports` asked
    again, when a module on the way was swapped (an int8 layer, say, sends the calls to the lean step,
    and the layer swapped back sends them here again)."""
    plan = _PLANS.get(transformer)
    if plan is None or not plan.current():
        plan = _PLANS[transformer] = _Plan(transformer)
    return plan if plan.supported else None


def supports_rvq(vq) -> bool:
    """Whether `vq` (moshi's `ResidualVectorQuantization`) is one `rvq_encode` runs: `lean.supports_rvq`'s,
    Euclidean codebooks of fp32 on the CPU, a dimension in 16s."""
    books = [layer._codebook for layer in vq.layers]
    return lean.supports_rvq(vq) and all(
        b.embedding.dtype == torch.float32 and b.embedding.device.type == "cpu" and b.embedding.shape[-1] % 16 == 0
        and b.embedding.shape == books[0].embedding.shape for b in books)


def rvq_encode(vq, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
    """`vq.encode(x, n_q)`: [B, D, N] latents -> codes [n_q, B, N], moshi's residual loop in one call.

    Why: on 1 thread the 8 codebooks' searches took 3.1 ms of a frame as PyTorch ops (6 ops each,
    around reading 2 MB per codebook), 2.0 on 2 threads. The distances are cdist's formula on
    `lean.centroid_table`'s rows, summed in another order: a code can differ from moshi's only
    where two centroids are as near as float rounding (the tests compare codes)."""
    library = _library()
    layers = vq.layers[: n_q or len(vq.layers)]
    bins, dim = layers[0]._codebook.embedding.shape
    if (library.rvq is None or x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 3 or x.shape[1] != dim
            or any(e.dtype != torch.float32 or e.device.type != "cpu" or e.shape != (bins, dim)  # what C reads
                   for e in (layer._codebook.embedding for layer in layers))):
        return lean.lean_rvq_encode(vq, x, n_q)
    rows = x.transpose(1, 2).reshape(-1, dim).contiguous()  # [B * N, D]
    tables = [lean.centroid_table(layer._codebook) for layer in layers]  # [bins, D + 2] each, contiguous
    embeddings = [layer._codebook.embedding.contiguous() for layer in layers]
    codes = torch.empty(len(layers), rows.shape[0], dtype=torch.long)
    residual = torch.empty_like(rows)
    status = library.rvq(library.threads(), len(layers), (ctypes.c_void_p * len(layers))(*[t.data_ptr() for t in tables]),
                         (ctypes.c_void_p * len(layers))(*[e.data_ptr() for e in embeddings]), bins, dim,
                         rows.data_ptr(), rows.shape[0], codes.data_ptr(), residual.data_ptr())
    if status:
        raise RuntimeError(f"native.c refused a search that csmlab.codec.native checked (status {status}): a bug")
    return codes.view(len(layers), x.shape[0], x.shape[2])


def compiler() -> tuple[str, list[str] | None]:
    """The C compiler the library is built with, as set (`CC`, else `cc`; `CC` may carry arguments, as
    in "ccache gcc"), and its command line with the program's path (None: the program is not found)."""
    name = os.environ.get("CC") or "cc"
    words = shlex.split(name) or ["cc"]
    path = shutil.which(words[0])
    return name, None if path is None else [path, *words[1:]]


@functools.cache
def _library() -> _Library:
    """Built (or found built) and loaded once per process: with OpenMP where it joins PyTorch's own
    runtime, else, or where that build fails or brings a second runtime, without."""
    name, command = compiler()
    if command is None:
        return _unavailable(f"no C compiler ({name!r} not found; set CC to one)")
    failures = []
    for threaded in (True, False) if _torch_runs_libgomp() else (False,):
        before = _openmp_runtimes()
        try:
            library = ctypes.CDLL(str(_built(command, _flags(threaded))))
        except (OSError, subprocess.SubprocessError) as err:
            failures.append(str(err))
            continue
        added = _openmp_runtimes() - before if threaded else set()
        if added:  # a second pool beside PyTorch's: the build without OpenMP
            failures.append(f"it loaded another OpenMP runtime ({', '.join(sorted(added))})")
            continue
        if [library.limits(i) for i in range(3)] != [MAX_STEPS, PARAMS, MAX_CAPACITY]:
            return _unavailable("native.c and native.py disagree on its sizes (MAX_STEPS, PARAMS, MAX_CAPACITY)")
        if failures:
            log.info("csmlab's native kernels run on one thread: %s", failures[-1])
        return _Library(*_entry_points(library), threaded=threaded)
    return _unavailable(f"building {SOURCE.name} failed: {failures[-1]}")


def _entry_points(library: ctypes.CDLL):
    """`transformer_step` and `rvq_encode`, typed."""
    pointer, number = ctypes.c_void_p, ctypes.c_int
    step, rvq = library.transformer_step, library.rvq_encode
    step.argtypes = [number, number, pointer, pointer, pointer] + [number] * 6 + [ctypes.c_int64, ctypes.c_int64,
                                                                                  pointer, ctypes.c_float]
    rvq.argtypes = [number, number, pointer, pointer, number, number, pointer, number, pointer, pointer]
    step.restype = rvq.restype = ctypes.c_int
    return step, rvq


def _flags(threaded: bool) -> list[str]:
    return ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC"] + (["-fopenmp"] if threaded else [])


def _unavailable(reason: str) -> _Library:
    log.info("csmlab's native kernels are unavailable: %s", reason)
    return _Library(reason=reason)


def _torch_runs_libgomp() -> bool:
    """Whether ATen's parallel backend is OpenMP and its runtime is loaded as `libgomp.so.1`: a library
    built with -fopenmp (GCC's) then binds to that same copy (the loader matches the name), so its
    threads are PyTorch's. `_library` checks after loading that no other runtime came with it."""
    return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info() and any(
        line.endswith("/libgomp.so.1") for line in _maps())


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (files named libgomp*, libomp*, libiomp*)."""
    return {line.split()[-1] for line in _maps() if os.path.basename(line.split()[-1]).startswith(OPENMP_RUNTIMES)}


def _maps() -> list[str]:
    try:
        return [line for line in Path("/proc/self/maps").read_text().splitlines() if "/" in line]
    except OSError:  # not Linux: no OpenMP build, nothing to compare
        return []


def _built(command: list[str], flags: list[str]) -> Path:
    """The library for this source, compiler, flags and processor: built once, then reused."""
    version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), *command, version, *flags, cpu_model(), *cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    folder = _folder()
    path = folder / f"native-{key}.so"
    if path.exists():
        return path
    print(f"[csmlab] building Mimi's native CPU kernels with {' '.join(command)} (once per machine) ...", flush=True)
    began = time.perf_counter()
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False) as tmp:
        pass
    try:
        done = subprocess.run([*command, *flags, str(SOURCE), "-o", tmp.name, "-lm"], capture_output=True,
                              text=True, timeout=300)
        if done.returncode:
            said = (done.stderr.strip() or done.stdout.strip())[-800:] or "it printed nothing"
            raise OSError(f"{' '.join(command)} exited {done.returncode}: {said}")
        os.replace(tmp.name, path)  # whole or not at all, should two processes build at once
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    log.info("built csmlab's native kernels in %.1f s: %s", time.perf_counter() - began, path)
    return path


def _folder() -> Path:
    """`<csmlab cache>/native`, else (unwritable) a folder of this user's own in the temporary
    directory, used only if no one else can write to it: the library in it is loaded and run."""
    from csmlab.weights import cache_dir

    folder = cache_dir() / "native"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    uid = os.getuid() if hasattr(os, "getuid") else None
    private = Path(tempfile.gettempdir()) / f"csmlab-native-{uid}"
    private.mkdir(mode=0o700, exist_ok=True)
    mode = private.stat()
    if uid is None or mode.st_uid != uid or mode.st_mode & 0o022:
        return Path(tempfile.mkdtemp(prefix="csmlab-native-"))  # someone else's, or shared: one for this process
    return private
