"""Every exercise check of the course can fail: `...` is "not answered yet", a plausible wrong answer
(the mistake a learner makes) is rejected with a hint, and the right answer passes.

The notebooks' solution cells prove under nbval that each check accepts its solution on the real run;
this module proves the other half, that no check accepts anything.
"""
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from csmlab.course import exercises as ex
from csmlab import metrics
from csmlab.data import Turn, overlap_seconds, real_recording, speaking_time

TURNS = [Turn("Diane", 1.0, 3.0), Turn("Sheila", 2.5, 4.0), Turn("Diane", 5.0, 6.0)]


def _layer():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))


def _step(index, dropped=False, audio=True):
    return SimpleNamespace(index=index, user_dropped=dropped, audio=np.zeros(8) if audio and index else None)


def _good_si_sdr(ref, est):
    ref, est = ref - ref.mean(), est - est.mean()
    target = np.dot(est, ref) / np.dot(ref, ref) * ref
    return 10 * np.log10(np.sum(target**2) / np.sum((est - target) ** 2))


def _snr(ref, est):  # the plausible mistake: plain SNR, not scale-invariant
    return 10 * np.log10(np.sum(ref**2) / np.sum((est - ref) ** 2))


REFERENCE = np.random.default_rng(0).integers(0, 2048, size=(8, 40))
VOCODER = {b: 2.0 / b for b in range(1, 33)}  # a distance that falls with more bands

# (check, its arguments with the right answer, the same with a plausible wrong answer)
CASES = {
    "frames_in_call": (ex.frames_in_call, (375,), (250,)),  # 250: 1920-sample frames at 16 kHz
    "first_speaker, who": (ex.first_speaker, ("Diane", 1.0, TURNS), ("Sheila", 1.0, TURNS)),
    "first_speaker, when": (ex.first_speaker, ("Diane", 1.0, TURNS), ("Diane", 2.5, TURNS)),
    "overlap_fraction": (ex.overlap_fraction, (0.5 / 4.5, TURNS), (0.5 / 6.0, TURNS)),  # over the clip's 6 s
    "kbps_for, bit/s": (ex.kbps_for, (4.4, 32), (4400, 32)),
    "kbps_for, wrong size": (ex.kbps_for, (0.5, 4, 1024), (0.55, 4, 1024)),
    "codes_for_clip": (ex.codes_for_clip, (504,), (496,)),  # 496: complete frames only
    "codes_for_clip, stereo": (ex.codes_for_clip, (504,), (1008,)),
    "rvq_levels_needed": (ex.rvq_levels_needed, (3, [0.09, 0.05, 0.03, 0.02], 0.04), (4, [0.09, 0.05, 0.03, 0.02], 0.04)),
    "same_codes, no flush": (ex.same_codes, (REFERENCE, REFERENCE), (REFERENCE[:, :-1], REFERENCE)),
    "same_codes, other audio": (ex.same_codes, (REFERENCE, REFERENCE), (np.roll(REFERENCE, 1, axis=1), REFERENCE)),
    "si_sdr_function": (ex.si_sdr_function, (_good_si_sdr,), (_snr,)),
    "which_codebook_hurts": (ex.which_codebook_hurts, (0, {0: 2.5, 7: 0.9}), (7, {0: 2.5, 7: 0.9})),
    "ranked_by_distance": (ex.ranked_by_distance, (["a", "b"], {"a": 0.8, "b": 1.9}), (["b", "a"], {"a": 0.8, "b": 1.9})),
    "equivalent_bands, too few": (ex.equivalent_bands, (3, VOCODER.get, 0.7), (2, VOCODER.get, 0.7)),
    "equivalent_bands, not smallest": (ex.equivalent_bands, (3, VOCODER.get, 0.7), (5, VOCODER.get, 0.7)),
    "temporal_layer_parameters": (ex.temporal_layer_parameters, (4 * 8 + 8 + 2 * 8, _layer()), (4 * 8 + 8, _layer())),
    "latency_with_delay": (ex.latency_with_delay, (240, 2), (160, 2)),
    "survived_glitch": (ex.survived_glitch, ([_step(i, i in (4, 5, 6)) for i in range(8)], (4, 5, 6)),
                        ([_step(i, i == 4) for i in range(8)], (4, 5, 6))),
    "padding_share": (ex.padding_share, (0.75, [3, 3, 3, 9], 3), (0.25, [3, 3, 3, 9], 3)),
    "frames_budget": (ex.frames_budget, (1459, lambda n: n <= 1459), (1460, lambda n: n <= 1459)),
    "same_frames": (ex.same_frames, (REFERENCE.T, REFERENCE.T), (REFERENCE, REFERENCE.T)),
    "csm_and_moshi_kbps": (ex.csm_and_moshi_kbps, (4.4, 1.1, 32, 8), (1.1, 4.4, 32, 8)),
    "realtime_bandwidth": (ex.realtime_bandwidth, (96.1, 7.69e9, 1), (7.69, 7.69e9, 1)),  # one step's GB, not per s
    "sessions_per_replica": (ex.sessions_per_replica, (6, 20.0, 2, 0.75), (8, 20.0, 2, 0.75)),  # no headroom
    "sessions_per_replica, rounding": (ex.sessions_per_replica, (5, 22.0, 2, 0.75), (6, 22.0, 2, 0.75)),
}


@pytest.mark.parametrize("name", CASES)
def test_right_answer_passes_and_plausible_wrong_one_is_rejected(name):
    check, right, wrong = CASES[name]
    assert check(*right).must_pass().ok
    verdict = check(*wrong)
    assert verdict.status == "wrong" and "Hint" in verdict.message, verdict
    with pytest.raises(ex.WrongAnswer):
        verdict.must_pass()


@pytest.mark.parametrize("name", [n for n in CASES if "," not in n])
def test_unanswered_is_said_so(name):
    check, right, _ = CASES[name]
    verdict = check(..., *right[1:])  # the learner's cell as it starts: `answer = ...`
    assert verdict.status == "unanswered" and "not answered yet" in verdict.message


def test_function_that_returns_nothing_is_unanswered():
    def my_si_sdr(ref, est): ...

    assert ex.si_sdr_function(my_si_sdr).status == "unanswered"


def test_checks_of_the_real_call_agree_with_the_data():
    rec = real_recording()
    assert ex.frames_in_call(len(real_recording(metrics.SAMPLE_RATE).audio) // metrics.FRAME_SIZE).ok
    first = min(rec.turns, key=lambda t: t.start)
    assert first.speaker == "Diane"  # the RTTM's speaker90 is the transcript's Diane
    assert {t.speaker for t in rec.turns} == {t.speaker for t in rec.transcript} == {"Diane", "Sheila"}
    truth = overlap_seconds(rec.turns) / sum(speaking_time(rec.turns).values())
    assert ex.overlap_fraction(truth, rec.turns).ok
    assert ex.overlap_fraction(100 * truth, rec.turns).message.endswith("not a percentage")


# The course notebooks that follow the answer / check / hidden-solution layout cell by cell.
COURSE = ("00_setup_and_tour", "01_mimi_encoding", "01b_train_your_own_codec", "02_moshi_architecture", "03_csm_integration")
NOTEBOOKS = [Path(__file__).resolve().parent.parent / "notebooks" / f"{name}.ipynb" for name in COURSE]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_notebook_ends_with_unanswered_exercises_and_hidden_solutions(path):
    cells = json.loads(path.read_text())["cells"]
    solutions = [i for i, c in enumerate(cells) if "solution" in c["metadata"].get("tags", [])]
    assert len(solutions) >= 3, f"{path.name}: {len(solutions)} exercises with a solution cell"
    for i in solutions:
        solution, check = "".join(cells[i]["source"]), "".join(cells[i - 1]["source"])
        assert cells[i]["metadata"].get("jupyter", {}).get("source_hidden") is True
        assert ".must_pass()" in solution  # the solution runs the check, and fails nbval if it does not pass
        assert "ex." in check and "must_pass" not in check  # the learner's check: a hint, never a traceback
        learner = "".join(cells[i - 2]["source"])
        assert "= ..." in learner or "    ..." in learner, f"{path.name} cell {i - 2} starts answered"
    text = " ".join("".join(c["source"]) for c in cells)
    assert "# solution" not in text and "# your answer" not in text.replace("# your answer:", "")
    assert not re.search(r"\bissue \d", text, re.IGNORECASE), "the course refers to the project's issues"


# Right answers as a learner reads them off the page (a printed share, a rounded quotient) pass.
def test_right_answers_read_off_the_page_pass():
    rec = real_recording()
    speech = speaking_time(rec.turns)
    from_page = round(round(overlap_seconds(rec.turns), 2) / sum(round(s, 2) for s in speech.values()), 3)  # 1.89 / (11.85 + 12.50)
    assert ex.overlap_fraction(from_page, rec.turns).ok
    assert ex.overlap_fraction(round(from_page, 2), rec.turns).status == "wrong"  # 0.08: rounded too far
    assert "three decimals" in ex.overlap_fraction(round(from_page, 2), rec.turns).message
    tokens = [3] * 421 + [9] * 579  # 42.1% padding, printed "42%"
    assert ex.padding_share(0.42, tokens, 3).ok and ex.padding_share(0.421, tokens, 3).ok
    assert ex.padding_share(42, tokens, 3).message.endswith("not a percentage")
    assert not ex.padding_share(0.58, tokens, 3).ok and not ex.padding_share(0.40, tokens, 3).ok


def test_a_solution_shows_no_answer_and_carries_its_digests():
    solved = ex.latency_with_delay(240, delay=2).must_pass()
    data, meta = solved._repr_mimebundle_()
    assert "240" not in data["text/plain"] and "240" not in repr(solved)
    assert ex.digest("240 ms") in meta["csmlab"]["answer_sha256"]
    assert ex.answer_forms("42% of the 375 frames; 1,459 frames fit; 4.4 kbit/s") == {"42 %", "375 frames", "1459 frames",
                                                                                     "4.4 kbit/s", "4.4"}


def test_an_output_leaks_an_answer_in_any_form_but_a_measured_duration():
    answer = ex.answer_forms("2.5 frames per second")
    assert ex.printed_forms("| 2.5 |") & answer and ex.printed_forms("drops 2.5 frames/s") & answer
    assert not ex.printed_forms("cascade p95 2.5 ms per 80 ms step") & answer  # this machine's time, not the answer
    assert ex.printed_forms("2.5 ms") & ex.answer_forms("2.5 ms")  # a duration still leaks a duration
    assert ex.printed_forms("42% of 4.4 kbit/s, 1.88x, 7.5") == {"42 %", "4.4 kbit/s", "4.4", "1.88 x", "7.5"}


# 04: the jitter buffer, Moshi's latency from a report, the cascade's hang-over as a trade-off.
def test_jitter_and_latency_checks():
    assert ex.jitter_counts(...).status == "unanswered"
    truth = ex.jitter_truth()
    assert truth == {"consumed": 6, "concealed": 1, "late": 1, "duplicate": 1}  # seq 2 concealed then late; 5 twice
    assert "late" in ex.jitter_counts({**truth, "late": 0}).message
    assert "dict" in ex.jitter_counts([6, 1, 1, 1]).message
    assert ex.jitter_counts(dict(truth)).must_pass().ok
    report = {"latency_ms": {"algorithmic": {"frame": 80, "acoustic delay": 80}}}
    assert ex.moshi_latency(..., report).status == "unanswered" and ex.moshi_latency(80, report).status == "wrong"
    assert ex.moshi_latency(160, report).ok and not ex.moshi_latency(160, {"latency_ms": {"algorithmic": {"frame": 80}}}).ok


def test_hang_over_check_weighs_false_turn_ends_against_response():
    fake = {64: {"p50_ms": 140.0, "turn_ends": 8, "false_ends_s": [9.4, 12.8]},  # fast, but talks over her
            240: {"p50_ms": 284.0, "turn_ends": 4, "false_ends_s": []},
            480: {"p50_ms": 540.0, "turn_ends": 4, "false_ends_s": []}}  # safe, but slow
    assert ex.hang_over(..., fake.get).status == "unanswered" and ex.hang_over(-5, fake.get).status == "wrong"
    assert "mid-sentence" in ex.hang_over(64, fake.get).message
    assert "shorten" in ex.hang_over(480, fake.get).message
    assert ex.hang_over(240, fake.get).ok


def test_hang_over_measure_sees_a_pause_mid_turn():
    from csmlab.pipeline.call import user_side

    diane = ex.with_pauses(user_side(real_recording(), "Diane"))
    assert ex.measure_hang_over(diane, 64)["false_ends_s"]  # a 64 ms hang-over ends her turn in a 200 ms pause
    assert not ex.measure_hang_over(diane, 320)["false_ends_s"]


# 05: bytes on the wire, drops of a bounded queue, the echo's lag.
def test_notebook_05_checks():
    from csmlab.metrics import FRAME_SIZE
    from csmlab.widget.frames import HEADER_BYTES

    assert ex.frame_bytes(...).status == "unanswered"
    assert "header" in ex.frame_bytes(4 * FRAME_SIZE).message and ex.frame_bytes(4 * FRAME_SIZE + HEADER_BYTES).ok
    assert "16-bit" in ex.frame_bytes(2 * FRAME_SIZE + HEADER_BYTES).message
    assert "handles" in ex.drops_per_second(10, compute_ms=100).message
    assert ex.drops_per_second(2.5, compute_ms=100).ok and ex.drops_per_second(0, compute_ms=50).ok
    rng = np.random.default_rng(0)
    sent = np.repeat(rng.uniform(0.01, 0.5, 100), 240) * rng.standard_normal(24000)  # 1 s, loudness varying per 10 ms
    heard = np.concatenate([np.zeros(3840), sent[:-3840]])  # 160 ms later
    assert ex.echo_delay_ms(160, sent, heard).ok and not ex.echo_delay_ms(80, sent, heard).ok
    assert ex.mouth_to_ear_ms(..., 200, 160, 40).status == "unanswered" and ex.mouth_to_ear_ms(250, 200, 160, 40).status == "wrong"
    assert "round trip the page shows" in ex.mouth_to_ear_ms(200, 200, 160, 40).message
    assert "device" in ex.mouth_to_ear_ms(360, 200, 160, 40).message and ex.mouth_to_ear_ms(400, 200, 160, 40).ok
