"""The binary frame that carries 80 ms of audio between a browser page and the kernel.

One frame is one binary buffer (little-endian), the same in both directions and on any transport
(an anywidget comm here, a WebSocket in `csmlab serve`); `assets/widget/duplex-audio.js` writes and
reads exactly this layout (`packFrame` / `unpackFrame`):

    offset  size  field
    0       1     version (1)
    1       1     kind: 1 = mic (page -> kernel), 2 = system (kernel -> page)
    2       2     flags: 1 = NO_SEQ (the step concealed a missing mic frame), 2 = LATE (missed its deadline)
    4       4     seq: mic: the page's frame counter from 0; system: the mic seq that step consumed
    8       8     time_ms: mic: capture time of the first sample, page audio clock;
                           system: kernel time for that step, from the mic frame's arrival to the reply
    16      4*N   N float32 samples, 24 kHz mono in [-1, 1] (N = 1920 for a mic frame)

Binary rather than JSON lists: a frame is 7.7 kB instead of ~40 kB of text, and nothing is parsed
sample by sample. A buffer that breaks this layout raises `AudioFormatError`, saying what is wrong.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csmlab.errors import AudioFormatError
from csmlab.metrics import FRAME_SIZE

AUDIO_JS = Path(__file__).resolve().parent.parent / "assets" / "widget" / "duplex-audio.js"
"""The page side of this layout, a standalone module: loaded by the widget, served by `csmlab serve`."""
VERSION = 1
KIND_MIC, KIND_SYSTEM = 1, 2
FLAG_NO_SEQ, FLAG_LATE = 1, 2
HEADER = struct.Struct("<BBHId")  # version, kind, flags, seq, time_ms
HEADER_BYTES = HEADER.size  # 16
MAX_SEQ = 2**32 - 1


@dataclass(frozen=True)
class Frame:
    """One decoded frame: header fields and its samples."""

    kind: int
    seq: int
    time_ms: float
    pcm: np.ndarray  # [N] float32 at 24 kHz
    flags: int = 0

    @property
    def no_seq(self) -> bool:
        return bool(self.flags & FLAG_NO_SEQ)

    @property
    def late(self) -> bool:
        return bool(self.flags & FLAG_LATE)


def pack_frame(kind: int, seq: int, time_ms: float, pcm: np.ndarray, flags: int = 0) -> bytes:
    """Header + float32 samples, as one buffer ready for `model.send` or a WebSocket."""
    pcm = np.ascontiguousarray(pcm, dtype="<f4").reshape(-1)  # [N]
    return HEADER.pack(VERSION, kind, flags, seq & MAX_SEQ, float(time_ms)) + pcm.tobytes()


def pack_system_frame(step, time_ms: float) -> bytes:
    """A duplex step's audio for the page, flagged when it concealed a missing mic frame or was late."""
    flags = (FLAG_NO_SEQ if step.seq is None else 0) | (FLAG_LATE if step.late else 0)
    return pack_frame(KIND_SYSTEM, step.seq or 0, time_ms, step.pcm, flags)


def unpack_frame(buffer, kind: int | None = None, samples: int | None = None) -> Frame:
    """Decode a buffer (bytes, memoryview, bytearray); check `kind` and sample count when given."""
    data = memoryview(buffer).cast("B")
    if len(data) < HEADER_BYTES or (len(data) - HEADER_BYTES) % 4:
        raise AudioFormatError(
            f"a duplex frame is a {HEADER_BYTES}-byte header plus float32 samples; got {len(data)} bytes. "
            "Send buffers made by packFrame (duplex-audio.js) or csmlab.widget.frames.pack_frame"
        )
    version, got_kind, flags, seq, time_ms = HEADER.unpack_from(data)
    if version != VERSION:
        raise AudioFormatError(f"duplex frame version {version} is not {VERSION}: reload the page so it runs this csmlab's JavaScript")
    if kind is not None and got_kind != kind:
        raise AudioFormatError(f"expected a frame of kind {kind}, got kind {got_kind} (1 = mic, 2 = system)")
    pcm = np.frombuffer(data[HEADER_BYTES:], dtype="<f4").astype(np.float32)  # [N], a copy we own
    if samples is not None and len(pcm) != samples:
        raise AudioFormatError(f"a mic frame carries {samples} samples (80 ms at 24 kHz), this one {len(pcm)}")
    if not np.isfinite(pcm).all():
        raise AudioFormatError(f"frame {seq} has {int((~np.isfinite(pcm)).sum())} NaN/Inf samples; it was dropped")
    return Frame(got_kind, seq, time_ms, pcm, flags)


def unpack_mic_frame(buffer) -> Frame:
    """A page's 80 ms microphone frame, or `AudioFormatError`."""
    return unpack_frame(buffer, kind=KIND_MIC, samples=FRAME_SIZE)
