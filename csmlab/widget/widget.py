"""`DuplexWidget`: talk to the stack from a notebook, on anywidget over ipywidgets 8.

The page (assets/widget/widget.js on top of duplex-audio.js) captures the microphone, sends 80 ms
binary frames over the widget's comm and plays what comes back; the kernel side is a `DuplexWorker`.
Synced traits carry the state the page draws: `status`, `error`, `stats` (the kernel's counts and the
session's report, every 0.5 s), `text` (the brain's text stream, last `TEXT_KEEP` characters) and
`page_stats` (the page's own figures, sent back every second: latency parts, levels, the playback
buffer's shed and dropped ms), `overload` (the session's state when the brain cannot keep up, with
its words) and `brain_delay_ms` (the brain's delay by design, for the mouth-to-ear figure).
`summary()` says in a few lines what `report()` holds.
Tested in JupyterLab 4 with Chromium (tests/test_browser.py); other anywidget front ends are untested.
"""
from __future__ import annotations

import threading

import anywidget
import traitlets

from csmlab.metrics import frame_ms
from csmlab.widget.frames import AUDIO_JS
from csmlab.widget.worker import WORKER_PREFIX, DuplexWorker

THREAD_PREFIXES = (WORKER_PREFIX, "brain-")  # the worker's, and the session's brain thread
ASSETS = AUDIO_JS.parent
BRAINS = ("loopback", "moshi", "cascade", "moshi+csm")  # the pipeline's brains that listen (not "scripted")
# the loopback you hear through the small trained Mimi (listen=True): the full-size one is random offline
BRAIN_DEFAULTS = {"loopback": {"listen": True}}
TEXT_KEEP = 2000
FRAME_MS = frame_ms()  # 80.0


def widget_esm() -> str:
    """duplex-audio.js and widget.js as one ES module (anywidget loads a single module, no imports)."""
    return AUDIO_JS.read_text() + "\n" + (ASSETS / "widget.js").read_text()


class DuplexWidget(anywidget.AnyWidget):
    """Microphone in, system audio out, through a live `DuplexSession` on the chosen brain."""

    _esm = widget_esm()
    _css = (ASSETS / "widget.css").read_text()

    brain = traitlets.Unicode("loopback").tag(sync=True)
    brains = traitlets.List(traitlets.Unicode(), default_value=list(BRAINS)).tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    overload = traitlets.Dict().tag(sync=True)  # the session's overload state and its words (pipeline.overload)
    brain_delay_ms = traitlets.Float(0.0).tag(sync=True)  # the brain's algorithmic delay: heard on top of the round trip
    text = traitlets.Unicode("").tag(sync=True)
    stats = traitlets.Dict().tag(sync=True)
    page_stats = traitlets.Dict().tag(sync=True)
    jitter_ms = traitlets.Float(60.0).tag(sync=True)
    max_queue = traitlets.Int(4).tag(sync=True)

    def __init__(self, brain: str = "loopback", brain_kwargs: dict | None = None, clock: str = "realtime",
                 overload: str = "skip", **kwargs):
        """`brain_kwargs` go to `make_brain` (e.g. `{"delay_ms": 240}`); `kwargs` set traits (`jitter_ms`).
        `overload` is what the session sheds when the brain cannot keep up: `"skip"` its concealed
        frames, `"rate"` runs it at a declared lower rate, `"none"` (see `csmlab.pipeline.overload`).

        `clock="realtime"` (live): a step that overruns its deadline sends silence and counts as late.
        The deadline is 80 ms plus the page's jitter margin: a reply that comes that late still
        finds its slot in the playback buffer. `"simulated"` sends every step's audio however long
        it took (compute is still measured)."""
        self.brain_kwargs, self.clock, self.overload_policy = brain_kwargs, clock, overload
        super().__init__(brain=brain, **kwargs)
        self.worker: DuplexWorker | None = None
        self.on_msg(self._on_page_message)

    # -- from the page (kernel main thread: must return at once) ---------------------------------
    def _on_page_message(self, _, content: dict, buffers: list) -> None:
        kind = content.get("type")
        if kind == "frame":
            if self.worker is not None:
                for buffer in buffers:
                    self.worker.feed(buffer)
        elif kind == "start":
            self.start(content.get("brain", self.brain))
        elif kind == "stop":
            self.stop()
        elif kind == "page_stats":
            self.page_stats = content.get("stats", {})

    def start(self, brain: str | None = None) -> None:
        """Start a fresh worker (stopping any previous one); the page then streams its frames."""
        self.stop()
        self.brain = brain or self.brain
        self.error, self.text, self.status, self.stats, self.overload = "", "", "starting", {}, {}
        kwargs = self.brain_kwargs if self.brain_kwargs is not None else BRAIN_DEFAULTS.get(self.brain, {})
        worker = DuplexWorker(self.brain, lambda c, b: self._from_worker(worker, c, b), max_queue=self.max_queue, clock=self.clock,
                              deadline_ms=FRAME_MS + self.jitter_ms, overload=self.overload_policy,
                              on_stats=lambda report: self._on_stats(worker, report), **kwargs)
        self.worker = worker  # before it starts: its first message must find it current
        worker.start()

    def stop(self, wait: bool = False) -> None:
        """Stop the worker (it closes its session and exits); `wait=True` joins its thread."""
        if self.worker is not None:
            self.worker.stop(wait=wait)

    def close(self) -> None:
        self.stop(wait=True)
        super().close()

    def report(self) -> dict:
        """What the kernel counted (frames received, dropped, ...), its worker threads still alive,
        and what the page measured (latency parts, levels, underruns). Before Start: empty, and says so."""
        if self.worker is None:
            return {"kernel": {}, "page": {}, "note": "nothing ran yet: press Start in the widget above first"}
        kernel = self.worker.report() if self.worker is not None else {}
        kernel["alive"] = self.worker is not None and self.worker.alive
        kernel["threads"] = [t.name for t in threading.enumerate() if t.name.startswith(THREAD_PREFIXES)]
        return {"kernel": kernel, "page": dict(self.page_stats)}

    def summary(self) -> str:
        """`report()` as a few readable lines: what the learner heard, what was lost, whether it kept up."""
        report = self.report()
        if "note" in report:
            return report["note"]
        k, page = report["kernel"], report["page"]
        session = k.get("session", {})
        lines = [f"brain {k['brain']}: {k['status']}" + (f" ({k['reason']})" if k.get("reason") else ""),
                 f"kernel: {k['received']} frames received, {k['dropped']} dropped ({k['dropped'] * FRAME_MS:.0f} ms), "
                 f"{k['late']} late (silence sent), {k['concealed']} concealed, {k['malformed']} malformed"]
        total = session.get("compute_ms", {}).get("total")
        if total:
            lines.append(f"compute per 80 ms step: p50 {total['p50']:.1f} ms, p95 {total['p95']:.1f} ms")
        overload = session.get("overload", {})
        if overload.get("state", "ok") != "ok":
            lines.append(f"{overload['state'].upper()}: {overload['message']} ({overload['shed_steps']} steps shed, "
                         f"policy {overload['policy']!r})")
        if page.get("latency"):
            lat, player = page["latency"], page["player"]
            median = {key: lat[key]["median"] for key in lat}
            heard = median["roundTrip"] + self.brain_delay_ms
            lines.append(f"page: round trip p50 {median['roundTrip']:.0f} ms; you heard it ~{heard:.0f} ms after speaking "
                         f"(+ the device's latency); the pipeline added {median['transport'] + median['kernel'] + median['playback']:.0f} ms "
                         f"(transport {median['transport']:.0f}, kernel {median['kernel']:.0f}, playback buffer {median['playback']:.0f})")
            lines.append(f"playback buffer: shed {player.get('shedMs', 0):.0f} ms, dropped {player.get('droppedMs', 0):.0f} ms, "
                         f"{player.get('underruns', 0)} underruns ({player.get('underrunMs', 0):.0f} ms of silence)")
        return "\n".join(lines)

    # -- from the worker thread -----------------------------------------------------------------
    def _from_worker(self, worker: DuplexWorker, content: dict, buffers: list) -> None:
        if worker is not self.worker:
            return  # a stopped worker's last words must not overwrite the new one's state
        kind = content["type"]
        if kind == "status":
            self.status = content["status"]
            if content["status"] == "failed":
                self.error = content["reason"]
        elif kind == "error":
            self.error = content["message"]
        elif kind == "overload":
            self.overload = {k: content[k] for k in ("state", "message", "compute_ms", "budget_ms")}
        elif kind == "step":
            if content["text"]:
                separator = worker.session.brain.text_separator if self.text else ""
                self.text = (self.text + separator + content["text"])[-TEXT_KEEP:]
            self.send(content, buffers)

    def _on_stats(self, worker: DuplexWorker, report: dict) -> None:
        if worker is self.worker:
            self.stats = report
            algorithmic = report.get("session", {}).get("latency_ms", {}).get("algorithmic", {})
            self.brain_delay_ms = float(sum(v for k, v in algorithmic.items() if k != "frame"))  # the frame is in the round trip
