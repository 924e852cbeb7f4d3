"""A conversation with Moshi: one side of a real call streamed in, the inner monologue, the depformer.

`converse` streams the user's Mimi codes through `MoshiStream` and decodes what Moshi says;
`monologue` lays a transcript out as Moshi's text stream (one token per frame, mostly padding);
`depth_walkthrough` writes one step of the model out by hand, codebook by codebook.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from moshi.models.lm import LMModel
from moshi.models.lm_utils import _delay_sequence

from csmlab.audio import to_mono
from csmlab.errors import AudioFormatError, ConfigError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE
from csmlab.moshi.stream import END_OF_PADDING_ID, Moshi, MoshiStream, Step, _eager


def speaker_track(recording, speaker: str) -> np.ndarray:
    """One side of a two-party call: the mono recording with everyone else's utterances silenced."""
    keep = np.zeros(len(recording.audio), dtype=bool)
    for turn in recording.transcript:
        if turn.speaker == speaker:
            keep[int(turn.start * recording.sample_rate) : int(turn.end * recording.sample_rate)] = True
    if not keep.any():
        speakers = sorted({t.speaker for t in recording.transcript})
        raise ConfigError(f"no utterance by {speaker!r} in this recording; speakers: {speakers}")
    return np.where(keep, recording.audio, 0.0).astype(np.float32)


@torch.no_grad()
def encode_user(model: Moshi, audio_24k: np.ndarray) -> torch.Tensor:
    """The user's Mimi codes `[1, K, T]` for 24 kHz audio, one code column per complete 80 ms frame.

    Encoded in one batch: Mimi is causal, so this equals encoding frame by frame as a live
    microphone would (notebook 01 checks it), and it is far cheaper on a CPU.
    """
    audio_24k = to_mono(audio_24k)  # [T] float32: refuses empty, NaN, >2 dims; averages stereo
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
    need = max(model.lm.delays) + 1  # the first steps only warm the acoustic delay up
    if user_codes.shape[1] < need:
        raise AudioFormatError(
            f"converse() needs at least {need} frames ({need * 80} ms) of user audio, got {user_codes.shape[1]}; "
            "pass a longer clip"
        )
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
    conversation. The step then picks the text and semantic code of frame T and the acoustic codes
    of frame T - 1 (they lag one step), so the history's last acoustic codes are not read. Equals
    `LMGen(lm, use_sampling=False)` (the tests check it).
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
