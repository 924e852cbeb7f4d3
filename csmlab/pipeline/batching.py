"""N duplex conversations on one model: one codec forward and one brain forward per 80 ms step.

    pool = ConversationPool(M.load(), max_conversations=8)       # Moshi + Mimi, shared
    sessions = [DuplexSession(pool.brain(seed=i)) for i in range(3)]   # each in its own thread
    ... session.push(chunk, rate) as usual; pool.report() says how full the forwards were
    Server(settings, new_brain=pool.brain)                        # csmlab serve: one pool per process

    codec = SharedCodec(load_codec(8), size=8)                    # codec only (any brain on codes)
    session = DuplexSession(LoopbackBrain(codec=codec))

A `DuplexSession` opts in through its brain and nothing else: the pool's brain hands the session a
`SharedCodec` (`brain.codec()`), so the session's user and system codec sessions become rows of
shared codec batches, and the brain's step becomes a row of a `MoshiBatch`. Each session still runs
its own thread and clock, and gets what it would get alone with `MoshiBrain(model, seed)`
(tests/test_batch_pipeline.py): the `csmlab.batching.gather` step waits at most `window_ms` for the other
conversations, then steps whoever came.
A conversation beyond `max_conversations` is refused with `CapacityError` when its brain is made.
"""
from __future__ import annotations

from csmlab.codec import Codec
from csmlab.codec.batch import SharedCodec
from csmlab.batching.gather import Gather, GatherGroup
from csmlab.moshi.batch import MoshiBatch
from csmlab.moshi.stream import Moshi
from csmlab.pipeline.moshi_brain import MoshiSteps, moshi_codec

__all__ = ["ConversationPool", "PooledMoshiBrain", "SharedCodec"]


class ConversationPool:
    """One Moshi and one Mimi shared by up to `max_conversations` duplex sessions, stepped together.

    `sampling` takes `MoshiStream`'s options. `codec` defaults to Moshi's own Mimi (`moshi_codec`)."""

    def __init__(self, model: Moshi, max_conversations: int = 8, window_ms: float = 20.0,
                 codec: Codec | None = None, **sampling):
        self.model, self.max_conversations = model, max_conversations
        self.moshi = MoshiBatch(model, max_conversations, **sampling)
        group = GatherGroup(lambda: self.moshi.slots.in_use)  # each conversation: encode, Moshi, decode
        self.gather = Gather(self.moshi.step, window_ms, group)
        codec = codec or moshi_codec(model)
        self.codec = SharedCodec(codec, max_conversations, window_ms, group)

    def brain(self, seed: int = 0) -> PooledMoshiBrain:
        """A brain for one `DuplexSession`: a slot in the pool (`CapacityError` when all are taken)."""
        return PooledMoshiBrain(self, seed)

    def report(self) -> dict:
        """How full the shared forwards were: mean conversations per Moshi step and per codec step."""
        return {"max_conversations": self.max_conversations, "in_use": self.moshi.slots.in_use,
                "moshi_per_step": round(self.gather.occupancy, 3),
                "codec_per_step": {k: round(v, 3) for k, v in self.codec.occupancy.items()}}


class PooledMoshiBrain(MoshiSteps):
    """`MoshiBrain` for one conversation, as a row of its pool's `MoshiBatch`: the same tokens for its
    seed (`MoshiStream`'s), at a share of one forward per step. Recovery as `MoshiBrain`: after a
    failed step the next one starts a fresh conversation in the same slot (logged `moshi_reset`)."""

    def __init__(self, pool: ConversationPool, seed: int = 0):
        super().__init__()
        self.pool, self.seed, self.model = pool, seed, pool.model
        self.slot = pool.moshi.join(seed)

    def codec(self) -> SharedCodec:
        return self.pool.codec

    def _advance(self, codes):
        return self.pool.gather.submit(self.slot, codes)

    def reset(self) -> None:
        self.pool.moshi.restart(self.slot)

    def close(self) -> None:
        if self.slot is not None:
            self.pool.gather.leave(self.slot)
            self.pool.moshi.leave(self.slot)
            self.slot = None
