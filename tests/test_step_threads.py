"""csmlab.pipeline.threads: a duplex session's step threads, chosen by timing whole steps (an injected
timer here: nothing is really timed), cached per host, overridable; and Moshi's brain on two threads
gives the tokens and the audio of `MoshiStream` driven directly, frame for frame."""
import json

import numpy as np
import pytest
import torch

from csmlab import moshi as M
from csmlab.codec import tuning
from csmlab.errors import ConfigError
from csmlab.pipeline import DuplexSession, MoshiBrain, threads
from csmlab.pipeline.brain import Brain


class Timed(Brain):
    """A brain whose trial step "costs" `cost[n]` ms of a fake clock on n threads."""

    name = "timed"

    def __init__(self, cost):
        super().__init__()
        self.now, self.cost, self.trials = 0.0, cost, []

    def timer(self):
        return self.now

    def measures_threads(self, codec):
        return True

    def tuned_models(self, codec):
        return [torch.nn.Linear(3, 4)]

    def threads_trial(self, codec, n):
        self.trials.append(n)

        def step():
            self.now += self.cost[n] / 1000

        return step


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """No override, a fresh process memo, its own cache folder, a quiet 2-core machine."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "_chosen", {})
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    monkeypatch.setattr(tuning, "_load", lambda: 0.5)
    monkeypatch.setattr(tuning, "_cpu_seconds", lambda: (0.0, 0.0))
    return tmp_path


@pytest.mark.parametrize("cost, best", [({1: 70, 2: 49}, 2), ({1: 70, 2: 95}, 1)])
def test_the_faster_thread_count_is_chosen_cached_and_read_back(measured, monkeypatch, cost, best):
    brain = Timed(cost)
    chosen = threads.step_threads(brain, object(), folder=measured, timer=brain.timer)
    assert (chosen.count, chosen.how) == (best, "measured") and sorted(brain.trials) == [1, 2]
    assert chosen.medians_ms == pytest.approx({"1": cost[1], "2": cost[2]})
    [record] = [json.loads(p.read_text()) for p in measured.iterdir()]
    assert record["threads"] == str(best) and record["cpu_model"] and record["brain"] == "timed"
    monkeypatch.setattr(threads, "_chosen", {})  # a new process: the file answers, nothing is timed
    again = Timed({1: 1, 2: 1000})
    assert threads.step_threads(again, object(), folder=measured, timer=again.timer).count == best
    assert again.trials == []


def test_given_and_environment_override_and_other_brains_keep_torchs_count(measured, monkeypatch):
    brain = Timed({1: 70, 2: 49})
    assert threads.step_threads(brain, object(), threads=1, folder=measured).how == "given"
    monkeypatch.setenv(threads.ENV, "1")
    assert threads.step_threads(brain, object(), folder=measured) == threads.StepThreads(1, "environment")
    monkeypatch.setenv(threads.ENV, "two")
    with pytest.raises(ConfigError, match="CSMLAB_STEP_THREADS"):
        threads.step_threads(brain, object(), folder=measured)
    with pytest.raises(ConfigError, match="threads"):
        threads.step_threads(brain, object(), threads=0)
    monkeypatch.delenv(threads.ENV)
    assert brain.trials == [] and not list(measured.iterdir())
    plain = Brain()  # measures nothing: the session keeps torch's count, as before
    assert threads.step_threads(plain, object(), folder=measured) == threads.StepThreads(torch.get_num_threads(), "torch")


class Counting(MoshiBrain):
    """Moshi's brain, noting torch's thread count inside each of its steps."""

    def _advance(self, codes):
        self.seen.append(torch.get_num_threads())
        return super()._advance(codes)


@pytest.mark.parametrize("clock", ["simulated", "realtime"])
def test_moshi_brain_on_two_threads_gives_moshi_streams_tokens_and_audio(call, moshi, clock):
    """Each step of the session is the direct stream's step for the same frame: no frame dropped,
    repeated or reordered by the threading (on the real-time clock a late step's audio is silence,
    its text is kept)."""
    audio, rate = call
    clip = audio[2 * rate: 2 * rate + rate // 2]  # 0.5 s of the call: 7 steps (the last one zero-padded)
    brain = Counting(model=moshi, seed=7)
    brain.seen = []
    with DuplexSession(brain, clock=clock, threads=2, stall_ms=60_000) as session:  # no stall policy at any load
        assert session._user._stream.threads == session._system._stream.threads == 2
        steps = list(session.run(clip, rate))
        report = session.report()
    assert brain.seen == [2] * len(steps) and report["threads"]["threads"] == 2
    codec = brain.codec()
    with codec.stream(threads=2) as enc:
        codes = np.concatenate([enc.encode(clip, rate), enc.flush()], axis=1)  # [8, T]
    with M.MoshiStream(moshi, seed=7) as direct, codec.stream(threads=2) as dec:
        torch.set_num_threads(2)
        try:
            expected = [direct.step(torch.from_numpy(codes[:, t])) for t in range(codes.shape[1])]
            voiced = [None if s.warming_up else dec.decode(s.audio.numpy()[:, None]) for s in expected]
        finally:
            torch.set_num_threads(1)
    assert len(steps) == len(expected) == codes.shape[1]
    assert list(brain.tokens) == [s.text_token for s in expected]
    assert [s.text for s in steps] == [s.text for s in expected]
    for step, pcm in zip(steps, voiced):
        if pcm is None or step.late:
            assert not step.pcm.any()
        else:
            assert np.array_equal(step.pcm, pcm)
    if clock == "simulated":
        assert sum(pcm is not None for pcm in voiced) > 0 and not any(s.late for s in steps)
