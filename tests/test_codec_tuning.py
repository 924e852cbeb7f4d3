"""csmlab.codec.tuning: a CPU stream's kernels chosen by timing them (here with an injected timer:
no real timing), cached per host, overridable; and each choice streams the batch path's codes."""
import json

import numpy as np
import pytest

from csmlab.codec import fast, load_codec, tuning
from csmlab.errors import ConfigError


class FakeClock:
    """A timer that advances by what each candidate "costs": `cost[name]` ms per call."""

    def __init__(self, cost):
        self.now, self.cost, self.calls = 0.0, cost, []

    def __call__(self):
        return self.now

    def candidates(self, names):
        def run(name):
            self.calls.append(name)
            self.now += self.cost[name] / 1000

        return {name: (lambda name=name: run(name)) for name in names}


def test_the_fastest_median_wins_and_the_candidates_take_turns():
    clock = FakeClock({"a": 30, "b": 20, "c": 25})
    best, medians = tuning.choose(clock.candidates("abc"), rounds=3, timer=clock)
    assert best == "b" and medians == pytest.approx({"a": 30, "b": 20, "c": 25})
    assert clock.calls == list("abc" "bca" "cab")  # rotated: no candidate always runs after the same one


def test_rounds_stop_once_the_budget_is_spent_but_every_candidate_runs_once():
    clock = FakeClock({"a": 900, "b": 1200})
    best, medians = tuning.choose(clock.candidates("ab"), rounds=5, timer=clock, budget_s=3.0)
    assert clock.calls == list("ab" "ba")  # 2.1 s after round 1, 4.2 s after round 2: stop
    assert best == "a" and medians == pytest.approx({"a": 900, "b": 1200})
    clock = FakeClock({"a": 5000, "b": 6000})
    assert tuning.choose(clock.candidates("ab"), timer=clock, budget_s=1.0)[0] == "a" and clock.calls == list("ab")


def test_a_tie_keeps_the_earlier_candidate():
    clock = FakeClock({"a": 20, "b": 20})
    assert tuning.choose(clock.candidates("ab"), rounds=2, timer=clock)[0] == "a"


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """kernels_for with no override, a fresh process memo, a cache folder of its own and a quiet machine."""
    monkeypatch.delenv(tuning.ENV, raising=False)
    monkeypatch.setattr(tuning, "_chosen", {})
    monkeypatch.setattr(tuning, "_load", lambda: 0.5)
    monkeypatch.setattr(tuning, "_cpu_seconds", lambda: (0.0, 0.0))  # nobody else ran during the trials
    return tmp_path


def test_the_choice_is_measured_once_cached_per_host_and_read_back(measured, monkeypatch):
    model = load_codec(listen=True).backend.model
    clock = FakeClock({"fast": 50, "fast-flinear": 40, "flinear-all": 42, "by-shape": 41, "native": 43, "moshi": 45})
    trials = []

    def trial(kernels):
        trials.append(kernels)
        return clock.candidates([kernels])[kernels]

    assert tuning.kernels_for(model, 1, trial, measured, clock) == "fast-flinear"
    [record] = [json.loads(p.read_text()) for p in measured.iterdir()]
    assert record["kernels"] == "fast-flinear" and record["threads"] == 1 and record["cpu_model"]
    assert trials == list(tuning.runnable())
    monkeypatch.setattr(tuning, "_chosen", {})  # a new process: the file answers, nothing is timed
    assert tuning.kernels_for(model, 1, pytest.fail, measured, clock) == "fast-flinear"
    assert tuning.host_key(model, 2) != tuning.host_key(model, 1)  # another thread count is measured apart


def test_a_choice_measured_on_a_busy_machine_holds_for_the_process_but_is_not_cached(measured, monkeypatch):
    model = load_codec(listen=True).backend.model
    monkeypatch.setattr(tuning, "_load", lambda: 7.5)
    clock = FakeClock({"fast": 50, "fast-flinear": 60, "flinear-all": 55, "by-shape": 58, "native": 52, "moshi": 45})
    trial = lambda kernels: clock.candidates([kernels])[kernels]  # noqa: E731
    assert tuning.kernels_for(model, 2, trial, measured, clock) == "moshi"
    assert not list(measured.iterdir())
    assert tuning.kernels_for(model, 2, pytest.fail, measured, clock) == "moshi"  # this process keeps it


def test_the_environment_overrides_the_measured_choice(measured, monkeypatch):
    model = load_codec(listen=True).backend.model
    monkeypatch.setenv(tuning.ENV, "moshi")
    assert tuning.kernels_for(model, 1, pytest.fail, measured) == "moshi"
    monkeypatch.setenv(tuning.ENV, "fastest")
    with pytest.raises(ConfigError, match="fast-flinear"):
        tuning.kernels_for(model, 1, pytest.fail, measured)


@pytest.mark.parametrize("kernels", tuning.KERNELS)
def test_each_choice_streams_the_batch_paths_codes(kernels, call):
    """Whatever a host picks, a session's codes are the batch path's (small trained Mimi, fp32)."""
    codec = load_codec(listen=True)
    audio = codec.decode(codec.encode(*call))[: 1920 * 12]  # 12 frames at 24 kHz
    stream = fast.stream_of(kernels, codec.backend.model, threads=1)
    streamed = np.concatenate([stream.encode(audio[i: i + 1920]) for i in range(0, len(audio), 1920)], axis=1)
    assert np.array_equal(streamed, codec.encode(audio, 24000))


def test_a_choice_measured_while_another_process_ran_is_not_cached(measured, monkeypatch):
    """A quiet load average lags: what others ran during the trial itself decides (here 1.5 CPU
    seconds beside ours over the fake clock's 1.34 s: 5 rounds of 268 ms)."""
    model = load_codec(listen=True).backend.model
    clock = FakeClock({"fast": 50, "fast-flinear": 60, "flinear-all": 55, "by-shape": 58, "native": 52, "moshi": 45})
    readings = iter([(10.0, 1.0), (12.0, 1.5)])  # all processes' CPU seconds, ours
    monkeypatch.setattr(tuning, "_cpu_seconds", lambda: next(readings))
    trial = lambda kernels: clock.candidates([kernels])[kernels]  # noqa: E731
    assert tuning.kernels_for(model, 1, trial, measured, clock) == "moshi"
    assert not list(measured.iterdir())
