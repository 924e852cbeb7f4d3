"""csmlab's fast streaming path for moshi's Mimi: the same modules and state, cheaper kernels.

Profiling moshi's `streaming()` on CPU, one 80 ms frame per call, shows the time going to kernels
that suit long inputs and fail on short ones, not to arithmetic:

- `aten::slow_conv_transpose2d`: the decoder's first transposed conv (1024 -> 512 channels,
  kernel 16) gets 2 input steps per frame, and PyTorch sends it to a naive kernel: tens of ms for
  16 M multiply-adds;
- `aten::mkldnn_convolution` / `_slow_conv2d_forward`: oneDNN re-lays out the (large) weights of
  the deep encoder/decoder convs on every call, for an output of a handful of steps.

With a few output steps per call a convolution is a skinny matrix product whose cost is reading its
weights once. So during a streaming call every ungrouped `Conv1d` with few output steps (at most
`GEMM_MAX_STEPS`: the deep, weight-heavy layers) becomes `unfold` + one `addmm` against its weight
viewed as `[C_out, C_in * k]`, every such `ConvTranspose1d` one `mm` followed by an overlap-add, and
every `Linear` on a few tokens (the transformers get 2 per frame) `W @ x.T`. The layout matters as
much as the kernel: BLAS reads `W` at memory speed only when the few-column operand is a transposed
view of row-major rows; with a contiguous `[K, 2]` operand, or as `x @ W.T`, the same products took
2-4x longer. Measured on this 2-core machine (per frame, 8 codebooks, 1 thread, quiet): moshi's
kernels ~127 ms; convs as GEMM 78-85 ms; with the fast layouts and the Linear path 49-50 ms, against
a batch cost of ~19 ms and a weight-read floor (every weight matrix times one vector) of ~23 ms.
Two more pieces run each frame's fixed work once instead of per layer or per call, with moshi's own
arithmetic (bit-identical, tested): Mimi's transformers step through `csmlab.codec.lean`, and the
quantizer's nearest-centroid search keeps the codebook's half of `cdist` (`nearest_codes`).
One stream's streaming convs keep their left context and partial sums through `csmlab.codec.lean` too
(a copy where moshi runs a `where` over the exec mask of its one row). The state is moshi's, swapped per
session as in `MimiStream`, and the kernels are installed only inside a call, under the model's lock
(`csmlab.locks`). Some weights are copied once into the layout their product reads: `flinear-all`
reads the first decoder conv's transposed (`WEIGHT_READ_STEPS`); `by-shape` every transposed conv's
transposed and every long conv's as per-tap bands (`csmlab.codec.convs`, remade if a weight changes).
The arithmetic is the same up to float summation order: codes equal the batch path's except at
float near-ties (measured in tests/test_codec_equivalence.py).

Those figures are the AMD EPYC's (AVX2). On an Intel Xeon with AVX-512 and AMX, `F.linear` beat
`W @ x.T` in situ, for the short convs' products too (`convs.conv1d_linear`, the `flinear-all`
candidate), and moshi's own path came close to this one (issue 23), so which of these kernels a
CPU session runs is measured on the host, once (`csmlab.codec.tuning`, `cpu_stream`). There the
transformers' small ops still took about a third of their time (each weight product evicts the next
op's code and data), so the `native` kernels run each transformer call, and the quantizer's search, as
one C call each (`csmlab.codec.native`, built where a C compiler is at hand).

Threads: a stream runs on the intra-op threads its session was given (`codec.stream(threads=...)`,
`csmlab.codec.mimi_stream.STREAM_THREADS` when none) and restores the process's setting afterwards.
"""
from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from moshi.modules.conv import StreamingConv1d
from moshi.modules.transformer import StreamingTransformer
from moshi.quantization.core_vq import EuclideanCodebook, ResidualVectorQuantization

from csmlab.codec import lean, native, tuning
from csmlab.codec.mimi_stream import MimiStream, check_threads
from csmlab.codec.convs import (conv1d_gemm, conv1d_linear, conv_transpose1d_gemm, conv_transpose1d_linear, long_conv1d,
                                long_conv_transpose1d, plain_conv, plain_conv_transpose)
from csmlab.metrics import FRAME_SIZE

GEMM_MAX_STEPS = 64  # longer inputs (the first encoder / last decoder layers: small weights) keep oneDNN
# Tokens per call up to which a Linear is a weight read, not arithmetic: 2 per stream per frame, so 16
# at 8 batched streams. A/B in one process (CodecBatch step p50, load ~1): B = 8, 354 -> 335 ms at 16;
# B = 16, 487 -> 477 ms at 32 and 468 at 64; the same codes.
LINEAR_MAX_ROWS = 32
# Rows up to which a conv's product is a weight read (a transposed conv's input steps, a conv's output
# steps, times the rows of a batch): Mimi's first decoder conv gets 2 per frame. There `flinear-all` reads
# a transposed copy of its weight (`conv_transpose1d_linear`): in situ, frames taking turns (Intel Xeon,
# 1 thread, load 0.6), 1.2 ms less per frame than `inputs @ W`; on the next one, 16 steps, the two tied.
WEIGHT_READ_STEPS = 4


def linear_gemm(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """`linear(x)` for a few rows as `W @ x.T`: [..., in] -> [..., out].

    A streaming frame brings 2 tokens to each transformer layer. For 2 rows, `F.linear` (x @ W.T)
    took 24 ms for the 200 MB of Mimi's transformer weights here, `W @ x.T` with `x.T` a transposed
    view 12 ms: the speed of reading the weights once.
    """
    rows = x.reshape(-1, x.shape[-1]).contiguous()  # row-major, so that rows.T is the fast layout
    out = torch.mm(linear.weight, rows.T).T  # [rows, out], a transposed view
    if linear.bias is not None:
        out = out + linear.bias
    return out.reshape(*x.shape[:-1], -1)


def nearest_codes(codebook, x: torch.Tensor) -> torch.Tensor:
    """`codebook._quantize(x)`: the nearest centroid of each row of `x` [N, D], as moshi finds it.

    moshi asks `torch.cdist`, which for every call squares, sums and pads the whole codebook
    (2048 x 256 floats) to meet one or two vectors. That half of the product is the same on every
    call, so it is built once per codebook (`lean.centroid_table`, which also carries cdist's -2); the
    other half and the product are the ops `cdist` runs, so the distances are bit-identical (checked
    in tests) and so are the codes.
    """
    x_norm = x.pow(2).sum(-1, keepdim=True)
    rows = torch.cat([x, F.pad(x_norm, (0, 1), value=1.0)], -1)  # [N, D + 2]: x, |x|^2, 1
    return F.linear(rows, lean.centroid_table(codebook)).clamp_min_(0).sqrt_().argmin(dim=-1)


def _short_input(gemm, stock, module: nn.Module):
    """`gemm` for the few-step outputs of a streaming call, `stock` for long ones.

    Output steps decide, not input steps: a stride-6 conv gets ~100 steps per frame and makes 16."""
    stride = module.stride[0] if isinstance(module, nn.Conv1d) else 1
    return lambda x: gemm(module, x) if x.shape[-1] // stride <= GEMM_MAX_STEPS else stock(module, x)


def _few_rows_linear(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """`by-shape`'s short convs: `F.linear` where the product has at most `WEIGHT_READ_STEPS` rows (it reads
    the weights at `torch.mv`'s speed there, and `W @ rows.T` at half of it), `W @ rows.T` above (16 rows of
    a [512, 3072] weight: 0.96 ms against F.linear's 1.35, Intel Xeon, caches flushed; in situ 0.4 ms less
    per frame over Mimi's 16-step convs)."""
    rows = x.shape[0] * ((x.shape[-1] - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) // conv.stride[0] + 1)
    return conv1d_linear(conv, x) if rows <= WEIGHT_READ_STEPS else conv1d_gemm(conv, x)


def _transposed_linear(convtr: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """`flinear-all`'s transposed convs: `F.linear` on a transposed weight where the product is a weight
    read (at most `WEIGHT_READ_STEPS` input steps), `inputs @ W` where it is arithmetic."""
    few = x.shape[-1] <= WEIGHT_READ_STEPS
    return conv_transpose1d_linear(convtr, x) if few else conv_transpose1d_gemm(convtr, x)


def _by_shape_transposed(short, convtr: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """`by-shape`'s transposed convs: the product in the conv's own layout for one row of more than
    `WEIGHT_READ_STEPS` input steps (`convs.long_conv_transpose1d`), else `flinear-all`'s (`short`)."""
    if x.shape[0] == 1 and x.shape[-1] > WEIGHT_READ_STEPS:
        return long_conv_transpose1d(convtr, x)
    return short(x)


def _fast_forward(module: nn.Module, linears: bool = True, conv_linear: bool = False, single: bool = False,
                  by_shape: bool = False, in_c: bool = False):
    """The fast forward for `module`, or None where the stock kernel is already the right one
    (`linears=False`: every Linear keeps `F.linear`; `conv_linear`: the short convs' products as
    `F.linear`, `conv1d_linear`, instead of `W @ rows.T`; `single`: a stream of one row, whose
    streaming convs step through `csmlab.codec.lean`; `by_shape`: each conv's product in the layout that
    measured fastest for its shape, `_few_rows_linear` for few output steps, `convs.long_conv1d` for many;
    `in_c`: a single stream's transformers step through `csmlab.codec.native`)."""
    if in_c and single and isinstance(module, StreamingTransformer) and native.supports(module):
        return lambda x: native.native_forward(module, x)
    if isinstance(module, StreamingTransformer) and lean.supports(module):
        return lambda x: lean.lean_forward(module, x)
    if single and lean.supports_conv(module):
        step = lean.lean_conv if isinstance(module, StreamingConv1d) else lean.lean_conv_transpose
        return lambda x: step(module, x)
    if type(module) is nn.Linear and linears:
        return lambda x: linear_gemm(module, x) if x[..., 0].numel() <= LINEAR_MAX_ROWS else nn.Linear.forward(module, x)
    if plain_conv(module):
        if by_shape:
            return _short_input(_few_rows_linear, long_conv1d, module)
        return _short_input(conv1d_linear if conv_linear else conv1d_gemm, nn.Conv1d.forward, module)
    if plain_conv_transpose(module):
        short = _short_input(_transposed_linear if conv_linear or by_shape else conv_transpose1d_gemm,
                             nn.ConvTranspose1d.forward, module)
        return functools.partial(_by_shape_transposed, short, module) if by_shape else short
    return None


class FastMimiStream(MimiStream):
    """`MimiStream` whose convolutions and few-token linears run as matrix products during its calls."""

    def __init__(self, model, batch_size: int = 1, threads: int | None = None, linears: bool = True,
                 conv_linear: bool = False, by_shape: bool = False, in_c: bool = False):
        super().__init__(model, batch_size, threads)
        # (module, method name, replacement): built once, installed for each call
        self._fast = [(m, "forward", f) for m in model.modules()
                      if (f := _fast_forward(m, linears, conv_linear, batch_size == 1, by_shape, in_c)) is not None]
        self._fast += [(m, "_quantize", functools.partial(nearest_codes, m))
                       for m in model.modules() if isinstance(m, EuclideanCodebook)]
        self._fast += [(m, name, functools.partial(step, m)) for m in model.modules()
                       if isinstance(m, ResidualVectorQuantization) and lean.supports_rvq(m)
                       for name, step in (("encode", native.rvq_encode if in_c and native.supports_rvq(m)
                                           else lean.lean_rvq_encode), ("decode", lean.lean_rvq_decode))]

    @contextlib.contextmanager
    def _kernels(self):
        """The fast forwards, the centroid search and the residual loop, for the length of one call
        (under the model's lock: another thread's call on the same modules never sees them half-installed)."""
        # An instance attribute shadows the class's method. Written straight into `__dict__`: through
        # `nn.Module.__setattr__` installing and removing these took 1.3 ms per call here.
        for module, name, method in self._fast:
            vars(module)[name] = method
        try:
            yield
        finally:
            for module, name, _ in self._fast:
                del vars(module)[name]


def cpu_stream(model, batch_size: int = 1, threads: int | None = None) -> MimiStream:
    """A stream of `model` on the CPU. One stream runs the kernels measured fastest for this host
    (`csmlab.codec.tuning`); a batch of streams (`csmlab.codec.batch`) runs the fast path, whose
    linears switch to `F.linear` past `LINEAR_MAX_ROWS` tokens anyway."""
    threads = check_threads(threads)
    if batch_size != 1:
        return FastMimiStream(model, batch_size, threads)
    return stream_of(host_kernels(model, threads), model, threads)


def host_kernels(model, threads: int) -> str:
    """The kernels (one of `tuning.KERNELS`) one CPU stream of `model` on `threads` threads runs here."""
    return tuning.kernels_for(model, threads, functools.partial(_trial, model, threads))


def stream_of(kernels: str, model, threads: int, batch_size: int = 1) -> MimiStream:
    """A stream running `kernels`, one of `tuning.KERNELS`."""
    if kernels == "moshi":
        return MimiStream(model, batch_size, threads)
    return FastMimiStream(model, batch_size, threads, linears=kernels == "fast", conv_linear=kernels == "flinear-all",
                          by_shape=kernels in ("by-shape", "native"), in_c=kernels == "native")


def _trial(model, threads: int, kernels: str):
    """One frame of noise encoded and decoded on a fresh stream of `kernels`, after one untimed frame."""
    stream, frame = stream_of(kernels, model, threads), np.random.default_rng(0).normal(0, 0.1, FRAME_SIZE).astype(np.float32)

    def step():
        stream.decode(stream.encode(frame))

    step()
    return step
