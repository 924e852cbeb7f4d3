"""The widget's kernel side without a browser: frames, the worker's queue and thread, the offline twin.

Brains here work on PCM (no codec), so each test takes well under a second of compute: `EchoBrain`
says back what it heard in the same step, `GatedBrain` does so only when the test opens its gate.
"""
import threading
import time

import numpy as np
import psutil
import pytest

from csmlab.data import real_recording
from csmlab.errors import AudioFormatError
from csmlab.metrics import FRAME_SIZE
from csmlab.pipeline import Brain, Said
from csmlab.widget import DuplexWorker, pack_frame, unpack_frame, unpack_mic_frame
from csmlab.widget.frames import FLAG_LATE, FLAG_NO_SEQ, HEADER_BYTES, KIND_MIC, KIND_SYSTEM
from csmlab.widget.replay import level_db, replay
from csmlab.widget.widget import THREAD_PREFIXES, DuplexWidget


class EchoBrain(Brain):
    name = "echo"

    def step(self, heard):
        return Said(pcm=heard.pcm, text="." if heard.index % 10 == 0 else "")


class GatedBrain(EchoBrain):
    name = "gated"

    def __init__(self):
        super().__init__()
        self.entered, self.gate = threading.Event(), threading.Event()

    def step(self, heard):
        self.entered.set()
        self.gate.wait(5)
        return super().step(heard)


class Inbox:
    """A worker's `send`: everything it sent, and a way to wait for it."""

    def __init__(self):
        self.messages, self.cond = [], threading.Condition()

    def __call__(self, content, buffers):
        with self.cond:
            self.messages.append((content, buffers))
            self.cond.notify_all()

    def of(self, kind):
        return [(c, b) for c, b in list(self.messages) if c["type"] == kind]

    def wait(self, predicate, timeout=20):
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), self.messages[-3:]


def _csmlab_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIXES)]


def _mic(seq, value=0.1):
    return pack_frame(KIND_MIC, seq, 80.0 * seq, np.full(FRAME_SIZE, value, np.float32))


def _running(inbox):
    inbox.wait(lambda: any(c.get("status") == "running" for c, _ in inbox.of("status")))


def test_a_frame_is_a_16_byte_header_and_float32_samples():
    pcm = np.linspace(-1, 1, FRAME_SIZE, dtype=np.float32)
    buffer = pack_frame(KIND_SYSTEM, 41, 12.5, pcm, flags=FLAG_LATE)
    assert len(buffer) == HEADER_BYTES + 4 * FRAME_SIZE == 7696
    frame = unpack_frame(memoryview(buffer))
    assert (frame.kind, frame.seq, frame.time_ms, frame.late, frame.no_seq) == (KIND_SYSTEM, 41, 12.5, True, False)
    np.testing.assert_array_equal(frame.pcm, pcm)


@pytest.mark.parametrize("buffer, message", [
    (b"", "16-byte header"),
    (_mic(0)[:-2], "16-byte header plus float32"),
    (b"\x02" + _mic(0)[1:], "version 2"),
    (pack_frame(KIND_SYSTEM, 0, 0.0, np.zeros(FRAME_SIZE)), "expected a frame of kind 1"),
    (pack_frame(KIND_MIC, 0, 0.0, np.zeros(100)), "1920 samples"),
    (pack_frame(KIND_MIC, 3, 0.0, np.full(FRAME_SIZE, np.nan)), "frame 3 has 1920 NaN"),
], ids=["empty", "ragged", "version", "kind", "length", "nan"])
def test_a_malformed_mic_frame_says_what_is_wrong(buffer, message):
    with pytest.raises(AudioFormatError, match=message):
        unpack_mic_frame(buffer)


def test_the_offline_twin_hears_the_recording_back_frame_by_frame():
    rec = real_recording()
    twin = replay(rec.audio[: rec.sample_rate * 2], rec.sample_rate, EchoBrain(), jitter_ms=60)
    n = len(twin.seq)
    assert n == 25 and list(twin.seq) == list(range(n))  # 2 s = 25 frames, each step consumed its own frame
    np.testing.assert_allclose(twin.output_db, twin.input_db, atol=1e-3)  # what went in came back
    assert twin.report["received"] == n and twin.report["dropped"] == 0 and twin.report["malformed"] == 0
    assert np.all(twin.kernel_ms >= 0) and np.all(np.isfinite(twin.round_trip_ms))
    # round trip = the 80 ms capture + kernel + the jitter buffer's wait; at least the frame + margin
    assert np.all(twin.round_trip_ms >= 80 + twin.kernel_ms - 1e-6) and twin.round_trip_ms[0] >= 140
    assert "".join(twin.text) == ".."  # steps 10 and 20: step 0 was the worker's silent warm-up
    assert level_db(np.zeros(10)) == -90


def test_a_slow_kernel_drops_the_oldest_frames_counts_them_and_feed_never_waits():
    brain, inbox = GatedBrain(), Inbox()
    worker = DuplexWorker(brain, inbox, max_queue=4).start()
    try:
        brain.gate.set()
        _running(inbox)  # the warm-up step passed the gate
        brain.gate.clear()
        brain.entered.clear()
        worker.feed(_mic(0))
        assert brain.entered.wait(5)  # frame 0 is in the brain, which now waits at the gate
        for seq in range(1, 11):  # ten more while the brain is stuck: feed must return at once
            worker.feed(_mic(seq))
        report = worker.report()
        assert (report["received"], report["dropped"], report["queue"], report["queue_max"]) == (11, 6, 4, 4)
        brain.gate.set()
        inbox.wait(lambda: len(inbox.of("step")) >= 11)  # 0, six concealed gaps (1..6), then 7..10
        frames = [unpack_frame(b[0]) for _, b in inbox.of("step")]
        assert [f.seq for f in frames if not f.no_seq] == [0, 7, 8, 9, 10]
        assert sum(f.flags & FLAG_NO_SEQ > 0 for f in frames) == 6 == worker.report()["concealed"]
    finally:
        brain.gate.set()
        worker.stop(wait=True)


def test_a_malformed_frame_is_reported_and_the_session_goes_on():
    inbox = Inbox()
    worker = DuplexWorker(EchoBrain(), inbox).start()
    try:
        _running(inbox)
        worker.feed(b"not audio")
        worker.feed(pack_frame(KIND_MIC, 0, 0.0, np.full(FRAME_SIZE, np.inf, np.float32)))
        worker.feed(_mic(1, value=0.25))
        inbox.wait(lambda: inbox.of("step"))
        errors = [c["message"] for c, _ in inbox.of("error")]
        assert len(errors) == 2 and "16-byte header" in errors[0] and "NaN/Inf" in errors[1]
        assert unpack_frame(inbox.of("step")[0][1][0]).pcm[0] == np.float32(0.25)
        assert worker.report()["malformed"] == 2 and worker.alive
    finally:
        worker.stop(wait=True)


def test_no_audio_for_a_while_stops_the_worker_and_frees_its_threads():
    before = set(_csmlab_threads())
    inbox = Inbox()
    worker = DuplexWorker(EchoBrain(), inbox, idle_timeout_s=0.3).start()
    _running(inbox)
    worker.feed(_mic(0))
    inbox.wait(lambda: inbox.of("status")[-1][0]["status"] == "stopped", timeout=10)
    worker.stop(wait=True)
    assert not worker.alive and "no audio from the page" in worker.reason
    assert set(_csmlab_threads()) <= before


def _page_says(widget, content, buffers=()):
    widget._on_page_message(widget, content, list(buffers))


def test_start_stop_restart_and_close_leave_no_thread():
    widget = DuplexWidget(brain="scripted", brain_kwargs={})  # no front end: the comm goes nowhere
    try:
        for attempt in range(2):  # start, stream, stop; then again (a restart)
            _page_says(widget, {"type": "start", "brain": "scripted"})
            deadline = time.monotonic() + 20
            while widget.status != "running" and time.monotonic() < deadline:
                time.sleep(0.01)
            assert widget.status == "running", widget.error
            for seq in range(5):
                _page_says(widget, {"type": "frame"}, [_mic(seq)])
            _page_says(widget, {"type": "stop"})
            widget.stop(wait=True)
            report = widget.report()["kernel"]
            assert report["received"] == 5 and report["status"] == "stopped", report
            assert widget.worker.session.deadline_ms == 80 + widget.jitter_ms  # a late reply still finds its slot
            assert not report["alive"] and report["threads"] == []
            assert "5 frames received" in widget.summary() and "{" not in widget.summary()  # words, not JSON
        _page_says(widget, {"type": "start"})
    finally:
        widget.close()  # stops the last one, mid-start
    assert _csmlab_threads() == []


def test_a_long_session_keeps_memory_and_queues_bounded():
    worker = DuplexWorker(EchoBrain(), lambda content, buffers: None, max_queue=4).start()
    process = psutil.Process()
    try:
        while worker.status != "running":
            time.sleep(0.01)
        rss = []
        for seq in range(3000):  # 4 minutes of audio, fed as fast as the session takes it
            worker.feed(_mic(seq))
            while worker.queued > 2:
                time.sleep(0.0005)
            if seq % 500 == 499:
                rss.append(process.memory_info().rss)
        report = worker.report()
    finally:
        worker.stop(wait=True)
    assert report["queue_max"] <= 4 and report["received"] == 3000
    in_flight = report["received"] - report["dropped"] - (report["steps"] - report["concealed"])
    assert 0 <= in_flight <= 5  # every frame is answered, dropped (counted), or still queued
    assert report["steps"] > 2500, report
    growth_mb = (rss[-1] - rss[1]) / 2**20
    assert growth_mb < 20, [r / 2**20 for r in rss]


def test_before_start_the_report_says_so_and_whole_replies_are_separated():
    from types import SimpleNamespace

    from csmlab.pipeline.cascade import CascadeBrain

    widget = DuplexWidget(brain="scripted", brain_kwargs={})
    try:
        assert "press Start" in widget.summary() and widget.report()["kernel"] == {}
        worker = widget.worker = SimpleNamespace(session=SimpleNamespace(brain=CascadeBrain))  # as a cascade's worker
        for reply in ("Hello there.", "How are you?"):
            widget._from_worker(worker, {"type": "step", "text": reply}, [b""])
        assert widget.text == "Hello there.\nHow are you?"
        widget._from_worker(worker, {"type": "overload", "state": "overloaded", "message": "m", "compute_ms": 136.0,
                                     "budget_ms": 80.0, "shed_steps": 3}, [])
        assert widget.overload["state"] == "overloaded"
    finally:
        widget.worker = None
        widget.close()


def test_the_widget_headline_adds_the_brains_delay_and_the_device_and_splits_out_the_path(tmp_path):
    """widget.js's `headline` (what the learner reads first), run under node on the widget's own module."""
    import json
    import shutil
    import subprocess

    from csmlab.widget.widget import widget_esm

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node on this machine (the browser test shows the same figures)")
    (tmp_path / "widget.mjs").write_text(widget_esm())
    median = lambda v: {"median": v}  # noqa: E731
    page = {"latency": {"roundTrip": median(200), "transport": median(30), "kernel": median(20), "playback": median(40)},
            "device": {"baseLatencyMs": 10, "outputLatencyMs": 30, "inputLatencyMs": 0}}
    stats = {"session": {"latency_ms": {"response": {"p50": 600}}}}
    script = f"import('{tmp_path / 'widget.mjs'}').then(m => console.log(JSON.stringify(m.headline({json.dumps(page)}, {json.dumps(stats)}, 160))))"
    got = json.loads(subprocess.run([node, "-e", script], capture_output=True, text=True, check=True, timeout=30).stdout)
    assert got == {"mouthToEar": 200 + 160 + 40, "added": 30 + 20 + 40, "device": 40, "response": 600 + 200 - 80 + 40}
