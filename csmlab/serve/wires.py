"""What goes on the websocket: Moshi's protocol (`OpusWire`, `/api/chat`) or the widget's frames
(`FrameWire`, `/api/frames`, what the `GET /` page's duplex-audio.js speaks).

A wire turns a client message into PCM (and the sender's sequence number, when it has one) or a
`ProtocolError`, and the pipeline's steps into messages. A wire belongs to one connection: its codec
state (Opus streams) is that connection's.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import sphn

from csmlab.errors import AudioFormatError
from csmlab.metrics import SAMPLE_RATE
from csmlab.serve.protocol import HANDSHAKE, ProtocolError, audio_message, audio_payload, error_message, text_message
from csmlab.widget.frames import pack_system_frame, unpack_mic_frame

Message = bytes | str
MAX_PENDING = 256  # arrival times kept for frames not answered yet


class OpusWire:
    """Moshi's protocol: 0x01 Ogg/Opus both ways, 0x02 text, 0x00 handshake, 0x05 errors."""

    def __init__(self):
        self.reader = sphn.OpusStreamReader(SAMPLE_RATE)
        self.writer = sphn.OpusStreamWriter(SAMPLE_RATE)

    handshake = staticmethod(lambda: bytes([HANDSHAKE]))
    error = staticmethod(error_message)
    notice = staticmethod(lambda state, text: error_message(f"{state}: {text}"))  # 0x05, read by moshi's web UI

    def decode(self, data) -> tuple[np.ndarray, int | None]:
        ogg = audio_payload(data)
        try:
            return self.reader.append_bytes(ogg), None  # [T] float32 at 24 kHz
        except ValueError as err:  # whole pages, yet not a stream sphn can read: start a fresh reader
            self.reader = sphn.OpusStreamReader(SAMPLE_RATE)
            raise ProtocolError("bad_opus", f"audio could not be decoded as Ogg/Opus ({err}); "
                                "the stream was reset, keep sending") from err

    def encode(self, steps: list) -> list[Message]:
        """Runs in the session's worker thread: Opus encoding is compute too."""
        ogg = self.writer.append_pcm(np.concatenate([s.pcm for s in steps])) if steps else b""
        return ([audio_message(ogg)] if ogg else []) + [text_message(s.text) for s in steps if s.text]


class FrameWire:
    """The widget's binary 80 ms frames (csmlab/widget/frames.py) and JSON text messages.

    A system frame's time is the server's: from the mic frame's arrival (`decode`, on the event loop)
    to its reply being encoded, queue and compute together, so that the page's "network" figure
    (its round trip minus this) is the network alone."""

    def __init__(self):
        self.arrived: dict[int, float] = {}  # seq -> perf_counter() at arrival, until its step is encoded
        self.lock = threading.Lock()  # decode runs on the event loop, encode in the session's worker thread

    handshake = staticmethod(lambda: json.dumps({"type": "ready"}))
    error = staticmethod(lambda text: json.dumps({"type": "error", "message": text}))
    notice = staticmethod(lambda state, text: json.dumps({"type": "overload", "state": state, "message": text}))

    def decode(self, data) -> tuple[np.ndarray, int | None]:
        if isinstance(data, str):
            raise ProtocolError("text_frame", "send binary mic frames (duplex-audio.js packFrame), not text")
        try:
            frame = unpack_mic_frame(data)
        except AudioFormatError as err:
            raise ProtocolError("bad_frame", str(err)) from err
        with self.lock:
            self.arrived[frame.seq] = time.perf_counter()
            if len(self.arrived) > MAX_PENDING:  # never answered (dropped from the backlog): forget the oldest
                del self.arrived[next(iter(self.arrived))]
        return frame.pcm, frame.seq

    def encode(self, steps: list) -> list[Message]:
        out: list[Message] = []
        for s in steps:
            with self.lock:
                arrived = self.arrived.pop(s.seq, None) if s.seq is not None else None
            server_ms = 1000 * (time.perf_counter() - arrived) if arrived else s.compute_ms.get("total", 0.0)
            out.append(pack_system_frame(s, server_ms))
            if s.text:
                out.append(json.dumps({"type": "text", "text": s.text}))
        return out
