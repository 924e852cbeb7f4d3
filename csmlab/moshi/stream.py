"""Loading Moshi through moshi's own loader, and streaming it one 80 ms step at a time.

`load()` goes through `csmlab.weights.resolve("moshi").checkpoint_info()`, i.e. moshi's
`CheckpointInfo.get_moshi/get_mimi/get_text_tokenizer`: the same lines load the released
`kyutai/moshiko-pytorch-bf16` and the offline twin. `MoshiStream` wraps `moshi.models.LMGen`
(upstream `moshi/models/lm.py`), which keeps the KV caches and the delay bookkeeping.
"""
from __future__ import annotations

import logging
import math
import numbers
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from moshi.models import LMGen
from moshi.models.lm import LMModel
from moshi.utils.compile import no_compile

from csmlab.codec.codes import check_range, integer_codes
from csmlab.errors import CodesError, ComponentError, ConfigError, StreamClosedError, is_number
from csmlab.locks import exclusive
from csmlab.metrics import FRAME_SIZE
from csmlab.batching.slots import without_cuda_graphs
from csmlab.weights import WeightsSource, resolve

log = logging.getLogger(__name__)

END_OF_PADDING_ID = 0  # text token marking the last padding step before a word


@dataclass
class Moshi:
    """A loaded Moshi: the LM, its Mimi, its text tokenizer, and where they came from."""

    lm: LMModel
    mimi: torch.nn.Module
    tokenizer: object  # sentencepiece.SentencePieceProcessor
    source: WeightsSource
    _silence: torch.Tensor | None = field(default=None, repr=False)

    @property
    def num_user_codebooks(self) -> int:
        return self.lm.n_q - self.lm.dep_q

    def silence_codes(self) -> torch.Tensor:
        """Mimi's codes for one 80 ms frame of silence, `[1, K, 1]`: what a dropped user frame becomes."""
        if self._silence is None:
            with exclusive(self.mimi, "Mimi"), torch.no_grad(), _eager(self.lm.device):
                zeros = torch.zeros(1, 1, FRAME_SIZE, device=self.lm.device)
                self._silence = self.mimi.encode(zeros)[:, : self.num_user_codebooks]  # [1, K, 1]
        return self._silence

    def label(self, token: int) -> str:
        """A token for display: `·` for padding, `|` for end-of-padding, else its text piece."""
        if token == self.lm.text_padding_token_id:
            return "·"
        return "|" if token == END_OF_PADDING_ID else self.tokenizer.id_to_piece(int(token))

    def piece(self, token: int) -> str:
        """The text a token stands for, "" for padding (Moshi's monologue is mostly padding)."""
        if token in (self.lm.text_padding_token_id, END_OF_PADDING_ID):
            return ""
        return self.tokenizer.id_to_piece(int(token)).replace("▁", " ")


def load(path=None, device: str = "cpu", dtype: torch.dtype | None = None) -> Moshi:
    """Load Moshi through moshi's own `CheckpointInfo` path, from what `resolve("moshi", path)` finds.

    By default the released weights stay in bf16 (15.4 GB; fp32 would need 31 GB), and the small
    offline model runs in fp32 on CPU, where bf16 matrix-vector products are slower.
    """
    source = resolve("moshi", path)
    info = source.checkpoint_info()
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" and not source.is_real else torch.bfloat16
    return Moshi(info.get_moshi(device=device, dtype=dtype), info.get_mimi(device=device), info.get_text_tokenizer(), source)


# --------------------------------------------------------------------------- streaming
@dataclass(frozen=True)
class Step:
    """What one 80 ms step gives back. During the first `max(delays)` steps Moshi has no complete
    frame yet (its acoustic codebooks lag): then `text_token` and `audio` are None."""

    index: int
    text_token: int | None
    text: str  # the decoded piece, "" for padding or warm-up
    audio: torch.Tensor | None  # [K] Moshi's codes for one frame
    ms: float  # compute time of this step
    user_dropped: bool = False
    lead_text: str = ""  # the text piece sampled in this step: `text` comes back `max(delays)` steps later

    @property
    def warming_up(self) -> bool:
        return self.audio is None


def check_user_codes(codes, num_codebooks: int, card: int) -> torch.Tensor:
    """Validate one frame of user codes (`[K]`, `[K, 1]` or `[1, K, 1]`) and return it as `[1, K, 1]` long.

    The shape is checked, not the element count: `[2, 4]` codes of a 4-codebook codec are two
    frames, not one frame of 8."""
    if hasattr(codes, "is_floating_point") and (codes.is_floating_point() or codes.is_complex()):
        raise CodesError(
            f"user codes must be integer token ids, got dtype {codes.dtype}. Encode the audio with Mimi "
            "(`mimi.encode(...)`) and pass its codes, not the audio itself."
        )
    codes = integer_codes(codes)
    if codes.shape not in ((num_codebooks,), (num_codebooks, 1), (1, num_codebooks, 1)):
        raise CodesError(
            f"expected one frame of {num_codebooks} user codebooks ([{num_codebooks}], [{num_codebooks}, 1] or "
            f"[1, {num_codebooks}, 1]), got shape {tuple(codes.shape)}. Set the codec to "
            f"num_codebooks={num_codebooks} and pass one 80 ms frame per step (codes[:, t] of a [K, n] array)."
        )
    check_range(codes, card)
    return torch.from_numpy(codes.astype(np.int64)).reshape(1, num_codebooks, 1)


SAMPLING = ("use_sampling", "temp", "temp_text", "top_k", "top_k_text")  # LMGen's sampling options
HOOKS = ("on_text_hook", "on_text_logits_hook", "on_audio_hook")  # LMGen's callbacks, passed through


def check_sampling(sampling: dict) -> dict:
    """LMGen's options, checked: names it knows, positive temperatures, top-k counts of at least 1.

    moshi would take `temp=0` as greedy, and `top_k=0` as no cut, silently; here greedy is said
    out loud (`use_sampling=False`) and a top-k is a count of tokens."""
    unknown = sorted(set(sampling) - set(SAMPLING) - set(HOOKS))
    if unknown:
        raise ConfigError(f"MoshiStream takes no option {', '.join(unknown)}; its sampling options are {', '.join(SAMPLING)}")
    for name in ("temp", "temp_text"):
        value = sampling.get(name, 1.0)
        if not is_number(value, numbers.Real) or not 0 < value < math.inf:
            raise ConfigError(f"{name} must be a positive finite number (Moshi uses 0.8 / 0.7), not {value!r}; "
                              "for greedy decoding pass use_sampling=False")
    for name in ("top_k", "top_k_text"):
        value = sampling.get(name, 1)
        if not is_number(value, numbers.Integral) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1 (Moshi uses 250 / 25), not {value!r}")
    if not isinstance(sampling.get("use_sampling", True), bool):
        raise ConfigError(f"use_sampling must be True or False, not {sampling['use_sampling']!r}")
    return sampling


class MoshiStream:
    """Moshi one 80 ms step at a time: user codes in, Moshi's text token and audio codes out.

    A thin wrapper around `moshi.models.LMGen` that validates inputs, decodes text, times each
    step, substitutes silence for a dropped user frame (and logs it), and says explicitly when
    there is no output yet. Seeded: the same seed and inputs give the same tokens.

    Moshi samples a step's text token before its audio: `Step.text` is aligned with `Step.audio`
    (the frame they share), and `Step.lead_text` is the piece sampled in this step, the one that
    `text` will be `delay` (= `max(delays)`) steps later. A voice that needs only the words (CSM in
    `csmlab.pipeline.moshi_csm`) reads `lead_text` and gains those steps.

    Threads: any number of streams may run on one loaded `Moshi`, from any threads, and each gives
    the tokens it gives alone. moshi keeps streaming state on the model's modules; each stream
    keeps its own (LMGen's and the LM's KV caches) and installs it only during its own `step`,
    holding the model's lock (`csmlab.locks`), so steps on one model run one at a time. Sampling
    draws from torch's global RNG, which each step swaps for the stream's own under one
    process-wide lock; other code drawing from that RNG on another thread at the same moment can
    change which tokens a stream samples (never their validity). Between steps the model holds no
    stream's state: a stream dropped without `close()` frees the model, and re-running
    `st = MoshiStream(m)` in a notebook works.
    """

    def __init__(self, model: Moshi, seed: int = 0, **sampling):
        if not is_number(seed, numbers.Integral):  # torch would refuse it at the first step
            raise ConfigError(f"seed must be an int (the same seed gives the same tokens), not {seed!r}")
        self.model = model
        self.seed = seed
        hook = check_sampling(sampling).pop("on_text_hook", None)
        self.gen = LMGen(model.lm, on_text_hook=lambda token: self._sampled(token, hook), **sampling)
        self.delay = self.gen.max_delay  # steps from a text token's sampling to its frame's output
        self._lead: int | None = None
        self._state: tuple[dict, dict] | None = None  # (LMGen's, the LM's) streaming state while open
        self._closed = False
        self.dropped = 0
        self.reset()

    def _sampled(self, token: torch.Tensor, hook) -> None:
        """LMGen's text hook: keep this step's sampled token (`lead_text`), then call the caller's hook."""
        self._lead = int(token[0])
        if hook is not None:
            hook(token)

    def reset(self) -> None:
        """Start a new conversation: fresh caches (nothing of the old survives), step 0, the same seed."""
        self._require_open()
        with exclusive_gen(self.gen):
            self.gen._start_streaming(1, ExitStack())  # also starts the LM's; moshi's states need no exit
            self._state = (without_cuda_graphs(self.gen.get_streaming_state()), self.model.lm.get_streaming_state())
        self.index = 0
        self._rng_state = None  # seeded from `seed` on the first step

    def close(self) -> None:
        """Free the caches; the model never held them between steps, so it is free already."""
        self._state, self._closed = None, True

    def __enter__(self) -> "MoshiStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._closed:
            raise StreamClosedError("this MoshiStream was closed; open a new one with MoshiStream(model)")

    def step(self, user_codes=None) -> Step:
        """Advance 80 ms with one frame of user codes, or `None` for a frame lost on the way."""
        self._require_open()
        dropped = user_codes is None
        if dropped:
            codes = self.model.silence_codes()
        else:
            codes = check_user_codes(user_codes, self.model.num_user_codebooks, self.model.lm.card)
        if self._state is None:
            raise ComponentError("this MoshiStream failed in an earlier step; call reset() to start again")
        if dropped:
            self.dropped += 1
            log.warning("step %d: user frame missing, fed Mimi's silence codes instead", self.index)
        start = time.perf_counter()
        state, self._state = self._state, None  # a step that fails leaves half-updated caches: refuse them
        with exclusive_gen(self.gen), _private_rng(self), _eager(self.model.lm.device):
            self.gen.set_streaming_state(state[0])
            self.model.lm.set_streaming_state(state[1])
            try:
                out = self.gen.step(codes.to(self.model.lm.device))  # [1, 1 + dep_q, 1] or None
                out = out if out is None else out.cpu()  # on a GPU the step ends here: `ms` counts its work
            except Exception as err:
                raise ComponentError(f"Moshi failed in step {self.index} ({type(err).__name__}: {err}); "
                                     "its caches are half-updated: call reset() to start again") from err
        self._state = state
        ms = 1000 * (time.perf_counter() - start)
        self.index += 1
        lead = self.model.piece(self._lead)
        if out is None:
            return Step(self.index - 1, None, "", None, ms, dropped, lead)
        token = int(out[0, 0, 0])
        return Step(self.index - 1, token, self.model.piece(token), out[0, 1:, 0], ms, dropped, lead)


@contextmanager
def exclusive_gen(gen: LMGen):
    """`gen`'s LM to ourselves (its lock), with no stream's state in it on entry, and none left on
    exit: neither the LM's nor `gen`'s own (its delay buffers), whoever installed them."""
    with exclusive(gen.lm_model, "Moshi"):
        try:
            yield
        finally:
            gen._stop_streaming()


_RNG_LOCK = threading.Lock()  # torch's global RNG is one per process


@contextmanager
def _private_rng(stream: "MoshiStream"):
    """Run a block with torch's global RNG (which moshi's sampler draws from) set to the stream's own
    state, so two streams, or other code between steps, never shift each other's samples."""
    device = stream.model.lm.device
    cuda = [device] if device.type == "cuda" else []
    with _RNG_LOCK, torch.random.fork_rng(devices=cuda):
        if stream._rng_state is None:
            torch.manual_seed(stream.seed)
        else:
            torch.set_rng_state(stream._rng_state[0])
            if cuda:
                torch.cuda.set_rng_state(stream._rng_state[1], device)
        yield
        stream._rng_state = (torch.get_rng_state(), torch.cuda.get_rng_state(device) if cuda else None)


def _eager(device: torch.device):
    """moshi wraps a few small functions in `torch.compile`; on CPU the first call then costs ~30 s
    of compilation (and more for each new shape) to speed up elementwise work that matmuls dwarf.
    We run them eagerly on CPU."""
    return no_compile() if device.type == "cpu" else nullcontext()
