"""`MoshiCsmBrain` ("moshi+csm"): Moshi leads the dialogue, CSM gives Moshi's words their voice.

    user frame -> Moshi step (hears the user's codes, full duplex) -> text piece (its decision)
               -> phrase policy -> CSM (the conversation as context) -> frames -> one Mimi decoder -> PCM

- **Moshi decides** when to speak and what to say: every step it hears the user's codes, as in
  `MoshiBrain`, and the piece it samples (`Step.lead_text`) is the system's next word. Moshi samples
  a step's text `delay` steps before its audio frame comes out (its acoustic delay), so CSM starts
  from the text that early. Moshi's own audio is muted; `moshi_voice="channel"` decodes it too and
  keeps it beside CSM's (`moshi_pcm`, `stereo()`), to compare the two voices.
- **Phrases**: a word is complete when a new word or a padding step follows it (Moshi's pieces can
  continue a word). A `PhrasePolicy` groups complete words into phrases: the first k words, a word
  ending in a punctuation mark, or a pause of `pause_steps` padding steps, whichever comes first;
  every policy closes a phrase at a pause, so the last words of a turn never wait for the next one.
- **Voice**: CSM speaks one phrase at a time, one frame per step, through one streaming decoder
  for all phrases: when a phrase ends and the next is ready, its first frame goes out in the same
  step, continuing the decoder's state, so the two join as one utterance (no gap, no reset click).
  A phrase has at most `ms_per_word` per word (CSM-1B stops earlier, at its end-of-audio frame).
  CSM's context is the conversation (`conversation`): the system's earlier phrases (CSM's own audio
  with Moshi's words; consecutive phrases make one turn) and the user's turns (their audio, with
  their words where `transcript` gives them, else audio only: see `csmlab.csm.voice` for what CSM
  does with those). CSM's voice keeps each turn's Mimi codes and the prompt's KV prefix across phrases
  (`csmlab.csm.cache`), so a phrase's first frame pays for what changed since the last: a new user
  turn, and the system's current turn, which each phrase lengthens (a new Segment: encoded anew).
- **Turn taking and barge-in come from Moshi**: when the user speaks (silero-vad) while Moshi's
  text has been padding for `yield_steps` steps (longer than the padding between the words of one
  utterance: a word every 3 to 5 steps in the call), Moshi has given the floor: the voice stops in that
  step, the phrases not yet spoken are dropped, and only the audio said so far enters the context
  (with the phrase's words in proportion to the frames said). While Moshi goes on talking over the
  user, CSM goes on too.
- **Accounting**: every word of Moshi's stream is in exactly one phrase, in order; a phrase ends
  `voiced`, `cut` (stopped by a barge-in while speaking) or `dropped` (barge-in before it started).
- **Lag** (`phrases`, `latency_ms()`): per phrase, from the step at which Moshi sampled its first
  word to the step that carried its first frame (80 ms a step), plus that step's compute (CSM's
  prompt and first frame). Against Moshi's own voice, whose first frame of that word would come
  `delay` steps after the word: the lag minus the acoustic delay.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from csmlab.csm.voice import Segment
from csmlab.errors import ConfigError, is_number
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE, latency_summary
from csmlab.pipeline.brain import FRAME_MS, Brain, Heard, Said
from csmlab.pipeline.vad import StreamingVad, TurnTracker

USER, SYSTEM = 0, 1  # CSM speaker ids
PUNCTUATION = ".,?!;:"


@dataclass(frozen=True)
class PhrasePolicy:
    """When Moshi's words make a phrase for CSM: `words` of them (None: no count), a word ending in a
    punctuation mark (`punctuation`), or `pause_steps` padding steps after a word (always)."""

    words: int | None = 3
    punctuation: bool = False
    pause_steps: int = 4

    def __post_init__(self):
        if self.words is not None and (not is_number(self.words, int) or self.words < 1):
            raise ConfigError(f"a phrase policy's words is a count >= 1 or None, not {self.words!r}")
        if not is_number(self.pause_steps, int) or self.pause_steps < 1:
            raise ConfigError(f"pause_steps is a number of 80 ms steps >= 1, not {self.pause_steps!r}")

    @classmethod
    def parse(cls, spec) -> "PhrasePolicy":
        """"k3" (3 words), "punct" (punctuation), "pause" (pauses only), or a PhrasePolicy."""
        if isinstance(spec, PhrasePolicy):
            return spec
        if spec == "punct":
            return cls(words=None, punctuation=True)
        if spec == "pause":
            return cls(words=None)
        if isinstance(spec, str) and spec[:1] == "k" and spec[1:].isdigit():
            return cls(words=int(spec[1:]))
        raise ConfigError(f"phrase policy {spec!r}: use 'k<N>' (N words, e.g. 'k3'), 'punct' or 'pause'")

    @property
    def name(self) -> str:
        if self.words is not None:
            return f"k{self.words}"
        return "punct" if self.punctuation else "pause"

    def closes(self, words: list[str], quiet_steps: int) -> bool:
        """Whether the complete `words` waiting make a phrase, `quiet_steps` padding steps after the last."""
        if not words:
            return False
        if quiet_steps >= self.pause_steps or (self.words is not None and len(words) >= self.words):
            return True
        return self.punctuation and words[-1].rstrip()[-1:] in PUNCTUATION


@dataclass
class Phrase:
    """Some of Moshi's words, voiced by CSM as one piece (times in steps of the session)."""

    index: int
    word_ids: list[int]  # positions in Moshi's word stream (`MoshiCsmBrain.words`)
    text: str
    first_word_step: int  # when Moshi sampled its first word
    ready_step: int  # when the policy closed it
    start_step: int | None = None  # the step that carried its first frame
    end_step: int | None = None  # the step after its last frame
    frames: int = 0
    first_ms: float = 0.0  # compute of the step that carried its first frame (CSM's prompt + first frame)
    frame_ms: list = field(default_factory=list)  # CSM's compute per later frame (generate + decode)
    status: str = "queued"  # queued -> speaking -> voiced | cut; queued -> dropped

    @property
    def lag_ms(self) -> float | None:
        """From the step Moshi sampled its first word to the end of the step that carried its first audio."""
        if self.start_step is None:
            return None
        return (self.start_step - self.first_word_step) * FRAME_MS + self.first_ms


class MoshiCsmBrain(Brain):
    """Moshi's text stream drives the dialogue; CSM voices its words a phrase at a time (docstring above).

    `stream`: a `csmlab.moshi.MoshiStream` (default: on `moshi.load()`), or anything with its
    interface, such as the replay `csmlab.pipeline.replay.ReplayedMoshi`; `codec`: the Mimi that
    encodes the user for it (default: Moshi's own); `voice`: a `CsmSpeaker` (default: `load_csm()`)."""

    name = "moshi+csm"
    hears_codes = True
    speaks_codes = False

    def __init__(self, stream=None, codec=None, voice=None, policy="k3", yield_steps: int = 6,
                 ms_per_word: int = 400, moshi_voice: str = "mute", transcript=(), end_silence_ms: float = 240,
                 min_speech_ms: float = 160, threshold: float = 0.5, context_s: float = 10.0, history: int = 5000):
        super().__init__()
        from csmlab.pipeline.voices import CsmSpeaker

        if stream is None:
            from csmlab import moshi
            from csmlab.weights import default_device
            from csmlab.pipeline.moshi_brain import moshi_codec

            model = moshi.load(device=default_device())
            stream, codec = moshi.MoshiStream(model), codec or moshi_codec(model)
        if codec is None:
            raise ConfigError("MoshiCsmBrain needs the codec that encodes the user's audio for its stream (Moshi's Mimi)")
        if moshi_voice not in ("mute", "channel"):
            raise ConfigError(f"moshi_voice is 'mute' (CSM speaks alone) or 'channel' (Moshi's own voice kept beside it), not {moshi_voice!r}")
        self.stream, self._codec = stream, codec
        self.voice = voice if voice is not None else CsmSpeaker(context_s=context_s)
        self.policy = PhrasePolicy.parse(policy)
        self.yield_steps, self.ms_per_word, self.moshi_voice = yield_steps, ms_per_word, moshi_voice
        self.transcript = list(transcript)
        self.vad = StreamingVad(threshold)
        self.turns = TurnTracker(end_silence_ms, min_speech_ms)
        self.conversation: deque[Segment] = deque(maxlen=50)
        self.phrases: deque[Phrase] = deque(maxlen=history)
        self.trace: deque[dict] = deque(maxlen=history * 4)  # per step: word, user speech, voice on, barge-in
        self.moshi_pcm: deque[np.ndarray] = deque(maxlen=history * 4)  # Moshi's own voice per step ("channel")
        self._decoder = self._moshi_decoder = None
        self.reset()

    # ---- state --------------------------------------------------------------------------------
    def reset(self) -> None:
        self.stream.reset()
        self.vad.reset()
        self.turns.reset()
        self.conversation.clear()
        self.phrases.clear()
        self.trace.clear()
        self.moshi_pcm.clear()
        self.words: list[list] = []  # [step, text] per word of Moshi's stream, in order
        self._waiting: list[int] = []  # word ids not yet in a phrase (the last may still grow)
        self._quiet = 0  # padding steps since Moshi's last piece
        self._queue: deque[Phrase] = deque()
        self._speaking: Phrase | None = None
        self._frames = None  # CSM's frame iterator for the phrase being spoken
        self._said: list[np.ndarray] = []  # its audio so far
        self._close_decoders()
        self._logged_source = False

    def _close_decoders(self) -> None:
        for decoder in (self._decoder, self._moshi_decoder):
            if decoder is not None:
                decoder.close()
        self._decoder = self._moshi_decoder = None

    def codec(self):
        return self._codec

    @property
    def weights(self) -> str:
        """One kind when Moshi's and CSM's agree ("real", "offline"), else both: "moshi replay, csm offline"."""
        model = getattr(self.stream, "model", None)
        moshi = model.source.kind if model is not None else getattr(self.stream, "name", "unknown")
        return moshi if moshi == self.voice.weights else f"moshi {moshi}, csm {self.voice.weights}"

    def algorithmic_ms(self) -> dict[str, float]:
        """A word is whole one step after its last piece; the phrase policy's wait comes on top (`lags()`)."""
        return {"word completion": FRAME_MS}

    # ---- one step -----------------------------------------------------------------------------
    def step(self, heard: Heard) -> Said:
        if not self._logged_source:
            self.log("text_source", repr(self.stream))  # a replay says so in the event log
            self._logged_source = True
        out = self.stream.step(heard.codes)
        speaking = self._hear_user(heard)
        word = self._read(out.lead_text, heard.index)
        barge = speaking and self._quiet >= self.yield_steps and (self._speaking or self._queue or self._waiting)
        if barge:
            self._barge_in(heard.index)
        if self.policy.closes([self.words[i][1] for i in self._complete()], self._quiet):
            self._close_phrase(heard.index)
        pcm, text = self._voice(heard.index)
        self._keep_moshi_voice(out)
        self.trace.append({"step": heard.index, "word": word, "user_speech": speaking, "voice": pcm is not None,
                           "barge_in": bool(barge)})
        return Said(pcm=pcm, text=text)

    def _hear_user(self, heard: Heard) -> bool:
        """The VAD on the user's frame; a finished turn enters the conversation. True while the user speaks."""
        chunks = self.vad.push(heard.pcm)
        ended = self.turns.push(heard.pcm, chunks, (heard.index + 1) * FRAME_MS)
        if ended is not None and not ended.ignored:
            words = " ".join(t.text for t in self.transcript if t.start * 1000 < ended.end_ms and t.end * 1000 > ended.start_ms)
            self._add_context(USER, words, ended.audio)
            self.log("user_turn", f"{ended.start_ms:.0f}-{ended.end_ms:.0f} ms {words!r}")
        return any(c.speech for c in chunks)

    def _read(self, piece: str, index: int) -> str:
        """Moshi's piece of this step into words: a piece with a leading space starts a word, else continues it."""
        if not piece:
            self._quiet += 1
            return ""
        if piece.startswith(" ") or not self._waiting or self._quiet:
            self.words.append([index, piece.strip()])
            self._waiting.append(len(self.words) - 1)
        else:
            self.words[self._waiting[-1]][1] += piece
        self._quiet = 0
        return piece

    def _complete(self) -> list[int]:
        """The waiting words known to be whole: all but the last, and the last after a padding step."""
        return self._waiting if self._quiet else self._waiting[:-1]

    def _close_phrase(self, index: int, every: bool = False) -> None:
        """The complete words waiting (the policy's count of them, or `every` one) become a phrase."""
        ids = self._complete()
        count = len(ids) if self.policy.words is None or every else min(len(ids), self.policy.words)
        ids, self._waiting = ids[:count], self._waiting[count:]
        phrase = Phrase(len(self.phrases), ids, " ".join(self.words[i][1] for i in ids), self.words[ids[0]][0], index)
        self.phrases.append(phrase)
        self._queue.append(phrase)
        self.log("phrase", f"{phrase.index}: {phrase.text!r} ready")

    # ---- the voice ----------------------------------------------------------------------------
    def _voice(self, index: int) -> tuple[np.ndarray | None, str]:
        """One CSM frame: the current phrase's next, or, when it has ended, the next phrase's first.
        CSM's compute (prompt, frame, decode) is timed for the phrase."""
        text, start = "", time.perf_counter()
        while self._speaking is not None or self._queue:
            if self._speaking is None:
                start = time.perf_counter()  # a phrase that ended is not the next one's cost
                self._begin(self._queue.popleft())
            frame = next(self._frames, None)
            if frame is None:
                self._end_phrase(index, "voiced")
                continue
            phrase = self._speaking
            pcm = self._decoder.decode(frame[:, None].cpu())  # [32, 1] codes -> [1920]
            self._said.append(pcm)
            spent = 1000 * (time.perf_counter() - start)
            if phrase.start_step is None:
                phrase.start_step, phrase.first_ms, text = index, spent, phrase.text
                self.log("phrase_start", f"{phrase.index}: lag {phrase.lag_ms:.0f} ms")
            else:
                phrase.frame_ms.append(spent)
            phrase.frames += 1
            return pcm, text
        return None, text

    def _begin(self, phrase: Phrase) -> None:
        if self._decoder is None:
            self._decoder = self.voice.decoder()
        budget = max(FRAME_MS, self.ms_per_word * len(phrase.word_ids))
        self._speaking, self._said = phrase, []
        self._frames = iter(self.voice.frames(phrase.text, list(self.conversation), budget))
        phrase.status = "speaking"

    def _end_phrase(self, index: int, status: str) -> None:
        phrase, self._speaking = self._speaking, None
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()  # CSM stops generating
        self._frames = None
        phrase.status, phrase.end_step = status, index
        if self._said:
            text = phrase.text
            if status == "cut":  # the words in proportion to the frames said
                budget = max(1, self.ms_per_word * len(phrase.word_ids) // FRAME_MS)
                text = " ".join(phrase.text.split()[: max(1, round(len(phrase.word_ids) * phrase.frames / budget))])
            self._add_context(SYSTEM, text, np.concatenate(self._said))
        self._said = []

    def _barge_in(self, index: int) -> None:
        """The user speaks and Moshi has given the floor: stop, and drop what was not said yet."""
        cut = self._speaking.index if self._speaking is not None else None
        if self._speaking is not None:
            self._end_phrase(index, "cut")
        dropped = list(self._queue)
        if self._waiting:  # words that never made a phrase become one, dropped
            self._close_phrase(index, every=True)
            dropped.append(self._queue.pop())
        self._queue.clear()
        for phrase in dropped:
            phrase.status, phrase.end_step = "dropped", index
        if self._decoder is not None:
            self._decoder.reset()  # the next phrase starts a new utterance
        words = sum(len(p.word_ids) for p in dropped)
        self.log("barge_in", f"user speaks, Moshi silent {self._quiet} steps: phrase {cut} cut, "
                             f"{len(dropped)} phrase(s) ({words} words) dropped")

    def _add_context(self, speaker: int, text: str, audio: np.ndarray) -> None:
        """A turn into the conversation; consecutive turns of one speaker make one turn."""
        if self.conversation and self.conversation[-1].speaker == speaker:
            last = self.conversation.pop()
            text, audio = " ".join(t for t in (last.text, text) if t), np.concatenate([last.audio, audio])
        self.conversation.append(Segment(speaker, text, audio, SAMPLE_RATE))

    def _keep_moshi_voice(self, out) -> None:
        if self.moshi_voice != "channel":
            return
        if out.audio is None:
            self.moshi_pcm.append(np.zeros(FRAME_SIZE, np.float32))
            return
        if self._moshi_decoder is None:
            self._moshi_decoder = self._codec.stream()
        self.moshi_pcm.append(self._moshi_decoder.decode(out.audio.numpy()[:, None]))

    # ---- reports ------------------------------------------------------------------------------
    def word_fates(self) -> list[tuple[int, str, str]]:
        """(word id, word, what became of it: queued / speaking / voiced / cut / dropped / waiting), in order."""
        fate = {i: p.status for p in self.phrases for i in p.word_ids}
        return [(i, w[1], fate.get(i, "waiting")) for i, w in enumerate(self.words)]

    def lags(self) -> dict:
        """Per phrase lag (ms) against Moshi's text and against Moshi's own voice, and its parts: the steps waited
        (`wait_ms`: words, the policy, a phrase still speaking) and CSM's first frame (`first_frame_ms`);
        CSM's compute per later frame (`frame_ms`)."""
        started = [p for p in self.phrases if p.start_step is not None]
        lag = [p.lag_ms for p in started]
        frames = [ms for p in started for ms in p.frame_ms]
        return {"phrases": len(self.phrases), "started": len(started),
                "lag_ms": latency_summary(lag, digits=1) if lag else {},
                "wait_ms": latency_summary([(p.start_step - p.first_word_step) * FRAME_MS for p in started], digits=1) if lag else {},
                "lag_vs_moshi_voice_ms": latency_summary([x - self.stream.delay * FRAME_MS for x in lag], digits=1) if lag else {},
                "first_frame_ms": latency_summary([p.first_ms for p in started], digits=1) if started else {},
                "frame_ms": latency_summary(frames, digits=1) if frames else {}}

    def latency_ms(self) -> dict:
        lags = self.lags()
        return {"phrase_lag": lags["lag_ms"]} if lags["lag_ms"] else {}

    def stereo(self, system: np.ndarray) -> np.ndarray:
        """`[2, T]`: CSM's voice (`system`, the session's output) left, Moshi's own voice right ("channel")."""
        moshi = np.concatenate(list(self.moshi_pcm)) if self.moshi_pcm else np.zeros(0, np.float32)
        n = max(len(system), len(moshi))
        out = np.zeros((2, n), np.float32)
        out[0, : len(system)], out[1, : len(moshi)] = system, moshi
        return out

    def close(self) -> None:
        if self._frames is not None and hasattr(self._frames, "close"):
            self._frames.close()
        self._close_decoders()
        self.stream.close()


def moshi_csm_brain(replay: str | None = None, model=None, **kwargs) -> MoshiCsmBrain:
    """`make_brain("moshi+csm")`: on Moshi (`model`, default `moshi.load()`), or, with `replay="Sheila"`,
    on the REPLAY of that speaker's words in the real call (`ReplayedMoshi`, its "own voice" through
    the small trained Mimi, which also encodes the user: the replay is deaf, so any codec will do)."""
    if replay is not None:
        from csmlab.codec import load_codec
        from csmlab.data import real_recording
        from csmlab.pipeline.replay import ReplayedMoshi

        codec = kwargs.pop("codec", None) or load_codec(8, listen=True)
        return MoshiCsmBrain(ReplayedMoshi(real_recording(), replay, codec), codec, **kwargs)
    if model is not None:
        from csmlab.moshi import MoshiStream
        from csmlab.pipeline.moshi_brain import moshi_codec

        return MoshiCsmBrain(MoshiStream(model), moshi_codec(model), **kwargs)
    return MoshiCsmBrain(**kwargs)
