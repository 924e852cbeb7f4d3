"""`csmlab bench codec`'s A/B of streams (issue 23): they take turns on every frame, start timed from a
reset state, and the goal ratios are the ones the issue sets. No timing is asserted."""
import numpy as np
import pytest

from csmlab.bench import codec as bench_codec


def test_streams_take_turns_in_a_rotating_order_from_a_reset_state():
    calls, resets = [], []

    def stream(name):
        def step(frame):
            calls.append((name, int(frame[0])))
            return np.array([[int(frame[0])]])

        return step, lambda: resets.append((name, len(calls)))

    frames = np.arange(4.0).repeat(2).reshape(4, 2)
    out = bench_codec.taking_turns({"a": stream("a"), "b": stream("b")}, frames, warmup=1)
    assert resets == [("a", 1), ("b", 2)]  # each reset right after its own warm-up
    timed = calls[2:]
    assert [n for n, _ in timed] == list("ab" "ba" "ab" "ba")  # the order rotates every frame
    assert [f for _, f in timed] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert out["a"][1].tolist() == [[0, 1, 2, 3]] and len(out["b"][0]) == 4


def test_the_goal_ratios_are_the_issues():
    goals = bench_codec.thread_goals({1: 60.0, 2: 40.0}, floor_1_thread_ms=25.0)
    assert goals["session_1t_over_floor_1t"] == pytest.approx(2.4) and goals["session_1t_over_floor_1t_max"] == 2.0
    assert goals["speedup_2t_over_1t"] == pytest.approx(1.5) and goals["speedup_2t_over_1t_min"] == 1.6
