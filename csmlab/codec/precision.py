"""A reduced-precision Mimi: int8 weights, bf16 activations, for cheaper streaming. Opt-in, never exact.

    codec = load_codec(8, precision="int8")   # its own model; the fp32 codec is never touched
    codec.stream(), codec.encode(...), codec.decode(...)   # as usual; codes differ from fp32 at times

Why: one 80 ms streaming frame runs every layer once, so it reads all of Mimi's weights (317 MB in
fp32) once, and on this CPU that read, not arithmetic, is the floor (`csmlab.bench.codec`). Fewer
bytes per weight is the lever. Measured here (AMD EPYC, AVX2, no avx512_bf16, torch 2.13, 1 thread)
on 400 MB of `[2048, 512]`/`[512, 2048]` matrices times 2 vectors: fp32 `W @ x.T` 65 ms; bf16
weights no faster (AVX2 has no bf16 arithmetic, the kernel converts); int8 weights through
`torch._weight_int8pack_mm` with bf16 activations 24 ms (2.7x). fbgemm's dynamic int8 Linear
(`quantize_dynamic`) was as fast but quantizes each call's activations with one scale for the
whole call, so a streamed frame and the same frame inside a batch clip got different codes; it is
also deprecated in torch 2.13. Here the activations are only rounded to bf16, element by element,
so a row's result does not depend on its neighbours (see the last paragraph for what remains).
Whole Mimi, one stream, 8 codebooks: about 0.7x fp32's per-frame cost (`csmlab bench codec --precision
int8`, data/results/bench_codec_int8.json); the rest is small-op overhead and the fp32 early layers.

What is quantized: every Linear (the transformers') and every ungrouped, unpadded Conv1d /
ConvTranspose1d with at least `MIN_WEIGHTS` weights (the deep SEANet layers): 312 of Mimi's 317 MB
of weight matrices, which become 78 MB of int8.
Each output row of a weight gets its own scale (absmax / 127, held in bf16); the small first and
last layers, norms and codebooks stay fp32. One product `x @ W.T` is then: `x` rounded to bf16,
times the int8 weights, summed in fp32, times the scale, the result rounded to bf16, plus an fp32
bias. Few rows (a streaming call) run `_weight_int8pack_mm`, which reads the int8 weights once;
many rows (a batch clip) dequantize the weights and use fp32 BLAS, which computes the same thing
(a bf16 value times an int8 times a bf16 scale is exact in fp32). On AVX2 the int8 kernel's cost
grows with the rows (25 MB of int8 weights: 6 ms for 2 rows, 13 for 8, 104 for 64; dequantize +
BLAS 166 for 64, 180 for 128), so it pays for one stream (2 rows per transformer layer) and less
and less for batched streams (`csmlab.codec.batch`: 2 rows per stream).

Streaming equals batch only up to *bf16* near-ties: rounding to bf16 turns an fp32 summation-order
difference (1e-7) into one bf16 step (4e-3) wherever a value sits near a rounding boundary, and
the codes flip where such a step meets a near-tie of the quantizer. Measured on data/speech with
the small trained Mimi: isolated flips (100 ms chunks: 99.5% of codebook 0 and 99.0% of all codes
equal; 250 ms chunks: 100% and 98.9%); on the random full-size Mimi, whose codebooks sit nearer to
ties, 92% and 91% (fp32 streaming gives 100% on both).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from csmlab.codec.backends import MoshiBackend
from csmlab.codec.convs import conv_columns, overlap_add, plain_conv, plain_conv_transpose
from csmlab.errors import ConfigError

PRECISIONS = {
    "fp32": "Mimi's own weights: exact, the default",
    "int8": "int8 weights (one bf16 scale per output row), bf16 activations, fp32 sums: cheaper streaming, "
            "codes differ from fp32 at times",
}
MIN_WEIGHTS = 2**18  # 1 MB in fp32: smaller layers run at high rates on few weights, and stay fp32
FEW_ROWS = 64  # rows up to which the int8 kernel beats dequantizing (measured: 104 vs 166 ms at 64, 246 vs 180 at 128)


def check_precision(precision: str, backend: str) -> str:
    """`precision` if csmlab offers it on `backend`, else a `ConfigError` that says what to pass."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)} "
                          "('fp32' is exact; 'int8' trades exactness for cheaper streaming)")
    if precision != "fp32" and backend != "moshi":
        raise ConfigError(f"precision={precision!r} runs on the moshi backend only: load_codec(..., backend='moshi')")
    return precision


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: `weight [N, K]` -> (`int8 [N, K]`, `bf16 scales [N]`)."""
    scales = (weight.abs().amax(dim=1) / 127).clamp_min(1e-12).to(torch.bfloat16)  # [N]
    q = torch.round(weight / scales.float()[:, None]).clamp(-127, 127).to(torch.int8)  # [N, K]
    return q.contiguous(), scales


def int8_matmul(rows: torch.Tensor, q: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """`rows [M, K]` times the int8 weight `q [N, K]` (scaled per row), as float32 `[M, N]`.

    Both branches round `rows` and the result to bf16 at the same points, so they agree up to fp32
    summation order: which one runs (few or many rows) does not change the codes beyond near-ties."""
    if rows.shape[0] <= FEW_ROWS:
        return torch._weight_int8pack_mm(rows.to(torch.bfloat16).contiguous(), q, scales).float()
    dequantized = q.float() * scales.float()[:, None]  # exact: 7-bit integer times 8-bit mantissa
    return (rows.to(torch.bfloat16).float() @ dequantized.T).to(torch.bfloat16).float()


def _bias(out: torch.Tensor, bias: torch.Tensor | None, axis: int = -1) -> torch.Tensor:
    if bias is None:
        return out
    return out + (bias if axis == -1 else bias[:, None])


def _placeholder() -> nn.Parameter:
    """An empty fp32 `weight`: moshi reads `in_proj.weight.dtype` (and a conv's first parameter's)
    to type its streaming caches, which must stay fp32. The int8 values live in `qweight`."""
    return nn.Parameter(torch.empty(0), requires_grad=False)


def _copy_conv_attributes(source: nn.Module, target: nn.Module) -> None:
    """The hyperparameters moshi's streaming wrappers and `repr` read from a conv."""
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode", "transposed", "output_padding"):
        setattr(target, attr, getattr(source, attr))


class Int8Linear(nn.Linear):
    """An `nn.Linear` with int8 weights: `[..., in] -> [..., out]` (a subclass, so moshi accepts it,
    and not `nn.Linear` itself, so `csmlab.codec.fast` leaves its forward alone)."""

    def __init__(self, linear: nn.Linear):
        nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = _placeholder()
        self.bias = linear.bias
        q, scales = quantize_rows(linear.weight.detach())
        self.register_buffer("qweight", q)  # [out, in] int8
        self.register_buffer("scales", scales)  # [out] bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)  # [M, in]
        return _bias(int8_matmul(rows, self.qweight, self.scales), self.bias).reshape(*x.shape[:-1], -1)


class Int8Conv1d(nn.Conv1d):
    """An ungrouped, unpadded `nn.Conv1d` with int8 weights viewed as `[C_out, C_in * k]`."""

    def __init__(self, conv: nn.Conv1d):
        nn.Module.__init__(self)
        _copy_conv_attributes(conv, self)
        self.weight, self.bias = _placeholder(), conv.bias
        q, scales = quantize_rows(conv.weight.detach().reshape(conv.out_channels, -1))
        self.register_buffer("qweight", q)  # [C_out, C_in * k] int8
        self.register_buffer("scales", scales)  # [C_out] bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, L] -> [B, C_out, L']: few output steps as unfold + one int8 product, many as
        fp32 `conv1d` on the dequantized weights, rounding at the same points."""
        (k,), (s,), (d,) = self.kernel_size, self.stride, self.dilation
        batch, steps = x.shape[0], (x.shape[-1] - d * (k - 1) - 1) // s + 1
        if batch * steps > FEW_ROWS:
            weight = (self.qweight.float() * self.scales.float()[:, None]).view(self.out_channels, -1, k)
            out = F.conv1d(x.to(torch.bfloat16).float(), weight, None, s, 0, d).to(torch.bfloat16).float()
            return _bias(out, self.bias, axis=1)
        rows = conv_columns(x, k, s, d)  # [B * L', C_in * k]
        out = _bias(int8_matmul(rows, self.qweight, self.scales), self.bias)  # [B * L', C_out]
        return out.view(batch, steps, -1).transpose(1, 2)  # [B, C_out, L']


class Int8ConvTranspose1d(nn.ConvTranspose1d):
    """An ungrouped `nn.ConvTranspose1d` with kernel = m * stride and int8 weights: one product per
    input step for every tap, then an overlap-add (as `csmlab.codec.fast`, in every mode, so the
    taps are rounded to bf16 at the same point in streaming and batch)."""

    def __init__(self, convtr: nn.ConvTranspose1d):
        nn.Module.__init__(self)
        _copy_conv_attributes(convtr, self)
        self.weight, self.bias = _placeholder(), convtr.bias
        taps = convtr.weight.detach().reshape(convtr.in_channels, -1).T  # [C_out * k, C_in]
        q, scales = quantize_rows(taps)
        self.register_buffer("qweight", q)  # [C_out * k, C_in] int8
        self.register_buffer("scales", scales)  # [C_out * k] bf16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, L] -> [B, C_out, (L - 1) * stride + k]."""
        (k,), (s,) = self.kernel_size, self.stride
        batch = x.shape[0]
        inputs = x.transpose(1, 2).reshape(-1, self.in_channels)  # [B * L, C_in]
        taps = int8_matmul(inputs, self.qweight, self.scales)  # [B * L, C_out * k]
        out = overlap_add(taps, batch, self.out_channels, k // s, s)  # [B, C_out, L + m - 1, s]
        return _bias(out.view(batch, self.out_channels, -1), self.bias, axis=1)


def _int8_module(module: nn.Module) -> nn.Module | None:
    """The int8 replacement for `module`, or None where it stays fp32: every Linear (they are the
    transformers', 2 tokens per frame), and the convs with at least `MIN_WEIGHTS` weights."""
    if type(module) is nn.Linear:
        return Int8Linear(module)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.numel() < MIN_WEIGHTS:
        return None
    if plain_conv(module):
        return Int8Conv1d(module)
    if plain_conv_transpose(module):
        return Int8ConvTranspose1d(module)
    return None


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace `model`'s large Linear and conv layers by int8 ones, in place; returns `model`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if (replacement := _int8_module(child)) is not None:
                setattr(parent, name, replacement)
    return model


QUANTIZERS = {"int8": quantize_int8}


def weight_megabytes(model: nn.Module) -> float:
    """Bytes of every parameter and buffer (int8 weights, scales, codebooks), in MB."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


def matrix_megabytes(model: nn.Module) -> float:
    """Bytes of the weight matrices (fp32 parameters of 2 or more dims, int8 `qweight`s), in MB: what
    a streaming frame reads once (the codebooks are not counted: a frame reads few of their rows)."""
    tensors = [p for p in model.parameters() if p.dim() >= 2]
    tensors += [m.qweight for m in model.modules() if isinstance(getattr(m, "qweight", None), torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors) / 1e6


class ReducedMoshiBackend(MoshiBackend):
    """moshi's Mimi loaded afresh from the checkpoint and quantized: a model of its own, so the fp32
    codec's weights and results never change. Streams run csmlab's fast path (`csmlab.codec.fast`)
    on the layers left in fp32; the int8 layers pick their kernel by row count themselves."""

    def __init__(self, path, num_codebooks: int, config: dict | None = None, precision: str = "int8"):
        if precision not in QUANTIZERS:
            raise ConfigError(f"reduced precision is one of {sorted(QUANTIZERS)}, not {precision!r}")
        super().__init__(path, num_codebooks, config)
        self.precision, self.name = precision, f"moshi-{precision}"
        self.fp32_megabytes, self.fp32_matrix_megabytes = weight_megabytes(self.model), matrix_megabytes(self.model)
        QUANTIZERS[precision](self.model)
        self.megabytes, self.matrix_megabytes = weight_megabytes(self.model), matrix_megabytes(self.model)
