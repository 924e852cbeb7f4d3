"""A lean streaming step for Mimi's transformers: the same arithmetic as moshi's, fewer ops around it.

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
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def supports(transformer) -> bool:
    """Whether `transformer` (moshi's `StreamingTransformer`) has the layer shape `lean_forward` runs."""
    return transformer.positional_embedding == "rope" and transformer.rope.interleave and all(
        layer.cross_attention is None and layer.gating is None and not layer.skip_self_attn
        and layer.self_attn.kv_repeat == 1 and not layer.self_attn.weights_per_step
        and layer.self_attn.causal and layer.self_attn.context is not None
        for layer in transformer.layers)


def lean_forward(transformer, x: torch.Tensor) -> torch.Tensor:
    """`transformer(x)` while streaming, [B, T, C] -> [B, T, C]; moshi's forward when not streaming."""
    state = transformer._streaming_state
    if state is None or x.shape[0] != state.exec_mask.shape[0]:
        return type(transformer).forward(transformer, x)
    steps = x.shape[1]
    first = transformer.layers[0].self_attn
    rotation = _rotation(first, x.shape[0], steps)
    mask = _causal_mask(first, steps)
    for layer in transformer.layers:
        x = _layer(layer, x, rotation, mask)
    _advance(state.offsets, state.exec_mask, steps)
    return x


def _advance(offsets: torch.Tensor, exec_mask: torch.Tensor, steps: int) -> None:
    """Rows that executed move on by `steps`; masked rows stay (moshi's `where`, in place)."""
    offsets[:] = torch.where(exec_mask, offsets + steps, offsets)


def _rotation(attn, rows: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE's cos and sin at each row's positions for this call, [B, 1, T, D/2] each, as moshi's
    `apply_rope` computes them (the same ops, so the same bits)."""
    dim = attn.embed_dim // attn.num_heads
    ds = torch.arange(dim // 2, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(attn.rope.max_period) * 2 / dim))
    ts = attn._streaming_state.offset.float().view(-1, 1) + torch.arange(steps, dtype=torch.float32)
    ts = ts.view(rows, 1, -1, 1)
    return torch.cos(freqs * ts), torch.sin(freqs * ts)


def _causal_mask(attn, steps: int) -> torch.Tensor:
    """Which ring-cache entries each of this call's queries may see, [B, 1, T, capacity].

    The same for every layer of a call: all layers' caches advance together."""
    state = attn._streaming_state
    cache, offset = state.kv_cache, state.offset
    capacity, end = cache.capacity, cache.end_offset.view(-1, 1)
    slots = torch.arange(capacity)
    last = end + steps - 1
    delta = slots - last % capacity
    positions = torch.where(delta <= 0, last + delta, last + delta - capacity)  # [B, capacity]
    written = torch.where(state.exec_mask.view(-1, 1), end + steps, end)  # a masked row's new keys don't count
    positions = torch.where(slots >= written, torch.full_like(positions, -1), positions)
    queries = offset.view(-1, 1, 1) + torch.arange(steps).view(-1, 1)  # [B, T, 1]
    delta = queries - positions[:, None]
    return ((positions[:, None] >= 0) & (delta >= 0) & (delta < attn.context))[:, None]


def _layer(layer, x: torch.Tensor, rotation, mask) -> torch.Tensor:
    """moshi's `StreamingTransformerLayer.forward` without its bookkeeping. The modules are called,
    not re-implemented: whichever kernels are installed on them (`csmlab.codec.fast`) run here too."""
    x = x + layer.layer_scale_1(_attention(layer.self_attn, layer.norm1(x), rotation, mask))
    update = layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
    layer._streaming_state.offset_cpu += x.shape[1]
    return x + layer.layer_scale_2(update)


def _attention(attn, x: torch.Tensor, rotation, mask) -> torch.Tensor:
    """Self-attention of [B, T, C] against the ring cache, writing this call's keys and values."""
    state, (rows, steps, _), heads = attn._streaming_state, x.shape, attn.num_heads
    q, k, v = attn.in_projs[0](x).view(rows, steps, 3, heads, -1).permute(2, 0, 3, 1, 4)  # [B, H, T, D] each
    q, k = _rotate(q, *rotation), _rotate(k, *rotation)
    cache = state.kv_cache
    slots = (torch.arange(steps) + cache.end_offset.view(-1, 1)) % cache.capacity  # [B, T]
    slots = slots.view(rows, 1, steps, 1).expand(-1, heads, steps, k.shape[-1])
    cache.cache[0].scatter_(2, slots, k)
    cache.cache[1].scatter_(2, slots, v)
    out = F.scaled_dot_product_attention(q, cache.cache[0], cache.cache[1], mask, dropout_p=0.0)
    _advance(cache.end_offset, state.exec_mask, steps)
    _advance(state.offset, state.exec_mask, steps)
    state.offset_cpu += steps
    return attn.out_projs[0](out.transpose(1, 2).reshape(rows, steps, -1))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved RoPE on [B, H, T, D], as moshi's `apply_rope` does it."""
    pairs = x.view(*x.shape[:-1], -1, 2)
    real, imag = pairs[..., 0], pairs[..., 1]
    return torch.stack([real * cos - imag * sin, real * sin + imag * cos], dim=-1).view(x.shape)
