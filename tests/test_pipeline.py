"""The duplex pipeline's core: jitter buffer, clocks, event log, faults, loopback and scripted brains."""
import numpy as np
import psutil
import pytest

from csmlab.codec import load_codec
from csmlab.errors import AudioFormatError, ConfigError, StreamClosedError
from csmlab.metrics import FRAME_SIZE
from csmlab.pipeline import DuplexSession, JitterBuffer, LoopbackBrain, ScriptedBrain, Utterance, make_brain, packets
from csmlab.pipeline.faults import FaultyBrain, disconnected, lossy, malformed

RATE = 24000


def tone(seconds: float, hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def scripted(*at_ms) -> ScriptedBrain:
    return ScriptedBrain([Utterance(at, tone(0.4, 200 + 50 * i), RATE, f"utterance {i}") for i, at in enumerate(at_ms)])


def frame(seq: int, n: int = 4) -> np.ndarray:
    return np.full(n, seq + 1, np.float32)  # a frame whose samples say which seq it was


# ---- jitter buffer ------------------------------------------------------------------------------
def test_jitter_reorders_within_the_window():
    jb = JitterBuffer(window=3)
    out = jb.push(0, frame(0)) + jb.push(2, frame(2)) + jb.push(1, frame(1))
    assert [r.seq for r in out] == [0, 1, 2] and not any(r.concealed for r in out)
    assert [r.audio[0] for r in out] == [1, 2, 3]


def test_jitter_conceals_a_lost_frame_with_silence_and_drops_it_when_it_comes_late():
    jb = JitterBuffer(window=2)
    out = jb.push(0, frame(0)) + jb.push(2, frame(2))
    assert [r.seq for r in out] == [0]  # 1 may still come: wait
    out = jb.push(3, frame(3))  # two frames past the gap: 1 is lost
    assert [(r.seq, r.concealed) for r in out] == [(1, True), (2, False), (3, False)]
    assert not out[0].audio.any() and len(out[0].audio) == 4
    assert jb.push(1, frame(1)) == [] and jb.counts.late == 1
    assert jb.push(3, frame(3)) == [] and jb.counts.duplicate == 1
    c = jb.counts
    assert (c.received, c.consumed, c.concealed, c.dropped) == (5, 3, 1, 2)


def test_jitter_restarts_on_a_big_jump():
    jb = JitterBuffer(window=2, max_gap=10)
    jb.push(100, frame(0))
    out = jb.push(0, frame(1))  # the sender restarted its numbering
    assert [r.seq for r in out] == [0] and jb.counts.restarts == 1


@pytest.mark.parametrize("seed", range(5))
def test_every_input_frame_is_accounted_for_under_drops_and_reordering(seed):
    rng = np.random.default_rng(seed)
    sent = [s for s in range(200) if rng.random() > 0.15]  # 15% never arrive
    arrivals = sorted(sent + [s for s in sent if rng.random() < 0.1], key=lambda s: s + rng.normal(0, 1.5))
    jb = JitterBuffer(window=3)
    out = [r for s in arrivals for r in jb.push(s, frame(s))] + jb.flush()
    c = jb.counts
    assert c.received == len(arrivals) == c.consumed + c.duplicate + c.late + jb.held
    assert [r.seq for r in out] == list(range(arrivals[0], max(arrivals) + 1))  # in order, no hole, no repeat
    assert len(out) == c.consumed + c.concealed
    for r in out:  # each frame is the sender's own audio, or silence in its place
        assert (r.audio == 0).all() if r.concealed else (r.audio == r.seq + 1).all()
    assert c.concealed >= len(set(range(min(sent), max(sent) + 1)) - set(sent))


# ---- the session --------------------------------------------------------------------------------
def test_scripted_brain_speaks_at_its_times():
    with DuplexSession(scripted(400, 1200)) as session:
        steps = list(session.run(np.zeros(2 * RATE, np.float32), RATE))
    assert len(steps) == 25
    speaking = [i for i, s in enumerate(steps) if s.pcm.any()]
    assert speaking[0] == 5 and steps[5].text == "utterance 0" and steps[15].text == "utterance 1"
    assert np.array_equal(np.concatenate([s.pcm for s in steps[5:10]]), tone(0.4, 200))


def test_malformed_chunk_raises_and_the_session_continues(call):
    audio, rate = call
    clip = audio[: 2 * rate]
    with DuplexSession(LoopbackBrain(delay_ms=0, codec=load_codec(8, listen=True))) as clean:
        expected = [s.pcm for s in clean.run(clip, rate)]
    with DuplexSession(LoopbackBrain(delay_ms=0, codec=load_codec(8, listen=True))) as session:
        out = []
        for p in packets(clip, rate):
            for bad in (np.full(160, np.nan), np.zeros((3, 3, 3)), "noise"):
                with pytest.raises(AudioFormatError):
                    session.push(bad, rate, seq=p.seq)
            if p.seq:  # the first chunk set the stream's rate
                with pytest.raises(AudioFormatError, match="sample rate changed"):
                    session.push(p.chunk, 8000, seq=p.seq)
            out += session.push(p.chunk, rate, seq=p.seq)
        out += session.end()
        n = len(packets(clip, rate))
        assert session.report()["faults"]["input/malformed"] == 3 * n + n - 1
    assert np.array_equal(np.concatenate([s.pcm for s in out]), np.concatenate(expected))


def test_loopback_delay_is_exact_and_equals_the_codecs_round_trip(call, small_codec):
    audio, rate = call
    clip = audio[rate: 3 * rate]
    with small_codec.stream() as s:
        codes = np.concatenate([s.encode(clip, rate), s.flush()], axis=1)  # [K, T]
    with small_codec.stream() as s:
        reference = np.concatenate([s.decode(codes[:, t:t + 1]) for t in range(codes.shape[1])])
    for delay in (0, 240):
        with DuplexSession(LoopbackBrain(delay_ms=delay, codec=small_codec)) as session:
            out = np.concatenate([s.pcm for s in session.run(clip, rate)])
        d = delay // 80 * FRAME_SIZE
        assert not out[:d].any()
        assert np.array_equal(out[d:], reference[: len(out) - d])


def test_simulated_and_realtime_give_the_same_output(call, small_codec):
    import time

    audio, rate = call
    clip = audio[5 * rate: 6 * rate]
    runs = {}
    for clock in ("simulated", "realtime"):
        start = time.perf_counter()
        with DuplexSession(LoopbackBrain(delay_ms=80, codec=small_codec), clock=clock, deadline_ms=5000) as session:
            runs[clock] = [(s.index, s.seq, s.text, s.pcm) for s in session.run(clip, rate)]
        runs[clock + " s"] = time.perf_counter() - start
    assert runs["realtime s"] >= 1.0  # paced by the wall clock: 1 s of audio
    assert len(runs["simulated"]) == len(runs["realtime"]) == 13
    for a, b in zip(runs["simulated"], runs["realtime"]):
        assert a[:3] == b[:3] and np.array_equal(a[3], b[3])


def test_realtime_overrun_sends_silence_counts_late_and_catches_up():
    brain = FaultyBrain(scripted(0), stall_at={3}, stall_s=0.15)  # one step 150 ms: past its 80 ms deadline
    with DuplexSession(brain, clock="realtime", stall_ms=5000) as session:
        steps = list(session.run(np.zeros(int(0.8 * RATE), np.float32), RATE))
        report = session.report()
    assert [s.index for s in steps if s.late] == [3]
    assert not steps[3].pcm.any() and steps[2].pcm.any() and steps[4].pcm.any()
    assert report["steps_late"] == 1 and report["faults"]["clock/late"] == 1


def test_brain_that_raises_gives_silence_a_logged_error_and_recovers():
    brain = FaultyBrain(scripted(0), raise_at={2, 3})
    with DuplexSession(brain) as session:
        steps = list(session.run(np.zeros(int(0.48 * RATE), np.float32), RATE))
        errors = session.events.of("brain_error")
    assert [s.fault for s in steps] == [None, None, "brain_error", "brain_error", None, None]
    assert not steps[2].pcm.any() and not steps[3].pcm.any() and steps[4].pcm.any()
    assert len(errors) == 2 and "ComponentError" not in errors[0].detail and "injected failure" in errors[0].detail


def test_brain_that_stalls_gives_silence_is_counted_and_recovers():
    brain = FaultyBrain(ScriptedBrain([Utterance(0, tone(2.0), RATE, "long")]), stall_at={1}, stall_s=0.3)
    with DuplexSession(brain, clock="realtime", stall_ms=100, deadline_ms=5000) as session:
        steps = list(session.run(np.zeros(int(0.8 * RATE), np.float32), RATE))
        report = session.report()
    faults = [s.fault for s in steps]
    assert faults[1] == "brain_stall" and faults[2] == "brain_busy"  # 80 ms later it is still asleep
    assert faults[-1] is None and steps[-1].pcm.any()  # answering again
    assert report["faults"]["brain/brain_stall"] == 1 and report["faults"]["brain/brain_busy"] >= 1
    assert not any(s.pcm.any() for s in steps if s.fault)


def test_disconnect_keeps_the_clock_going_and_a_reconnect_may_change_rate(call):
    audio, rate = call
    source = disconnected(packets(audio[: 3 * rate], rate), at_s=1.0, for_s=0.8, new_rate=8000)
    with DuplexSession(scripted(0, 1000, 2000)) as session:
        steps = list(session.feed(source))
        report = session.report()
    assert report["faults"]["input/disconnect"] == 1 and report["faults"]["input/reconnect"] == 1
    gap = [s for s in steps if s.concealed and s.seq is None and 1000 < s.t_ms <= 1800]
    assert len(gap) == 10  # 800 ms of silent steps while the source was away
    assert [s.index for s in steps] == list(range(len(steps)))
    assert 3000 / 80 - 10 <= len(steps) <= 3000 / 80 + 2  # the whole timeline, no hole


def test_lossy_source_every_frame_is_accounted_for_in_the_report(call, small_codec):
    audio, rate = call
    source = malformed(lossy(packets(audio[: 4 * rate], rate), drop=0.1, duplicate=0.1, reorder=0.1, late=0.05, seed=3))
    with DuplexSession(LoopbackBrain(delay_ms=0, codec=small_codec)) as session:
        steps = list(session.feed(source))
        f = session.report()["frames"]
    sent = sum(p.seq is not None for p in source)
    assert f["received"] == sent == f["consumed"] + f["duplicate"] + f["late"] + f["held"]
    assert f["held"] == 0 and f["concealed"] > 0 and f["duplicate"] > 0
    seqs = [p.seq for p in source if p.seq is not None]
    assert len(steps) == f["consumed"] + f["concealed"] == max(seqs) - seqs[0] + 1  # the timeline has no hole


def test_event_log_and_memory_stay_bounded():
    brain = FaultyBrain(scripted(0), raise_at=set(range(0, 4000, 2)))
    process = psutil.Process()
    with DuplexSession(brain, events=100, history=500) as session:
        list(session.run(np.zeros(10 * RATE, np.float32), RATE))  # warm-up
        rss = process.memory_info().rss
        list(session.run(np.zeros(50 * RATE, np.float32), RATE))
        growth = process.memory_info().rss - rss
        assert len(session.events) == 100
        assert session.events.count("brain_error") == session.report()["faults"]["brain/brain_error"] > 300
    assert growth < 20 * 2**20


def test_bad_names_and_closed_sessions_are_refused():
    with pytest.raises(ConfigError, match="unknown brain"):
        make_brain("telepathy")
    with pytest.raises(ConfigError, match="clock"):
        DuplexSession(scripted(), clock="sundial")
    with pytest.raises(ConfigError, match="multiple of 80"):
        LoopbackBrain(delay_ms=100)
    session = DuplexSession(scripted())
    session.close()
    session.close()  # idempotent
    with pytest.raises(StreamClosedError):
        session.push(np.zeros(1920, np.float32), RATE)


def test_bench_duplex_reports_layers_frames_and_memory(tmp_path):
    import json
    import os
    import subprocess
    import sys

    out = tmp_path / "duplex.json"
    done = subprocess.run([sys.executable, "-m", "csmlab.cli", "bench", "duplex", "--brain", "scripted", "--minutes", "0.6",
                           "--json", str(out)], capture_output=True, text=True, env={**os.environ, "CSMLAB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    r = json.loads(out.read_text())["brains"]["scripted"]
    assert r["steps"] == 450 and r["frames"]["consumed"] == 450 and r["steps_late"] == 0
    assert set(r["compute_ms"]) == {"input", "brain", "decode", "total"} and r["rss_mb"]["growth"] < 50
    assert "scripted" in done.stdout and "RSS growth" in done.stdout


def test_closing_while_the_brain_is_stalled_closes_it_once_it_returns():
    import time

    closed = []
    brain = FaultyBrain(scripted(0), stall_at={0}, stall_s=0.3)
    brain.close = lambda: closed.append(time.perf_counter())
    session = DuplexSession(brain, stall_ms=50)
    steps = session.push(np.zeros(1920, np.float32), RATE)
    assert [s.fault for s in steps] == ["brain_stall"]
    session.close()  # returns at once; the brain is still asleep in its thread
    assert closed == []
    time.sleep(0.5)
    assert len(closed) == 1


def test_jitter_waits_while_fewer_than_window_later_frames_are_held():
    """The module's own example: 5 arrives four frames early, but it is the only frame held when 1
    comes, so nothing is concealed (the code once concealed by distance: 1 and 2, then dropped both)."""
    jb = JitterBuffer(window=3)
    out = [r for s in [0, 5, 1, 2, 3, 4, 6] for r in jb.push(s, frame(s))]
    assert [(r.seq, r.concealed) for r in out] == [(s, False) for s in range(7)]
    assert (jb.counts.concealed, jb.counts.dropped) == (0, 0)
