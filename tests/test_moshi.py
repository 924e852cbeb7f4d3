"""Moshi: the 7B on meta, the offline checkpoint through moshi's loader, and the streaming wrapper."""
import json
import logging

import numpy as np
import pytest
import torch
from moshi.utils.compile import no_compile
from safetensors import safe_open

from csmlab import moshi as M
from csmlab.errors import CodesError, StreamClosedError
from csmlab.weights import MOSHI_FILE


def _user(frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 2048, (8, frames), generator=torch.Generator().manual_seed(seed))  # [K, T]


def _frames(steps: list, user: torch.Tensor, frames: int) -> torch.Tensor:
    """A streamed run in the undelayed layout `LMModel.forward` reads, `[1, 17, frames]`.

    Step t + 1 returns Moshi's frame t; LMGen shows the model the user's frame given at step t + 1
    next to Moshi's frame t (the user's frame of step 0 meets only start tokens).
    """
    text = torch.tensor([s.text_token for s in steps[1 : frames + 1]])
    audio = torch.stack([s.audio for s in steps[1 : frames + 1]], dim=1)  # [8, T]
    return torch.cat([text[None], audio, user[:, 1 : frames + 1]])[None]


def _run(moshi, user, **kwargs) -> list[M.Step]:
    with M.MoshiStream(moshi, **kwargs) as stream:
        return [stream.step(user[:, t]) for t in range(user.shape[1])]


def test_meta_7b_has_the_parameter_count_its_config_implies():
    counted = M.parameter_counts(M.meta_model())
    assert counted == M.expected_parameter_counts(M.REAL_CONFIG)
    assert counted["temporal transformer"] > 0.8 * counted["total"]  # the 7B is the temporal transformer
    assert next(M.meta_model().parameters()).device.type == "meta"


def test_formula_follows_the_config_not_one_model(moshi):
    config = moshi.source.checkpoint_info().raw_config
    assert M.parameter_counts(moshi.lm) == M.expected_parameter_counts(config)
    deeper = M.REAL_CONFIG | {"num_layers": 3}
    assert M.parameter_counts(M.real_size_lm(3, device="meta")) == M.expected_parameter_counts(deeper)


def test_weight_memory_scales_with_bytes_per_parameter():
    gb = M.weight_gb(10**9)
    assert gb == {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}


def test_stream_layout_is_text_then_moshi_then_user():
    streams = M.stream_layout()
    assert [s.owner for s in streams] == ["text"] + [M.SYSTEM] * 8 + [M.USER] * 8
    assert [s.delay for s in streams] == M.REAL_CONFIG["delays"]
    assert {s.delay for s in streams if s.codebook == 0} == {0}  # semantic codebooks are not delayed


def test_offline_checkpoint_is_a_moshi_repository(moshi):
    folder = moshi.source.path
    config = json.loads((folder / "config.json").read_text())
    with safe_open(folder / MOSHI_FILE, "pt") as f:
        keys = set(f.keys())
        stacked = f.get_slice("depformer.layers.0.self_attn.in_proj_weight").get_shape()
    assert not any("in_projs" in k or "out_projs" in k for k in keys)  # the released naming
    assert stacked[0] == config["dep_q"] * 3 * config["depformer_dim"]  # one projection per codebook, stacked
    lm = moshi.lm
    assert (lm.n_q, lm.dep_q, lm.card, lm.delays) == (16, 8, 2048, M.REAL_CONFIG["delays"])
    assert moshi.tokenizer.vocab_size() == lm.text_card == config["text_card"]
    assert moshi.tokenizer.id_to_piece(lm.text_padding_token_id) == "<pad>"
    assert moshi.mimi.num_codebooks == 8


def test_streaming_is_reproducible_with_a_seed(moshi):
    user = _user(6)
    first, again, other = (_run(moshi, user, seed=s) for s in (7, 7, 8))
    tokens = lambda steps: [(s.text_token, None if s.audio is None else s.audio.tolist()) for s in steps]  # noqa: E731
    assert tokens(first) == tokens(again)
    assert tokens(first) != tokens(other)
    assert first[0].warming_up and first[0].text_token is None  # the acoustic delay: no frame yet
    assert all(not s.warming_up for s in first[1:])


def test_interleaved_streams_do_not_disturb_each_other(moshi):
    user = _user(4)
    alone = _run(moshi, user, seed=3)
    with M.MoshiStream(moshi, seed=3) as a:
        steps = []
        for t in range(4):
            steps.append(a.step(user[:, t]))
            torch.rand(100)  # other code drawing random numbers between steps
    assert [s.text_token for s in steps] == [s.text_token for s in alone]


def test_streaming_equals_teacher_forced_forward(moshi):
    """moshi guarantees that step-by-step generation sees what `LMModel.forward` sees in one batch."""
    frames = 6
    user = _user(frames + 1, seed=1)
    streamed_logits = []
    steps = _run(moshi, user, use_sampling=False, on_text_logits_hook=lambda x: streamed_logits.append(x.clone()))
    codes = _frames(steps, user, frames)
    with torch.no_grad(), no_compile():
        out = moshi.lm.forward(codes)
    torch.testing.assert_close(out.text_logits, torch.cat(streamed_logits[:frames], dim=2), atol=1e-4, rtol=1e-4)
    greedy, audio, mask = out.logits.argmax(-1)[0], codes[0, 1:9], out.mask[0]  # [8, T] each
    assert torch.equal(greedy[mask], audio[mask])
    assert mask.sum() == 8 * frames - 7  # the last frame of the 7 delayed codebooks is not predicted yet


def test_depth_walkthrough_equals_lmgen(moshi):
    user = _user(4, seed=2)
    steps = _run(moshi, user, use_sampling=False)
    token, depth = M.depth_walkthrough(moshi.lm, _frames(steps, user, 2))  # decides step 3 from frames 0, 1
    assert token == steps[3].text_token
    # step 3 samples the semantic code of frame 2 and the (delayed) acoustic codes of frame 1
    assert [d.code for d in depth] == [int(steps[3].audio[0])] + steps[2].audio[1:].tolist()
    assert [d.input_token for d in depth] == [token] + [d.code for d in depth[:-1]]
    assert all(0 < d.probability <= 1 for d in depth)


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.zeros(8, dtype=torch.float32), "integer token ids"),
        (torch.zeros(7, dtype=torch.long), "8 user codebooks"),
        (torch.zeros(32, 1, dtype=torch.long), "8 user codebooks"),
        (torch.full((8,), 2048), r"\[0, 2048\)"),
        (torch.full((8,), -1), r"\[0, 2048\)"),
    ],
)
def test_bad_user_codes_give_a_clear_error(moshi, bad, message):
    with M.MoshiStream(moshi) as stream, pytest.raises(CodesError, match=message):
        stream.step(bad)


def test_a_closed_stream_says_so(moshi):
    stream = M.MoshiStream(moshi)
    stream.close()
    with pytest.raises(StreamClosedError):
        stream.step(_user(1)[:, 0])


def test_generation_survives_a_dropped_frame(moshi, caplog):
    user = _user(5, seed=4)
    with caplog.at_level(logging.WARNING, logger="csmlab.moshi"), M.MoshiStream(moshi, seed=5) as stream:
        steps = [stream.step(None if t == 2 else user[:, t]) for t in range(5)]
        assert stream.dropped == 1
    assert "step 2: user frame missing" in caplog.text
    assert [s.user_dropped for s in steps] == [False, False, True, False, False]
    assert all(s.audio is not None for s in steps[1:])
    silenced = user.clone()
    silenced[:, 2] = moshi.silence_codes()[0, :, 0]
    assert [s.text_token for s in _run(moshi, silenced, seed=5)] == [s.text_token for s in steps]


def test_converse_refuses_audio_shorter_than_the_acoustic_delay(moshi):
    from csmlab.errors import AudioFormatError

    with pytest.raises(AudioFormatError, match="at least"):
        M.converse(moshi, np.zeros(1920, dtype=np.float32))
    with pytest.raises(AudioFormatError, match="empty"):
        M.converse(moshi, np.zeros(0, dtype=np.float32))


def test_monologue_puts_words_on_frames_between_padding(moshi):
    from csmlab.data import real_recording

    rec = real_recording()
    stream = M.monologue(rec.transcript, moshi.tokenizer, rec.seconds)
    assert len(stream) == int(rec.seconds * 12.5)
    words = [t for t in stream if t not in (3, M.END_OF_PADDING_ID)]
    expected = " ".join(t.text for t in rec.transcript)
    assert moshi.tokenizer.decode(words).split() == expected.split()
    assert stream.count(3) > len(words)  # mostly padding, as in Moshi's training data
    first_word = next(i for i, t in enumerate(stream) if t not in (3, M.END_OF_PADDING_ID))
    assert stream[first_word - 1] == M.END_OF_PADDING_ID
    assert first_word == int(rec.transcript[0].start * 12.5)


def test_extrapolation_recovers_a_linear_cost():
    fit = M.extrapolate({1: 300.0, 3: 460.0, 5: 620.0})
    assert fit["per_layer_ms"] == pytest.approx(80.0)
    assert fit["fixed_ms"] == pytest.approx(220.0)
    assert fit["full_step_ms"] == pytest.approx(220 + 32 * 80)
    assert fit["rtf"] == pytest.approx(fit["full_step_ms"] / 80)
    with pytest.raises(ValueError, match="two depths"):
        M.extrapolate({1: 300.0})


def test_latency_budget_is_frame_plus_acoustic_delay_plus_compute():
    budget = M.latency_budget_ms(step_ms=0.0)
    assert budget["mimi frame"] + budget["acoustic delay"] == pytest.approx(160.0)
    assert M.latency_budget_ms(step_ms=50.0)["total"] == pytest.approx(210.0)


def test_bench_reports_the_7b_and_times_the_small_model(capsys):
    import argparse

    from csmlab.bench import moshi as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    figures = bench.run(parser.parse_args(["--skip-real", "--steps", "2"]))
    assert figures["parameters"] == M.expected_parameter_counts()
    assert figures["weights_gb"]["bf16"] == pytest.approx(2 * figures["parameters"]["total"] / 1e9)
    assert figures["small"]["step_ms"] > 0 and "real_size" not in figures
    assert "LMGen.step" in capsys.readouterr().out
