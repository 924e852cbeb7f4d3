"""`DuplexSession`'s policies (csmlab/pipeline/session.py) on a fake codec and a scripted brain:
frames, seqs, concealment, faults, lateness, overload shedding, disconnects and the report, in
milliseconds. The real brains' sessions are tested in test_pipeline.py; these tests are the ones
`make mutation` runs against session.py."""
import math
import threading
import time

import numpy as np
import pytest

from csmlab.errors import AudioFormatError, CsmlabError, StreamClosedError
from csmlab.metrics import FRAME_SIZE
from csmlab.pipeline.brain import SILENT, Brain, Said
from csmlab.pipeline.session import FAULTS, DuplexSession, Packet, Step, packets

from fakes import fake_codec, level

RATE = 24_000


class ManualClock:
    """A clock the test moves: `cost` seconds pass during each brain step (compute on a real-time clock)."""

    def __init__(self, kind="realtime"):
        self.kind, self.t = kind, 0.0

    def now(self):
        return self.t

    def wait_until(self, t):
        self.t = max(self.t, t)


class EchoBrain(Brain):
    """Says back the codes it heard (or what `actions[index]` says), and remembers what it heard."""

    name = "echo"
    hears_codes = speaks_codes = True

    def __init__(self, codec=None, actions=None, clock=None, cost_s=0.0):
        super().__init__()
        self._codec = codec if codec is not None else fake_codec()
        self.actions, self.clock, self.cost_s = actions or {}, clock, cost_s
        self.heard, self.closed = [], 0

    def codec(self):
        return self._codec

    def step(self, heard):
        self.heard.append(heard)
        if self.clock is not None:
            self.clock.t += self.cost_s
        action = self.actions.get(heard.index)
        if action is not None:
            return action(heard)
        return Said(codes=heard.codes, text=f"t{heard.index}")

    def close(self):
        self.closed += 1

    def algorithmic_ms(self):
        return {"echo": 0.0}

    @property
    def weights(self):
        return "fake"


class TalkingBrain(EchoBrain):
    """Writes to the session's event log through the hook every brain is given."""

    def step(self, heard):
        self.log("thinking", f"step {heard.index}")
        self.log("plain")
        return super().step(heard)


class FakeTime:
    """`time.perf_counter` for the session module: 1 ms passes at each call, so that compute is exact."""

    def __init__(self):
        self.t = 0.0

    def perf_counter(self):
        self.t += 0.001
        return self.t


class PcmBrain(Brain):
    """Hears PCM, says PCM: no codec at all."""

    name = "pcm"

    def __init__(self, say=None):
        super().__init__()
        self.say = say

    def step(self, heard):
        assert heard.codes is None
        return Said(pcm=self.say if self.say is not None else heard.pcm * 0.5, text="p")


def frames(*levels):
    return np.concatenate([np.full(FRAME_SIZE, v, np.float32) for v in levels])


def echo(levels):
    """What the echo brain sends back for frames of these levels (the fake codec's round trip)."""
    return np.concatenate([np.full(FRAME_SIZE, (level(np.full(1, v)) - 8) / 8, np.float32) for v in levels])


# ---- packets --------------------------------------------------------------------------------
def test_packets_cut_a_clip_as_a_live_source_sends_it():
    audio = np.linspace(-0.5, 0.5, 5000, dtype=np.float32)
    out = packets(audio, 16_000, chunk_ms=80)
    assert [len(p.chunk) for p in out] == [1280, 1280, 1280, 1160]
    assert [p.seq for p in out] == [0, 1, 2, 3] and all(p.sample_rate == 16_000 and p.kind == "audio" for p in out)
    assert [p.at for p in out] == [1280 / 16_000, 2 * 1280 / 16_000, 3 * 1280 / 16_000, 4 * 1280 / 16_000]
    np.testing.assert_array_equal(np.concatenate([p.chunk for p in out]), audio)
    assert [len(p.chunk) for p in packets(audio[:3], 1000, chunk_ms=0.1)] == [1, 1, 1]  # at least a sample
    with pytest.raises(AudioFormatError):
        packets(audio, 0)
    assert Packet(1.0).kind == "audio" and Packet(1.0).sample_rate == RATE and Packet(1.0).seq is None


# ---- frames and steps -----------------------------------------------------------------------
def test_each_whole_frame_is_one_step_through_encode_brain_decode():
    brain = EchoBrain()
    with DuplexSession(brain) as s:
        assert s.push(frames(0.5)[:1000], RATE, seq=0) == []
        steps = s.push(np.concatenate([frames(0.5)[1000:], frames(-0.25, 0.75)]), RATE, seq=1)
        assert [st.index for st in steps] == [0, 1, 2]
        assert [st.text for st in steps] == ["t0", "t1", "t2"]
        np.testing.assert_array_equal(np.concatenate([st.pcm for st in steps]), echo([0.5, -0.25, 0.75]))
        assert all(st.pcm.dtype == np.float32 and st.pcm.shape == (FRAME_SIZE,) for st in steps)
        assert [st.seq for st in steps] == [1, 1, 1] and not any(st.late or st.concealed for st in steps)
        assert [h.codes.tolist() for h in brain.heard] == [[12, 0], [6, 1], [14, 2]]  # [K] per step
        assert [h.index for h in brain.heard] == [0, 1, 2] and not any(h.concealed for h in brain.heard)
        for st in steps:
            assert set(st.compute_ms) == {"input", "encode", "brain", "decode", "total"} and st.fault is None
            assert st.compute_ms["total"] == pytest.approx(sum(v for k, v in st.compute_ms.items() if k != "total"))
        assert steps[0].compute_ms["input"] > 0 and steps[1].compute_ms["input"] == 0.0  # input paid once per push
        assert s.push(frames(0.0), RATE, seq=2)[0].index == 3


def test_a_step_names_the_last_real_seq_whose_audio_it_holds():
    with DuplexSession(EchoBrain(), window=1) as s:
        out = []
        for seq in range(5):  # 1000-sample chunks: frames straddle chunks
            out += s.push(np.full(1000, 0.1, np.float32), RATE, seq=seq)
        assert [(st.index, st.seq) for st in out] == [(0, 1), (1, 3)]
        # 5 and 6 lost: concealed, each as long as its real neighbour (1000 samples); 1160 of seq 4 wait
        out = s.push(np.full(1000, 0.1, np.float32), RATE, seq=7)
        assert [(st.seq, st.concealed) for st in out] == [(4, False), (7, False)]  # the 2nd: 1240 concealed, 680 of 7
        assert [(st.seq, st.concealed) for st in s.end()] == [(7, False)]  # 320 of 7 and zeros
        assert s.report()["frames"]["concealed"] == 2


def test_the_simulated_clock_times_each_step_at_its_input():
    with DuplexSession(EchoBrain()) as s:
        assert math.isinf(s.stall_ms)
        steps = list(s.run(frames(0.1, 0.2, 0.3), RATE))
        assert [st.t_ms for st in steps] == [80.0, 160.0, 240.0]
        assert s.report()["clock"] == "simulated"


def test_a_gap_is_concealed_with_silence_that_the_brain_is_told_about():
    brain = EchoBrain()
    with DuplexSession(brain, window=1) as s:
        steps = s.push(frames(0.5), RATE, seq=0) + s.push(frames(0.5), RATE, seq=2)
        assert [st.concealed for st in steps] == [False, True, False]
        assert [st.seq for st in steps] == [0, None, 2]
        assert brain.heard[1].concealed and not np.any(brain.heard[1].pcm)
        report = s.report()
        assert report["frames"]["concealed"] == 1 and report["frames"]["consumed"] == 2
        assert report["faults"]["input/concealed"] == 1


def test_malformed_audio_is_refused_counted_and_changes_nothing():
    with DuplexSession(EchoBrain()) as s:
        s.push(frames(0.5)[:1000], 16_000, seq=0)
        with pytest.raises(AudioFormatError, match=r"^sample rate changed mid-stream from 16000 to 24000 Hz: keep "
                                                   r"one rate per connection, or call session.disconnect\(\) before "
                                                   r"switching$"):
            s.push(frames(0.5), RATE, seq=1)
        for bad in [(np.zeros((3, 3, 3)), 16_000, 1), (frames(0.5), 0, 1), (frames(0.5), 16_000, "1")]:
            with pytest.raises(AudioFormatError):
                s.push(*bad)
        assert s.events.count("malformed", "input") == 4
        assert s.events.of("malformed")[-1].detail == ("seq must be an int (the sender's frame counter) or None "
                                                       "(no numbering), not '1'")
        assert s.report()["faults"]["input/malformed"] == 4
        assert s.report()["frames"]["received"] == 1
        assert len(s.push(np.zeros(3000, np.float32), 16_000, seq=1)) == 2  # 4000 at 16 kHz: 2 frames, a tail waits


def test_closed_sessions_refuse_and_close_everything_once():
    brain = EchoBrain()
    s = DuplexSession(brain)
    user, system = s._user, s._system
    s.close()
    s.close()
    assert user.closed and system.closed and brain.closed == 1 and s._worker._shutdown
    for call in (lambda: s.push(frames(0.1), RATE), s.end):
        with pytest.raises(StreamClosedError, match="^this DuplexSession is closed; open a new one$"):
            call()


def test_a_brain_that_needs_a_codec_must_have_one():
    brain = EchoBrain()
    brain._codec = None
    with pytest.raises(CsmlabError, match="^brain 'echo' works on Mimi codes but gives no codec: pass codec=load_codec"):
        DuplexSession(brain)
    brain.hears_codes = False
    with pytest.raises(CsmlabError):
        DuplexSession(brain)
    s = DuplexSession(brain, codec=fake_codec())
    assert s._user is None and s._system is not None
    s.close()


def test_a_pcm_brain_needs_no_codec_and_its_audio_goes_out():
    with DuplexSession(PcmBrain()) as s:
        assert s.codec is None and s._user is None and s._system is None
        step, = s.push(frames(0.5), RATE)
        assert set(step.compute_ms) == {"input", "brain", "decode", "total"}
        np.testing.assert_allclose(step.pcm, np.full(FRAME_SIZE, 0.25))
        report = s.report()
        assert report["codec_weights"] is None and report["weights"] == "none" and report["brain"] == "pcm"
        assert s.layers() == [("input", s._jitter), ("encode", None), ("brain", s.brain), ("decode", None)]


@pytest.mark.parametrize("say,why", [(np.zeros(100, np.float32), "shape"), (np.full(FRAME_SIZE, 50.0), "peak"),
                                     (np.zeros((2, 2, FRAME_SIZE)), "dims")])
def test_bad_pcm_from_a_brain_becomes_silence(say, why):
    with DuplexSession(PcmBrain(say)) as s:
        step, = s.push(frames(0.5), RATE)
        assert step.fault == "bad_output" and not np.any(step.pcm) and step.text == "p"
        assert s.events.count("bad_output", "brain") == 1 and s.report()["steps_faulted"] == 1
    if why == "shape":
        assert s.events.of("bad_output")[0].detail == f"brain gave pcm of shape (100,); a step says [{FRAME_SIZE}]"


def test_two_channel_pcm_from_a_brain_is_mixed_down():
    with DuplexSession(PcmBrain(np.stack([np.full(FRAME_SIZE, 0.5), np.zeros(FRAME_SIZE)]).astype(np.float32))) as s:
        step, = s.push(frames(0.5), RATE)
        assert step.fault is None and np.allclose(step.pcm, 0.25)


# ---- faults ---------------------------------------------------------------------------------
def boom(heard):
    raise RuntimeError("no")


def test_a_brain_that_raises_sends_silence_and_is_called_again():
    brain = EchoBrain(actions={1: boom})
    with DuplexSession(brain) as s:
        steps = s.push(frames(0.5, 0.5, 0.5), RATE)
        assert [st.fault for st in steps] == [None, "brain_error", None]
        assert not np.any(steps[1].pcm) and steps[1].text == "" and np.any(steps[2].pcm)
        event, = s.events.of("brain_error", "brain")
        assert event.detail == ("brain 'echo' raised RuntimeError('no') at step 1; silence sent, it is called again "
                                "next step")
        assert event.step == 1
        assert s.report()["steps_faulted"] == 1 and s.report()["faults"] == {"brain/brain_error": 1}


def test_codes_of_the_wrong_shape_or_kind_become_silence_and_reset_the_decoder():
    wrong = {0: lambda h: Said(codes=np.zeros((2, 1), np.int64)), 1: lambda h: Said(codes=np.zeros(2, np.float32) + 0.5),
             2: lambda h: Said(codes=np.array([99, 0]))}
    with DuplexSession(EchoBrain(actions=wrong)) as s:
        steps = s.push(frames(0.5, 0.5, 0.5, 0.5), RATE)
        assert [st.fault for st in steps] == ["decode_error"] * 3 + [None]
        assert not np.any(np.concatenate([st.pcm for st in steps[:3]])) and np.any(steps[3].pcm)
        assert s._system._stream.resets == 3
        details = [e.detail for e in s.events.of("error", "decode")]
        assert details[0] == "a brain says one frame of codes, [K], not shape (2, 1); system codec reset"
        assert all(d.endswith("; system codec reset") for d in details)


def test_a_failing_encoder_is_reset_and_the_brain_hears_no_codes():
    brain = EchoBrain()
    with DuplexSession(brain) as s:
        s._user._stream.fail_next = RuntimeError("enc")
        steps = s.push(frames(0.5, 0.5), RATE)
        assert [st.fault for st in steps] == ["encode_error", None]
        assert brain.heard[0].codes is None and brain.heard[1].codes.tolist() == [12, 0]  # reset: counter from 0
        assert s._user._stream.resets == 1
        detail = s.events.of("error", "encode")[0].detail
        assert detail.startswith("the fake codec failed mid-stream (RuntimeError: enc)") and detail.endswith("; user codec reset")
        assert not np.any(steps[0].pcm)


def test_a_failing_decoder_is_reset():
    with DuplexSession(EchoBrain()) as s:
        s._system._stream.fail_next = RuntimeError("dec")
        steps = s.push(frames(0.5, 0.5), RATE)
        assert [st.fault for st in steps] == ["decode_error", None] and s._system._stream.resets == 1


def test_a_stalled_brain_is_waited_for_once_then_skipped_until_it_answers():
    release = threading.Event()

    def stall(heard):
        release.wait(5)
        return Said(codes=heard.codes, text="late")

    brain = EchoBrain(actions={0: stall})
    with DuplexSession(brain, stall_ms=30) as s:
        first = s.push(frames(0.5), RATE)
        busy = s.push(frames(0.5), RATE)
        assert [st.fault for st in first + busy] == ["brain_stall", "brain_busy"]
        assert [st.text for st in first + busy] == ["", ""] and len(brain.heard) == 1
        assert s.events.of("brain_stall")[0].detail == "no answer within 30 ms: silence"
        assert s.events.of("brain_busy")[0].detail == "still stalled: silence"
        release.set()
        s._busy.result(5)
        step, = s.push(frames(0.5), RATE)
        assert step.fault is None and step.text == "t2" and s._busy is None
        assert s.events.of("recovered", "brain")[0].detail == "the stalled call returned; its answer was dropped"
        assert s.report()["faults"] == {"brain/brain_busy": 1, "brain/brain_stall": 1}


def test_closing_with_a_stalled_brain_closes_the_brain_after_the_call():
    release = threading.Event()
    brain = EchoBrain(actions={0: lambda h: release.wait(5) and SILENT})
    s = DuplexSession(brain, stall_ms=20)
    s.push(frames(0.5), RATE)
    s.close()
    assert brain.closed == 0  # still inside step
    release.set()
    for _ in range(500):
        if brain.closed:
            break
        time.sleep(0.01)
    assert brain.closed == 1


def test_a_real_time_session_stalls_after_a_second_by_default():
    s = DuplexSession(EchoBrain(), clock=ManualClock())
    assert s.stall_ms == 1000.0
    s.close()
    s = DuplexSession(EchoBrain(), clock=ManualClock(), stall_ms=5.0)
    assert s.stall_ms == 5.0
    s.close()


# ---- the clock ------------------------------------------------------------------------------
def test_a_step_that_finishes_after_its_deadline_sends_silence_but_keeps_its_text():
    clock = ManualClock()
    brain = EchoBrain(clock=clock, cost_s=0.05)
    with DuplexSession(brain, clock=clock, deadline_ms=80) as s:
        steps = s.push(frames(0.5, 0.5), RATE)  # both frames complete at t=0: 50 and 100 ms after
        assert [st.late for st in steps] == [False, True]
        assert np.any(steps[0].pcm) and not np.any(steps[1].pcm) and steps[1].text == "t1"
        assert s.events.of("late", "clock")[0].detail == "done 100 ms after its frame: silence sent"
        clock.t = 1.0
        step, = s.push(frames(0.5), RATE)  # 50 ms: on time again
        assert not step.late and step.t_ms == 1000.0
        report = s.report()
        assert report["steps_late"] == 1 and report["late_pct"] == round(100 / 3, 3)
        assert report["clock"] == "realtime"


def test_a_step_exactly_at_its_deadline_is_on_time():
    clock = ManualClock()
    with DuplexSession(EchoBrain(clock=clock, cost_s=0.08), clock=clock) as s:
        step, = s.push(frames(0.5), RATE)
        assert not step.late


def test_an_overloaded_session_sheds_concealed_steps_and_says_so():
    clock = ManualClock()
    brain = EchoBrain(clock=clock, cost_s=0.2)
    with DuplexSession(brain, clock=clock, window=1, deadline_ms=1e9) as s:
        s.overload.budget_ms = 1e-6  # any compute is too much: overloaded after 12 computed steps
        for seq in range(11):
            s.push(frames(0.5), RATE, seq=seq)
        assert s.overload.state == "ok"
        for seq in range(11, 12):
            s.push(frames(0.5), RATE, seq=seq)
        assert s.overload.state == "overloaded" and s.overload.sheds(12, concealed=True)
        assert s.events.of("overload_overloaded", "clock")[0].detail == s.overload.message()
        heard = len(brain.heard)
        steps = s.push(frames(0.5), RATE, seq=13)  # 12 is lost: concealed, shed
        assert [st.concealed for st in steps] == [True, False]
        shed = steps[0]
        assert len(brain.heard) == heard + 1 and shed.text == "" and not np.any(shed.pcm) and shed.seq is None
        assert shed.index == 12 and steps[1].index == 13 and not shed.late and shed.fault is None
        assert set(shed.compute_ms) == {"input", "total"} and shed.t_ms == clock.t * 1000 - 200
        assert s.report()["overload"]["shed_steps"] == 1 and s.report()["faults"]["clock/overload_overloaded"] == 1


def test_the_simulated_clock_never_judges_overload():
    clock = ManualClock(kind="simulated")
    with DuplexSession(EchoBrain(clock=clock, cost_s=0.2), clock=clock, deadline_ms=1e9) as s:
        for seq in range(14):
            s.push(frames(0.5), RATE, seq=seq)
        assert s.overload.state == "ok" and not s.overload.recent


# ---- disconnects ----------------------------------------------------------------------------
def test_disconnect_flushes_then_ticks_silence_until_the_source_is_back():
    clock = ManualClock(kind="simulated")
    brain = EchoBrain()
    with DuplexSession(brain, clock=clock) as s:
        assert s.tick(5.0) == []  # connected: the source paces the steps
        s.push(frames(0.5)[:1000], 16_000, seq=0)
        flushed = s.disconnect()
        assert len(flushed) == 1 and flushed[0].seq == 0
        assert s.events.of("disconnect")[0].detail == "source gone: silent steps until it reconnects"
        assert s.tick(0.07995) == []  # not yet due (float-safe, not early)
        silent = s.tick(0.24)  # float-safe: 3 steps of 80 ms
        assert len(silent) == 3 and all(st.concealed and st.seq is None for st in silent)
        assert [st.t_ms for st in silent] == pytest.approx([80.0, 160.0, 240.0])
        assert s.tick(0.24) == []
        clock.t = 0.4
        assert len(s.tick()) == 2
        back = s.push(frames(0.5), RATE, seq=100)  # any rate, any numbering; steps due first
        assert len(back) == 1 and back[0].seq == 100
        assert s.events.of("reconnect")[0].detail == "source back after 5 silent steps, at 24000 Hz"
        assert s.tick(10.0) == []
        report = s.report()
        assert report["faults"]["input/disconnect"] == 1 and report["faults"]["input/reconnect"] == 1


def test_a_reconnect_pays_the_silent_steps_due_before_its_audio():
    clock = ManualClock(kind="simulated")
    with DuplexSession(EchoBrain(), clock=clock) as s:
        s.disconnect()  # nothing sent yet: nothing to flush
        clock.t = 0.16
        steps = s.push(frames(0.5), RATE, seq=0)
        assert [st.concealed for st in steps] == [True, True, False]


def test_end_pads_the_last_partial_frame_and_drains_the_resampler():
    with DuplexSession(EchoBrain()) as s:
        s.push(np.full(1000, 0.5, np.float32), 16_000)
        steps = s.end()
        assert len(steps) == 1 and steps[0].seq is None and not steps[0].concealed
        assert s.end() == []


def test_feed_plays_audio_faults_and_disconnects_at_their_times():
    clock = ManualClock(kind="simulated")
    with DuplexSession(EchoBrain(), clock=clock) as s:
        source = [Packet(0.08, frames(0.5), RATE, 0), Packet(0.1, np.zeros(0), RATE, 1),
                  Packet(0.16, frames(0.5), RATE, 1), Packet(0.2, kind="disconnect"),
                  Packet(0.52, frames(0.5), RATE, 0)]
        steps = list(s.feed(source))
        assert [(round(st.t_ms), st.concealed) for st in steps] == [
            (80, False), (160, False), (280, True), (360, True), (440, True), (520, True), (520, False)]
        assert s.events.count("malformed") == 1 and s.events.count("reconnect") == 1


def test_run_streams_a_clip_in_chunks():
    with DuplexSession(EchoBrain()) as s:
        steps = list(s.run(frames(0.5, -0.5), RATE, chunk_ms=40))
        np.testing.assert_array_equal(np.concatenate([st.pcm for st in steps]), echo([0.5, -0.5]))
        assert [st.t_ms for st in steps] == [80.0, 160.0] and [st.seq for st in steps] == [1, 3]


# ---- the report -----------------------------------------------------------------------------
def test_the_report_counts_what_happened():
    s = DuplexSession(EchoBrain(actions={2: boom}), window=1)
    empty = s.report()
    assert empty["steps"] == 0 and empty["real_time_factor"] is None and empty["late_pct"] == 0.0
    assert empty["compute_ms"] == {} and empty["faults"] == {} and empty["events"] == {}
    s.push(frames(0.5), RATE, seq=0)
    s.push(frames(0.5), RATE, seq=0)  # duplicate
    s.push(frames(0.5, 0.5), RATE, seq=2)
    s.log("widget", "note", "hello")
    s.log("widget", "plain")
    r = s.report()
    assert r["brain"] == "echo" and r["weights"] == "fake" and r["codec_weights"] == "fake"
    assert r["steps"] == 4 and r["audio_s"] == 0.32  # the lost frame 1 is concealed as long as frame 0
    assert r["frames"] == {"received": 3, "consumed": 2, "concealed": 1, "duplicate": 1, "late": 0, "dropped": 1,
                           "held": 0, "restarts": 0, "skipped": 0}
    assert r["faults"] == {"brain/brain_error": 1, "input/concealed": 1, "input/duplicate": 1}
    assert r["events"]["widget/note"] == 1 and "widget/note" not in r["faults"]
    assert r["steps_faulted"] == 1 and r["steps_late"] == 0
    assert set(r["compute_ms"]) == {"input", "encode", "brain", "decode", "total"}
    total = [st for st in s._compute["total"]]
    assert len(total) == 4 and r["real_time_factor"] == round(float(np.mean(total)) / 80, 4)
    assert r["latency_ms"] == {"algorithmic": {"frame": 80, "echo": 0.0}}
    assert r["overload"]["state"] == "ok"
    assert s.events.of("note")[0].step == 4 and s.events.of("note")[0].detail == "hello"
    assert s.events.of("plain", "widget")[0].detail == ""
    s.close()


def test_history_and_events_are_bounded():
    with DuplexSession(EchoBrain(), window=1, history=2, events=3) as s:
        for seq in range(6):
            s.push(frames(0.5), RATE, seq=2 * seq)  # every other frame lost: concealed
        assert len(s._compute["total"]) == 2 and len(s.events) == 3
        assert s.report()["faults"]["input/concealed"] == 5


def test_fault_kinds_are_the_ones_the_session_logs():
    assert {"malformed", "concealed", "brain_error", "brain_stall", "brain_busy", "late", "error", "bad_output",
            "disconnect", "reconnect", "overload_overloaded"} <= set(FAULTS)
    assert "recovered" not in FAULTS and "overload_ok" not in FAULTS


def test_the_brains_worker_thread_uses_the_callers_torch_threads():
    import torch
    seen = []
    brain = EchoBrain(actions={0: lambda h: seen.append(torch.get_num_threads()) or SILENT})
    with DuplexSession(brain) as s:
        s.push(frames(0.5), RATE)
        assert seen == [torch.get_num_threads()]
        assert s._worker._thread_name_prefix == "brain-echo"


def test_step_is_a_frozen_record():
    step = Step(0, np.zeros(FRAME_SIZE, np.float32), "", None, False, {})
    assert step.t_ms == 0.0 and step.concealed is False and step.fault is None


# ---- exact figures (a fake perf_counter and a manual clock) -----------------------------------
def test_compute_is_timed_per_layer_and_the_overload_watch_sees_all_but_input(monkeypatch):
    from csmlab.pipeline import session as session_module
    monkeypatch.setattr(session_module, "time", FakeTime())
    clock = ManualClock()
    with DuplexSession(EchoBrain(), clock=clock) as s:
        steps = s.push(frames(0.5, 0.5), RATE)
        assert steps[0].compute_ms == pytest.approx({"input": 1.0, "encode": 1.0, "brain": 1.0, "decode": 1.0, "total": 4.0})
        assert steps[1].compute_ms == pytest.approx({"input": 0.0, "encode": 1.0, "brain": 1.0, "decode": 1.0, "total": 3.0})
        assert list(s.overload.recent) == pytest.approx([3.0, 3.0])  # compute without the input's share
        s.disconnect()
        clock.t = 0.08
        silent = s.tick()
        assert [st.compute_ms["input"] for st in silent] == [0.0]


def test_late_steps_are_counted_each_and_say_by_how_much():
    clock = ManualClock()
    with DuplexSession(EchoBrain(clock=clock, cost_s=1.0), clock=clock) as s:
        steps = s.push(frames(0.5, 0.5), RATE)
        assert [st.late for st in steps] == [True, True] and s.report()["steps_late"] == 2
        assert [e.detail for e in s.events.of("late", "clock")] == [
            "done 1000 ms after its frame: silence sent", "done 2000 ms after its frame: silence sent"]
        assert [e.t_ms for e in s.events.of("late")] == [1000.0, 2000.0]


def test_feed_times_each_packet_when_it_was_due_not_when_compute_got_to_it():
    clock = ManualClock()
    with DuplexSession(EchoBrain(clock=clock, cost_s=0.05), clock=clock, deadline_ms=1e9) as s:
        steps = list(s.feed([Packet(0.08, frames(0.5), RATE, 0), Packet(0.1, frames(0.5), RATE, 1)]))
        assert [st.t_ms for st in steps] == pytest.approx([80.0, 100.0])


def test_feed_waits_for_each_silent_step_while_disconnected():
    waits = []
    clock = ManualClock(kind="simulated")
    wait = clock.wait_until
    clock.wait_until = lambda t: (waits.append(round(t, 3)), wait(t))
    with DuplexSession(EchoBrain(), clock=clock) as s:
        list(s.feed([Packet(0.08, frames(0.5), RATE, 0), Packet(0.1, kind="disconnect"),
                     Packet(0.5, frames(0.5), RATE, 0)]))
    assert waits == [0.08, 0.1, 0.18, 0.26, 0.34, 0.42, 0.5, 0.5]  # the step due at 0.5 goes out before the packet
    assert clock.t == 0.5


def test_the_last_frame_of_a_source_is_float32_silence_after_the_resamplers_tail():
    brain = EchoBrain()
    with DuplexSession(brain) as s:
        first = s.push(np.full(1281, 0.5, np.float32), 16_000)  # 1921.5 samples at 24 kHz, some in the filter
        steps = first + s.end()
        assert len(steps) == 2 and [st.compute_ms["input"] for st in steps[len(first):]] == [0.0] * (2 - len(first))
        assert all(h.pcm.dtype == np.float32 for h in brain.heard)
        s.disconnect()
        s.tick(0.08)
        assert brain.heard[-1].pcm.dtype == np.float32 and brain.heard[-1].concealed


def test_silence_that_goes_out_is_float32():
    with DuplexSession(PcmBrain(np.zeros(5))) as s:
        step, = s.push(frames(0.5), RATE)
        assert step.pcm.dtype == np.float32 and step.pcm.shape == (FRAME_SIZE,)
    with DuplexSession(EchoBrain(actions={0: lambda h: SILENT})) as s:
        step, = s.push(frames(0.5), RATE)
        assert step.pcm.dtype == np.float32 and step.pcm.shape == (FRAME_SIZE,) and not np.any(step.pcm)


def test_shed_steps_are_counted_each_and_are_float32_silence_on_time(monkeypatch):
    from csmlab.pipeline import session as session_module
    monkeypatch.setattr(session_module, "time", FakeTime())
    clock = ManualClock()
    with DuplexSession(EchoBrain(), clock=clock, window=1) as s:
        s.overload.state = "overloaded"
        steps = s.push(frames(0.5), RATE, seq=0) + s.push(frames(0.5), RATE, seq=3)
        shed = [st for st in steps if st.concealed]
        assert len(shed) == 2 and s.overload.shed_steps == 2
        assert shed[0].compute_ms == pytest.approx({"input": 1.0, "total": 1.0})
        assert shed[1].compute_ms == {"input": 0.0, "total": 0.0}
        for st in shed:
            assert st.pcm.dtype == np.float32 and st.pcm.shape == (FRAME_SIZE,) and not np.any(st.pcm)
            assert st.late is False


def test_the_overload_message_names_what_to_try_for_this_brain():
    brain = EchoBrain()
    brain.name = "moshi"
    with DuplexSession(brain) as s:
        assert s.overload.brain == "moshi"


def test_a_brain_writes_to_the_sessions_event_log():
    with DuplexSession(TalkingBrain()) as s:
        s.push(frames(0.5, 0.5), RATE)
        assert [(e.layer, e.kind, e.detail) for e in s.events.of("thinking")] == [
            ("brain", "thinking", "step 0"), ("brain", "thinking", "step 1")]
        assert s.events.of("plain", "brain")[0].detail == ""


def test_default_limits():
    with DuplexSession(EchoBrain()) as s:
        assert (s._jitter.window, s._jitter.max_gap) == (3, 50) and s.deadline_ms == 80
        assert s.events._events.maxlen == 2000 and s._compute["total"].maxlen == 20_000
    with DuplexSession(EchoBrain(), window=2, max_gap=60) as s:
        assert (s._jitter.window, s._jitter.max_gap) == (2, 60)


def test_audio_seconds_in_the_report():
    with DuplexSession(EchoBrain()) as s:
        s.push(frames(*[0.5] * 13), RATE)
        assert s.report()["audio_s"] == 1.04


def test_the_input_layers_events_keep_their_detail():
    with DuplexSession(EchoBrain(), window=1) as s:
        s.push(frames(0.5), RATE, seq=0)
        s.push(frames(0.5), RATE, seq=2)
        s.push(frames(0.5), RATE, seq=2)
        assert [e.detail for e in s.events.of("concealed", "input")] == [f"seq 1 lost: {FRAME_SIZE} samples of silence in its place"]
        assert [e.detail for e in s.events.of("duplicate", "input")] == ["seq 2 arrived twice: dropped"]


def test_a_late_step_sends_float32_silence_and_says_how_late_from_its_own_frame():
    clock = ManualClock()
    with DuplexSession(EchoBrain(clock=clock, cost_s=1.0), clock=clock) as s:
        clock.t = 1.0
        step, = s.push(frames(0.5), RATE)
        assert step.late and step.pcm.dtype == np.float32 and step.pcm.shape == (FRAME_SIZE,) and not np.any(step.pcm)
        assert s.events.of("late", "clock")[0].detail == "done 1000 ms after its frame: silence sent"


def test_a_packet_after_slow_silent_steps_is_not_preceded_by_steps_due_after_it():
    class SlowOnSilence(EchoBrain):
        def step(self, heard):
            if heard.concealed:
                clock.t += 0.2
            return super().step(heard)

    clock = ManualClock()
    with DuplexSession(SlowOnSilence(), clock=clock, deadline_ms=1e9) as s:
        source = [Packet(0.08, frames(0.5), RATE, 0), Packet(0.1, kind="disconnect"), Packet(0.2, frames(0.5), RATE, 1)]
        steps = list(s.feed(source))
        # the silent step due at 0.18 is computed (0.2 s on this clock), then the packet of 0.2, then the end
        assert [(round(st.t_ms), st.concealed) for st in steps][:3] == [(80, False), (180, True), (200, False)]
