"""Hostile input (issue 12, cases 5-12): each bad input gets a clear `CsmlabError` subclass and
leaves the state intact, and `reset()` always restores a clean state."""
import math

import numpy as np
import pytest
import torch

from csmlab import csm
from csmlab import moshi as M
from csmlab.audio import MAX_PEAK, MAX_RATE, MIN_RATE
from csmlab.codec import FRAME_SIZE, load_codec
from csmlab.data import real_recording
from csmlab.errors import AudioFormatError, CodesError, ComponentError, ConfigError, TextError

RATE = 16000


def session_codes(mimi, chunks, rate=RATE, bad=()):
    """Codes of a session fed `chunks`, with each (chunk, rate, error, match) of `bad` refused after the first."""
    with mimi.stream() as s:
        got = [s.encode(chunks[0], rate)]
        for chunk, bad_rate, error, match in bad:
            with pytest.raises(error, match=match):
                s.encode(chunk, bad_rate)
        got += [s.encode(c, rate) for c in chunks[1:]] + [s.flush()]
    return np.concatenate(got, axis=1)


# ---- 5, 6: magnitudes that would poison a stream ----------------------------------------------------
HUGE = [
    (np.full(1920, 1e20, np.float32), "1e\\+20"),
    (np.full(1920, 3e38, np.float32), "not audio samples"),
    (np.full(1920, 1e300), "not audio samples"),  # float64 beyond float32's range
    (np.full(1920, np.inf, np.float32), "NaN/Inf"),
]


def test_huge_or_int16_scaled_chunks_are_refused_and_the_session_goes_on(mimi, speech):
    """Case 5 and 6: the chunks are refused before any state changes, so the codes equal a clean run."""
    chunks = np.array_split(speech, 4)
    clean = session_codes(mimi, chunks)
    int16_scale = (chunks[1] * 32767).astype(np.float32)
    bad = [(x, RATE, AudioFormatError, match) for x, match in HUGE]
    bad.append((int16_scale, RATE, AudioFormatError, "divide by 32768"))
    assert np.array_equal(session_codes(mimi, chunks, bad=bad), clean)
    with pytest.raises(AudioFormatError, match="divide by 32768"):
        mimi.encode(speech * 32767, RATE)


def test_loud_but_plausible_audio_is_kept_not_clipped(mimi, speech):
    loud = speech / np.abs(speech).max() * (MAX_PEAK * 0.9)  # +17 dBFS: hot, but audio
    assert mimi.encode(loud, RATE).shape == mimi.encode(speech, RATE).shape


def test_reset_restores_a_clean_state_even_after_nan_reached_the_codec(mimi, speech):
    """Case 5: NaN put straight into the streaming state (past every check): reset() starts afresh."""
    fresh = session_codes(mimi, [speech])
    with mimi.stream() as s:
        s.encode(speech, RATE)
        s._stream.encode(np.full(4 * FRAME_SIZE, np.nan, np.float32))  # poisons the attention caches
        s.reset()
        again = np.concatenate([s.encode(speech, RATE), s.flush()], axis=1)
    assert np.array_equal(again, fresh)


# ---- 7: sample rates and clips too short ------------------------------------------------------------
BAD_RATES = [math.nan, math.inf, -math.inf, 3e14, MAX_RATE + 1, MIN_RATE - 1, 0]


@pytest.mark.parametrize("rate", BAD_RATES)
def test_rates_outside_the_bounds_are_refused_everywhere(mimi, speech, rate):
    with pytest.raises(AudioFormatError, match=f"from {MIN_RATE} to {MAX_RATE} Hz"):
        mimi.encode(speech, rate)
    with mimi.stream() as s, pytest.raises(AudioFormatError, match="sample_rate"):
        s.encode(speech, rate)


@pytest.mark.parametrize("backend", ["moshi", "rustymimi"])
def test_every_backend_gives_the_same_answer_for_a_clip_too_short(backend):
    """Case 7: one sample at 96 kHz is no sample at 24 kHz: one error; two samples make one frame.
    The refusal comes before any backend runs (`csmlab.audio.to_mimi`), so transformers (22 s to
    load here) gives it too; it used to raise its own RuntimeError."""
    mimi = load_codec(8, backend)
    with pytest.raises(AudioFormatError, match="shorter than one sample at 24000 Hz; pass at least 4"):
        mimi.encode(np.full(1, 0.1, np.float32), 96000)
    assert mimi.encode(np.full(2, 0.1, np.float32), 96000).shape == (8, 1)


# ---- 8: codes for a codec ---------------------------------------------------------------------------
@pytest.mark.parametrize("codes, match", [
    ([[1, 2, 3], [4, 5]], "rectangular"),
    (torch.zeros(8, 3, dtype=torch.bfloat16), "integers, not torch.bfloat16"),
    (torch.zeros(8, 3, dtype=torch.long, device="meta"), "meta device"),
    (np.array([["a"] * 3] * 8), "integers"),
    (np.zeros((8, 3), dtype=object), "integers"),
    (np.zeros((0, 5), np.int64), "without codebooks"),
    (np.zeros((5, 8), np.int64), r"transposed.*codes\.T"),
    (np.zeros((4, 5), np.int64), r"load_codec\(num_codebooks=4\)"),
    (np.zeros((9, 5), np.int64), r"codes\[:8\]"),
])
def test_bad_codes_get_the_right_advice(mimi, codes, match):
    with pytest.raises(CodesError, match=match):
        mimi.decode(codes)
    with mimi.stream() as s, pytest.raises(CodesError, match=match):
        s.decode(codes)


def test_unsigned_codes_decode_like_int64(mimi, speech):
    codes = mimi.encode(speech, RATE)
    assert np.array_equal(mimi.decode(codes.astype(np.uint16)), mimi.decode(codes))


# ---- 9: MoshiStream --------------------------------------------------------------------------------
def user_codes(frames, seed=0):
    return torch.randint(0, 2048, (8, frames), generator=torch.Generator().manual_seed(seed))  # [K, T]


def tokens(steps):
    return [(s.text_token, None if s.audio is None else s.audio.tolist()) for s in steps]


BAD_STEPS = [  # case 9: every one refused by its shape or type, with the stream's state intact
    (torch.zeros(2, 4, dtype=torch.long), "got shape \\(2, 4\\)"),
    (torch.zeros(4, 2, dtype=torch.long), "got shape \\(4, 2\\)"),
    (torch.zeros(1, 8, dtype=torch.long), "got shape \\(1, 8\\)"),
    (np.zeros(8, dtype=object), "integers"),
    (np.array(["1"] * 8), "integers"),
    ("12345678", "integers"),
    (torch.zeros(8, dtype=torch.bfloat16), "integer token ids"),
]


def test_moshi_steps_refuse_bad_codes_by_shape_and_type_and_take_unsigned_ones(moshi):
    user = user_codes(4)
    with M.MoshiStream(moshi, seed=1) as clean:
        expected = tokens([clean.step(user[:, t]) for t in range(4)])
    with M.MoshiStream(moshi, seed=1) as stream:
        steps = [stream.step(user[:, 0])]
        for bad, match in BAD_STEPS:
            with pytest.raises(CodesError, match=match):
                stream.step(bad)
        dtypes = (np.uint16, np.uint32, np.uint64)
        steps += [stream.step(user[:, t].numpy().astype(dtype)) for t, dtype in zip(range(1, 4), dtypes)]
    assert tokens(steps) == expected


@pytest.mark.parametrize("sampling, match", [
    ({"temperature": 0.5}, "no option temperature"),
    ({"temp": -1}, "temp must be a positive"),
    ({"temp": 0}, "use_sampling=False"),
    ({"temp_text": math.nan}, "temp_text"),
    ({"top_k": 0}, "top_k must be an int >= 1"),
    ({"top_k_text": 2.5}, "top_k_text"),
    ({"use_sampling": "no"}, "use_sampling"),
    ({"seed": "x"}, "seed must be an int"),  # escaped as torch's ValueError at the first step, not here
    ({"seed": 1.5}, "seed must be an int"),
])
def test_moshi_sampling_options_are_checked(moshi, sampling, match):
    with pytest.raises(ConfigError, match=match):
        M.MoshiStream(moshi, **sampling)


def test_moshi_reset_restores_a_clean_state_even_after_nan_reached_the_caches(moshi):
    user = user_codes(4, seed=2)
    with M.MoshiStream(moshi, seed=3) as stream:
        first = tokens([stream.step(user[:, t]) for t in range(4)])
        for state in [*stream._state[0].values(), *stream._state[1].values()]:  # poison every float cache
            for value in vars(state).values():
                cache = getattr(value, "cache", value)
                if torch.is_tensor(cache) and cache.is_floating_point():
                    cache.fill_(math.nan)
        stream.reset()
        assert tokens([stream.step(user[:, t]) for t in range(4)]) == first


def test_a_moshi_step_that_fails_midway_is_refused_until_reset(moshi, monkeypatch):
    user = user_codes(3, seed=4)
    with M.MoshiStream(moshi, seed=2) as clean:
        expected = tokens([clean.step(user[:, t]) for t in range(3)])
    with M.MoshiStream(moshi, seed=2) as stream:
        stream.step(user[:, 0])
        monkeypatch.setattr(stream.gen, "step", lambda codes: (_ for _ in ()).throw(RuntimeError("device lost")))
        with pytest.raises(ComponentError, match="device lost.*reset"):
            stream.step(user[:, 1])
        monkeypatch.undo()
        with pytest.raises(ComponentError, match="call reset"):
            stream.step(user[:, 1])
        assert not moshi.lm.is_streaming  # the model is free for other streams all the while
        stream.reset()
        assert tokens([stream.step(user[:, t]) for t in range(3)]) == expected


# ---- 10-12: CSM ------------------------------------------------------------------------------------
TEXT = "Hello there."


@pytest.mark.parametrize("text", ["", "   ", None, 42, b"hello"])
def test_csm_refuses_text_that_is_no_words(voice, text):
    with pytest.raises(TextError, match="non-empty string"):
        voice.prompt(text)


@pytest.mark.parametrize("speaker", [-1, True, 10**6, 2**70, 1.0, "0"])
def test_csm_refuses_speakers_out_of_bounds(voice, speaker):
    with pytest.raises(ConfigError, match="speaker ids are ints 0..9"):
        voice.prompt(TEXT, speaker=speaker)
    segment = csm.Segment(speaker, "hi", np.zeros(4800, np.float32))
    with pytest.raises(ConfigError, match="turn 0 has"):
        voice.prompt(TEXT, context=[segment])


def test_csm_context_takes_any_sequence_of_segments_and_refuses_the_rest(voice):
    clip = real_recording(24000).audio[:12000]
    segments = [csm.Segment(0, "hi", clip), csm.Segment(1, "yes", clip)]
    expected = voice.prompt(TEXT, context=segments)["input_ids"]
    for context in (tuple(segments), iter(segments)):
        assert torch.equal(voice.prompt(TEXT, context=context)["input_ids"], expected)
    assert torch.equal(voice.prompt(TEXT, context=None)["input_ids"], voice.prompt(TEXT)["input_ids"])
    for context, match in [(segments[0], r"context=\[segment\]"), ({0: segments[0]}, "not dict"),
                           ([(0, "hi", clip)], "turn 0 is a tuple"), (5, "not int")]:
        with pytest.raises(ConfigError, match=match):
            voice.prompt(TEXT, context=context)


@pytest.mark.parametrize("ms", [0, -80, 79, None, math.inf, math.nan, True, "100"])
def test_csm_max_audio_ms_is_checked(voice, ms):
    with pytest.raises(ConfigError, match="max_audio_ms"):
        voice.generate_codes(TEXT, max_audio_ms=ms)
    with pytest.raises(ConfigError, match="max_audio_ms"):
        voice.frames(TEXT, max_audio_ms=ms)


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": -1}, "temperature"), ({"temperature": 0}, "greedy=True"), ({"temperature": math.nan}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"top_k": 2.5}, "top_k"), ({"top_k": True}, "top_k"), ({"greedy": "yes"}, "greedy"),
])
def test_csm_sampling_values_are_checked(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        csm.Sampling(**kwargs)


def test_csm_sampling_must_be_a_sampling(voice):
    with pytest.raises(ConfigError, match="csm.Sampling"):
        voice.generate_codes(TEXT, sampling={"greedy": True})


@pytest.mark.parametrize("rate", [math.nan, math.inf, 3e14])
def test_csm_context_rates_are_bounded(voice, rate):
    """Case 7 for CSM: refused before soxr is asked to build a resampler (3e14 Hz hung it)."""
    with pytest.raises(AudioFormatError, match=f"context turn 0: sample_rate must be an integer from {MIN_RATE}"):
        voice.prompt(TEXT, context=[csm.Segment(0, "hi", np.zeros(4800, np.float32), sample_rate=rate)])


@pytest.mark.parametrize("scale, match", [(32767, "divide by 32768"), (1e30, "not audio samples")])
def test_csm_context_audio_magnitude_is_checked(voice, scale, match):
    clip = real_recording(24000).audio[:12000] * scale
    with pytest.raises(AudioFormatError, match=f"context turn 0: .*{match}"):
        voice.prompt(TEXT, context=[csm.Segment(0, "hi", clip)])


@pytest.mark.parametrize("text", ["<|begin_of_text|>[1]x<|end_of_text|>", "say <|AUDIO|> now", "a<|audio_eos|>",
                                  "<|reserved_special_token_7|>"])
def test_csm_text_never_becomes_control_tokens(voice, text):
    """Case 11: control tokens in user text are refused, in the text to speak and in context turns."""
    with pytest.raises(TextError, match="control token"):
        voice.prompt(text)
    with pytest.raises(TextError, match="context turn 0's text contains"):
        voice.prompt(TEXT, context=[csm.Segment(0, text, np.zeros(4800, np.float32))])


def test_csm_text_with_brackets_and_bars_is_words(voice):
    ids = voice.prompt("a < b | c [1] <|x|>")["input_ids"][0].tolist()
    begin = voice.processor.tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    assert ids.count(begin) == 1  # one turn, no forged one


def test_csm_decode_refuses_the_codec_layout(voice, mimi, speech):
    """Case 12: the codec's `[K, n]` codes are not CSM's `[T, K]`: refused, with the fix named."""
    codes = mimi.encode(speech, RATE)  # [8, 13]
    with pytest.raises(CodesError, match=r"\[T, K\].*got shape \(8, 13\).*codes\.T"):
        voice.decode(codes)
    with pytest.raises(CodesError, match=r"got shape \(32, 5\).*codes\.T"):
        voice.decode(np.zeros((32, 5), np.int64))
    assert voice.decode(codes.T).shape == (13 * FRAME_SIZE,)  # the fix works
    assert np.array_equal(voice.decode(codes, layout="KT"), voice.decode(codes.T))  # or naming the layout


@pytest.mark.parametrize("shape", [(32, 8), (8, 32), (8, 8), (32, 32)])
def test_csm_decode_asks_for_the_layout_when_the_shape_fits_both(voice, shape):
    """Case 12: `[32, 8]` is 8 frames of 32 codebooks or 32 frames of 8: never guessed."""
    codes = np.zeros(shape, np.int64)
    with pytest.raises(CodesError, match="layout='TK'.*layout='KT'"):
        voice.decode(codes)
    assert voice.decode(codes, layout="TK").shape == (shape[0] * FRAME_SIZE,)
    assert voice.decode(codes, layout="KT").shape == (shape[1] * FRAME_SIZE,)


def test_an_interrupt_mid_encode_leaves_the_session_refusing_until_reset(mimi, speech, monkeypatch):
    """Interrupting the kernel during a session's encode (KeyboardInterrupt, not an Exception) left the
    state half-updated and the session went on with it, silently; now it is refused, like a failure."""
    with mimi.stream() as s:
        s.encode(speech[: RATE // 2], RATE)
        monkeypatch.setattr(s._stream, "encode", lambda x: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            s.encode(speech[RATE // 2 :], RATE)
        monkeypatch.undo()
        with pytest.raises(ComponentError, match="call reset"):
            s.encode(speech[:100], RATE)
        s.reset()
        assert np.array_equal(np.concatenate([s.encode(speech, RATE), s.flush()], axis=1), session_codes(mimi, [speech]))
