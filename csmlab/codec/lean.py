"""A lean streaming step for Mimi's transformers and convs: the same arithmetic as moshi's, fewer ops around it.

One streaming frame brings 2 tokens per stream to each of Mimi's two 8-layer transformers. moshi's
layer rebuilds, for every layer and every call, what is the same for all layers of a call: the
rotary angles for this call's positions (an `arange`, `exp`, `cos`, `sin`), the ring cache's
positions and the causal mask (a dozen small ops), and it reshapes through einops and sets each
state's offsets with a `where` over the exec mask. On 2 tokens those small ops and their Python
cost are a large share of the step: profiled here, the weight products took about two thirds of
moshi's transformer step and everything else one third.

`lean_forward` computes the angles and the mask once per call and runs each layer as its bare
sequence: norm, in-projection, rotation, cache write, attention, out-projection, the feed-forward,
the residuals. Every op that touches the numbers is the op moshi runs, on the same operands, so
the output is bit-identical to moshi's streaming forward (tested), and the state it leaves (ring
caches, offsets, masked rows included) is the state moshi's forward would leave: the two can take
turns on one stream. It serves a batch of streams too (`csmlab.codec.batch`): each row has its own
offsets, and a row masked out by `set_exec_mask` is computed but does not advance, as in moshi.

moshi's streaming convs keep each call's last input steps (a conv's left context) or its output's
overlap (a transposed conv's partial sums) through a `where` over the exec mask, behind three module
calls and a handful of properties. A single stream's one row always executes, so `lean_conv` and
`lean_conv_transpose` keep the same steps with a plain copy (`supports_conv`, single streams only).

moshi's residual quantizer turns each frame's latent from [B, D, N] to [B, N, D] and back for every
codebook (two einops rearranges, 8 times a frame); `lean_rvq_encode` and `lean_rvq_decode` turn it once.
And moshi's nearest-centroid search asks `cdist`, which squares, sums and pads the whole codebook on
every call; `centroid_table` keeps that half, built once per codebook.
"""
from __future__ import annotations

import functools
import math
import weakref

import torch
from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize


def supports(transformer) -> bool:
    """Whether `transformer` (moshi's `StreamingTransformer`) has the layer shape `lean_forward` runs."""
    return transformer.positional_embedding == "rope" and transformer.rope.interleave and all(
        layer.cross_attention is None and layer.gating is None and not layer.skip_self_attn
        and layer.self_attn.kv_repeat == 1 and not layer.self_attn.weights_per_step
        and layer.self_attn.causal and layer.self_attn.context is not None
        and all(_bare(m) for m in (layer.norm1, layer.norm2, layer.linear1, layer.linear2, layer.layer_scale_1,
                                   layer.layer_scale_2, layer.self_attn.in_projs[0], layer.self_attn.out_projs[0]))
        for layer in transformer.layers)


def lean_forward(transformer, x: torch.Tensor) -> torch.Tensor:
    """`transformer(x)` while streaming, [B, T, C] -> [B, T, C]; moshi's forward when not streaming."""
    state = transformer._streaming_state
    if state is None or x.shape[0] != state.exec_mask.shape[0]:
        return type(transformer).forward(transformer, x)
    call = _Call(transformer.layers[0].self_attn, x.shape[0], x.shape[1])
    for layer in transformer.layers:
        x = _layer(layer, x, call)
    _advance_all(transformer, state, call.steps)
    return x


class _Call:
    """What every layer of one call shares, computed once: all layers' caches and offsets advance
    together, so the first layer's state stands for all of them until the call ends."""

    def __init__(self, attn, rows: int, steps: int):
        state = attn._streaming_state
        self.rows, self.steps = rows, steps
        self.rotation = _rotation(attn, rows, steps)
        self.mask = _causal_mask(attn, steps)
        cache = state.kv_cache
        slots = (_arange(steps) + cache.end_offset.view(-1, 1)) % cache.capacity  # [B, T]
        dim = attn.embed_dim // attn.num_heads
        self.slots = slots.view(1, rows, 1, steps, 1).expand(2, -1, attn.num_heads, steps, dim)  # keys' and values' places


def _advance_all(transformer, state, steps: int) -> None:
    """Every layer's offsets and cache ends, and the transformer's, move on by `steps` in one op
    (rows masked out by the exec mask move by 0): moshi's per-layer `where`s, with the same integers."""
    counters = [state.offsets]
    for layer in transformer.layers:
        attn = layer.self_attn._streaming_state
        counters += [attn.offset, attn.kv_cache.end_offset]
        attn.offset_cpu += steps
        layer._streaming_state.offset_cpu += steps
    torch._foreach_add_(counters, [state.exec_mask.long() * steps] * len(counters))


def _rotation(attn, rows: int, steps: int) -> torch.Tensor:
    """RoPE's rotation at each row's positions for this call, [B, T, 1, 1, D/2] complex: cos + i sin,
    computed with the ops of moshi's `apply_rope` (so the same bits)."""
    freqs = _frequencies(attn.embed_dim // attn.num_heads, attn.rope.max_period)
    ts = attn._streaming_state.offset.float().view(-1, 1) + _arange(steps, torch.float32)
    angles = freqs * ts.view(rows, -1, 1, 1, 1)
    return torch.complex(torch.cos(angles), torch.sin(angles))


@functools.cache
def _frequencies(dim: int, max_period: float) -> torch.Tensor:
    """RoPE's frequencies, [D/2], with `apply_rope`'s ops: the same for every call, so made once."""
    with torch.inference_mode(False):  # a plain tensor: usable in and out of inference mode
        ds = torch.arange(dim // 2, dtype=torch.float32)
        return torch.exp(ds * (-math.log(max_period) * 2 / dim))


@functools.cache
def _arange(n: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
    """`torch.arange(n)`, made once per length: a call needs several (never written to)."""
    with torch.inference_mode(False):
        return torch.arange(n, dtype=dtype)


def _causal_mask(attn, steps: int) -> torch.Tensor:
    """Which ring-cache entries each of this call's queries may see, [B, 1, T, capacity]: 0 where it may,
    -inf where not.

    The same for every layer of a call: all layers' caches advance together."""
    state = attn._streaming_state
    cache, offset = state.kv_cache, state.offset
    capacity, end = cache.capacity, cache.end_offset.view(-1, 1)
    slots = _arange(capacity)
    last = end + steps - 1
    delta = slots - last % capacity
    positions = torch.where(delta <= 0, last + delta, last + delta - capacity)  # [B, capacity]
    written = torch.where(state.exec_mask.view(-1, 1), end + steps, end)  # a masked row's new keys don't count
    positions = torch.where(slots >= written, torch.full_like(positions, -1), positions)
    queries = offset.view(-1, 1, 1) + _arange(steps).view(-1, 1)  # [B, T, 1]
    delta = queries - positions[:, None]
    seen = ((positions[:, None] >= 0) & (delta >= 0) & (delta < attn.context))[:, None]
    # as the additive mask attention makes of a boolean one (0 or -inf), once per call, not once per layer
    return torch.zeros(seen.shape, dtype=cache.cache.dtype, device=seen.device).masked_fill_(~seen, float("-inf"))


def _layer(layer, x: torch.Tensor, call: _Call) -> torch.Tensor:
    """moshi's `StreamingTransformerLayer.forward` without its bookkeeping. Each module's `forward` is
    called (not the module, whose hook machinery costs more than a norm on 2 tokens), so whichever
    kernels are installed on them (`csmlab.codec.fast`) run here too."""
    x = x + layer.layer_scale_1.forward(_attention(layer.self_attn, layer.norm1.forward(x), call))
    update = layer.linear2.forward(layer.activation(layer.linear1.forward(layer.norm2.forward(x))))
    return x + layer.layer_scale_2.forward(update)


def _attention(attn, x: torch.Tensor, call: _Call) -> torch.Tensor:
    """Self-attention of [B, T, C] against the ring cache, writing this call's keys and values."""
    rows, steps, heads = call.rows, call.steps, attn.num_heads
    qkv = attn.in_projs[0].forward(x).contiguous().view(rows, steps, 3, heads, -1)  # `W @ x.T` gives a transposed view
    _rotate_(qkv[:, :, :2], call.rotation)  # queries and keys
    cache = attn._streaming_state.kv_cache.cache  # [2, B, H, capacity, D]: keys, values
    cache.scatter_(3, call.slots, qkv[:, :, 1:].permute(2, 0, 3, 1, 4))  # this call's keys and values, one op
    out = F.scaled_dot_product_attention(qkv[:, :, 0].transpose(1, 2), *cache.unbind(), call.mask, dropout_p=0.0)
    return attn.out_projs[0].forward(out.transpose(1, 2).reshape(rows, steps, -1))


def _rotate_(x: torch.Tensor, rotation: torch.Tensor) -> None:
    """Interleaved RoPE on [B, T, P, H, D], in place, as one complex product: (r + i m)(cos + i sin) is
    r cos - m sin + i (r sin + m cos), moshi's `apply_rope` products and sums exactly. In place: after
    each big weight read a small op costs several times its warm time (its code and data are evicted:
    a GELU on 2 tokens took 48 us in a frame against 8 us warm), so every op saved counts."""
    torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(rotation)  # [B, T, P, H, D/2]


def supports_conv(module) -> bool:
    """Whether `module` is a moshi streaming conv that `lean_conv` / `lean_conv_transpose` run: a bare
    conv inside (no weight norm), zero padding."""
    if isinstance(module, StreamingConv1d):
        inner, kind = module.conv.conv, nn.Conv1d
        if module.pad_mode != "constant":
            return False
    elif isinstance(module, StreamingConvTranspose1d):
        inner, kind = module.convtr.convtr, nn.ConvTranspose1d
    else:
        return False
    return type(inner) is kind and _bare(inner)


def _bare(module: nn.Module) -> bool:
    """No hooks on `module` nor parametrization (weight norm is one or the other): the lean steps call
    `forward` itself, which would skip them."""
    return not (module._forward_pre_hooks or module._forward_hooks or parametrize.is_parametrized(module))


def lean_conv(module, x: torch.Tensor) -> torch.Tensor:
    """moshi's `StreamingConv1d.forward` for a stream whose one row executes: [B, C, T] -> [B, C', T / stride]."""
    state = module._streaming_state
    if state is None:
        return type(module).forward(module, x)
    conv = module.conv.conv
    assert x.shape[-1] % conv.stride[0] == 0, "steps must be a multiple of the stride"  # as moshi's
    previous = state.previous  # the last steps of the input so far: this call's left context
    if not previous.shape[-1]:
        return conv.forward(x)
    x = torch.cat([previous, x], dim=-1)
    y = conv.forward(x)  # the installed kernel, if any
    previous.copy_(x[..., -previous.shape[-1]:])
    return y


def lean_conv_transpose(module, x: torch.Tensor) -> torch.Tensor:
    """moshi's `StreamingConvTranspose1d.forward` for a stream whose one row executes."""
    state = module._streaming_state
    if state is None:
        return type(module).forward(module, x)
    convtr, partial = module.convtr.convtr, state.partial  # the overlap the next call's output completes
    y = convtr.forward(x)
    steps = partial.shape[-1]
    if not steps:
        return y
    y[..., :steps] += partial
    carried = y[..., -steps:]
    if convtr.bias is not None:
        carried -= convtr.bias[:, None]  # the next call adds the bias to these steps
    partial.copy_(carried)
    return y[..., :-steps]


def supports_rvq(vq) -> bool:
    """Whether `vq` (moshi's `ResidualVectorQuantization`) projects nothing around its codebooks, as Mimi's
    do: `lean_rvq_encode` runs it then."""
    return all(isinstance(layer.project_in, nn.Identity) and isinstance(layer.project_out, nn.Identity)
               for layer in vq.layers)


def lean_rvq_encode(vq, x: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
    """`vq.encode(x, n_q)`: [B, D, N] latents -> codes [n_q, B, N]. Each codebook takes the nearest centroid
    of what the codebooks before it left, as moshi's loop does, on the same numbers in another layout."""
    residual, codes = x.transpose(1, 2), []  # [B, N, D]
    for layer in vq.layers[: n_q or len(vq.layers)]:
        book = layer._codebook
        found = book._quantize(residual.reshape(-1, residual.shape[-1])).view(residual.shape[:-1])  # [B, N]
        residual = residual - F.embedding(found, book.embedding)
        codes.append(found)
    return torch.stack(codes)


def lean_rvq_decode(vq, codes: torch.Tensor) -> torch.Tensor:
    """`vq.decode(codes)`: codes [K, B, N] -> [B, D, N], the codebooks' centroids summed in moshi's order
    (from a zero scalar, as moshi starts), in [B, N, D] until the end."""
    quantized = torch.zeros((), device=codes.device)
    for layer, found in zip(vq.layers, codes):
        quantized = quantized + F.embedding(found, layer._codebook.embedding)
    return quantized.transpose(1, 2)


_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # codebook -> (its embedding, table)


def centroid_table(codebook) -> torch.Tensor:
    """`[-2 e, 1, |e|^2]` for every centroid e, [codebook_size, D + 2]: cdist's codebook half. cdist
    multiplies -2 x by e; x times -2 e is the same product to the bit (a power of two only moves the
    exponent), and the -2 is then applied once, not on every call.

    Rebuilt when moshi replaces the embedding (training does; inference never)."""
    embedding = codebook.embedding
    cached = _TABLES.get(codebook)
    if cached is None or cached[0] is not embedding:
        norm = embedding.pow(2).sum(-1, keepdim=True)
        cached = _TABLES[codebook] = (embedding, torch.cat([embedding.mul(-2), torch.ones_like(norm), norm], -1))
    return cached[1]
