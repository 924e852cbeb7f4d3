"""`MoshiBrain`: Moshi as the pipeline's brain, true full duplex: it hears the user while it speaks.

Every step the user's Mimi codes go into `csmlab.moshi.MoshiStream` (one `LMGen` step) and Moshi's
own 8 codebooks come out for the system codec to decode, with its inner-monologue text. Moshi's
algorithmic latency is the 80 ms frame plus its acoustic delay (its acoustic codebooks lag the
semantic one by `max(delays)` steps: 80 ms for the released model), 160 ms in all.

Several sessions may share one loaded model (`MoshiBrain(model=shared)`): each brain has its own
stream (caches, step counter, RNG state); steps on one model take turns under its lock.

Threads: on the CPU a session measures Moshi's whole step (encode, LM, decode) on one thread and on
all cores when it starts, and runs the faster (`csmlab.pipeline.threads`, cached per host).

Recovery: a step that raises leaves Moshi's caches half-updated (`MoshiStream` then refuses them),
so the session sends silence and, on the next step, the brain starts a fresh conversation
(`reset()`, logged as `moshi_reset`) rather than failing for ever.
"""
from __future__ import annotations

from collections import deque

from csmlab.pipeline.brain import FRAME_MS, Brain, Heard, Said


class MoshiSteps(Brain):
    """What every Moshi brain does with a step's output, whoever computes it (`_advance`): the
    recovery above, silence while the acoustic codebooks warm up, then Moshi's codes and text."""

    name = "moshi"
    hears_codes = speaks_codes = True
    model = None  # the loaded Moshi (`csmlab.moshi.load()`)

    def __init__(self):
        super().__init__()
        self._failed = False

    def _advance(self, codes):
        """One Moshi step on the user's codes `[8]` (None: Moshi hears silence) -> its `StepOutput`."""
        raise NotImplementedError

    def step(self, heard: Heard) -> Said:
        if self._failed:
            self.reset()
            self.log("moshi_reset", "the last step failed: a fresh conversation starts")
        self._failed = True
        out = self._advance(heard.codes)
        self._failed = False
        if out.audio is None:  # warming up: the acoustic codebooks are not complete yet
            return Said(text=out.text)
        return Said(codes=out.audio.numpy(), text=out.text)

    def algorithmic_ms(self) -> dict[str, float]:
        return {"acoustic delay": max(self.model.lm.delays) * FRAME_MS}

    @property
    def weights(self) -> str:
        return self.model.source.kind


class MoshiBrain(MoshiSteps):
    """Moshi on the real or the small offline weights (`csmlab.moshi.load()`), seeded."""

    def __init__(self, model=None, seed: int = 0, history: int = 10_000, **sampling):
        from csmlab import moshi
        from csmlab.weights import default_device

        super().__init__()
        self.model = model if model is not None else moshi.load(device=default_device())
        self.stream = moshi.MoshiStream(self.model, seed=seed, **sampling)
        self.tokens: deque[int | None] = deque(maxlen=history)  # text token per step (None while warming up)

    def codec(self):
        return moshi_codec(self.model)

    def measures_threads(self, codec) -> bool:
        """On the CPU, with a plain moshi-backend Mimi (whose streams take a thread count): yes."""
        return (self.model.lm.device.type == "cpu" and codec.name == "moshi" and codec.precision == "fp32"
                and codec.backend.device.type == "cpu")

    def tuned_models(self, codec) -> list:
        return [codec.backend.model, self.model.lm]

    def threads_trial(self, codec, threads: int):
        """One step of noise through fresh user and system codec sessions and a fresh `MoshiStream`, all
        on `threads` threads, laid out as a session runs them: the whole step on a worker thread of its
        own (one thread, one OpenMP team: with the codecs on the caller and the LM on a worker, two
        teams took turns on two cores: 94.0 and 97.5 vs 78.9 and 90.1 ms per step at load 3). The decode takes a
        fixed frame of codes (Moshi's own are silent while its acoustic codebooks warm up). Warmed up
        by one untimed step."""
        import weakref
        from concurrent.futures import ThreadPoolExecutor

        import numpy as np
        import torch

        from csmlab import moshi
        from csmlab.codec.mimi_stream import stream_threads
        from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE

        enc, dec = codec.stream(threads=threads), codec.stream(threads=threads)
        lm = moshi.MoshiStream(self.model, seed=0)
        noise = np.random.default_rng(0).normal(0, 0.1, FRAME_SIZE).astype(np.float32)
        spoken = np.zeros((codec.num_codebooks, 1), np.int64)

        worker = ThreadPoolExecutor(1, thread_name_prefix="moshi-trial")

        def whole():
            codes = enc.encode(noise, SAMPLE_RATE)
            with stream_threads(threads):
                lm.step(torch.from_numpy(codes[:, 0]))
            dec.decode(spoken)

        def step():
            worker.submit(whole).result()

        step()
        weakref.finalize(step, worker.shutdown, wait=False)  # its thread ends with the trial
        return step

    def _advance(self, codes):
        out = self.stream.step(codes)
        self.tokens.append(out.text_token)
        return out

    def reset(self) -> None:
        self.stream.reset()
        self.tokens.clear()

    def close(self) -> None:
        self.stream.close()


def moshi_codec(model):
    """Moshi's own Mimi (the checkpoint beside the LM), as a `csmlab.codec` with Moshi's codebook count,
    on the device of Moshi's LM (a session's Mimi left on the CPU beside a Moshi on the GPU would
    run every encode and decode there, silently). Random weights built on the device have no
    checkpoint: their codec is the model's own Mimi."""
    from csmlab.codec import Codec, load_codec
    from csmlab.codec.backends import MoshiBackend
    from csmlab.weights import MIMI_FILE, WeightsSource

    source = model.source
    if source.kind == "random":
        mimi = WeightsSource("mimi", "random", source.path, f"Moshi's own Mimi ({source.why})")
        return Codec(MoshiBackend.wrap(model.mimi, model.num_user_codebooks), mimi)
    mimi = WeightsSource("mimi", source.kind, source.path / MIMI_FILE, f"Moshi's own Mimi ({source.why})")
    return load_codec(model.num_user_codebooks, backend="moshi", weights=mimi,
                      device=model.lm.device)  # cached: loading twice is free
