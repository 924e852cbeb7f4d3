"""csmlab.codec: the public API, the bad inputs of issue 4, and a session that survives them intact."""
import numpy as np
import pytest
import torch

from csmlab.codec import FRAME_SIZE, load_codec
from csmlab.data import real_recording
from csmlab.errors import AudioFormatError, CodesError, ComponentError, ConfigError, CsmlabError, StreamClosedError

RATE = 16000


def stream_codes(mimi, chunks, rate=RATE):
    with mimi.stream() as s:
        return np.concatenate([s.encode(c, rate) for c in chunks] + [s.flush()], axis=1)


def test_batch_shapes_dtypes_and_frame_count(mimi, speech):
    codes = mimi.encode(speech, RATE)
    n24 = len(speech) * 24000 // RATE
    assert codes.dtype == np.int64 and codes.shape == (8, -(-n24 // FRAME_SIZE))
    assert codes.min() >= 0 and codes.max() < 2048
    assert len(np.unique(codes[0])) > 5  # calibrated codebooks: codes spread, not all 0
    audio = mimi.decode(codes)
    assert audio.dtype == np.float32 and audio.shape == (codes.shape[1] * FRAME_SIZE,)
    assert mimi.frame_rate == 12.5 and mimi.sample_rate == 24000


def test_a_session_emits_only_complete_frames(mimi, speech):
    x = speech[: RATE // 2]  # 0.5 s at 16 kHz = 12000 samples at 24 kHz = 6.25 frames
    with mimi.stream() as s:
        first = s.encode(x[:100], RATE)
        assert first.shape == (8, 0) and first.dtype == np.int64
        rest = s.encode(x[100:], RATE)
        assert rest.shape[1] in (5, 6)  # the resampler holds back a few samples until flush
        assert s.decode(rest).shape == (rest.shape[1] * FRAME_SIZE,)
        tail = s.flush()
    assert rest.shape[1] + tail.shape[1] == 7  # ceil(6.25): the last frame zero-padded, as in batch


def stereo_int16(mono):
    return np.round(np.stack([mono, mono]).T * 32767).astype(np.int16)  # [T, 2]


BAD_CHUNKS = [  # (what, chunk from the speech, sample rate, error, message fragment)
    ("NaN", lambda x: np.full(50, np.nan, np.float32), RATE, AudioFormatError, "NaN"),
    ("Inf", lambda x: np.full(50, np.inf, np.float32), RATE, AudioFormatError, "NaN/Inf"),
    ("empty", lambda x: np.zeros(0, np.float32), RATE, AudioFormatError, "empty"),
    ("3 dims", lambda x: x[None, None, :100], RATE, AudioFormatError, "dims"),
    ("rate 0", lambda x: x[:100], 0, AudioFormatError, "sample_rate"),
    ("rate -1", lambda x: x[:100], -1, AudioFormatError, "sample_rate"),
    ("rate 16000.5", lambda x: x[:100], 16000.5, AudioFormatError, "sample_rate"),
    ("rate change", lambda x: x[:100], 44100, AudioFormatError, "changed mid-stream"),
]


@pytest.fixture(scope="module")
def clean_run(mimi, speech):
    chunks = np.array_split(speech, 6)
    return chunks, stream_codes(mimi, chunks)


def test_bad_chunks_raise_and_leave_the_session_intact(mimi, clean_run):
    """Every bad chunk of issue 4 in one stream: each raises, and the codes are those of a clean run."""
    chunks, expected = clean_run
    with mimi.stream() as s:
        got = [s.encode(chunks[0], RATE)]
        for (what, make, rate, error, match), chunk in zip(BAD_CHUNKS, chunks[1:] * 2):
            with pytest.raises(error, match=match):
                s.encode(make(chunk), rate)
            if what in ("NaN", "3 dims", "rate 0", "rate change"):  # interleave the good chunks
                got.append(s.encode(chunks[len(got)], RATE))
        got += [s.encode(c, RATE) for c in chunks[len(got) :]] + [s.flush()]
    assert np.array_equal(np.concatenate(got, axis=1), expected)


BAD_CODES = [
    ("out of range", lambda c: c + 2048, CodesError, r"\[0, 2048\)"),
    ("negative", lambda c: c - 3000, CodesError, r"\[0, 2048\)"),
    ("wrong codebooks", lambda c: c[:4], CodesError, "8 codebooks but the codes have 4"),
    ("float codes", lambda c: c.astype(np.float32), CodesError, "integers"),
    ("batch axis", lambda c: c[None], CodesError, r"\[K, n\]"),
]


def test_bad_codes_raise_and_decoding_carries_on(mimi, clean_run):
    codes = clean_run[1]
    with mimi.stream() as s:
        expected = s.decode(codes)
        s.reset()
        got = [s.decode(codes[:, :5])]
        for what, make, error, match in BAD_CODES:
            with pytest.raises(error, match=match):
                s.decode(make(codes[:, 5:9]))
            with pytest.raises(error, match=match):
                mimi.decode(make(codes))
        got.append(s.decode(torch.from_numpy(codes[:, 5:])))  # torch codes are fine too
    # the same arithmetic up to float summation order (matrix products of another width)
    assert np.allclose(np.concatenate(got), expected, atol=1e-5)


def test_closed_flushed_and_reset_sessions(mimi, speech):
    speech = speech[: RATE // 2]
    s = mimi.stream()
    codes = s.encode(speech, RATE)
    s.flush()
    with pytest.raises(StreamClosedError, match="flushed"):
        s.encode(speech, RATE)
    s.reset()  # a new stream, at a new rate
    again = s.encode(speech.astype(np.float64), RATE)
    assert np.array_equal(again, codes)
    s.encode(np.zeros(100, np.float32), RATE)
    s.reset()
    s.encode(np.zeros(100, np.float32), 44100)  # a new rate after reset is fine
    s.close()
    for call in (lambda: s.decode(codes), lambda: s.encode(speech, RATE), s.flush, s.reset):
        with pytest.raises(StreamClosedError, match="closed"):
            call()
    with mimi.stream() as t:
        pass
    assert t.closed


def test_two_sessions_side_by_side_do_not_share_state(mimi, clean_run):
    chunks_a, alone_a = clean_run
    other = real_recording(RATE).audio[12 * RATE : 13 * RATE]
    chunks_b = np.array_split(other, len(chunks_a))
    alone_b = stream_codes(mimi, chunks_b)
    with mimi.stream() as a, mimi.stream() as b:
        got_a, got_b = [], []
        for ca, cb in zip(chunks_a, chunks_b):
            got_a.append(a.encode(ca, RATE))
            got_b.append(b.encode(cb, RATE))
        got_a.append(a.flush())
        got_b.append(b.flush())
    assert np.array_equal(np.concatenate(got_a, 1), alone_a)
    assert np.array_equal(np.concatenate(got_b, 1), alone_b)


def test_an_ambiguous_stereo_chunk_follows_the_layout_the_stream_already_showed(mimi, speech):
    pcm = stereo_int16(speech[: RATE // 4])  # [T, 2]
    with mimi.stream() as s:
        s.encode(pcm[:1000], RATE)  # unambiguous: [T, 2]
        s.encode(pcm[1000:1002], RATE)  # [2, 2] would be ambiguous on its own
        s.encode(pcm[1002:], RATE)
    with mimi.stream() as s, pytest.raises(AudioFormatError, match="ambiguous"):
        s.encode(pcm[:2], RATE)


def test_load_codec_refuses_bad_requests():
    with pytest.raises(CodesError, match="1..32"):
        load_codec(0)
    with pytest.raises(CodesError, match="1..32"):
        load_codec(33)
    with pytest.raises(CodesError, match="rustymimi always uses 8"):
        load_codec(4, "rustymimi")
    with pytest.raises(ConfigError, match="unknown backend"):
        load_codec(8, "encodec")


def test_every_error_is_a_csmlab_error():
    for error in (AudioFormatError, CodesError, StreamClosedError):
        assert issubclass(error, CsmlabError)


def test_the_listening_codec_offline_is_the_small_trained_mimi_and_says_so(monkeypatch, speech):
    monkeypatch.setenv("CSMLAB_OFFLINE", "1")
    small = load_codec(8, listen=True)
    assert small.weights.kind == "small" and not small.weights.is_real
    assert "NOT Kyutai's Mimi" in small.weights.banner() and "SMALL" in str(small.weights)
    assert small.codebook_size == 1024
    codes = small.encode(speech, RATE)
    assert codes.shape[0] == 8 and codes.max() < 1024
    with pytest.raises(CodesError, match=r"\[0, 1024\)"):
        small.decode(np.full((8, 2), 1500))
    with pytest.raises(CodesError, match="1..8"):
        load_codec(9, listen=True)
    with pytest.raises(ConfigError, match="backend='moshi'"):
        load_codec(8, "rustymimi", listen=True)
    assert load_codec(8).weights.kind == "offline"  # measurements keep the full-size stand-in


def test_a_codec_failure_mid_stream_stops_the_session_and_loses_no_audio(mimi, speech, monkeypatch):
    with mimi.stream() as s:
        first = s.encode(speech[:8000], RATE)  # 0.5 s: 6 frames, the rest waits
        monkeypatch.setattr(s._stream, "encode", lambda x: (_ for _ in ()).throw(RuntimeError("device lost")))
        with pytest.raises(ComponentError, match="device lost.*reset"):
            s.encode(speech[8000:], RATE)
        monkeypatch.undo()
        with pytest.raises(ComponentError, match="reset"):  # the half-updated stream is not trusted
            s.encode(speech[:100], RATE)
        lost = s.unencoded
        assert abs(len(lost) - (24000 - first.shape[1] * FRAME_SIZE)) <= 1  # all after the 6 frames (resampler rounding)
        s.reset()
        rest = np.concatenate([s.encode(lost, 24000), s.flush()], axis=1)
    assert first.shape[1] + rest.shape[1] == mimi.encode(speech, RATE).shape[1]
