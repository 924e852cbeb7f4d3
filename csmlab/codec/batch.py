"""Many Mimi streams in one forward pass: streaming at (almost) the cost of batch.

    batch = CodecBatch(load_codec(8), size=8)   # 8 rows of streaming state on one model
    a, b = batch.join(), batch.join()           # slots 0 and 1, each a fresh stream
    codes = batch.encode({a: frame_a, b: frame_b})   # {slot: [K]}: one 80 ms frame each, one forward
    pcm = batch.decode({a: codes[a]})                # {slot: [1920]}; b sits this step out
    batch.leave(b)                                   # b's row is free; a keeps its state

    shared = SharedCodec(load_codec(8), size=8)  # the same, behind the `Codec` interface:
    with shared.stream() as s:                   # a normal CodecSession (any chunk, any rate) whose
        s.encode(chunk, 44100)                   # frames are stepped together with the other threads'

Why: one stream at a time, every 80 ms frame reads all of Mimi's weights (317 MB in fp32) for a
few columns of arithmetic, so a frame costs ~2x what it costs in batch. B streams stepped together
read the weights once for B frames. moshi's streaming modules carry a batch axis and an exec mask
(`csmlab.batching.slots`): a stream with no audio this step is masked out (its state does not move), rows
above the highest one in use are not computed at all, and a slot handed to a new stream is reset
alone. csmlab's fast kernels (`csmlab.codec.fast`) take the batch as extra matrix columns.

Each stream gets the codes and audio it gets alone (a `codec.stream()` fed the same frames), up to
float summation order: a batched matrix product may round differently, so a code can flip at a
near-tie (measured in tests/test_batch_codec.py and `csmlab bench codec --streams`).
"""
from __future__ import annotations

import numpy as np
import torch

from csmlab.codec import Codec
from csmlab.codec.backends import MoshiBackend, refuse_threads
from csmlab.errors import AudioFormatError, CapacityError, ConfigError
from csmlab.batching.gather import Gather, GatherGroup
from csmlab.metrics import FRAME_SIZE
from csmlab.batching.slots import Slots, clear_rows, row_views


class CodecBatch:
    """`size` streaming sessions of one moshi Mimi, stepped together one 80 ms frame at a time."""

    def __init__(self, codec: Codec, size: int = 8):
        if not isinstance(codec.backend, MoshiBackend):
            raise ConfigError(f"batched streaming runs on the moshi backend, not {codec.name!r}: "
                              "load_codec(..., backend='moshi')")
        self.codec, self.slots = codec, Slots(size, "codec stream")
        self.model, self.device = codec.backend.model, codec.backend.device
        self._rows = codec.backend.open_stream(size)  # `size` rows of state (the fast kernels on the CPU)

    @property
    def state(self) -> dict:
        """Every module's streaming state, `size` rows each (held here, on the model only during a step)."""
        return self._rows._state

    def join(self) -> int:
        """A free slot, holding a new stream from its next step (`CapacityError` when all are taken)."""
        return self.slots.take()

    def leave(self, slot: int) -> None:
        self.slots.give_back(slot)

    def restart(self, slot: int) -> None:
        """Start `slot`'s stream again (a new conversation in the same slot)."""
        self.slots.renew(slot)

    def encode(self, frames: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """One frame of 24 kHz audio per slot (`[1920]` float32) -> that frame's codes (`[K]` int64) per slot.

        Frames come clean (a `CodecSession` in front does validation and resampling); a frame of the
        wrong shape is refused with `AudioFormatError` before any state moves."""
        if not frames:
            return {}
        self.slots.check(frames)
        rows = max(frames) + 1
        x = np.zeros((rows, 1, FRAME_SIZE), np.float32)  # [B, 1, 1920]
        for slot, frame in frames.items():
            if np.shape(frame) != (FRAME_SIZE,):
                raise AudioFormatError(f"slot {slot}: a batch step takes one frame of {FRAME_SIZE} samples at "
                                       f"24 kHz, not shape {np.shape(frame)}; feed longer audio through SharedCodec")
            x[slot, 0] = frame
        codes = self._step(frames, lambda: self.model.encode(torch.from_numpy(x).to(self.device)))  # [B, K, 1]
        codes = codes[:, :, 0].to(torch.int64).cpu().numpy()  # one copy to the host for all rows
        return {slot: codes[slot] for slot in frames}

    def decode(self, codes: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """One frame of codes per slot (`[K]`) -> its 1920 samples at 24 kHz per slot."""
        if not codes:
            return {}
        self.slots.check(codes)
        rows = max(codes) + 1
        x = torch.zeros(rows, self.codec.num_codebooks, 1, dtype=torch.long)  # [B, K, 1]
        for slot, frame in codes.items():
            x[slot, :, 0] = torch.from_numpy(self.codec.check_codes(np.reshape(frame, (-1, 1)))[:, 0])
        pcm = self._step(codes, lambda: self.model.decode(x.to(self.device)))  # [B, 1, 1920]
        pcm = pcm[:, 0].float().cpu().numpy()
        return {slot: pcm[slot].copy() for slot in codes}

    def _step(self, active: dict, forward):
        """Run `forward` on rows `[:max(active) + 1]`, with only `active`'s rows moving their state."""
        rows = max(active) + 1
        mask = torch.zeros(rows, dtype=torch.bool)
        mask[list(active)] = True
        with self._rows._installed():
            clear_rows(self.model, self.slots.pop_fresh(), self.slots.size)
            with row_views(self.model, self.state, rows):
                self.model.set_exec_mask(mask.to(self.device))
                return forward()


class _BatchedBackend:
    """A `Codec` backend whose batch calls go to the model as usual and whose streams share batches.

    Encoding and decoding touch disjoint modules (encoder vs decoder), hence disjoint state, so a
    stream's encoder row lives in one `CodecBatch` and its decoder row in another, each taken at the
    stream's first call of that kind. A duplex session's user stream only encodes and its system
    stream only decodes: N conversations then fill N rows of each batch, none computed for nothing.
    """

    def __init__(self, codec: Codec, size: int, window_ms: float, group: GatherGroup | None):
        inner = codec.backend
        self.name = f"{inner.name}, batched x{size}"
        self.num_codebooks, self.codebook_size = inner.num_codebooks, inner.codebook_size
        self.encode, self.decode = inner.encode, inner.decode
        self.batches = {"encode": CodecBatch(codec, size), "decode": CodecBatch(codec, size)}
        # without a brain's group, the conversations are the encoding streams (one per duplex session)
        group = group or GatherGroup(lambda: self.batches["encode"].slots.in_use)
        stages = {"encode": "entry", "decode": "exit"}  # a duplex step: encode, (the brain), decode
        self.gathers = {kind: Gather(getattr(batch, kind), window_ms, group, stages[kind])
                        for kind, batch in self.batches.items()}

    def open_stream(self, threads: int | None = None) -> "_SlotStream":
        refuse_threads(self.name, threads)  # the shared batches run on their own threads
        return _SlotStream(self)


class _SlotStream:
    """One stream's rows in the shared batches, behind the backend-stream interface `CodecSession` drives."""

    def __init__(self, backend: _BatchedBackend):
        self.backend = backend
        self.slots: dict[str, int] = {}  # "encode"/"decode" -> row, taken at the first call of that kind

    def _submit(self, kind: str, item):
        if kind not in self.slots:
            self.slots[kind] = self.backend.batches[kind].join()
        return self.backend.gathers[kind].submit(self.slots[kind], item)

    def encode(self, x: np.ndarray) -> np.ndarray:
        codes = [self._submit("encode", frame) for frame in x.reshape(-1, FRAME_SIZE)]
        return np.stack(codes, axis=1) if codes else np.zeros((self.backend.num_codebooks, 0), np.int64)  # [K, n]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        pcm = [self._submit("decode", codes[:, i]) for i in range(codes.shape[1])]
        return np.concatenate(pcm) if pcm else np.zeros(0, np.float32)

    def reset(self) -> None:
        for kind, slot in self.slots.items():
            self.backend.batches[kind].restart(slot)

    def close(self) -> None:
        for kind, slot in self.slots.items():
            self.backend.gathers[kind].leave(slot)
            self.backend.batches[kind].leave(slot)
        self.slots = {}


class SharedCodec(Codec):
    """A `Codec` whose streaming sessions, up to `size` at once, are stepped together in one forward.

    Sessions in different threads that each push a frame at about the same time (a server's
    conversations) are gathered (`csmlab.batching.gather`, waiting at most `window_ms`) into one batched step.
    `group`: the `GatherGroup` of a brain that the same conversations share (`csmlab.pipeline.batching`).
    Up to `size` sessions encode and `size` decode at once. When both are full, `stream()` raises
    `CapacityError`; a session that finds its kind full at its first call fails like any backend
    failure (`ComponentError`, caused by the `CapacityError`, nothing lost: see `CodecSession`).
    """

    def __init__(self, codec: Codec, size: int = 8, window_ms: float = 20.0, group: GatherGroup | None = None):
        super().__init__(_BatchedBackend(codec, size, window_ms, group), codec.weights)

    def stream(self, threads: int | None = None):
        """A new session, or `CapacityError` when every encoding and decoding row is taken (`threads` as
        `Codec.stream`: a session asks every codec the same way)."""
        for batch in self.backend.batches.values():
            if batch.slots.in_use < batch.slots.size:
                return super().stream(threads)
        raise CapacityError(f"all {self.backend.batches['encode'].slots.size} streams of this shared codec are in use: "
                            "close a session first, or build SharedCodec with a larger size")

    @property
    def occupancy(self) -> dict[str, float]:
        """Mean streams per forward so far, for encoding and decoding: how well batching works."""
        return {kind: gather.occupancy for kind, gather in self.backend.gathers.items()}


def agreement(codes: np.ndarray, alone: np.ndarray) -> dict[str, float]:
    """How far a batched stream's codes `[K, n]` agree with the same stream's codes alone: the share
    of equal entries in codebook 0 (the semantic one, which Moshi listens to most) and overall."""
    return {"codebook0": float((codes[0] == alone[0]).mean()), "overall": float((codes == alone).mean())}
