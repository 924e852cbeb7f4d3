"""Many Moshi conversations in one forward pass per 80 ms step, each with its own tokens.

    batch = MoshiBatch(M.load(), size=8)     # LMGen at batch size 8 on one loaded Moshi
    a = batch.join(seed=0)                    # a slot: a new conversation with its own RNG
    b = batch.join(seed=1)
    steps = batch.step({a: user_codes_a, b: None})   # {slot: Step}; None = a user frame lost
    batch.leave(b)                            # b's row is free; a goes on

moshi's `LMGen` takes a batch size and an exec mask (`csmlab.batching.slots`): a conversation that has no
frame this step sits it out (its caches and delays do not move), and a slot handed to a new
conversation is reset alone. Rows above the highest slot in use are not computed.

Sampling, per conversation: `MoshiStream` seeds torch's global RNG per stream, and moshi's sampler
draws one exponential per candidate token per row from it (the "Gumbel" trick in
`moshi.utils.sampling.multinomial`). At batch size B one draw for all rows would tie each
conversation's tokens to who else is in the batch. So while a batch steps, moshi's `sample_token`
samples row by row, each row from its conversation's own generator, seeded like `MoshiStream`'s:
a conversation's tokens are those of `MoshiStream(model, seed)` fed the same frames (up to the float
summation order of batched matrix products, which can flip a sample at a near-tie; measured in
tests/test_batch_moshi.py). Outside a batch step, `sample_token` is moshi's own.
"""
from __future__ import annotations

import threading
import time
from contextlib import ExitStack

import torch
from moshi.models import LMGen
from moshi.models import lm as moshi_lm

from csmlab.errors import StreamClosedError
from csmlab.moshi.stream import Moshi, Step, _eager, check_sampling, check_user_codes, exclusive_gen
from csmlab.batching.slots import Slots, clear_rows, row_views, without_cuda_graphs

_moshi_sample_token = moshi_lm.sample_token
_ROWS = threading.local()  # .generators: one torch.Generator per batch row, while this thread steps a batch


def _sample_token(logits, use_sampling=False, temp=1.0, top_k=0, top_p=0.0):
    """moshi's `sample_token`, drawing each row from its own generator while a `MoshiBatch` steps."""
    generators = getattr(_ROWS, "generators", None)
    if generators is None or not use_sampling or temp <= 0.0 or top_p > 0.0:
        return _moshi_sample_token(logits, use_sampling, temp, top_k, top_p)
    return torch.cat([_sample_row(logits[i : i + 1], g, temp, top_k) for i, g in enumerate(generators)])


def _sample_row(logits: torch.Tensor, generator: torch.Generator, temp: float, top_k: int) -> torch.Tensor:
    """moshi's sampling of one row (`sample_token` -> `sample_top_k` -> `multinomial`), op for op,
    with `generator` where moshi uses the global RNG: the same draws as a single stream's."""
    probs = torch.softmax(logits / temp, dim=-1)  # [1, ..., card]
    indices = None
    if top_k > 0:
        probs, indices = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    q = torch.empty_like(flat).exponential_(1, generator=generator)
    token = (flat / q).argmax(dim=-1, keepdim=True).reshape(*probs.shape[:-1], 1)
    if indices is not None:
        token = indices.gather(-1, token)
    return token[..., 0]


moshi_lm.sample_token = _sample_token  # LMGen looks it up in its module at each step


class MoshiBatch:
    """Up to `size` Moshi conversations on one model, stepped together: one LMGen forward per step.

    `sampling` takes `MoshiStream`'s options (`use_sampling`, `temp`, `temp_text`, `top_k`, `top_k_text`).
    Threads: steps hold the model's lock (`csmlab.locks`), like every call on a shared Moshi.
    """

    def __init__(self, model: Moshi, size: int = 8, **sampling):
        self.model, self.size = model, size
        self.slots = Slots(size, "Moshi conversation")
        self.gen = LMGen(model.lm, support_out_of_sync=True, **check_sampling(sampling))
        with exclusive_gen(self.gen):
            self.gen._start_streaming(size, ExitStack())  # also starts the LM's; moshi's states need no exit
            self._state = (without_cuda_graphs(self.gen.get_streaming_state()), model.lm.get_streaming_state())
        self._seeds = [0] * size
        self._generators: list[torch.Generator | None] = [None] * size
        self._index = [0] * size  # steps each conversation has taken
        self._scratch = torch.Generator(device=model.lm.device)  # for rows that sit a step out
        self._closed = False

    def join(self, seed: int = 0) -> int:
        """A free slot holding a new conversation, sampled from its own RNG seeded with `seed`."""
        slot = self.slots.take()
        self._seeds[slot], self._generators[slot], self._index[slot] = seed, None, 0
        return slot

    def leave(self, slot: int) -> None:
        self.slots.give_back(slot)

    def restart(self, slot: int) -> None:
        """A new conversation in `slot`: fresh caches, step 0, its seed again."""
        self.slots.renew(slot)
        self._generators[slot], self._index[slot] = None, 0

    def close(self) -> None:
        self._state, self._closed = None, True

    @property
    def states(self) -> tuple[dict, dict]:
        """LMGen's and the LM's streaming states, `size` rows each (on the model only during a step)."""
        return self._state

    def step(self, user: dict[int, object]) -> dict[int, Step]:
        """One 80 ms step for the conversations in `user` (slot -> one frame of user codes, or None
        for a frame lost on the way: Mimi's silence stands in, as in `MoshiStream`); the others sit
        it out. Returns slot -> `Step`; `ms` is the whole batch's compute time."""
        if self._closed:
            raise StreamClosedError("this MoshiBatch was closed; build a new one")
        if not user:
            return {}
        self.slots.check(user)
        lm, k = self.model.lm, self.model.num_user_codebooks
        rows = max(user) + 1
        codes = self.model.silence_codes().repeat(rows, 1, 1)  # [B, K, 1]; rows sitting out get silence
        for slot, frame in user.items():
            if frame is not None:
                codes[slot] = check_user_codes(frame, k, lm.card)[0]
        mask = torch.zeros(rows, dtype=torch.bool)
        mask[list(user)] = True
        start = time.perf_counter()
        with exclusive_gen(self.gen), _eager(lm.device):
            gen_state, lm_state = self._state
            self.gen.set_streaming_state(gen_state)
            lm.set_streaming_state(lm_state)
            clear_rows(self.gen, self.slots.pop_fresh(), self.size, also=lm)
            with row_views(self.gen, gen_state, rows), row_views(lm, lm_state, rows):
                self.gen.set_exec_mask(mask.to(lm.device))
                _ROWS.generators = [self._generator(i) if i in user else self._scratch for i in range(rows)]
                try:
                    out = self.gen.step(codes.to(lm.device)).cpu()  # [B, 1 + dep_q, 1]; on a GPU `ms` counts its work
                finally:
                    _ROWS.generators = None
        ms = 1000 * (time.perf_counter() - start)
        return {slot: self._result(slot, out, ms, user[slot] is None) for slot in user}

    def _generator(self, slot: int) -> torch.Generator:
        if self._generators[slot] is None:
            self._generators[slot] = torch.Generator(device=self.model.lm.device).manual_seed(self._seeds[slot])
        return self._generators[slot]

    def _result(self, slot: int, out: torch.Tensor, ms: float, dropped: bool) -> Step:
        index = self._index[slot]
        self._index[slot] += 1
        if index < self.gen.max_delay:  # Moshi's acoustic delays: no whole frame yet
            return Step(index, None, "", None, ms, dropped)
        token = int(out[slot, 0, 0])
        return Step(index, token, self.model.piece(token), out[slot, 1:, 0], ms, dropped)
