"""`csmlab bench codec --streams`: the scaling figures have the shape the notebooks and the JSON
promise (per B: per-stream-frame p50/p95 next to the batch cost; memory; cold steps), and the first
stream of the largest batch agrees with a plain session. Timings themselves are not asserted."""
import argparse

import pytest

from csmlab.bench import codec as bench_codec
from csmlab.bench import moshi as bench_moshi
from csmlab.bench.streams import held_in_real_time, parse_streams, plot_scaling


def test_codec_scaling_figures_and_plot():
    figures = bench_codec.measure_streams([1, 3], seconds=0.32, listen=True)
    assert set(figures["streams"]) == {"1", "3"}
    for key, row in figures["streams"].items():
        assert row["streams"] == int(key)
        assert len(row["step_ms"]) == figures["frames_per_stream"]
        for cost in ("per_stream_frame_ms", "per_step_ms", "per_stream_frame_cpu_ms"):
            assert 0 < row[cost]["p50"] <= row[cost]["p95"]
        assert row["per_stream_frame_ms"]["p50"] == pytest.approx(row["per_step_ms"]["p50"] / int(key), rel=0.5)
        assert row["state_mb_per_stream"] > 0
    assert figures["batch_frame_ms"] > 0 and figures["batch_frame_cpu_ms"] > 0
    assert figures["largest_batch_first_stream_vs_alone"]["codebook0"] == 1.0
    assert set(figures["goal"]["per_stream_over_batch"]) == {1, 3}
    assert figures["conditions"]["start"]["utc"] <= figures["conditions"]["end"]["utc"]
    ax = plot_scaling(figures)
    assert [int(t.get_text()) for t in ax.get_xticklabels()] == [1, 3]


def test_moshi_conversations_per_forward_figures():
    args = argparse.Namespace(streams=[1, 2], steps=1, device="cpu", skip_real=True, real_streams=None)
    figures = bench_moshi.run_streams(args)
    assert set(figures["streams"]) == {"1", "2"}
    for row in figures["streams"].values():
        assert len(row["step_ms"]) == 3
        assert 0 < row["moshi_step_ms"]["p50"] <= row["per_step_ms"]["max"]  # Moshi's share of the step
    assert figures["conversations_in_real_time"] in (0, 1, 2)


def test_streams_option_and_real_time_count():
    assert parse_streams("8,1,2,2") == [1, 2, 8]
    with pytest.raises(SystemExit, match="batch sizes >= 1"):
        parse_streams("0,4")
    rows = {"1": {"streams": 1, "real_time": True}, "4": {"streams": 4, "real_time": True},
            "8": {"streams": 8, "real_time": False}}
    assert held_in_real_time(rows) == 4
