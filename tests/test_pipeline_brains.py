"""The pipeline's real brains on the small offline models: Moshi (full duplex) and the cascade."""
import numpy as np
import pytest
import torch

from csmlab import moshi as M
from csmlab.data import real_recording
from csmlab.pipeline import DuplexSession, MoshiBrain, make_brain


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: one thread is faster on a shared CPU
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def call():
    rec = real_recording()
    return rec.audio, rec.sample_rate


@pytest.fixture(scope="module")
def moshi():
    return M.load()


def test_moshi_brain_gives_the_same_tokens_as_moshi_stream_driven_directly(call, moshi):
    audio, rate = call
    clip = audio[2 * rate: 2 * rate + rate // 2]  # 0.5 s of the call: 7 steps (the last one zero-padded)
    brain = MoshiBrain(model=moshi, seed=7)
    with DuplexSession(brain) as session:
        steps = list(session.run(clip, rate))
        tokens = list(brain.tokens)
    with brain.codec().stream() as codec:
        codes = np.concatenate([codec.encode(clip, rate), codec.flush()], axis=1)  # [8, T]
    with M.MoshiStream(moshi, seed=7) as direct:
        expected = [direct.step(torch.from_numpy(codes[:, t])) for t in range(codes.shape[1])]
    assert tokens == [s.text_token for s in expected] and len(tokens) == len(steps)
    assert [s.text for s in steps] == [s.text for s in expected]
    warm = [s.warming_up for s in expected]
    assert [not s.pcm.any() for s in steps] == warm  # silence exactly while Moshi's acoustic codebooks lag
    with brain.codec().stream() as codec:  # Moshi's codes, decoded by the system codec session
        voiced = [codec.decode(s.audio.numpy()[:, None]) for s in expected if not s.warming_up]
    assert np.array_equal(np.concatenate([s.pcm for s in steps if s.pcm.any()]), np.concatenate(voiced))
    assert session.report()["latency_ms"]["algorithmic"] == {"frame": 80, "acoustic delay": 80}


def test_make_brain_shares_a_loaded_moshi(moshi):
    a, b = make_brain("moshi", model=moshi), make_brain("moshi", model=moshi, seed=1)
    assert a.model is b.model and a.stream is not b.stream and a.weights == moshi.source.kind


def test_moshi_brain_recovers_from_a_failed_step(call, moshi):
    audio, rate = call
    brain = MoshiBrain(model=moshi)
    with DuplexSession(brain) as session:
        brain.stream.step = lambda codes, real=brain.stream.step: (_ for _ in ()).throw(RuntimeError("boom"))
        first = session.push(audio[:1280], rate, seq=0) + session.push(audio[1280:2560], rate, seq=1)
        del brain.stream.step  # the instance's step again
        later = session.push(audio[2560:3840], rate, seq=2)
    assert [s.fault for s in first] == ["brain_error"] and [s.fault for s in later] == [None]
    assert session.events.count("moshi_reset") == 1 and brain.stream.index == 1
