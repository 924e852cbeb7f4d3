"""Mimi's streaming transformer call and quantizer search in C: one call each, nothing between.

A streaming frame brings 2 tokens to each of Mimi's two 8-layer transformers. `csmlab.codec.lean` runs
moshi's arithmetic with as few PyTorch ops as it can (257 per transformer call), and still, on 1
thread, the ops around the weight products took about a third of the transformers' time: each
product streams megabytes through the caches, and the next small op finds its code and data evicted
(a GELU on 2 tokens: 48 us in a frame, 8 us warm; DEVELOPERS.md, "Where a Mimi CPU frame goes").
`native_forward` runs the norms, products, rotations, cache writes, attention, GELU and residuals of
all layers in `native.c`, one call per transformer call; `rvq_encode` runs the quantizer's residual
loop, 8 nearest-centroid searches, in one call. Frames taking turns with `by-shape` (Intel Xeon,
full-size Mimi): 1 thread 52.4 -> 42.4 ms a frame, 2 threads 32.0 -> 26.4. On 2 threads the
products, attention heads and centroid blocks split across PyTorch's own OpenMP threads (the
library binds to PyTorch's libgomp; where PyTorch runs another runtime it is built single-threaded
rather than start a second pool), each output computed whole by one thread: the same bits on 1 and 2.

The arithmetic is moshi's in another order: outputs agree to float rounding, not bit for bit, and a
stream's codes equal the batch path's (tests: the small trained Mimi, full-size offline Mimi). It
serves one stream whose one row executes, fp32 on the CPU, the layer shape `supports` checks;
anything else (several rows, a row masked out, a model moved off the CPU or out of fp32 since its
stream was made: checked at every call) takes the lean step. The kernel set `native`
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
MAX_CAPACITY = 4096  # ring-cache slots: each attention head keeps a row of weights per query on its stack
PARAMS = 11  # pointers per layer, in native.c's order


class _Library:
    """The built library's two entry points, or why there is none."""

    def __init__(self, step=None, rvq=None, reason: str = "", threaded: bool = False):
        self.step, self.rvq, self.reason, self.threaded = step, rvq, reason, threaded


def available() -> bool:
    """Whether the native step could be built and loaded on this machine."""
    return _library().step is not None


def unavailable_reason() -> str:
    """Why `available()` is False ("" when it is True)."""
    return _library().reason


def supports(transformer) -> bool:
    """Whether `transformer` (moshi's `StreamingTransformer`) is a shape `native.c` runs: `lean.supports`'s
    layer, LayerNorms, LayerScales, exact GELU, linears without bias, fp32 on the CPU, sizes in 16s."""
    layers = transformer.layers
    if not layers or not lean.supports(transformer):
        return False
    first = layers[0].self_attn
    dim, heads = first.embed_dim, first.num_heads
    return all(
        type(layer.norm1) is nn.LayerNorm and type(layer.norm2) is nn.LayerNorm
        and all(type(m) is nn.Linear for m in (layer.linear1, layer.linear2, layer.self_attn.in_projs[0],
                                              layer.self_attn.out_projs[0]))  # not int8 ones (csmlab.codec.precision)
        and layer.norm1.eps == layers[0].norm1.eps == layer.norm2.eps
        and all(hasattr(s, "scale") and s.channel_last for s in (layer.layer_scale_1, layer.layer_scale_2))
        and layer.activation is F.gelu
        and all(m.bias is None for m in (layer.linear1, layer.linear2, layer.self_attn.in_projs[0],
                                         layer.self_attn.out_projs[0]))
        and layer.self_attn.embed_dim == dim and layer.self_attn.num_heads == heads
        and layer.self_attn.rope.max_period == first.rope.max_period and layer.self_attn.context == first.context
        and layer.linear1.out_features == layers[0].linear1.out_features
        for layer in layers) and all(
        p.dtype == torch.float32 and p.device.type == "cpu" for p in transformer.parameters()) and (
        dim % heads == 0 and (dim // heads) % 16 == 0 and layers[0].linear1.out_features % 16 == 0)


def native_forward(transformer, x: torch.Tensor) -> torch.Tensor:
    """`transformer(x)` while streaming one row, [1, T, C] -> [1, T, C]; `lean_forward` otherwise
    (not streaming, several rows or a row masked out, more than `MAX_STEPS` tokens, a cache too large,
    not fp32 on the CPU: checked at every call, a model can move after its stream was made)."""
    state, step = transformer._streaming_state, _library().step
    attn = transformer.layers[0].self_attn
    if (step is None or state is None or x.shape[0] != 1 or state.exec_mask.shape[0] != 1
            or not 1 <= x.shape[1] <= MAX_STEPS or x.dtype != torch.float32 or x.device.type != "cpu"):
        return lean.lean_forward(transformer, x)
    cache = attn._streaming_state.kv_cache
    if cache.capacity > MAX_CAPACITY or cache.cache.dtype != torch.float32 or not state.exec_mask.item():
        return lean.lean_forward(transformer, x)
    steps, dim, hidden = x.shape[1], x.shape[2], transformer.layers[0].linear1.out_features
    out = x.contiguous().clone()  # [1, T, C], updated in place
    scratch = torch.empty(steps * (5 * dim + hidden))
    params = (ctypes.c_void_p * (PARAMS * len(transformer.layers)))(*_pointers(transformer))
    frequencies = lean._frequencies(dim // attn.num_heads, attn.rope.max_period)
    status = step(len(transformer.layers), params, out.data_ptr(), scratch.data_ptr(), steps, dim, attn.num_heads,
                  hidden, cache.capacity, attn.context, attn._streaming_state.offset.item(),
                  cache.end_offset.item(), frequencies.data_ptr(), transformer.layers[0].norm1.eps)
    assert status == 0, "native.c refused sizes that supports() accepted"
    lean._advance_all(transformer, state, steps)
    return out


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
    rvq = _library().rvq
    if rvq is None or x.dtype != torch.float32 or x.device.type != "cpu":
        return lean.lean_rvq_encode(vq, x, n_q)
    layers = vq.layers[: n_q or len(vq.layers)]
    bins, dim = layers[0]._codebook.embedding.shape
    if any(e.dtype != torch.float32 or e.device != x.device or e.shape != (bins, dim)  # what C reads: checked
           for e in (layer._codebook.embedding for layer in layers)) or x.shape[1] != dim:
        return lean.lean_rvq_encode(vq, x, n_q)
    rows = x.transpose(1, 2).reshape(-1, dim).contiguous()  # [B * N, D]
    tables = [lean.centroid_table(layer._codebook) for layer in layers]
    embeddings = [layer._codebook.embedding.contiguous() for layer in layers]
    codes = torch.empty(len(layers), rows.shape[0], dtype=torch.long)
    residual = torch.empty_like(rows)
    status = rvq(len(layers), (ctypes.c_void_p * len(layers))(*[t.data_ptr() for t in tables]),
                 (ctypes.c_void_p * len(layers))(*[e.data_ptr() for e in embeddings]), bins, dim, rows.data_ptr(),
                 rows.shape[0], codes.data_ptr(), residual.data_ptr())
    assert status == 0, "native.c refused sizes that supports_rvq() accepted"
    return codes.view(len(layers), x.shape[0], x.shape[2])


def _pointers(transformer) -> list[int]:
    """Each layer's parameters and ring cache, in native.c's order, read at every call: a weight
    replaced, reloaded or moved is followed, never a stale address. C reads raw memory, so each tensor's
    size, type, layout and place are checked first: a mismatch is an error, not a crash."""
    refs, sizes, attentions = _references(transformer)
    tensors = [params[name] for params, name in refs]
    caches = [vars(attn)["_streaming_state"].kv_cache.cache for attn in attentions]  # the session's own
    if not all(t.numel() == n and t.dtype == torch.float32 and t.is_contiguous() and not t.is_cuda
               for t, n in zip(tensors + caches, sizes + [caches[0].numel()] * len(caches))):
        raise ValueError("a transformer parameter changed size, type, layout or device after its stream was made: "
                         "make a new stream (codec.stream())")
    pointers = [t.data_ptr() for t in tensors]
    for i, cache in enumerate(caches):
        pointers.insert(PARAMS * i + PARAMS - 1, cache.data_ptr())
    return pointers


_REFERENCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _references(transformer) -> tuple[list[tuple[dict, str]], list[int], list[nn.Module]]:
    """Where each layer's parameters live ((the module's parameter dict, name), in native.c's order, the
    cache left out), the number of floats native.c reads from each, and the attention modules: found
    once per transformer, so that a call reads each parameter with one dict lookup (walking the
    modules' attributes took 120 us a call)."""
    if transformer not in _REFERENCES:
        refs, sizes = [], []
        for layer in transformer.layers:
            attn = layer.self_attn
            dim, hidden = attn.embed_dim, layer.linear1.out_features
            for module, name, size in ((layer.norm1, "weight", dim), (layer.norm1, "bias", dim),
                                       (attn.in_projs[0], "weight", 3 * dim * dim), (attn.out_projs[0], "weight", dim * dim),
                                       (layer.layer_scale_1, "scale", dim), (layer.norm2, "weight", dim),
                                       (layer.norm2, "bias", dim), (layer.linear1, "weight", hidden * dim),
                                       (layer.linear2, "weight", dim * hidden), (layer.layer_scale_2, "scale", dim)):
                refs.append((module._parameters, name))
                sizes.append(size)
        _REFERENCES[transformer] = (refs, sizes, [layer.self_attn for layer in transformer.layers])
    return _REFERENCES[transformer]


def compiler() -> tuple[str, str | None]:
    """The C compiler the library is built with (`CC`, else `cc`), and its path (None: not found)."""
    name = os.environ.get("CC") or "cc"
    return name, shutil.which(name)


@functools.cache
def _library() -> _Library:
    name, path = compiler()
    if path is None:
        return _unavailable(f"no C compiler ({name!r} not found; set CC to one)")
    threaded = _torch_runs_libgomp()
    flags = ["-O3", "-march=native", "-fno-math-errno", "-shared", "-fPIC"] + (["-fopenmp"] if threaded else [])
    try:
        library = ctypes.CDLL(str(_built(name, flags)))
    except (OSError, subprocess.SubprocessError) as err:
        return _unavailable(f"building {SOURCE.name} failed: {err}")
    pointer, number = ctypes.c_void_p, ctypes.c_int
    step, rvq = library.transformer_step, library.rvq_encode
    step.argtypes = [number, pointer, pointer, pointer] + [number] * 6 + [ctypes.c_int64, ctypes.c_int64, pointer,
                                                                          ctypes.c_float]
    rvq.argtypes = [number, pointer, pointer, number, number, pointer, number, pointer, pointer]
    step.restype = rvq.restype = ctypes.c_int
    return _Library(step, rvq, threaded=threaded)


def _unavailable(reason: str) -> _Library:
    log.info("csmlab's native transformer step is unavailable: %s", reason)
    return _Library(reason=reason)


def _torch_runs_libgomp() -> bool:
    """Whether PyTorch's OpenMP runtime is loaded as `libgomp.so.1`: a library built with -fopenmp then
    binds to that copy (the loader matches the name), so its threads are PyTorch's. With another
    runtime (Intel's, or a renamed libgomp) it would start a second pool: built single-threaded."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    return "OpenMP" in torch.__config__.parallel_info() and any(
        line.endswith("/libgomp.so.1") for line in maps.splitlines())


def _built(compiler: str, flags: list[str]) -> Path:
    """The library for this source, compiler, flags and processor: built once, then reused."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\n".join([SOURCE.read_text(), compiler, version, *flags, cpu_model(), *cpu_flags(),
                                    platform.machine()]).encode()).hexdigest()[:16]
    folder = _folder()
    path = folder / f"native-{key}.so"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".so", delete=False) as tmp:
        pass
    try:
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp.name, "-lm"], capture_output=True,
                              text=True, timeout=300)
        if done.returncode:
            raise OSError(f"{compiler} exited {done.returncode}: {done.stderr.strip()[-800:]}")
        os.replace(tmp.name, path)  # whole or not at all, should two processes build at once
    finally:
        Path(tmp.name).unlink(missing_ok=True)
    log.info("built csmlab's native transformer step in %.1f s: %s", time.perf_counter() - began, path)
    return path


def _folder() -> Path:
    from csmlab.weights import cache_dir

    folder = cache_dir() / "native"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"csmlab-native-{os.getuid() if hasattr(os, 'getuid') else 0}"
