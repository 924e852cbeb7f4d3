"""Batched Moshi (issue 16): conversations stepped together in one LMGen forward, joining, leaving,
sitting steps out and losing frames, each with exactly the tokens `MoshiStream` gives it alone for
the same seed (its sampling drawn from its own RNG, whoever else is in the batch)."""
import pytest
import torch

from csmlab.errors import CapacityError, ConfigError
from csmlab.moshi.batch import MoshiBatch
from csmlab.moshi.stream import MoshiStream


def user_frames(moshi, n: int, seed: int) -> list:
    g = torch.Generator().manual_seed(seed)
    frames = list(torch.randint(0, moshi.lm.card, (n, moshi.num_user_codebooks), generator=g))
    frames[n // 2] = None  # a frame lost on the way: silence stands in
    return frames


def tokens(steps) -> list:
    return [(s.text_token, None if s.audio is None else s.audio.tolist()) for s in steps]


def test_each_conversation_gets_its_single_stream_tokens(moshi):
    n = 8
    plan = {  # name: (seed, first step, frames, steps it sits out)
        "a": (0, 0, user_frames(moshi, n + 4, 10), {2, 3}),
        "b": (1, 0, user_frames(moshi, n // 2, 11), set()),  # leaves early ...
        "c": (2, n // 2 + 1, user_frames(moshi, n, 12), set()),  # ... c gets its slot, reset alone
        "d": (0, 1, user_frames(moshi, n, 13), set()),  # same seed as a, other input
    }
    batch = MoshiBatch(moshi, size=4)
    slot, fed, got = {}, {k: 0 for k in plan}, {k: [] for k in plan}
    for step in range(2 * n):
        for name, (seed, first, _, _) in plan.items():
            if step == first:
                slot[name] = batch.join(seed)
        active = [k for k, (_, _, frames, pauses) in plan.items()
                  if k in slot and fed[k] < len(frames) and step not in pauses]
        if not active:
            continue
        out = batch.step({slot[k]: plan[k][2][fed[k]] for k in active})
        for k in active:
            got[k].append(out[slot[k]])
            fed[k] += 1
            if fed[k] == len(plan[k][2]):
                batch.leave(slot.pop(k))
    assert slot == {}
    for name, (seed, _, frames, _) in plan.items():
        with MoshiStream(moshi, seed=seed) as alone:
            expected = [alone.step(f) for f in frames]
        assert tokens(got[name]) == tokens(expected), name
        assert [s.user_dropped for s in got[name]] == [f is None for f in frames]
    assert tokens(got["a"])[:n] != tokens(got["d"])  # same seed, other input: its own conversation


def test_a_full_batch_refuses_and_a_restart_replays_the_same_conversation(moshi):
    batch = MoshiBatch(moshi, size=1)
    slot = batch.join(seed=5)
    with pytest.raises(CapacityError, match="all 1 Moshi conversation slots are in use"):
        batch.join()
    frames = user_frames(moshi, 4, 3)
    first = [batch.step({slot: f})[slot] for f in frames]
    with pytest.raises(ConfigError, match=r"slot\(s\) \[3\] are not taken"):
        batch.step({3: frames[0]})
    batch.restart(slot)
    again = [batch.step({slot: f})[slot] for f in frames]
    assert tokens(first) == tokens(again)
    assert [s.index for s in again] == list(range(4))
