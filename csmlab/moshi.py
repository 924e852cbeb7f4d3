"""Moshi, Kyutai's full-duplex dialogue model: the real 7B inspected on `meta`, a small twin that runs.

Moshi (Défossez et al. 2024, "Moshi: a speech-text foundation model for real-time dialogue";
upstream `moshi/models/lm.py`) models 17 token streams at Mimi's 12.5 Hz: one text stream (its
*inner monologue*), 8 audio codebooks for what Moshi says and 8 for what the user says. Every
80 ms, a 7B *temporal* transformer reads one step of all 17 streams and a small *depth*
transformer (the depformer) then samples Moshi's 8 codebooks one after the other. The acoustic
codebooks (1..7) lag one step behind the semantic one (0): that is the 80 ms acoustic delay which,
with the 80 ms Mimi frame, gives Moshi its 160 ms theoretical latency.

This module builds the real model on PyTorch's `meta` device (shapes, no memory) to count and
size it, loads the checkpoint `csmlab.weights.resolve("moshi")` finds (the small offline twin
here) through moshi's own loader, and wraps `moshi.models.LMGen` as a stream that takes the
user's codes one 80 ms frame at a time. Timing lives in `measure_*`; `csmlab bench moshi` and
notebook 02 use them.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from moshi.models import LMGen, loaders
from moshi.models.lm import LMModel
from moshi.models.lm_utils import _delay_sequence
from moshi.utils.compile import no_compile

from csmlab.errors import CodesError, StreamClosedError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE, frame_ms
from csmlab.weights import WeightsSource, resolve

log = logging.getLogger(__name__)

REAL_CONFIG = dict(loaders._lm_kwargs)  # moshiko / moshika 7B, as moshi's loader builds it
END_OF_PADDING_ID = 0  # text token marking the last padding step before a word
SYSTEM, USER = "moshi", "user"

# Which top-level `LMModel` children make up each component of the parameter table.
COMPONENTS = {
    "text embedding": ("text_emb",),
    "audio embeddings": ("emb",),
    "temporal transformer": ("transformer", "out_norm"),
    "depformer": ("depformer_in", "depformer_text_emb", "depformer_emb", "depformer", "depformer_norms"),
    "text head": ("text_linear",),
    "audio heads": ("linears",),
}
BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "int8": 1, "int4": 0.5}


# --------------------------------------------------------------------------- the architecture
def lm_kwargs(config: dict) -> dict:
    """The `LMModel` keyword arguments of a `config.json`-style dict (file names dropped)."""
    return {k: v for k, v in config.items() if not k.endswith("_name") and k != "model_type"}


def meta_model(config: dict = REAL_CONFIG, dtype: torch.dtype = torch.bfloat16) -> LMModel:
    """The model on the `meta` device: every shape of the 7B, no weights, no memory, a second."""
    return LMModel(device="meta", dtype=dtype, **lm_kwargs(config))


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameters per component (`COMPONENTS`), plus `total`; works on `meta` models."""
    children = dict(model.named_children())
    counts = {
        name: sum(p.numel() for child in parts if children.get(child) is not None for p in children[child].parameters())
        for name, parts in COMPONENTS.items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    if counts["total"] != sum(v for k, v in counts.items() if k != "total"):
        raise AssertionError("a component of LMModel is missing from COMPONENTS")
    return counts


def _gated_ffn(dim: int, dim_feedforward: int) -> int:
    """SiLU-gated FFN: `linear_in` dim -> 2h and `linear_out` h -> dim, h = 2/3 dim_ff (moshi/modules/gating.py)."""
    hidden = (21 * dim) // 8 if dim_feedforward == 4 * dim else (2 * dim_feedforward) // 3
    return 3 * dim * hidden


def _layer(dim: int, dim_feedforward: int, copies: int = 1) -> int:
    """One transformer layer: q,k,v + output projections (4 d², no bias), gated FFN, two RMS norms.

    The depformer keeps `copies` (= 8, one per codebook) of the projections and FFN, sharing norms.
    """
    return copies * (4 * dim * dim + _gated_ffn(dim, dim_feedforward)) + 2 * dim


def expected_parameter_counts(config: dict = REAL_CONFIG) -> dict[str, int]:
    """Parameter counts worked out by hand from the config, to check `parameter_counts(meta_model())`."""
    if config["gating"] == "none" or not config["norm"].startswith("rms_norm"):
        raise ValueError("the formula covers Moshi's SiLU-gated, RMS-normed transformers only")
    d, dd, card, text = config["dim"], config["depformer_dim"], config["card"], config["text_card"]
    steps = config["dep_q"] if config["depformer_weights_per_step"] else 1
    depformer_ff = config.get("depformer_dim_feedforward") or int(config["hidden_scale"] * dd)
    counts = {
        "text embedding": (text + 1) * d,  # +1: the start-of-sequence token
        "audio embeddings": config["n_q"] * (card + 1) * d,
        "temporal transformer": config["num_layers"] * _layer(d, int(config["hidden_scale"] * d)) + d,
        "depformer": (config["dep_q"] if config["depformer_multi_linear"] else 1) * d * dd  # depformer_in
        + (text + 1) * dd + (config["dep_q"] - 1) * (card + 1) * dd  # its own text and audio embeddings
        + config["depformer_num_layers"] * _layer(dd, depformer_ff, copies=steps),
        "text head": d * text,
        "audio heads": config["dep_q"] * dd * card,
    }
    return counts | {"total": sum(counts.values())}


def weight_gb(num_params: int) -> dict[str, float]:
    """Weight memory in GB (10^9 bytes) per storage type; int8/int4 ignore the small scale tables."""
    return {kind: num_params * size / 1e9 for kind, size in BYTES_PER_PARAM.items()}


@dataclass(frozen=True)
class Stream:
    """One of the 17 token streams: its name, who it belongs to, its codebook and its delay in steps."""

    name: str
    owner: str  # "text", SYSTEM or USER
    codebook: int | None
    delay: int


def stream_layout(config: dict = REAL_CONFIG) -> list[Stream]:
    """The 1 + n_q streams in the order the model stacks them: text, Moshi's audio, the user's audio."""
    dep_q, delays = config["dep_q"], config["delays"]
    streams = [Stream("text", "text", None, delays[0])]
    for k in range(config["n_q"]):
        owner, cb = (SYSTEM, k) if k < dep_q else (USER, k - dep_q)
        streams.append(Stream(f"{owner} audio {cb}", owner, cb, delays[1 + k]))
    return streams


# --------------------------------------------------------------------------- loading
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
            with torch.no_grad(), _eager(self.lm.device):
                zeros = torch.zeros(1, 1, FRAME_SIZE, device=self.lm.device)
                self._silence = self.mimi.encode(zeros)[:, : self.num_user_codebooks]  # [1, K, 1]
        return self._silence

    def piece(self, token: int) -> str:
        """The text a token stands for, "" for padding (Moshi's monologue is mostly padding)."""
        if token in (self.lm.text_padding_token_id, END_OF_PADDING_ID):
            return ""
        return self.tokenizer.id_to_piece(int(token)).replace("▁", " ")


def load(path=None, device: str = "cpu", dtype: torch.dtype | None = None) -> Moshi:
    """Load Moshi through moshi's own `CheckpointInfo` path, from what `resolve("moshi", path)` finds.

    fp32 on CPU (bf16 matmuls are slower there for the small model), bf16 on GPU as released.
    """
    source = resolve("moshi", path)
    info = source.checkpoint_info()
    dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
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

    @property
    def warming_up(self) -> bool:
        return self.audio is None


def check_user_codes(codes, num_codebooks: int, card: int) -> torch.Tensor:
    """Validate one frame of user codes (`[K]`, `[K, 1]` or `[1, K, 1]`) and return it as `[1, K, 1]` long."""
    codes = torch.as_tensor(codes)
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise CodesError(
            f"user codes must be integer token ids, got dtype {codes.dtype}. Encode the audio with Mimi "
            "(`mimi.encode(...)`) and pass its codes, not the audio itself."
        )
    if codes.numel() != num_codebooks or codes.dim() > 3:
        raise CodesError(
            f"expected one frame of {num_codebooks} user codebooks ([{num_codebooks}], [{num_codebooks}, 1] or "
            f"[1, {num_codebooks}, 1]), got shape {tuple(codes.shape)}. Set the codec to "
            f"num_codebooks={num_codebooks} and pass one 80 ms frame per step."
        )
    if codes.min() < 0 or codes.max() >= card:
        raise CodesError(f"user codes must lie in [0, {card}), got [{int(codes.min())}, {int(codes.max())}].")
    return codes.reshape(1, num_codebooks, 1).long()


class MoshiStream:
    """Moshi one 80 ms step at a time: user codes in, Moshi's text token and audio codes out.

    A thin wrapper around `moshi.models.LMGen` that validates inputs, decodes text, times each
    step, substitutes silence for a dropped user frame (and logs it), and says explicitly when
    there is no output yet. Seeded: the same seed and inputs give the same tokens.
    """

    def __init__(self, model: Moshi, seed: int = 0, **sampling):
        self.model = model
        self.seed = seed
        self.gen = LMGen(model.lm, **sampling)
        self._session = self.gen.streaming(1)  # holds LMGen's and the LM's caches until close()
        self.dropped = 0
        self.reset()

    def reset(self) -> None:
        """Start a new conversation: empty caches, step 0, the same seed."""
        self._require_open()
        self.gen.reset_streaming()
        self.index = 0
        self._rng_state = None  # seeded from `seed` on the first step

    def close(self) -> None:
        """Free the caches and give the model back (its non-streaming `forward` works again)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> "MoshiStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _require_open(self) -> None:
        if self._session is None:
            raise StreamClosedError("this MoshiStream was closed; open a new one with MoshiStream(model)")

    def step(self, user_codes=None) -> Step:
        """Advance 80 ms with one frame of user codes, or `None` for a frame lost on the way."""
        self._require_open()
        dropped = user_codes is None
        if dropped:
            self.dropped += 1
            log.warning("step %d: user frame missing, fed Mimi's silence codes instead", self.index)
            codes = self.model.silence_codes()
        else:
            codes = check_user_codes(user_codes, self.model.num_user_codebooks, self.model.lm.card)
        start = time.perf_counter()
        with _private_rng(self), _eager(self.model.lm.device):
            out = self.gen.step(codes.to(self.model.lm.device))  # [1, 1 + dep_q, 1] or None
        ms = 1000 * (time.perf_counter() - start)
        self.index += 1
        if out is None:
            return Step(self.index - 1, None, "", None, ms, dropped)
        token = int(out[0, 0, 0])
        return Step(self.index - 1, token, self.model.piece(token), out[0, 1:, 0].cpu(), ms, dropped)


@contextmanager
def _private_rng(stream: "MoshiStream"):
    """Run a block with torch's global RNG (which moshi's sampler draws from) set to the stream's own
    state, so two streams, or other code between steps, never shift each other's samples."""
    device = stream.model.lm.device
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
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


# --------------------------------------------------------------------------- a conversation
def speaker_track(recording, speaker: str) -> np.ndarray:
    """One side of a two-party call: the mono recording with everyone else's utterances silenced."""
    keep = np.zeros(len(recording.audio), dtype=bool)
    for turn in recording.transcript:
        if turn.speaker == speaker:
            keep[int(turn.start * recording.sample_rate) : int(turn.end * recording.sample_rate)] = True
    if not keep.any():
        speakers = sorted({t.speaker for t in recording.transcript})
        raise ValueError(f"no utterance by {speaker!r} in this recording; speakers: {speakers}")
    return np.where(keep, recording.audio, 0.0).astype(np.float32)


@torch.no_grad()
def encode_user(model: Moshi, audio_24k: np.ndarray) -> torch.Tensor:
    """The user's Mimi codes `[1, K, T]` for 24 kHz audio, one code column per complete 80 ms frame.

    Encoded in one batch: Mimi is causal, so this equals encoding frame by frame as a live
    microphone would (notebook 01 checks it), and it is far cheaper on a CPU.
    """
    frames = len(audio_24k) // FRAME_SIZE
    x = torch.from_numpy(np.ascontiguousarray(audio_24k[: frames * FRAME_SIZE]))[None, None]  # [1, 1, S]
    with _eager(model.lm.device):
        return model.mimi.encode(x.to(model.lm.device))[:, : model.num_user_codebooks]


@dataclass
class Dialogue:
    """A streamed conversation: every step, the user's codes, Moshi's codes and Moshi's audio."""

    steps: list[Step]
    user_codes: torch.Tensor  # [K, T]
    system_codes: torch.Tensor  # [K, T - max_delay]: the steps that had a complete frame
    system_audio: np.ndarray  # [S] float32 at 24 kHz

    @property
    def text_tokens(self) -> list[int]:
        return [s.text_token for s in self.steps if s.text_token is not None]

    @property
    def step_ms(self) -> list[float]:
        return [s.ms for s in self.steps]


@torch.no_grad()
def converse(model: Moshi, user_audio_24k: np.ndarray, seed: int = 0, drop: tuple[int, ...] = (), **sampling) -> Dialogue:
    """Stream `user_audio_24k` through Moshi one 80 ms frame at a time (frames in `drop` are lost)."""
    user_codes = encode_user(model, user_audio_24k)[0]  # [K, T]
    with MoshiStream(model, seed=seed, **sampling) as stream:
        steps = [stream.step(None if t in drop else user_codes[:, t]) for t in range(user_codes.shape[1])]
    system = torch.stack([s.audio for s in steps if not s.warming_up], dim=1)  # [K, T']
    with _eager(model.lm.device):
        audio = model.mimi.decode(system[None].to(model.lm.device))[0, 0].float().cpu().numpy()
    return Dialogue(steps, user_codes.cpu(), system, audio)


# --------------------------------------------------------------------------- inner monologue
def monologue(transcript, tokenizer, seconds: float, frame_rate: float = SAMPLE_RATE / FRAME_SIZE,
              padding_id: int = 3) -> list[int]:
    """A transcript as Moshi's text stream: one token per 80 ms frame, mostly padding.

    As in Moshi's training data, a word's tokens start at the frame where the word starts, the frame
    before a word holds end-of-padding (0), every other empty frame holds padding (3). The STM gives
    utterance times only, so words are spread evenly over their utterance (an approximation).
    """
    stream = [padding_id] * int(seconds * frame_rate)
    free = 0  # the first frame not yet holding a word token
    for turn in transcript:
        words = turn.text.split()
        for i, word in enumerate(words):
            start = max(free, int((turn.start + i * (turn.end - turn.start) / len(words)) * frame_rate))
            tokens = tokenizer.encode(word)
            if start + len(tokens) > len(stream):
                return stream
            if start > 0 and stream[start - 1] == padding_id:
                stream[start - 1] = END_OF_PADDING_ID
            stream[start : start + len(tokens)] = tokens
            free = start + len(tokens)
    return stream


# --------------------------------------------------------------------------- the depth transformer
@dataclass(frozen=True)
class DepthStep:
    """One depformer step inside one 80 ms step: which codebook, fed what, chose what, how sure."""

    codebook: int
    input_token: int  # the text token for codebook 0, then the previous codebook's code
    code: int
    probability: float


@torch.no_grad()
def depth_walkthrough(lm: LMModel, codes: torch.Tensor | None = None) -> tuple[int, list[DepthStep]]:
    """One greedy step of Moshi, written out: the temporal transformer reads the history once,
    the text token is chosen, then the depformer picks the 8 codebooks one after the other.

    `codes` `[1, 17, T]` is the (undelayed) history; None means the very first step of a
    conversation. Equals `LMGen(lm, use_sampling=False)` (the tests check it).
    """
    initial = lm._get_initial_token()  # [1, 17, 1]: start-of-sequence tokens
    sequence = initial
    if codes is not None:  # delay the streams exactly as training and LMGen do
        sequence = torch.cat([initial, _delay_sequence(lm.delays, codes, initial)], dim=2)
    with _eager(lm.device):
        transformer_out, text_logits = lm.forward_text(sequence)  # [1, T+1, dim], [1, 1, T+1, text_card]
        transformer_out = transformer_out[:, -1:]  # [1, 1, dim]: the state this step decides from
        token = int(text_logits[0, 0, -1].argmax())
        steps, previous = [], token
        with lm.depformer.streaming(1):  # the depformer's own cache lives for one step only
            for k in range(lm.dep_q):
                logits = lm.forward_depformer(k, torch.tensor([[[previous]]], device=lm.device), transformer_out)
                probs = logits[0, 0, 0].float().softmax(-1)  # [card]
                code = int(probs.argmax())
                steps.append(DepthStep(k, previous, code, float(probs[code])))
                previous = code
    return token, steps


# --------------------------------------------------------------------------- compute at real size
def real_size_lm(num_layers: int, dtype: torch.dtype = torch.float32, device: str = "cpu") -> LMModel:
    """The real 7B architecture truncated to `num_layers` temporal layers, with random weights.

    Everything else is full size: the 32k text embedding and head, the 16 audio embeddings, and the
    whole depformer. Weights are drawn directly on the target device (no fp32 detour), so building
    costs memory only for what is measured.
    """
    lm = LMModel(device="meta", dtype=dtype, **(REAL_CONFIG | {"num_layers": num_layers}))
    lm = lm.to_empty(device=device)
    with torch.no_grad():
        for p in lm.parameters():
            p.fill_(1.0) if p.dim() == 1 else p.normal_(0.0, 0.02)  # norm gains 1, other weights small
    return lm.eval()


@torch.no_grad()
def measure_step_ms(lm: LMModel, steps: int = 8, warmup: int = 2, seed: int = 0) -> list[float]:
    """Wall-clock milliseconds of `steps` full `LMGen.step` calls (temporal + depformer + sampling)."""
    gen = LMGen(lm)
    user = torch.randint(0, lm.card, (1, lm.n_q - lm.dep_q, 1), generator=torch.Generator().manual_seed(seed))
    times = []
    with gen.streaming(1), _eager(lm.device):
        for i in range(warmup + steps):
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            gen.step(user.to(lm.device))
            if lm.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(1000 * (time.perf_counter() - start))
    return times


def extrapolate(ms_by_layers: dict[int, float], num_layers: int = REAL_CONFIG["num_layers"]) -> dict[str, float]:
    """Fit step time = fixed + layers x per_layer on two or more depths, and predict the full model.

    `fixed` is everything that does not grow with depth: embeddings, the depformer's 8 sequential
    codebook steps, the text and audio heads, sampling. The real-time factor is the full step over
    the 80 ms of audio it produces: above 1, the model falls behind the conversation.
    """
    if len(ms_by_layers) < 2:
        raise ValueError("measure at least two depths (e.g. 1 and 3 layers) to separate per-layer from fixed cost")
    layers = np.array(sorted(ms_by_layers), dtype=float)
    per_layer, fixed = np.polyfit(layers, [ms_by_layers[n] for n in sorted(ms_by_layers)], 1)
    full = fixed + num_layers * per_layer
    return {"per_layer_ms": float(per_layer), "fixed_ms": float(fixed), "layers": num_layers,
            "full_step_ms": float(full), "rtf": float(full / frame_ms())}


def latency_budget_ms(step_ms: float, config: dict = REAL_CONFIG) -> dict[str, float]:
    """Moshi's latency: one Mimi frame, plus the acoustic delay in frames, plus the compute of a step."""
    frame = frame_ms()
    budget = {"mimi frame": frame, "acoustic delay": max(config["delays"]) * frame, "compute per step": step_ms}
    return budget | {"total": sum(budget.values())}
