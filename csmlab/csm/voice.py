"""CSM as a streaming voice: text (+ conversation context) in, Mimi frames and 24 kHz audio out.

Sesame's CSM (Conversational Speech Model, "Crossing the uncanny valley of conversational voice",
2025; transformers' `CsmForConditionalGeneration`) speaks one 80 ms Mimi frame of **32** codebooks
per step:

1. the **backbone** (a Llama-3.2-1B-style transformer) reads the prompt: each context turn is
   `<|begin_of_text|>[speaker]text<|end_of_text|>` followed by that turn's audio as Mimi frames
   (one position per frame: the embeddings of its 32 codes, summed) and an end-of-audio frame; the
   turn to speak comes last as text. Its last hidden state predicts codebook 0 of the next frame;
2. the **depth decoder** (a small transformer over the 32 codebooks of one frame) starts from that
   hidden state and predicts codebooks 1..31, one after the other;
3. the frame goes back into the backbone (KV cache: one new position) and the loop repeats until a
   frame of all-zero codes (end of audio) or the length limit.

Sesame's reference decodes the audio only when the whole utterance is done. `CsmVoice.stream()`
hands every frame to a *streaming* Mimi decoder as soon as it exists, so the first 80 ms of audio
come out after one frame. Two ways to get the frames, measured against each other in
`csmlab bench csm`: our own loop (`method="loop"`, the steps above written out) and transformers'
`generate()` in a thread with a streamer (`method="streamer"`). With greedy decoding both are
token-exactly `model.generate()`'s codes, and the tests check it.

A context turn may come without words (`Segment(speaker, "", audio)`: the user's audio when no
transcript gives it). transformers' chat template (like Sesame's reference `_tokenize_segment`)
writes every turn as `<|begin_of_text|>[speaker]text<|end_of_text|>` then its audio frames, so such
a turn is the speaker tag with no words, then the frames: CSM hears the voice, pace and prosody,
and no text aligned with them. CSM was trained on transcribed turns; an audio-only turn is outside
that, and what it does with one is for the real weights to show.

A conversation spoken phrase by phrase repeats most of its prompt. `frames()` (our loop) keeps what
repeats (`csmlab.csm.cache`): each context turn's Mimi codes, encoded once per `Segment` object
(`context_codes`: bit-exact, the same encode of the same samples), and the backbone's KV cache of the
last prompt, reused up to the first position where the next prompt differs (`prompt_prefix`: equal to
a whole prefill to float rounding). `generate()` and `method="streamer"` are transformers' own path
and encode everything every call: the tests compare the two.

Context audio is encoded by the CSM's own Mimi (transformers' `MimiModel`). transformers 4.57.6's
batch Mimi forgets its 250-step (10 s) attention window, and CSM contexts are often longer than 10 s:
`load_csm` applies `csmlab.weights.convert.fix_sliding_window()` so the codes match moshi's Mimi.
"""
from __future__ import annotations

import math
import numbers
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from csmlab.audio import to_mimi
from csmlab.codec.codes import integer_codes
from csmlab.csm.cache import PromptPrefix, SegmentCodes
from csmlab.errors import AudioFormatError, CodesError, ComponentError, ConfigError, PromptTooLongError, TextError, is_number
from csmlab.metrics import SAMPLE_RATE, frame_ms
from csmlab.weights import WeightsSource, resolve

FRAME_MS = round(frame_ms())  # 80: one Mimi frame, one CSM step
DEFAULT_MAX_AUDIO_MS = 10_000  # Sesame's generator default
MOSHI_CODEBOOKS = 8  # what Moshi's Mimi streams carry
MAX_SPEAKERS = 10  # speaker ids 0..9


@dataclass(frozen=True)
class Segment:
    """One turn of a conversation: who spoke (speaker id), what they said, and how it sounded."""

    speaker: int
    text: str
    audio: np.ndarray  # [T] float mono
    sample_rate: int = SAMPLE_RATE


@dataclass(frozen=True)
class Sampling:
    """How each code is picked. `greedy=True` (argmax) makes generation deterministic and comparable."""

    greedy: bool = False
    temperature: float = 0.9  # sesame/csm-1b's generation_config.json
    top_k: int = 50

    def __post_init__(self):
        if not isinstance(self.greedy, bool):
            raise ConfigError(f"greedy must be True or False, not {self.greedy!r}")
        t = self.temperature
        if not is_number(t, numbers.Real) or not 0 < t < math.inf:
            raise ConfigError(f"temperature must be a positive finite number (CSM uses 0.9), not {t!r}; "
                              "for deterministic output use Sampling(greedy=True)")
        if not is_number(self.top_k, numbers.Integral) or self.top_k < 1:
            raise ConfigError(f"top_k must be an int >= 1 (CSM uses 50), not {self.top_k!r}")

    def generate_kwargs(self) -> dict:
        """The same choice for transformers' `generate()`, backbone and depth decoder alike.

        The `depth_decoder_*` values are always passed: `generate()` stores them in the depth decoder's
        own config, so a greedy call would otherwise leave later calls greedy too.
        """
        if self.greedy:  # neutral values, else transformers warns that they are unused
            kwargs = dict(do_sample=False, temperature=1.0, top_k=50)
        else:
            kwargs = dict(do_sample=True, temperature=self.temperature, top_k=self.top_k)
        return {**kwargs, **{f"depth_decoder_{k}": v for k, v in kwargs.items()}}

    def pick(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, V] logits -> [B] codes, with the same operations (so the same RNG draws) as `generate()`."""
        if self.greedy:
            return logits.argmax(-1)
        logits = logits / self.temperature
        kth = torch.topk(logits, min(self.top_k, logits.shape[-1]))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, -float("inf"))
        return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1).squeeze(1)


def _check_sampling(sampling) -> None:
    if not isinstance(sampling, Sampling):
        raise ConfigError(f"sampling must be a csm.Sampling(greedy=..., temperature=..., top_k=...), not {sampling!r}")


def _check_speaker(speaker, what: str) -> None:
    """Speaker ids are small ints: they are written into the prompt as text, `[0]`, `[1]`."""
    if not is_number(speaker, numbers.Integral) or not 0 <= speaker < MAX_SPEAKERS:
        raise ConfigError(f"speaker ids are ints 0..{MAX_SPEAKERS - 1} (Sesame's examples use 0 and 1); "
                          f"{what} has {speaker!r}")


def _check_context(context) -> list[Segment]:
    """The conversation so far as a list of Segments (None: none), or a ConfigError saying what to pass."""
    if context is None:
        return []
    if isinstance(context, Segment):
        raise ConfigError("context is a list of Segments: wrap a single one, context=[segment]")
    if isinstance(context, (str, bytes, dict)) or not hasattr(context, "__iter__"):
        raise ConfigError(f"context must be a list of csm.Segment(speaker, text, audio), not {type(context).__name__}")
    context = list(context)
    for i, seg in enumerate(context):
        if not isinstance(seg, Segment):
            raise ConfigError(f"context turn {i} is a {type(seg).__name__}; make it csm.Segment(speaker, text, audio)")
    return context


def _check_audio(audio, sample_rate: int, what: str) -> np.ndarray:
    """Context audio as float32 mono at 24 kHz by csmlab.audio's rules, or an AudioFormatError naming the turn."""
    try:
        return to_mimi(audio, sample_rate)
    except AudioFormatError as err:
        raise AudioFormatError(f"{what}: {err}") from err


def _check_codes(codes, num_codebooks: int = 32, cardinality: int = 2048, layout: str | None = None) -> torch.Tensor:
    """`[T, K]` integer codes (K = `num_codebooks`, or Moshi's 8) inside Mimi's codebooks, or a CodesError.

    The codec's codes are `[K, n]` and CSM's `[T, K]`: a transposed array is refused by its shape,
    not decoded as noise. When both axes could be codebooks (`[32, 8]` is 8 frames of the codec's 32
    codebooks, or 32 frames of Moshi's 8), the shape cannot tell: the caller names the layout."""
    if layout not in (None, "TK", "KT"):
        raise ConfigError(f"layout must be 'TK' (CSM's [frames, codebooks]) or 'KT' (csmlab.codec's [codebooks, frames]), not {layout!r}")
    codes = integer_codes(codes)
    if layout == "KT" and codes.ndim == 2:
        codes = codes.T
    widths = (num_codebooks, MOSHI_CODEBOOKS)
    if layout is None and codes.ndim == 2 and codes.shape[0] in widths and codes.shape[1] in widths:
        raise CodesError(
            f"codes of shape {tuple(codes.shape)} could be CSM's [T, K] or csmlab.codec's [K, n]: say which, "
            "decode(codes, layout='TK') or decode(codes, layout='KT')"
        )
    if codes.ndim != 2 or codes.shape[1] not in widths:
        hint = "; csmlab.codec's encode() gives [K, n]: pass codes.T" if codes.ndim == 2 and codes.shape[0] in widths else ""
        raise CodesError(
            f"CSM's codes are [T, K] (frames, codebooks) with K = {num_codebooks}, or {MOSHI_CODEBOOKS} as Moshi "
            f"hears them; got shape {tuple(codes.shape)}{hint}"
        )
    if codes.size and not 0 <= codes.min() <= codes.max() < cardinality:
        raise CodesError(
            f"codes must lie in 0..{cardinality - 1}, got {codes.min()}..{codes.max()}: CSM's audio "
            f"vocabulary adds 3 special codes ({cardinality}..{cardinality + 2}) that Mimi cannot decode"
        )
    return torch.from_numpy(codes.astype(np.int64))


class _Cancelled(Exception):
    """Raised inside `generate()` by the streamer, to stop a generation nobody reads any more."""


class _FrameQueue:
    """A `generate()` streamer: every frame `put()` by the generation thread lands in a queue."""

    def __init__(self):
        self.frames: queue.Queue = queue.Queue()
        self._prompt_seen = False
        self.cancelled = False

    def put(self, value: torch.Tensor) -> None:
        if self.cancelled:
            raise _Cancelled
        if not self._prompt_seen:  # generate() first puts the prompt's token ids
            self._prompt_seen = True
            return
        self.frames.put(value[0])  # [32] codes of the new frame

    def end(self) -> None:
        self.frames.put(None)


class CsmVoice:
    """CSM + its processor + a streaming Mimi: `generate()` a whole utterance or `stream()` it."""

    def __init__(self, model, processor, source: WeightsSource, mimi_source: WeightsSource):
        self.model, self.processor = model, processor
        self.source, self.mimi_source = source, mimi_source
        self.config = model.config
        self._codec_checked = False
        self.context_codes = SegmentCodes()  # each context turn's Mimi codes, encoded once (csmlab.csm.cache)
        self.prompt_prefix = PromptPrefix()  # the last prompt's KV cache, for a prompt that starts alike

    # ---- the prompt ---------------------------------------------------------------------------
    def prompt(self, text: str, speaker: int = 0, context: Sequence[Segment] = ()):
        """The model inputs for `text` spoken by `speaker` after `context`: ids, mask, context audio."""
        self._check_text(text, "the text to speak")
        turns, audios = [], []
        context = _check_context(context)
        for i, seg in enumerate([*context, Segment(speaker, text, np.zeros(0))]):
            _check_speaker(seg.speaker, f"turn {i}")
            content = [{"type": "text", "text": seg.text}]
            if i < len(context):
                if seg.text != "" or not isinstance(seg.text, str):  # "": an audio-only turn (no transcript)
                    self._check_text(seg.text, f"context turn {i}'s text")
                audios.append(_check_audio(seg.audio, seg.sample_rate, f"context turn {i}"))
                content.append({"type": "audio"})
            turns.append({"role": str(int(seg.speaker)), "content": content})
        rendered = self.processor.apply_chat_template(turns, tokenize=False)
        inputs = self.processor(text=rendered, audio=audios or None, return_tensors="pt")
        return inputs.to(self.model.device, dtype=self.model.dtype)  # casts only the float audio

    def _check_text(self, text, what: str) -> None:
        """Words to speak, or a TextError. Text is never allowed to become control tokens: a
        `<|begin_of_text|>...<|end_of_text|>` inside it would forge a turn, an `<|AUDIO|>` a frame."""
        if not isinstance(text, str) or not text.strip():
            raise TextError(f"CSM needs a non-empty string for {what}, not {text!r}")
        tokens = self.processor.tokenizer.added_tokens_encoder  # the control tokens, by their text
        found = sorted({tok for tok in tokens if tok in text})
        if found:
            raise TextError(
                f"{what} contains CSM's control token(s) {', '.join(found)}, which would be read as prompt "
                "structure, not words. Remove them (e.g. text.replace('<|', '< |')) before speaking it."
            )

    def describe(self, inputs) -> str:
        """The prompt as text, each run of audio frames shown as `<|AUDIO|>x N (N * 80 ms)`."""
        tokens = self.processor.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0])
        audio, out, run = self.processor.audio_token, [], 0
        for tok in [*tokens, ""]:
            if tok == audio:
                run += 1
                continue
            if run:
                out.append(f"{audio}x{run} ({run * FRAME_MS} ms)")
                run = 0
            out.append(tok)
        return self.processor.tokenizer.convert_tokens_to_string(out)

    def frames_budget(self, inputs, max_audio_ms: int) -> int:
        """Frames to generate; PromptTooLongError when prompt + frames overflow the context."""
        ok = is_number(max_audio_ms, numbers.Real)
        if not ok or not FRAME_MS <= max_audio_ms < math.inf:
            raise ConfigError(f"max_audio_ms must be a finite number of milliseconds >= {FRAME_MS} (one frame), "
                              f"not {max_audio_ms!r}; CSM's default is {DEFAULT_MAX_AUDIO_MS}")
        frames = int(max_audio_ms) // FRAME_MS
        length, limit = inputs["input_ids"].shape[1], self.config.max_position_embeddings
        if length + frames > limit:
            excess = length + frames - limit
            raise PromptTooLongError(
                f"the prompt takes {length} positions and max_audio_ms={max_audio_ms} asks for {frames} frames: "
                f"{length + frames} > CSM's context of {limit}. Drop {excess} positions: remove the oldest "
                f"context turns (each 80 ms of context audio is one position) or lower max_audio_ms."
            )
        return frames

    # ---- whole utterance ----------------------------------------------------------------------
    @torch.inference_mode()
    def generate_codes(self, text: str, speaker: int = 0, context: Sequence[Segment] = (),
                       max_audio_ms: int = DEFAULT_MAX_AUDIO_MS, sampling: Sampling = Sampling(),
                       streamer=None) -> torch.Tensor:
        """transformers' `generate()`: all frames `[T, 32]`, end-of-audio frame removed."""
        _check_sampling(sampling)
        inputs = self.prompt(text, speaker, context)
        return self._until_eos(self._generate(inputs, self.frames_budget(inputs, max_audio_ms), sampling, streamer))

    @torch.inference_mode()
    def _generate(self, inputs, frames: int, sampling: Sampling, streamer=None) -> torch.Tensor:
        """`model.generate()` on prepared inputs: `[T, 32]` codes, end-of-audio frame included."""
        return self.model.generate(**inputs, max_new_tokens=frames, streamer=streamer, **sampling.generate_kwargs())[0]

    def generate(self, text: str, speaker: int = 0, context: Sequence[Segment] = (),
                 max_audio_ms: int = DEFAULT_MAX_AUDIO_MS, sampling: Sampling = Sampling()) -> np.ndarray:
        """The whole utterance as 24 kHz audio, decoded once at the end (Sesame's reference way)."""
        return self.decode(self.generate_codes(text, speaker, context, max_audio_ms, sampling), layout="TK")

    def _ends_audio(self, frames: torch.Tensor) -> torch.Tensor:
        """Per `[..., 32]` frame: is it CSM's end-of-audio frame (codebooks 0..30 all `codebook_eos_token_id`)?"""
        return (frames[..., :-1] == self.config.codebook_eos_token_id).all(-1)

    def _until_eos(self, codes: torch.Tensor) -> torch.Tensor:
        """Cut `[T, 32]` codes at the first end-of-audio frame."""
        eos = self._ends_audio(codes).nonzero()
        return codes[: int(eos[0])] if len(eos) else codes

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor, layout: str | None = None) -> np.ndarray:
        """`[T, K]` codes -> audio with CSM's own (transformers) Mimi, all at once. K = 32 or Moshi's 8.

        `layout="KT"` takes csmlab.codec's `[K, n]` instead; a shape that fits both (`[32, 8]`) needs
        `layout`, since the shape alone cannot say which it is."""
        codes = _check_codes(codes, self.config.num_codebooks, self.config.codec_config.codebook_size, layout)
        audio = self.model.codec_model.decode(codes.T[None].to(self.model.device)).audio_values  # [1, 1, T*1920]
        return audio[0, 0].float().cpu().numpy()

    # ---- frame by frame -----------------------------------------------------------------------
    def frames(self, text: str, speaker: int = 0, context: Sequence[Segment] = (),
               max_audio_ms: int = DEFAULT_MAX_AUDIO_MS, sampling: Sampling = Sampling(),
               method: str = "loop") -> Iterator[torch.Tensor]:
        """Yield each frame's `[32]` codes as soon as it exists; stops at end of audio or `max_audio_ms`."""
        _check_sampling(sampling)
        context = _check_context(context)  # once: a generator given as context would be empty the second time
        if method == "loop":
            inputs = self.prompt(text, speaker, context)
            return self._loop(inputs, context, self.frames_budget(inputs, max_audio_ms), sampling)
        if method == "streamer":
            inputs = self.prompt(text, speaker, context)
            return self._threaded(inputs, self.frames_budget(inputs, max_audio_ms), sampling)
        raise ConfigError(f"method must be 'loop' or 'streamer', not {method!r}")

    @torch.inference_mode()
    def embed_prompt(self, inputs, context: Sequence[Segment]) -> torch.Tensor:
        """The backbone's input `[1, L, H]` for `prompt(..., context)`'s `inputs`, as transformers'
        `_merge_input_ids_with_input_values` builds it (text embeddings; each audio position the sum of
        its frame's 32 code embeddings; each end of audio the end-of-audio frame's), with every context
        turn's Mimi codes from `context_codes`: a turn seen before is not encoded again."""
        model, ids = self.model, inputs["input_ids"]
        embeds = model.embed_text_tokens(ids)
        if not context:
            return embeds
        cuts = F.pad(inputs["input_values_cutoffs"][0], (1, 0)).tolist()  # [0, end of turn 0, end of turn 1, ...]
        audio = inputs["input_values"][0]  # [1, samples] every turn's audio, as the processor joined it
        codes = [self.context_codes.codes(seg, audio[..., a:b], self._encode) for seg, a, b in zip(context, cuts, cuts[1:])]
        embed = model.backbone_model.embed_tokens
        embeds[ids == self.config.audio_token_id] = embed(torch.cat(codes)[None])[0]
        eos = torch.full((1, 1, self.config.num_codebooks), self.config.codebook_eos_token_id, device=ids.device)
        embeds[ids == self.config.audio_eos_token_id] = embed(eos)[0]
        return embeds

    def _encode(self, audio: torch.Tensor) -> torch.Tensor:
        """One context turn's `[1, samples]` audio -> `[T, 32]` codes, as transformers encodes it in `forward()`."""
        codec = self.model.codec_model
        frames = int(codec.get_encoded_length(torch.tensor(audio.shape[-1])))  # what the processor counted
        return codec.encode(audio[None]).audio_codes.transpose(1, -1)[0, :frames]

    @torch.inference_mode()
    def _loop(self, inputs, context: Sequence[Segment], frames: int, sampling: Sampling) -> Iterator[torch.Tensor]:
        """Our own generation loop: the three steps of the module docstring, with `generate()`'s inputs
        (the context's codes from `context_codes`; the prompt's shared beginning from `prompt_prefix`)."""
        mask = inputs["attention_mask"]  # [1, L]
        length, device = mask.shape[1], mask.device
        embeds = self.embed_prompt(inputs, context)
        start, past = self.prompt_prefix.take(embeds)
        out = self.model(inputs_embeds=embeds[:, start:], attention_mask=mask, past_key_values=past, use_cache=True,
                         output_hidden_states=True, logits_to_keep=1,
                         cache_position=torch.arange(start, length, device=device))  # prefill: the prompt's new part
        cache = out.past_key_values  # holds the whole prompt now; the frames below are appended to it
        try:
            for t in range(frames):
                hidden = out.hidden_states[-1][:, -1]  # [1, H] backbone state for the next frame
                frame = self._depth(hidden, sampling.pick(out.logits[:, -1].float()), sampling)  # [1, 32]
                if self._ends_audio(frame[0]):
                    return
                yield frame[0]
                mask = F.pad(mask, (0, 1), value=1)
                out = self.model(input_ids=frame[:, None, :], attention_mask=mask, past_key_values=cache,
                                 cache_position=torch.tensor([length + t], device=device), use_cache=True,
                                 output_hidden_states=True, logits_to_keep=1)
        finally:
            self.prompt_prefix.give(embeds, cache)  # the next prompt crops it to what they share

    def _depth(self, hidden: torch.Tensor, first: torch.Tensor, sampling: Sampling) -> torch.Tensor:
        """The depth decoder: backbone state + codebook 0 -> codebooks 1..31. Returns `[1, 32]` codes."""
        depth = self.model.depth_decoder
        codes = [first]
        ids = F.pad(first[:, None], (1, 0))  # [1, 2]: a slot for the backbone state, then codebook 0
        mask = torch.ones(1, self.config.num_codebooks, dtype=ids.dtype, device=ids.device)
        positions = torch.arange(self.config.num_codebooks, device=ids.device)
        out = depth(input_ids=ids, backbone_last_hidden_state=hidden, attention_mask=mask[:, :2],
                    cache_position=positions[:2], use_cache=True, logits_to_keep=1)
        for k in range(1, self.config.num_codebooks):
            codes.append(sampling.pick(out.logits[:, -1].float()))
            if k < self.config.num_codebooks - 1:
                out = depth(input_ids=codes[-1][:, None], attention_mask=mask[:, : k + 2],
                            past_key_values=out.past_key_values, cache_position=positions[k + 1 : k + 2],
                            use_cache=True, logits_to_keep=1)
        return torch.stack(codes, dim=1)

    def _threaded(self, inputs, frames: int, sampling: Sampling) -> Iterator[torch.Tensor]:
        """`generate()` in a thread, its streamer feeding a queue: token-exact by construction.

        Stopping early (closing this iterator) cancels the generation at its next frame.
        """
        streamer, failure, threads = _FrameQueue(), [], torch.get_num_threads()

        def work():
            torch.set_num_threads(threads)  # a new thread starts with torch's default, not the caller's
            try:
                self._generate(inputs, frames, sampling, streamer)
            except _Cancelled:
                pass
            except Exception as err:  # noqa: BLE001 - handed to the consumer below
                failure.append(err)
                streamer.end()

        thread = threading.Thread(target=work, daemon=True, name="csm-generate")
        thread.start()
        try:
            while (frame := streamer.frames.get()) is not None:
                if self._ends_audio(frame):
                    break
                yield frame
        finally:
            streamer.cancelled = True
            thread.join()
        if failure:
            raise ComponentError(f"CSM generation thread failed: {failure[0]!r}") from failure[0]

    # ---- streaming audio ----------------------------------------------------------------------
    def codec(self, num_codebooks: int = 32):
        """`csmlab.codec`'s Mimi (moshi backend: it streams) with the weights of CSM's own codec (checked).

        transformers' `MimiModel` cannot decode frame by frame (its transposed convolutions keep no
        state), so streaming goes through moshi's Mimi, loaded from the same checkpoint.
        """
        from csmlab.codec import load_codec

        codec = load_codec(num_codebooks=num_codebooks, backend="moshi", weights=self.mimi_source, device=self.model.device)
        if not self._codec_checked:
            ours = codec.backend.model.quantizer.rvq_first.vq.layers[0]._codebook.embedding_sum.cpu()
            theirs = self.model.codec_model.quantizer.semantic_residual_vector_quantizer.layers[0].codebook.embed_sum
            rounding = torch.finfo(theirs.dtype).eps  # CSM in bf16 holds its codebooks rounded to bf16
            if not torch.allclose(ours.float(), theirs.float().cpu(), rtol=rounding, atol=1e-3):
                raise ComponentError(
                    f"moshi's Mimi ({self.mimi_source}) has other weights than CSM's codec ({self.source}); "
                    "point CSMLAB_MIMI at the Mimi checkpoint this CSM was built with (kyutai/mimi for sesame/csm-1b)"
                )
            self._codec_checked = True
        return codec

    def stream(self, text: str, speaker: int = 0, context: Sequence[Segment] = (),
               max_audio_ms: int = DEFAULT_MAX_AUDIO_MS, sampling: Sampling = Sampling(),
               method: str = "loop") -> Iterator[np.ndarray]:
        """Yield 80 ms of 24 kHz audio per generated frame: the first chunk after one frame."""
        frames = self.frames(text, speaker, context, max_audio_ms, sampling, method)
        with self.codec().stream() as session:
            for frame in frames:
                yield session.decode(frame[:, None].cpu())  # [32, 1] codes -> 1920 samples


def load_csm(path=None, mimi_path=None, device: str = "cpu", dtype: torch.dtype = torch.float32) -> CsmVoice:
    """CSM from `csmlab.weights` (real sesame/csm-1b, a local folder, or the offline stand-in)."""
    from transformers import AutoProcessor, CsmForConditionalGeneration

    from csmlab.weights.convert import fix_sliding_window

    source = resolve("csm", path)
    fix_sliding_window()  # context audio > 10 s must be encoded with Mimi's 250-step window
    model = CsmForConditionalGeneration.from_pretrained(source.path, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(source.path)
    voice = CsmVoice(model, processor, source, resolve("mimi", mimi_path))
    with voice.codec().stream() as session:  # load, check and run the streaming decoder once now: else the
        session.decode(np.zeros((voice.config.num_codebooks, 1), np.int64))  # first stream() pays for it (~2 s)
    return voice


def conversation_context(recording, seconds: float, first: int = 0) -> list[Segment]:
    """Turns of a transcribed recording (from turn `first`) as CSM context, about `seconds` of speech.

    Speakers get ids 0, 1, ... in order of appearance, as CSM's `[0]`, `[1]` speaker tags.
    """
    speakers, segments, total = {}, [], 0.0
    rate = recording.sample_rate
    for turn in recording.transcript[first:]:
        audio = recording.audio[int(turn.start * rate): int(turn.end * rate)]
        segments.append(Segment(speakers.setdefault(turn.speaker, len(speakers)), turn.text, audio, rate))
        total += turn.end - turn.start
        if total >= seconds:
            break
    return segments
