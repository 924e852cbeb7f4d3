"""Fake collaborators for fast unit tests (and their mutation runs): a codec backend that does
arithmetic instead of a neural network, so that a test of the streaming bookkeeping around it runs
in milliseconds and can predict every code.

`FakeBackend` encodes each 1920-sample frame to K codes: codebook 0 is the frame's mean quantized to
16 levels, codebook k > 0 is the stream's frame counter (so that a lost, repeated or reset stream
shows in the codes). It decodes codebook 0 back to a constant frame. `fail_next` makes the next
streaming call raise, as a broken codec would.
"""
import numpy as np

from csmlab.codec import Codec
from csmlab.metrics import FRAME_SIZE


class FakeWeights:
    kind = "fake"


def level(frame: np.ndarray) -> int:
    """Codebook 0 of a frame: its mean in [-1, 1] on 16 levels."""
    return int(np.clip(np.round(float(np.mean(frame)) * 8) + 8, 0, 15))


class FakeStream:
    def __init__(self, backend, threads):
        self.backend, self.threads = backend, threads
        self.frames = 0  # frames encoded since the last reset
        self.closed = False
        self.resets = 0
        self.fail_next: BaseException | None = None
        self.encoded: list[int] = []  # length of each encode() call, in samples

    def _maybe_fail(self):
        if self.fail_next is not None:
            err, self.fail_next = self.fail_next, None
            raise err

    def encode(self, audio: np.ndarray) -> np.ndarray:
        assert audio.dtype == np.float32 and audio.ndim == 1 and len(audio) % FRAME_SIZE == 0, audio.shape
        self._maybe_fail()
        self.encoded.append(len(audio))
        codes = []
        for frame in audio.reshape(-1, FRAME_SIZE):
            codes.append([level(frame)] + [self.frames % 16] * (self.backend.num_codebooks - 1))
            self.frames += 1
        return np.asarray(codes, dtype=np.int64).T  # [K, n]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        assert codes.dtype == np.int64 and codes.shape[0] == self.backend.num_codebooks
        self._maybe_fail()
        return np.repeat((codes[0] - 8) / 8, FRAME_SIZE).astype(np.float32)

    def reset(self):
        self.frames = 0
        self.resets += 1

    def close(self):
        self.closed = True


class FakeBackend:
    name = "fake"
    codebook_size = 16

    def __init__(self, num_codebooks: int = 2):
        self.num_codebooks = num_codebooks
        self.streams: list[FakeStream] = []

    def open_stream(self, threads=None):
        stream = FakeStream(self, threads)
        self.streams.append(stream)
        return stream

    def encode(self, padded: np.ndarray) -> np.ndarray:
        return FakeStream(self, None).encode(padded)


def fake_codec(num_codebooks: int = 2) -> Codec:
    return Codec(FakeBackend(num_codebooks), FakeWeights())
