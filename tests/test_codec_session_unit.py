"""`CodecSession`'s bookkeeping (csmlab/codec/stream.py) on a fake codec: chunking, rates, layouts,
flush, failures and the lifecycle, in milliseconds. The real Mimi's streaming is tested in
test_codec.py; these tests are the ones `make mutation` runs against stream.py."""
import threading

import numpy as np
import pytest

from csmlab.audio import resample
from csmlab.errors import AudioFormatError, CodesError, ComponentError, StreamClosedError
from csmlab.metrics import FRAME_SIZE

from fakes import fake_codec, level

RNG = np.random.default_rng(7)


def clip(n: int) -> np.ndarray:
    """Steps of different levels, so that every frame has its own code."""
    return np.repeat(RNG.uniform(-0.9, 0.9, -(-n // 700)), 700)[:n].astype(np.float32)


def streamed(session, audio, rate, sizes):
    out, at = [], 0
    for size in sizes:
        chunk = audio[at:at + size]
        at += size
        if len(chunk):
            out.append(session.encode(chunk, rate))
    out.append(session.flush())
    return np.concatenate(out, axis=1)


@pytest.mark.parametrize("rate", [24_000, 16_000, 44_100])
@pytest.mark.parametrize("sizes", [[1] * 5 + [9000, 1919, 1, 1920, 3841], [20_000], [100] * 200])
def test_streaming_equals_batch_for_any_chunking(rate, sizes):
    codec = fake_codec()
    audio = clip(sum(sizes))
    with codec.stream() as session:
        codes = streamed(session, audio, rate, sizes)
    assert codes.dtype == np.int64
    np.testing.assert_array_equal(codes, codec.encode(audio, rate))


def test_a_short_chunk_waits_in_the_buffer_and_flush_pads_it_with_zeros():
    codec = fake_codec()
    session = codec.stream()
    out = session.encode(np.full(1000, 0.5, np.float32), 24_000)
    assert out.shape == (2, 0) and out.dtype == np.int64
    assert session.unencoded.dtype == np.float32 and np.array_equal(session.unencoded, np.full(1000, 0.5, np.float32))
    session.unencoded[:] = 0  # a copy: the session's buffer is its own
    assert session.unencoded[0] == 0.5
    out = session.encode(np.full(1000, 0.5, np.float32), 24_000)  # 2000: one frame, 80 wait
    assert out.shape == (2, 1) and out[0, 0] == level(np.full(FRAME_SIZE, 0.5)) and out[1, 0] == 0
    assert len(session.unencoded) == 2000 - FRAME_SIZE
    last = session.flush()
    expected = np.zeros(FRAME_SIZE, np.float32)
    expected[:80] = 0.5
    assert last.tolist() == [[level(expected)], [1]]
    assert len(session.unencoded) == 0
    assert session._stream.encoded == [FRAME_SIZE, FRAME_SIZE]


def test_flush_ends_the_stream_until_reset():
    codec = fake_codec()
    session = codec.stream()
    session.encode(np.full(FRAME_SIZE, 0.25, np.float32), 24_000)
    session.flush()
    empty = session.flush()  # twice: nothing more
    assert empty.shape == (2, 0) and empty.dtype == np.int64
    with pytest.raises(StreamClosedError, match=r"^this stream was flushed \(it has ended\); call reset\(\) to start a new one$"):
        session.encode(np.zeros(10, np.float32), 24_000)
    session.reset()
    assert session.encode(np.full(FRAME_SIZE, 0.25, np.float32), 16_000 * 0 + 24_000).tolist() == [[10], [0]]


def test_flush_before_any_audio_gives_no_codes_and_ends_the_stream():
    session = fake_codec().stream()
    empty = session.flush()
    assert empty.shape == (2, 0) and empty.dtype == np.int64
    assert session._stream.encoded == []
    with pytest.raises(StreamClosedError):
        session.encode(np.zeros(10, np.float32), 24_000)


def test_the_rate_is_kept_per_stream_and_a_bad_chunk_changes_nothing():
    codec = fake_codec()
    audio = clip(3 * FRAME_SIZE)
    session = codec.stream()
    first = session.encode(audio[:2500], 24_000)
    with pytest.raises(AudioFormatError, match=r"^sample rate changed mid-stream from 24000 to 16000 Hz; keep one rate per stream, "
                                             r"or flush\(\) and reset\(\) before switching$"):
        session.encode(audio[2500:], 16_000)
    with pytest.raises(AudioFormatError):
        session.encode(np.zeros((2, 3, 4), np.float32), 24_000)
    with pytest.raises(AudioFormatError):
        session.encode(audio[2500:], 0)
    rest = session.encode(audio[2500:], 24_000)
    np.testing.assert_array_equal(np.concatenate([first, rest], axis=1), codec.encode(audio, 24_000))
    session.flush()
    session.reset()  # a new stream may take a new rate
    assert session.encode(np.zeros(FRAME_SIZE, np.float32), 48_000).shape[0] == 2


def test_a_bad_first_chunk_leaves_the_rate_open():
    session = fake_codec().stream()
    with pytest.raises(AudioFormatError):
        session.encode(np.zeros(0, np.float32), 16_000)
    session.encode(np.zeros(FRAME_SIZE, np.float32), 24_000)  # not "changed from 16000"
    assert session._rate == 24_000


def test_two_channel_chunks_and_the_layout_the_stream_showed():
    codec = fake_codec()
    left, right = np.full(FRAME_SIZE, 0.5, np.float32), np.full(FRAME_SIZE, -0.25, np.float32)
    session = codec.stream()
    out = session.encode(np.stack([left, right])[:, :1000], 24_000)  # [2, T]: channels first, by its shape
    assert out.shape == (2, 0) and session._layout == "channels_first"
    np.testing.assert_allclose(session.unencoded, np.full(1000, 0.125))
    # [2, 2] is ambiguous on its own: the stream's layout decides (channels first: two samples of each)
    session.encode(np.array([[0.5, 0.5], [-0.25, -0.25]], np.float32), 24_000)
    np.testing.assert_allclose(session.unencoded[-2:], [0.125, 0.125])
    # an explicit layout wins and is remembered
    session.encode(np.array([[0.5, -0.25], [0.5, -0.25]], np.float32), 24_000, layout="channels_last")
    assert session._layout == "channels_last"
    np.testing.assert_allclose(session.unencoded[-2:], [0.125, 0.125])
    session.encode(np.array([[0.5, -0.25], [0.5, -0.25]], np.float32), 24_000)
    np.testing.assert_allclose(session.unencoded[-2:], [0.125, 0.125])
    session.encode(np.stack([left, right], axis=1)[:10], 24_000)  # [T, 2]: channels last by its shape
    np.testing.assert_allclose(session.unencoded[-10:], np.full(10, 0.125))
    # auto on a 1-D chunk does not forget the layout
    session.encode(np.zeros(3, np.float32), 24_000)
    assert session._layout == "channels_last"


def test_an_ambiguous_first_chunk_is_refused_with_the_clear_error():
    session = fake_codec().stream()
    with pytest.raises(AudioFormatError, match="ambiguous"):
        session.encode(np.zeros((2, 2), np.float32), 24_000)
    assert session._layout is None and session._rate is None


def test_a_failing_codec_keeps_the_audio_and_refuses_until_reset():
    codec = fake_codec()
    session = codec.stream()
    audio = clip(2 * FRAME_SIZE + 500)
    session.encode(audio[:700], 24_000)
    session._stream.fail_next = RuntimeError("boom")
    with pytest.raises(ComponentError, match=r"^the fake codec failed mid-stream \(RuntimeError: boom\). "
                                             r"Recover with: audio = session.unencoded; session.reset"):
        session.encode(audio[700:], 24_000)
    np.testing.assert_array_equal(session.unencoded, audio)  # nothing lost
    for call in (lambda: session.encode(audio, 24_000), session.flush, lambda: session.decode(np.zeros((2, 1), np.int64))):
        with pytest.raises(ComponentError, match=r"^this stream's codec failed earlier \(RuntimeError: boom\); call reset\(\) first"):
            call()
    kept = session.unencoded
    session.reset()
    assert session._stream.resets == 1 and len(session.unencoded) == 0
    codes = np.concatenate([session.encode(kept, 24_000), session.flush()], axis=1)
    np.testing.assert_array_equal(codes, codec.encode(audio, 24_000))


def test_a_failure_keeps_the_resamplers_delay_line_too():
    codec = fake_codec()
    session = codec.stream()
    audio = clip(16_000)
    session.encode(audio[:3000], 16_000)
    session._stream.fail_next = RuntimeError("boom")
    with pytest.raises(ComponentError):
        session.encode(audio[3000:], 16_000)
    expected, encoded = resample(audio, 16_000), sum(session._stream.encoded)
    assert encoded + len(session.unencoded) == len(expected)  # nothing lost, the filter's tail included
    np.testing.assert_allclose(session.unencoded, expected[encoded:], atol=1e-6)


def test_a_failure_after_flush_does_not_drain_the_resampler_again():
    session = fake_codec().stream()
    session.encode(clip(1000), 16_000)
    session._stream.fail_next = RuntimeError("boom")
    with pytest.raises(ComponentError):
        session.flush()
    assert len(session.unencoded) % FRAME_SIZE == 0 and len(session.unencoded) > 0  # the padded frame


def test_an_interrupt_half_updates_the_stream_and_passes_through():
    session = fake_codec().stream()
    session._stream.fail_next = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        session.encode(np.zeros(FRAME_SIZE, np.float32), 24_000)
    with pytest.raises(ComponentError, match=r"^this stream's codec failed earlier \(KeyboardInterrupt: \)"):
        session.encode(np.zeros(FRAME_SIZE, np.float32), 24_000)


def test_decode_checks_codes_and_returns_24k_samples():
    codec = fake_codec()
    session = codec.stream()
    pcm = session.decode(np.array([[12, 4], [0, 1]]))
    assert pcm.dtype == np.float32 and pcm.shape == (2 * FRAME_SIZE,)
    assert pcm[0] == 0.5 and pcm[-1] == -0.5
    empty = session.decode(np.zeros((2, 0), np.int64))
    assert empty.dtype == np.float32 and empty.shape == (0,)
    with pytest.raises(CodesError):
        session.decode(np.zeros((3, 1), np.int64))
    session._stream.fail_next = ValueError("bad state")
    with pytest.raises(ComponentError, match=r"fake codec failed mid-stream \(ValueError: bad state\)"):
        session.decode(np.zeros((2, 1), np.int64))


def test_close_releases_the_stream_once_and_ends_the_session():
    codec = fake_codec()
    with codec.stream(threads=3) as session:
        stream = session._stream
        assert stream.threads == 3 and session.closed is False
    assert session.closed and stream.closed
    calls = []
    stream.close = lambda: calls.append(1)
    session.close()
    assert calls == []
    for call in (lambda: session.encode(np.zeros(10, np.float32), 24_000), session.flush, session.reset,
                 lambda: session.decode(np.zeros((2, 1), np.int64))):
        with pytest.raises(StreamClosedError, match="^this codec session is closed; open a new one with codec.stream"):
            call()


def test_one_session_shared_by_threads_stays_consistent():
    codec = fake_codec()
    session = codec.stream()
    chunk = np.full(700, 0.5, np.float32)

    def work():
        for _ in range(50):
            session.encode(chunk, 24_000)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = 4 * 50 * 700
    assert session._stream.frames == total // FRAME_SIZE and len(session.unencoded) == total % FRAME_SIZE


def test_a_chunk_that_is_not_an_array_gets_the_clear_error():
    session = fake_codec().stream()
    with pytest.raises(AudioFormatError, match="numpy array or a torch tensor, not list"):
        session.encode([0.5] * FRAME_SIZE, 24_000)
    assert session._rate is None


def test_flush_after_whole_frames_adds_no_frame():
    session = fake_codec().stream()
    assert session.encode(np.full(2 * FRAME_SIZE, 0.5, np.float32), 24_000).shape == (2, 2)
    last = session.flush()
    assert last.shape == (2, 0) and session._stream.encoded == [2 * FRAME_SIZE]
