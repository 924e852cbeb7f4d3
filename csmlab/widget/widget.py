"""`DuplexWidget`: talk to the stack from a notebook, on anywidget over ipywidgets 8.

The page (assets/widget/widget.js on top of duplex-audio.js) captures the microphone, sends 80 ms
binary frames over the widget's comm and plays what comes back; the kernel side is a `DuplexWorker`.
Synced traits carry the state the page draws: `status`, `error`, `stats` (the kernel's counts and the
session's report, every 0.5 s), `text` (the brain's text stream, last `TEXT_KEEP` characters) and
`page_stats` (the page's own figures, sent back every second: latency parts, levels, underruns).
Tested in JupyterLab 4 with Chromium (tests/test_browser.py); other anywidget front ends are untested.
"""
from __future__ import annotations

from pathlib import Path

import anywidget
import traitlets

from csmlab.widget.worker import DuplexWorker

ASSETS = Path(__file__).resolve().parent.parent / "assets" / "widget"
AUDIO_JS = ASSETS / "duplex-audio.js"  # standalone: also served by `csmlab serve`
BRAINS = ("loopback", "moshi", "cascade", "scripted")
TEXT_KEEP = 2000


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
    text = traitlets.Unicode("").tag(sync=True)
    stats = traitlets.Dict().tag(sync=True)
    page_stats = traitlets.Dict().tag(sync=True)
    jitter_ms = traitlets.Float(60.0).tag(sync=True)
    max_queue = traitlets.Int(4).tag(sync=True)

    def __init__(self, brain: str = "loopback", **kwargs):
        self.brain_kwargs = kwargs.pop("brain_kwargs", {})
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
        self.error, self.text, self.status, self.stats = "", "", "starting", {}
        worker = DuplexWorker(self.brain, lambda c, b: self._from_worker(worker, c, b), max_queue=self.max_queue,
                              on_stats=lambda report: self._on_stats(worker, report), **self.brain_kwargs)
        self.worker = worker.start()

    def stop(self, wait: bool = False) -> None:
        """Stop the worker (it closes its session and exits); `wait=True` joins its thread."""
        if self.worker is not None:
            self.worker.stop(wait=wait)

    def close(self) -> None:
        self.stop(wait=True)
        super().close()

    def report(self) -> dict:
        """What the kernel counted (frames received, dropped, ...) and what the page measured."""
        kernel = self.worker.report() if self.worker is not None else {}
        return {"kernel": kernel, "page": dict(self.page_stats)}

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
        elif kind == "step":
            if content["text"]:
                self.text = (self.text + content["text"])[-TEXT_KEEP:]
            self.send(content, buffers)

    def _on_stats(self, worker: DuplexWorker, report: dict) -> None:
        if worker is self.worker:
            self.stats = report
