"""`CascadeBrain`: the classic voice-assistant cascade, on the duplex clock. Listen, decide, speak.

    user audio -> silero-vad (32 ms chunks) -> turn taking -> reply policy (text) -> voice -> frames

- **Turn taking**: the user's turn starts with speech and ends after `end_silence_ms` of silence
  (the VAD hang-over); a turn shorter than `min_speech_ms` is ignored (a cough, a click).
- **Reply**: a policy turns the finished turn into text (`csmlab.pipeline.policies`).
- **Voice**: speaks the reply one 80 ms frame per step, with the conversation so far (both sides'
  turns, audio and text) as its context (`csmlab.pipeline.voices`).
- **Barge-in**: when the user speaks while the system speaks, the voice stops at once (the step
  whose VAD chunks first say speech sends silence) and `barge_in` is logged. The part of the reply
  that was spoken is what enters the conversation.
- **Response latency**: from the end of the user's speech (the last speech chunk) to the end of the
  step that carried the first frame of the reply, plus that step's brain compute; logged as
  `response` and summarised by `latency_ms()`.
"""
from __future__ import annotations

import time
from collections import deque

import numpy as np

from csmlab.csm.voice import Segment
from csmlab.metrics import SAMPLE_RATE, latency_summary
from csmlab.pipeline.brain import FRAME_MS, Brain, Heard, Said
from csmlab.pipeline.policies import RuleResponder, UserTurn
from csmlab.pipeline.vad import CHUNK_MS, StreamingVad, TurnEnd, TurnTracker
from csmlab.pipeline.voices import make_voice

USER, SYSTEM = 0, 1  # CSM speaker ids


class CascadeBrain(Brain):
    """VAD turn taking + a reply policy + a voice; `transcript` (turns with text) stands in for ASR."""

    name = "cascade"
    speaks_codes = False
    text_separator = "\n"  # each text is a whole reply

    def __init__(self, voice="auto", policy=None, end_silence_ms: float = 240, min_speech_ms: float = 160,
                 threshold: float = 0.5, transcript=(), history: int = 1000):
        super().__init__()
        self.voice = make_voice(voice)
        self.policy = policy if policy is not None else RuleResponder()
        self.end_silence_ms, self.min_speech_ms = end_silence_ms, min_speech_ms
        self.vad = StreamingVad(threshold)
        self.turns = TurnTracker(end_silence_ms, min_speech_ms)
        self.transcript = list(transcript)
        self.conversation: deque[Segment] = deque(maxlen=50)
        self.responses: deque[float] = deque(maxlen=history)  # response latencies, ms
        self.timeline: deque[dict] = deque(maxlen=history)  # turns and replies, for plots
        self.vad_trace: deque = deque(maxlen=20_000)  # (end_ms, prob, speech) per 32 ms chunk
        self.reset()

    def reset(self) -> None:
        self.vad.reset()
        self.turns.reset()
        self.conversation.clear()
        self._reply = None  # the voice's frame iterator while the system speaks
        self._reply_text, self._reply_audio = "", []
        self._awaiting: float | None = None  # end of the user's speech, until the first reply frame

    @property
    def weights(self) -> str:
        return getattr(self.voice, "weights", "unknown")

    def step(self, heard: Heard) -> Said:
        start = time.perf_counter()
        now = (heard.index + 1) * FRAME_MS  # the end of this frame, ms of session audio
        chunks = self.vad.push(heard.pcm)
        self.vad_trace.extend((c.end_ms, c.prob, c.speech) for c in chunks)
        speech = [c for c in chunks if c.speech]
        silent_before = self.turns.start_ms is None
        ended = self.turns.push(heard.pcm, chunks, now)
        if speech and silent_before:
            self.log("user_start", f"{self.turns.start_ms:.0f} ms")
        if speech and self._reply is not None:
            self._stop_reply(f"user spoke at {speech[0].end_ms - CHUNK_MS:.0f} ms: voice stopped")
        if ended is not None:
            self._end_turn(ended)
        return self._speak(heard, start)

    def _end_turn(self, ended: TurnEnd) -> None:
        start, end = ended.start_ms, ended.end_ms
        if ended.ignored:
            self.log("ignored", f"{end - start:.0f} ms of speech: too short for a turn")
            return
        audio = ended.audio
        turn = UserTurn(start, end, audio, self._words(start, end))
        self.conversation.append(Segment(USER, turn.text or "...", audio, SAMPLE_RATE))
        text = self.policy.reply(turn)
        self.log("turn_end", f"user {start:.0f}-{end:.0f} ms; reply {text!r}")
        self.timeline.append({"kind": "user", "start_ms": start, "end_ms": end, "text": turn.text})
        self._reply = iter(self.voice.speak(text, list(self.conversation)))
        self._reply_text, self._reply_audio, self._awaiting = text, [], end

    def _words(self, start: float, end: float) -> str:
        """The transcript's words said between `start` and `end` (ms): ASR's stand-in."""
        return " ".join(t.text for t in self.transcript if t.start * 1000 < end and t.end * 1000 > start)

    def _speak(self, heard: Heard, start: float) -> Said:
        if self._reply is None:
            return Said()
        frame = next(self._reply, None)
        if frame is None:
            self._finish_reply("reply_end")
            return Said()
        self._reply_audio.append(frame)
        text = ""
        if self._awaiting is not None:
            latency = (heard.index + 1) * FRAME_MS - self._awaiting + 1000 * (time.perf_counter() - start)
            self.responses.append(latency)
            self.log("response", f"first audio {latency:.0f} ms after the end of speech")
            self.timeline.append({"kind": "system", "start_ms": heard.index * FRAME_MS, "text": self._reply_text,
                                  "latency_ms": latency})
            self._awaiting, text = None, self._reply_text
        return Said(pcm=frame, text=text)

    def _close_reply(self) -> None:
        close = getattr(self._reply, "close", None)
        if close is not None:
            close()  # a CSM generator stops generating

    def _stop_reply(self, why: str) -> None:
        self._close_reply()
        self.log("barge_in", why)
        self.timeline.append({"kind": "barge_in", "start_ms": self.turns.last_speech_ms - CHUNK_MS})
        self._finish_reply("barged_in")

    def _finish_reply(self, how: str) -> None:
        audio = np.concatenate(self._reply_audio) if self._reply_audio else np.zeros(0, np.float32)
        if len(audio):
            self.conversation.append(Segment(SYSTEM, self._reply_text, audio, SAMPLE_RATE))
        self.timeline.append({"kind": how, "start_ms": None, "frames": len(self._reply_audio)})
        self._reply, self._awaiting = None, None

    def latency_ms(self) -> dict:
        if not self.responses:
            return {}
        return {"response": latency_summary(self.responses, digits=1)}

    def algorithmic_ms(self) -> dict[str, float]:
        return {"vad hang-over": self.end_silence_ms, "vad chunk": CHUNK_MS}

    def close(self) -> None:
        self._close_reply()
