"""`csmlab doctor`'s real-time verdicts (`csmlab.bench.realtime`): the timing with an injected clock, the
verdicts and the widget's default brain from given figures, the per-host cache, and the CLI's lines.
No assertion here depends on how fast this machine is."""
import json
from pathlib import Path

import numpy as np
import pytest

from csmlab import cli
from csmlab.bench import realtime
from csmlab.bench.realtime import FRAME_MS, Figures
from csmlab.weights import WeightsSource


class FakeClock:
    """A timer that only moves when a fake step says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def step_taking(self, ms_list):
        costs = iter(ms_list)

        def step(frame):
            self.now += next(costs) / 1000
        return step


def test_warm_up_steps_are_not_counted_and_the_rest_are_timed_by_the_given_timer():
    clock = FakeClock()
    costs = [500.0, 300.0] + [10.0 * (i + 1) for i in range(8)]
    ms = realtime.time_steps(clock.step_taking(costs), [None] * len(costs), timer=clock, budget_s=60)
    assert ms == pytest.approx(costs[realtime.WARM_STEPS:])


def test_a_slow_model_stops_at_the_budget_once_enough_steps_are_counted():
    clock = FakeClock()
    ms = realtime.time_steps(clock.step_taking([2000.0] * 25), [None] * 25, timer=clock, budget_s=6.0)
    assert len(ms) == realtime.MIN_STEPS  # 2 warm + 5 counted = 14 s > 6 s, but never fewer than MIN_STEPS


@pytest.mark.parametrize("p50, p95, verdict", [
    (10, 20, "real time"), (0.8 * FRAME_MS + 1, FRAME_MS - 1, "tight"), (50, FRAME_MS, "too slow"),
    (FRAME_MS + 20, FRAME_MS + 40, "too slow"), (None, None, "not measured")])
def test_verdict_from_the_step_figures(p50, p95, verdict):
    assert Figures("moshi", "local", p50, p95, 10, note="why").verdict == verdict


def test_what_a_slow_model_needs_is_rendered_from_its_figures():
    slow = Figures("moshi", "local", 150.0, 200.0, 10)
    assert f"needs {200 / FRAME_MS:.1f}x this machine's speed" in realtime.needs(slow)
    assert "released" not in realtime.needs(slow)  # real weights: its own figure says it
    stand_in = Figures("moshi+csm", "offline+offline", 150.0, 200.0, 10)
    assert stand_in.stand_in and "the released Moshi-7B" in realtime.needs(stand_in)
    assert "the released CSM-1B" in realtime.needs(stand_in)


def _record(*figures):
    return {"figures": list(figures), "threads": 1, "cached": False, "path": "",
            "date": "2026-12-03T10:00:00Z", "machine": {"cpu_model": "Test CPU", "cpu_cores": 2, "load_average_1min": 0.5}}


def test_default_brain_offline_is_the_cascade_with_the_reason():
    record = _record(Figures("cascade", "espeak-ng", 1.0, 2.0, 10), Figures("moshi", "offline", 20.0, 30.0, 10),
                     Figures("moshi+csm", "offline+offline", 40.0, 60.0, 10))
    brain, why = realtime.default_brain(record)
    assert brain == "cascade"
    assert "moshi: offline stand-in weights" in why and "cascade keeps real time" in why


def test_default_brain_is_real_moshi_when_it_keeps_up_else_the_next_that_does():
    fast = _record(Figures("cascade", "espeak-ng", 1.0, 2.0, 10), Figures("moshi", "hub", 40.0, 60.0, 10))
    assert realtime.default_brain(fast)[0] == "moshi"
    slow = _record(Figures("cascade", "hub", 1.0, 2.0, 10), Figures("moshi", "hub", 2400.0, 2600.0, 5),
                   Figures("moshi+csm", "hub+hub", 60.0, 70.0, 10))
    brain, why = realtime.default_brain(slow)
    assert brain == "moshi+csm" and "moshi: too slow here" in why
    nothing = _record(Figures("cascade", "hub", 100.0, 300.0, 5), Figures("moshi", "hub", 2400.0, 2600.0, 5))
    assert realtime.default_brain(nothing)[0] == "cascade"  # the fallback, said as such
    assert "so the cascade" in realtime.default_brain(nothing)[1]


def _fake_measure(calls):
    def measure(model, timer):
        calls.append(model)
        return Figures(model, "offline", 10.0, 12.0, 23)
    return measure


def test_figures_are_cached_per_host_and_read_back_without_measuring(tmp_path, monkeypatch):
    monkeypatch.setattr(realtime, "_load", lambda: 0.1)
    calls, weights = [], {"codec": "a", "moshi": "b"}
    first = realtime.measured(("codec", "moshi"), folder=tmp_path, measure=_fake_measure(calls), weights=weights)
    assert calls == ["codec", "moshi"] and not first["cached"] and Path(first["path"]).is_file()
    again = realtime.measured(("codec", "moshi"), folder=tmp_path, measure=_fake_measure(calls), weights=weights)
    assert calls == ["codec", "moshi"] and again["cached"]  # not measured again
    assert [f.p50_ms for f in again["figures"]] == [10.0, 10.0]
    other = realtime.measured(("codec", "moshi"), folder=tmp_path, measure=_fake_measure(calls),
                              weights={**weights, "moshi": "real weights now"})
    assert not other["cached"] and len(calls) == 4  # other weights: another key
    realtime.measured(("codec", "moshi"), threads=2, folder=tmp_path, measure=_fake_measure(calls), weights=weights)
    assert len(calls) == 6  # another thread count: another key


def test_figures_measured_on_a_busy_machine_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(realtime, "_load", lambda: 64.0)
    calls = []
    record = realtime.measured(("codec",), folder=tmp_path, measure=_fake_measure(calls), weights={"codec": "a"})
    assert record["busy"] and not list(tmp_path.iterdir())
    assert "BUSY" in realtime.report_lines(record)[-1]
    realtime.measured(("codec",), folder=tmp_path, measure=_fake_measure(calls), weights={"codec": "a"})
    assert calls == ["codec", "codec"]


def test_a_model_whose_weights_are_not_downloaded_is_not_measured(monkeypatch):
    pending = WeightsSource("moshi", "hub", Path("hf://kyutai/moshiko-pytorch-bf16"), "will be downloaded")
    monkeypatch.setattr(realtime, "weights_of", lambda model: [pending])
    f = realtime.measure("moshi")
    assert f.verdict == "not measured" and "not downloaded" in realtime.needs(f)


def test_the_loopback_is_measured_as_the_widget_runs_it():
    f = realtime.measure("loopback")
    assert f.weights == "small" and f.steps == realtime.STEPS - realtime.WARM_STEPS
    assert 0 < f.p50_ms <= f.p95_ms


def test_doctor_prints_a_verdict_per_model(monkeypatch, capsys, tmp_path):
    record = realtime.measured(realtime.MODELS, folder=tmp_path, measure=_fake_measure([]),
                               weights={m: "w" for m in realtime.MODELS})
    monkeypatch.setattr(realtime, "measured", lambda threads: record)
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("real time here"):].splitlines()
    for model in realtime.MODELS:
        assert any(line.split()[:3] == [model, "real", "time"] for line in section), model
    assert "10.0 /   12.0" in out and f"{FRAME_MS / 12:.1f}x headroom" in out
    monkeypatch.setattr(realtime, "measured", lambda threads: pytest.fail("--no-bench measured"))
    assert cli.main(["doctor", "--no-bench"]) == 0
    assert "real time here" not in capsys.readouterr().out


def test_the_stamp_says_whether_the_figures_were_measured_now_or_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(realtime, "_load", lambda: 0.1)
    weights = {"codec": "a"}
    now = realtime.measured(("codec",), folder=tmp_path, measure=_fake_measure([]), weights=weights)
    assert "measured now" in repr(realtime.stamp(now))
    cached = realtime.measured(("codec",), folder=tmp_path, measure=_fake_measure([]), weights=weights)
    shown = repr(realtime.stamp(cached))
    assert "read from the doctor's cache" in shown and cached["date"] in shown


def test_the_widgets_brains_load_their_models_where_the_notebooks_put_them(monkeypatch):
    """The verdict measures the widget's brains; on a GPU box they must load on CUDA, not the CPU."""
    from csmlab import csm, moshi, weights
    from csmlab.pipeline.moshi_brain import MoshiBrain
    from csmlab.pipeline.voices import CsmSpeaker

    asked = []
    monkeypatch.setattr(weights, "default_device", lambda: "cuda")
    monkeypatch.setattr(moshi, "load", lambda path=None, device="cpu", dtype=None: asked.append(("moshi", device)))
    monkeypatch.setattr(moshi, "MoshiStream", lambda model, **kwargs: None)
    monkeypatch.setattr(csm, "load_csm", lambda path=None, device="cpu", **kwargs: asked.append(("csm", device)))
    MoshiBrain(), CsmSpeaker()
    assert asked == [("moshi", "cuda"), ("csm", "cuda")]


def test_doctor_says_why_when_the_bench_cannot_run(monkeypatch, capsys):
    from csmlab.errors import CsmlabError

    def missing(threads):
        raise CsmlabError("data/real/sample.wav is missing: run `python data/fetch.py`")
    monkeypatch.setattr(realtime, "measured", missing)
    assert cli.main(["doctor"]) == 0
    assert "real time here: not measured (data/real/sample.wav is missing" in capsys.readouterr().out
