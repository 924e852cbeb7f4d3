"""Batched codec streaming (issue 16): many streams in one forward, each with the codes and audio it
gets alone, while streams join, leave, pause and reuse each other's slots; on the small trained Mimi
and the full-size offline one; and the same through `SharedCodec` sessions in real threads."""
import threading

import numpy as np
import pytest
import torch

from csmlab.codec import FRAME_SIZE, load_codec
from csmlab.codec.batch import CodecBatch, SharedCodec, agreement
from csmlab.data import real_recording
from csmlab.errors import AudioFormatError, CapacityError, CodesError, ComponentError, ConfigError
from csmlab.batching.gather import Gather

RATE = 24000


def frames_of(start_s: float, n: int) -> np.ndarray:
    audio = real_recording(RATE).audio
    start = int(start_s * RATE)
    return audio[start : start + n * FRAME_SIZE].reshape(n, FRAME_SIZE)  # [n, 1920]


def alone(codec, frames) -> tuple[np.ndarray, np.ndarray]:
    """A plain session fed one frame per call: codes [K, n] and the audio of decoding them."""
    with codec.stream() as s:
        codes = np.concatenate([s.encode(f, RATE) for f in frames], axis=1)
        pcm = np.concatenate([s.decode(codes[:, i : i + 1]) for i in range(codes.shape[1])])
    return codes, pcm


def scripted(batch: CodecBatch, plan: dict[str, tuple[int, np.ndarray, set]], steps: int) -> dict:
    """Run streams through `batch`: name -> (first step, frames, steps it sits out). Each stream joins
    at its first step and leaves after its last frame; returns name -> (codes [K, n], pcm)."""
    slot, fed, out = {}, {name: 0 for name in plan}, {name: ([], []) for name in plan}
    for step in range(steps):
        for name, (first, frames, _) in plan.items():
            if step == first:
                slot[name] = batch.join()
        active = {name for name, (first, frames, pauses) in plan.items()
                  if name in slot and fed[name] < len(frames) and step not in pauses}
        if not active:
            continue
        codes = batch.encode({slot[n]: plan[n][1][fed[n]] for n in active})
        pcm = batch.decode({slot[n]: codes[slot[n]] for n in active})
        for name in active:
            out[name][0].append(codes[slot[name]])
            out[name][1].append(pcm[slot[name]])
            fed[name] += 1
            if fed[name] == len(plan[name][1]):
                batch.leave(slot.pop(name))
    return {name: (np.stack(c, axis=1), np.concatenate(p)) for name, (c, p) in out.items()}


def check_each_alone(codec, plan, results) -> None:
    for name, (_, frames, _) in plan.items():
        codes, pcm = results[name]
        ref_codes, ref_pcm = alone(codec, frames)
        agree = agreement(codes, ref_codes)
        assert agree["codebook0"] == 1.0, (name, agree)
        assert agree["overall"] >= 0.999, (name, agree)
        assert np.abs(pcm - ref_pcm).max() < 1e-3 * max(1.0, np.abs(ref_pcm).max()), name


@pytest.mark.parametrize("listen", [True, False], ids=["small", "full-size"])
def test_streams_join_leave_pause_and_each_gets_its_own_result(listen):
    codec = load_codec(8, listen=listen)
    n = 6 if listen else 3
    plan = {
        "a": (0, frames_of(8, 2 * n), {2, 3}),  # sits out two steps: masked, its state must not move
        "b": (0, frames_of(11, n), set()),  # leaves after n steps ...
        "c": (n + 1, frames_of(14, n), set()),  # ... and c gets its slot, reset, while a keeps its state
        "d": (1, frames_of(17, n), set()),  # slot 2: rows above it are never computed
    }
    batch = CodecBatch(codec, size=4)
    results = scripted(batch, plan, 3 * n)
    check_each_alone(codec, plan, results)


def test_shared_codec_sessions_in_threads_are_batched_and_exact():
    codec = load_codec(8, listen=True)
    shared = SharedCodec(codec, size=3, window_ms=200)
    clips = [frames_of(8 + 3 * i, 6).reshape(-1) for i in range(3)]
    results = [None] * 3
    barrier = threading.Barrier(3)

    def run(i):
        torch.set_num_threads(1)
        barrier.wait()
        with shared.stream() as s:  # 50 ms chunks: sessions buffer and batch whole frames
            chunks = [s.encode(clips[i][j : j + 1200], RATE) for j in range(0, len(clips[i]), 1200)]
            codes = np.concatenate(chunks, axis=1)
            results[i] = (codes, s.decode(codes))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, clip in enumerate(clips):
        ref_codes, ref_pcm = alone(codec, clip.reshape(-1, FRAME_SIZE))
        assert agreement(results[i][0], ref_codes)["codebook0"] == 1.0
        assert np.abs(results[i][1] - ref_pcm).max() < 1e-3
    assert shared.occupancy["encode"] > 1.5  # the threads' frames really shared forwards


def test_a_full_batch_refuses_clearly_and_frees_slots_on_close():
    shared = SharedCodec(load_codec(8, listen=True), size=2)
    silence = np.zeros(FRAME_SIZE, np.float32)
    speakers = [shared.stream() for _ in range(3)]
    for s in speakers[:2]:
        s.encode(silence, RATE)
    with pytest.raises(ComponentError, match="all 2 codec stream slots are in use") as failed:
        speakers[2].encode(silence, RATE)  # encoding is full (decoding is not): this one cannot encode
    assert isinstance(failed.value.__cause__, CapacityError)
    for s in speakers[:2]:
        s.decode(np.zeros((8, 1), np.int64))
    with pytest.raises(CapacityError, match="all 2 streams of this shared codec are in use"):
        shared.stream()  # both directions full: refused up front
    speakers[0].close()
    speakers[2].reset()
    assert speakers[2].encode(silence, RATE).shape == (8, 1)  # the freed row, reset
    for s in speakers[1:]:
        s.close()


def test_a_batch_step_refuses_bad_frames_and_codes_before_anything_moves():
    batch = CodecBatch(load_codec(8, listen=True), size=2)
    slot = batch.join()
    with pytest.raises(AudioFormatError, match="one frame of 1920 samples"):
        batch.encode({slot: np.zeros(1000, np.float32)})
    with pytest.raises(CodesError, match="codes must lie in"):
        batch.decode({slot: np.full(8, 5000)})
    with pytest.raises(ConfigError, match="not taken"):
        batch.encode({1: np.zeros(FRAME_SIZE, np.float32)})
    frames = frames_of(8, 3)
    codes = np.stack([batch.encode({slot: f})[slot] for f in frames], axis=1)
    assert agreement(codes, alone(batch.codec, frames)[0])["overall"] == 1.0  # the refused calls left no trace


def test_gather_hands_a_failed_round_error_to_every_caller_and_goes_on():
    calls = []

    def run(batch):
        calls.append(sorted(batch))
        if len(calls) == 1:
            raise ValueError("boom")
        return {slot: item * 2 for slot, item in batch.items()}

    gather = Gather(run, window_ms=50)
    with pytest.raises(ValueError, match="boom"):
        gather.submit(0, 1)
    assert gather.submit(0, 21) == 42
