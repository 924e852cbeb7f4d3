"""The thread contract (issue 12, cases 1-4): sessions, batch calls and Moshi streams on one loaded
model, run side by side in real threads, each give exactly what they give alone.

Each job runs several rounds, and the threads start together at a barrier, so that their calls
interleave frame by frame: before the model lock these tests failed on every run (wrong codes,
"already streaming", "'Conv1d' object has no attribute 'forward'", "Already borrowed").
"""
import gc
import threading

import numpy as np
import pytest
import torch

from csmlab import moshi as M
from csmlab.codec import FRAME_SIZE, load_codec
from csmlab.data import real_recording

RATE = 24000
ROUNDS = 2


def in_threads(*jobs):
    """Run each job in its own thread (started together); their results. A job's exception is
    raised here, so a race that crashes fails the test. (torch's thread count is per process: the
    module's setting of 1 holds in every thread.)"""
    barrier = threading.Barrier(len(jobs))
    results, errors = [None] * len(jobs), []

    def run(i, job):
        barrier.wait()
        try:
            results[i] = job()
        except Exception as err:  # noqa: BLE001 - re-raised below, in the test's thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def repeated(job):
    return lambda: [job() for _ in range(ROUNDS)]


@pytest.fixture(scope="module")
def clips():
    audio = real_recording(RATE).audio
    return [audio[s * RATE : s * RATE + 6 * FRAME_SIZE] for s in (8, 12, 16)]  # 3 x 0.48 s of speech


def frame_by_frame(codec, clip):
    """A session fed one 80 ms frame per call, then decoding its codes frame by frame too."""
    with codec.stream() as s:
        codes = np.concatenate([s.encode(clip[i : i + FRAME_SIZE], RATE)
                                for i in range(0, len(clip), FRAME_SIZE)] + [s.flush()], axis=1)
        audio = np.concatenate([s.decode(codes[:, t : t + 1]) for t in range(codes.shape[1])])
    return codes, audio


def test_two_sessions_and_the_batch_path_in_three_threads_equal_each_alone(mimi, clips):
    """Cases 1 and 2: the batch call and two sessions share one moshi model and never its state."""
    alone = [frame_by_frame(mimi, clips[0]), frame_by_frame(mimi, clips[1]),
             mimi.encode(clips[2], RATE)]
    got = in_threads(repeated(lambda: frame_by_frame(mimi, clips[0])),
                     repeated(lambda: frame_by_frame(mimi, clips[1])),
                     repeated(lambda: mimi.encode(clips[2], RATE)))
    for rounds, expected in zip(got[:2], alone[:2]):
        for codes, audio in rounds:
            assert np.array_equal(codes, expected[0])
            assert np.array_equal(audio, expected[1])
    assert all(np.array_equal(codes, alone[2]) for codes in got[2])
    model = mimi.backend.model
    assert not model.is_streaming and not any("forward" in vars(m) for m in model.modules())


def test_many_sessions_opened_at_once_in_many_threads(mimi, clips):
    """Case 2: `codec.stream()` from 6 threads at the same moment, repeatedly."""
    clip = clips[0][: 2 * FRAME_SIZE]

    def open_and_encode():
        with mimi.stream() as s:
            return np.concatenate([s.encode(clip, RATE), s.flush()], axis=1)

    alone = open_and_encode()
    for codes in sum(in_threads(*[repeated(open_and_encode)] * 6), []):
        assert np.array_equal(codes, alone)


def test_a_dropped_session_leaves_the_codec_free(mimi, clips):
    s = mimi.stream()
    s.encode(clips[0][:FRAME_SIZE], RATE)
    del s
    gc.collect()
    assert np.array_equal(frame_by_frame(mimi, clips[1])[0], frame_by_frame(mimi, clips[1])[0])


def test_sessions_on_two_codecs_in_two_threads_restore_the_thread_count(mimi, clips):
    """Streaming calls run on 1 torch thread; the count is one per process, so calls in two threads
    must not leave it at 1 (each restoring what the other had set)."""
    small = load_codec(8, listen=True)
    torch.set_num_threads(2)
    try:
        in_threads(repeated(lambda: frame_by_frame(mimi, clips[0])), repeated(lambda: frame_by_frame(small, clips[1])))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_rustymimi_batch_and_sessions_in_threads():
    """Case 3: one rustymimi Tokenizer for the batch path ("Already borrowed" before), one per session."""
    codec = load_codec(8, "rustymimi")
    audio = real_recording(RATE).audio
    clips = [audio[s * RATE : s * RATE + 4 * FRAME_SIZE] for s in (8, 12)]
    batch = [lambda c=c: codec.encode(c, RATE) for c in clips]
    stream = [lambda: frame_by_frame(codec, clips[0])[0]]  # a session loads its own tokenizer: slow
    alone = [job() for job in batch + stream]
    got = in_threads(*[repeated(job) for job in batch + stream])
    for rounds, expected in zip(got, alone):
        assert all(np.array_equal(codes, expected) for codes in rounds)


def tokens(model, user, seed):
    with M.MoshiStream(model, seed=seed) as stream:
        return [(s.text_token, None if s.audio is None else s.audio.tolist())
                for s in (stream.step(user[:, t]) for t in range(user.shape[1]))]


def test_two_moshi_streams_on_one_model_in_two_threads_equal_each_alone(moshi):
    """Case 4: streams side by side on one model, each with its own caches and its own RNG."""
    users = [torch.randint(0, 2048, (8, 5), generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    alone = [tokens(moshi, user, seed) for seed, user in enumerate(users)]
    got = in_threads(*[repeated(lambda u=u, s=s: tokens(moshi, u, s)) for s, u in enumerate(users)])
    for rounds, expected in zip(got, alone):
        assert all(run == expected for run in rounds)
    assert not moshi.lm.is_streaming


def test_reopened_and_dropped_moshi_streams_leave_the_model_free(moshi):
    """Case 4: re-running `st = MoshiStream(m)` in a notebook, and a stream dropped unclosed."""
    user = torch.randint(0, 2048, (8, 3), generator=torch.Generator().manual_seed(3))
    expected = tokens(moshi, user, 0)
    st = M.MoshiStream(moshi)
    st.step(user[:, 0])
    st = M.MoshiStream(moshi)  # the cell run again, the first stream never closed
    assert [(s.text_token, None if s.audio is None else s.audio.tolist())
            for s in (st.step(user[:, t]) for t in range(3))] == expected
    del st
    gc.collect()
    assert not moshi.lm.is_streaming
    assert tokens(moshi, user, 0) == expected
