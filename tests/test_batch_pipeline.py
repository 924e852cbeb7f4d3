"""The pipeline on shared batches (issue 16): duplex sessions in their own threads, one Moshi and
one Mimi stepped together for all of them, each session getting what `MoshiBrain` gives it alone."""
import threading

import numpy as np
import pytest
import torch

from csmlab.codec import FRAME_SIZE
from csmlab.data import real_recording
from csmlab.errors import CapacityError
from csmlab.pipeline import DuplexSession
from csmlab.pipeline.batching import ConversationPool
from csmlab.pipeline.moshi_brain import MoshiBrain

RATE = 24000
STEPS = 6


def clip(i: int) -> np.ndarray:
    audio = real_recording(RATE).audio
    return audio[(8 + 3 * i) * RATE :][: STEPS * FRAME_SIZE]


def converse(brain, audio) -> list:
    with DuplexSession(brain, clock="simulated", stall_ms=60_000) as session:
        return [(s.text, s.pcm, s.fault) for s in session.run(audio, RATE)]


def test_sessions_in_threads_share_forwards_and_each_gets_its_own_conversation(moshi):
    pool = ConversationPool(moshi, max_conversations=3, window_ms=500)
    results = [None] * 3
    barrier = threading.Barrier(3)

    def run(i):
        torch.set_num_threads(1)
        barrier.wait()
        results[i] = converse(pool.brain(seed=i), clip(i))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = pool.report()
    assert report["moshi_per_step"] > 1.5 and report["codec_per_step"]["encode"] > 1.5, report
    for i in range(3):
        alone = converse(MoshiBrain(moshi, seed=i), clip(i))  # its own MoshiStream, its own codec sessions
        assert len(results[i]) == len(alone) >= STEPS
        assert [fault for _, _, fault in results[i]] == [None] * len(alone)
        assert [text for text, _, _ in results[i]] == [text for text, _, _ in alone]
        np.testing.assert_allclose(np.concatenate([p for _, p, _ in results[i]]),
                                   np.concatenate([p for _, p, _ in alone]), atol=1e-4)
    assert any(np.abs(p).max() > 0 for _, p, _ in results[0])  # Moshi spoke: the frames were really compared


def test_a_full_pool_refuses_a_conversation_clearly(moshi):
    pool = ConversationPool(moshi, max_conversations=1)
    first = pool.brain()
    with pytest.raises(CapacityError, match="all 1 Moshi conversation slots are in use"):
        pool.brain()
    first.close()
    pool.brain().close()  # the freed slot


def test_the_server_opts_in_with_batch_true():
    from csmlab.codec.batch import SharedCodec
    from csmlab.serve.app import brain_factory
    from csmlab.serve.config import load_settings

    settings = load_settings(brain="loopback", listen=True, batch=True, max_sessions=2)
    new_brain = brain_factory(settings)
    first, second = new_brain(), new_brain()
    assert first.codec() is second.codec() and isinstance(first.codec(), SharedCodec)
    assert first.codec().backend.batches["encode"].slots.size == 2
