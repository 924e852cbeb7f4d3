"""Live duplex from a browser: microphone in, system audio out, through a `csmlab.pipeline` session.

    from csmlab.widget import DuplexWidget
    DuplexWidget(brain="loopback")      # or "moshi", "cascade", "moshi+csm": press Start, speak, listen

- `frames`: the binary 80 ms frame both directions use (header + float32 samples);
- `worker`: the kernel side, transport-free: a bounded queue in front of a session in a thread;
- `widget`: `DuplexWidget`, the anywidget view over ipywidgets 8;
- `replay`: the offline twin: a recording through the same worker, as frames, paced like a page;
- `figures`, `exercises`: notebook 05's pictures and checks.

Another transport (e.g. a WebSocket server) reuses `DuplexWorker(brain, send)`: call `feed(bytes)`
for each binary message from the page, and send what `send(content, buffers)` gets back (from the
worker thread: hand it to your event loop, e.g. `loop.call_soon_threadsafe`).

The browser side lives in `csmlab/assets/widget/`: `duplex-audio.js` (capture and playback worklets,
resampling, framing, latency; no framework, reused by `csmlab serve`), `widget.js` and `widget.css`.
"""
from csmlab.widget.frames import Frame, pack_frame, unpack_frame, unpack_mic_frame
from csmlab.widget.worker import DuplexWorker

__all__ = ["DuplexWidget", "DuplexWorker", "Frame", "pack_frame", "unpack_frame", "unpack_mic_frame"]


def __getattr__(name):
    if name == "DuplexWidget":  # anywidget and ipywidgets load only when the widget is wanted
        from csmlab.widget.widget import DuplexWidget

        return DuplexWidget
    raise AttributeError(name)
