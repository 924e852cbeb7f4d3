"""Convolutions as matrix products: what a streaming call's few output steps make of a conv.

With a few output steps per call a convolution is a skinny matrix product whose cost is reading its
weights once, so `csmlab.codec.fast` runs the deep, weight-heavy convs of Mimi this way, and
`csmlab.codec.precision` runs its int8 convs on the same columns and overlap-add. Plain torch: no
moshi import, so `import csmlab.codec` stays light.
"""
from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.nn import functional as F


def plain_conv(module: nn.Module) -> bool:
    """An ungrouped, unpadded Conv1d: one matrix product over its input windows (`conv_columns`)."""
    return type(module) is nn.Conv1d and module.groups == 1 and module.padding == (0,)


def plain_conv_transpose(module: nn.Module) -> bool:
    """An ungrouped, unpadded ConvTranspose1d with kernel = m * stride: one product, then `overlap_add`."""
    return (type(module) is nn.ConvTranspose1d and module.groups == 1 and module.padding == (0,)
            and module.output_padding == (0,) and module.kernel_size[0] % module.stride[0] == 0)


def conv_columns(x: torch.Tensor, k: int, s: int, d: int) -> torch.Tensor:
    """A conv's input windows as rows, [B, C_in, L] -> [B * L', C_in * k] (kernel k, stride s, dilation d)."""
    cols = x.unfold(2, d * (k - 1) + 1, s)  # [B, C_in, L', span]
    if d > 1:
        cols = cols[..., ::d]  # [B, C_in, L', k]
    batch, c_in, steps, _ = cols.shape
    return cols.permute(0, 2, 1, 3).reshape(batch * steps, c_in * k)


def overlap_add(taps: torch.Tensor, batch: int, c_out: int, m: int, s: int) -> torch.Tensor:
    """A transposed conv's output from each input step's taps: [B * L, C_out * m * s] -> [B, C_out, L + m - 1, s]."""
    steps = taps.shape[0] // batch
    taps = taps.view(batch, steps, c_out, m, s).permute(0, 2, 3, 1, 4)  # [B, C_out, m, L, s]
    out = taps.new_zeros(batch, c_out, steps + m - 1, s)
    for i in range(m):
        out[:, :, i : i + steps] += taps[:, :, i]
    return out


def conv1d_gemm(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a `plain_conv` as one matrix product: [B, C_in, L] -> [B, C_out, L'].

    A batch of streams (`csmlab.codec.batch`) adds columns to the same product, so the weights are
    still read once per call."""
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    c_out = conv.weight.shape[0]
    batch = x.shape[0]
    rows = conv_columns(x, k, s, d)  # [B * L', C_in * k]
    weight = conv.weight.view(c_out, -1)
    # `rows.T` (a transposed view), not a contiguous [C_in * k, L']: with a few columns, the BLAS
    # kernel for the contiguous layout ran 4x slower here (183 vs 45 ms for all of Mimi's weights).
    if conv.bias is None:
        out = torch.mm(weight, rows.T)
    else:
        out = torch.addmm(conv.bias[:, None], weight, rows.T)  # [C_out, B * L']
    return out.view(c_out, batch, -1).transpose(0, 1)  # [B, C_out, L']


def conv1d_linear(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """`conv1d_gemm` in torch's own layout, `F.linear(rows, W, bias)`: the same product and result.
    On the AMD EPYC `W @ rows.T` read the weights faster; on the Intel Xeon (AVX-512, AMX) this one did
    (whole frames taking turns, issue 23), so which a host runs is measured (`csmlab.codec.tuning`)."""
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    c_out, batch = conv.weight.shape[0], x.shape[0]
    rows = conv_columns(x, k, s, d)  # [B * L', C_in * k]
    out = F.linear(rows, conv.weight.view(c_out, -1), conv.bias)  # [B * L', C_out]
    return out.T.reshape(c_out, batch, -1).transpose(0, 1)  # [B, C_out, L']


def conv_transpose1d_gemm(convtr: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """`convtr(x)` for a `plain_conv_transpose`: one mm + overlap-add.
    [B, C_in, L] -> [B, C_out, (L - 1) * stride + k]."""
    (k,), (s,) = convtr.kernel_size, convtr.stride
    c_in, c_out, _ = convtr.weight.shape
    batch = x.shape[0]
    inputs = x.transpose(1, 2).reshape(-1, c_in)  # [B * L, C_in]
    taps = torch.mm(inputs, convtr.weight.view(c_in, c_out * k))  # [B * L, C_out * k]
    out = overlap_add(taps, batch, c_out, k // s, s)  # [B, C_out, L + m - 1, s]
    if convtr.bias is not None:
        out += convtr.bias[:, None, None]
    return out.view(batch, c_out, -1)


_TRANSPOSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # convtr -> (mark, tensors, [C_out * k, C_in])


def conv_transpose1d_linear(convtr: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """`conv_transpose1d_gemm` with the product in torch's own layout, `F.linear(inputs, W^T)`.

    A transposed conv's weight is [C_in, C_out * k], so `inputs @ W` reads it across the product's
    short side. Mimi's first decoder conv (33.6 MB) gets 2 input steps per frame: there the product is a
    weight read, and it took 3.34 ms as `inputs @ W` against 2.50 ms as `F.linear` on a transposed copy
    (Intel Xeon, 1 thread, caches flushed by reading 400 MB). The copy is made once per weight and kept
    while the module lives (33.6 MB more for that conv)."""
    (k,), (s,) = convtr.kernel_size, convtr.stride
    c_in, c_out, _ = convtr.weight.shape
    taps = F.linear(x.transpose(1, 2).reshape(-1, c_in), _transposed(convtr))  # [B * L, C_out * k]
    out = overlap_add(taps, x.shape[0], c_out, k // s, s)
    if convtr.bias is not None:
        out += convtr.bias[:, None, None]
    return out.view(x.shape[0], c_out, -1)


def _derived(cache: weakref.WeakKeyDictionary, module: nn.Module, make):
    """`make(weight, bias)` of `module`, made once and kept while the module lives, made again when
    either changes: another tensor (a reload by assignment), new values in place (`load_state_dict`, an
    optimizer step: the version counter) or a move (`.to()`: the storage). A stale copy would give
    the old weights' output without a word."""
    tensors = (module.weight, module.bias)
    mark = tuple(None if t is None else (id(t), 0 if t.is_inference() else t._version, t.data_ptr()) for t in tensors)
    cached = cache.get(module)
    if cached is None or cached[0] != mark:  # the entry holds the tensors: their ids cannot be reused
        detached = [None if t is None else t.detach() for t in tensors]
        cached = cache[module] = (mark, tensors, make(*detached))
    return cached[2]


def _transposed(convtr: nn.ConvTranspose1d) -> torch.Tensor:
    """The weight as [C_out * k, C_in], copied once per weight (`_derived`)."""
    return _derived(_TRANSPOSED, convtr, lambda w, b: w.reshape(w.shape[0], -1).T.contiguous())


def long_conv_transpose1d(convtr: nn.ConvTranspose1d, x: torch.Tensor) -> torch.Tensor:
    """`convtr(x)` for a `plain_conv_transpose` on one stream's row of a long input, in the conv's own
    [C, L] layout: one product, W^T [C_out * k, C_in] @ x [C_in, L], reading the input in place, then
    the overlap-add of its m = k / stride taps per step. PyTorch's transposed conv for several rows.

    Why: PyTorch ran Mimi's two long transposed convs (96 and 480 input steps) in 0.68 ms per call on
    average in situ (Intel Xeon, 1 thread), about twice their multiply-adds at the products' speed.
    `by-shape` sends every one-row input of more than `WEIGHT_READ_STEPS` steps here, the 16-step conv
    too: there this layout, `inputs @ W` and `F.linear` on the transposed copy tied in situ (47.8, 47.9,
    48.0 ms per frame on 1 thread; 28.5 on 2)."""
    if x.shape[0] != 1:
        return nn.ConvTranspose1d.forward(convtr, x)
    (k,), (s,) = convtr.kernel_size, convtr.stride
    c_out, m, steps = convtr.weight.shape[1], k // s, x.shape[-1]
    taps = (_transposed(convtr) @ x[0]).view(c_out, m, s, steps)
    out = taps.new_zeros(c_out, s, steps + m - 1)  # [C_out, stride, L + m - 1]: step t's block is column t
    for i in range(m):
        out[:, :, i : i + steps] += taps[:, i]
    if convtr.bias is not None:
        out += convtr.bias[:, None, None]
    return out.transpose(1, 2).reshape(1, c_out, -1)


_BANDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # conv -> (mark, tensors, (bands, bias column))


def long_conv1d(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for one stream's row ([1, C_in, L]) of a long input, as a few products in the conv's own
    [C, L] layout: `conv1d_shifted` for stride 1, `conv1d_paired` for kernel = 2 x stride (Mimi's
    downsampling convs), PyTorch's conv otherwise, for one input channel (Mimi's first conv: 0.12 ms
    in situ against 0.18 as products) or for several rows.

    Why: oneDNN runs these convs well on a warm cache (Mimi's k3 conv on 1922 steps: 0.24 ms, about 100
    GFLOP/s on one Xeon core), but it reorders the input to its blocked layout and back on every call,
    and in a streaming frame, whose weights pass through the caches first, that cost more than the
    products: in situ, frames taking turns (Intel Xeon, load 0.6), these products took about 2 ms less
    per frame on 1 thread and on 2. No column matrix is built: each product reads the input in place."""
    (k,), (s,), (d,) = conv.kernel_size, conv.stride, conv.dilation
    if x.shape[0] != 1 or conv.in_channels == 1:  # one input channel: outer products, oneDNN's own job
        return nn.Conv1d.forward(conv, x)
    if s == 1:
        return conv1d_shifted(conv, x)
    if k == 2 * s and d == 1 and x.shape[-1] % s == 0:
        return conv1d_paired(conv, x)
    return nn.Conv1d.forward(conv, x)


def _bands(conv: nn.Conv1d, make) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`make(weight)` and the bias as a column, made once per weight (`_derived`; small convs: kilobytes)."""
    return _derived(_BANDS, conv, lambda w, b: (make(w).contiguous(), None if b is None else b[:, None]))


def _accumulate(bands: tuple[torch.Tensor, torch.Tensor | None], inputs: list[torch.Tensor]) -> torch.Tensor:
    """bias + sum of bands[j] @ inputs[j]: [C_out, L'] as [1, C_out, L']."""
    weights, bias = bands
    first = weights[0] @ inputs[0] if bias is None else torch.addmm(bias, weights[0], inputs[0])
    for band, columns in zip(weights[1:], inputs[1:]):
        first.addmm_(band, columns)
    return first[None]


def conv1d_shifted(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A stride-1 conv on one row as k products: tap j's [C_out, C_in] weights times the input shifted
    by j x dilation, a view of the input with rows L apart (which BLAS reads as it is)."""
    (k,), (d,) = conv.kernel_size, conv.dilation
    bands, row = _bands(conv, lambda w: w.permute(2, 0, 1)), x[0]  # [k, C_out, C_in], [C_in, L]
    steps = x.shape[-1] - d * (k - 1)
    return _accumulate(bands, [row[:, j * d : j * d + steps] for j in range(k)])


def conv1d_paired(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A conv of kernel 2s and stride s on one row as 2 products: the input regrouped as [C_in * s, L / s]
    (one copy), each output step reads block t (the first s taps) and block t + 1 (the last s)."""
    (s,), c_in = conv.stride, x.shape[1]
    bands = _bands(conv, lambda w: w.view(w.shape[0], c_in, 2, s).permute(2, 0, 1, 3).reshape(2, w.shape[0], c_in * s))
    blocks = x[0].view(c_in, -1, s).permute(0, 2, 1).reshape(c_in * s, -1)  # [C_in * s, L / s]
    return _accumulate(bands, [blocks[:, :-1], blocks[:, 1:]])
