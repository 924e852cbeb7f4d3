"""Faults on purpose: a lossy network, a source that drops out, malformed chunks, a brain that breaks.

Each function takes the packets of a clean source (`packets(audio, rate)`) and returns the packets a
bad day would deliver, seeded, so that a test or a notebook can show each failure and its counters.
"""
from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from csmlab.pipeline.brain import Brain, Heard, Said
from csmlab.pipeline.session import Packet


def lossy(source: list[Packet], drop: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0,
          late: float = 0.0, late_by: float = 0.5, seed: int = 0) -> list[Packet]:
    """A network's damage: drop packets, send some twice, swap neighbours, hold some back `late_by` s.

    Returned in arrival order (`at`), as the session would receive them.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, packet in enumerate(source):
        if rng.random() < drop:
            continue
        at = packet.at
        if rng.random() < reorder and i + 1 < len(source):
            at = source[i + 1].at + 1e-4  # arrives just after the next one
        if rng.random() < late:
            at += late_by
        out.append(replace(packet, at=at))
        if rng.random() < duplicate:
            out.append(replace(packet, at=at + 0.02))
    return sorted(out, key=lambda p: p.at)


def disconnected(source: list[Packet], at_s: float, for_s: float, new_rate: int | None = None) -> list[Packet]:
    """The source drops out at `at_s` for `for_s` seconds, then comes back numbering from 0 again
    (optionally resampled to `new_rate`, as a reconnecting browser might)."""
    from csmlab.audio import resample

    before = [p for p in source if p.at <= at_s]
    after = [p for p in source if p.at > at_s + for_s]
    back = []
    for n, p in enumerate(after):
        chunk, rate = p.chunk, p.sample_rate
        if new_rate is not None and new_rate != rate:
            chunk, rate = resample(chunk, rate, new_rate), new_rate
        back.append(replace(p, chunk=chunk, sample_rate=rate, seq=n))
    return before + [Packet(at_s, kind="disconnect")] + back


def malformed(source: list[Packet], every: int = 10) -> list[Packet]:
    """Insert a chunk full of NaN after every `every`-th packet: `push` must refuse it and go on."""
    out = []
    for i, packet in enumerate(source):
        out.append(packet)
        if (i + 1) % every == 0:
            out.append(replace(packet, chunk=np.full(len(packet.chunk), np.nan, np.float32), seq=None))
    return out


class FaultyBrain(Brain):
    """Wraps a brain and breaks it on purpose: raise at the steps in `raise_at`, sleep `stall_s`
    at the steps in `stall_at`. Everything else passes through unchanged."""

    def __init__(self, inner: Brain, raise_at=(), stall_at=(), stall_s: float = 0.5):
        super().__init__()
        self.inner, self.raise_at, self.stall_at, self.stall_s = inner, set(raise_at), set(stall_at), stall_s
        self.name = f"faulty {inner.name}"
        self.hears_codes, self.speaks_codes = inner.hears_codes, inner.speaks_codes

    def attach(self, log) -> None:
        super().attach(log)
        self.inner.attach(log)

    def codec(self):
        return self.inner.codec()

    def step(self, heard: Heard) -> Said:
        if heard.index in self.raise_at:
            raise RuntimeError(f"injected failure at step {heard.index}")
        if heard.index in self.stall_at:
            time.sleep(self.stall_s)
        return self.inner.step(heard)

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        self.inner.close()

    def algorithmic_ms(self) -> dict[str, float]:
        return self.inner.algorithmic_ms()

    def latency_ms(self) -> dict:
        return self.inner.latency_ms()

    @property
    def weights(self) -> str:
        return self.inner.weights
