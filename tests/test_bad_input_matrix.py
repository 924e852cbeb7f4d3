"""The bad-input matrix: one table of bad inputs across codec, pipeline, voice and server.

Each case runs the same short job twice: once clean, once with the bad input slipped in halfway.
The bad input must raise the expected `CsmlabError` (the server's `ProtocolError` is one) with a
message that says what to do, and the job's result must be *identical* to the clean run's: the
state stayed intact and nothing was lost. A layer's deeper tests live in its own module; this
table is the one place where every layer is held to the same rule.
"""
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import sphn
import torch

from csmlab import csm
from csmlab.errors import AudioFormatError, CodesError, ConfigError, CsmlabError, StreamClosedError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE
from csmlab.pipeline import DuplexSession, LoopbackBrain, make_brain
from csmlab.serve.protocol import ProtocolError, audio_payload

RATE = 16_000


@pytest.fixture(scope="module")
def chunks(speech):
    return np.array_split(speech, 5)  # 1 s of the call at 16 kHz (RATE)


class Inject:
    """Where a job would take its bad input: clean runs skip it, bad runs demand the error."""

    def __init__(self, error: type | None = None, words: str = ""):
        self.error, self.words, self.raised = error, words, None

    def __call__(self, bad: Callable[[], object]) -> None:
        if self.error is None:
            return
        with pytest.raises(self.error, match=self.words) as caught:
            bad()
        self.raised = caught.value


# -- the jobs: each takes (fixtures, inject) and returns what a user would keep ---------------------
def codec_encode(f, inject, bad_chunk, bad_rate=RATE):
    with f["small_codec"].stream() as s:
        out = [s.encode(f["chunks"][0], RATE)]
        inject(lambda: s.encode(bad_chunk, bad_rate))
        out += [s.encode(c, RATE) for c in f["chunks"][1:]] + [s.flush()]
    return np.concatenate(out, axis=1)  # [K, T] codes


def codec_decode(f, inject, bad_codes):
    codes = f["small_codec"].encode(np.concatenate(f["chunks"]), RATE)
    with f["small_codec"].stream() as s:
        out = [s.decode(codes[:, :6])]
        inject(lambda: s.decode(bad_codes(codes)))
        out.append(s.decode(codes[:, 6:]))
    return np.concatenate(out)


def codec_closed(f, inject):
    other = f["small_codec"].stream()
    other.close()
    inject(lambda: other.encode(f["chunks"][0], RATE))  # a closed session says so; live ones go on
    return codec_encode(f, Inject(), None)


def pipeline(f, inject, bad_chunk, bad_rate=RATE):
    with DuplexSession(LoopbackBrain(delay_ms=80, codec=f["small_codec"])) as session:
        steps = session.push(f["chunks"][0], RATE) + session.push(f["chunks"][1], RATE)
        inject(lambda: session.push(bad_chunk, bad_rate))
        for c in f["chunks"][2:]:
            steps += session.push(c, RATE)
        steps += session.end()
    return np.concatenate([s.pcm for s in steps])


def pipeline_brain(f, inject):
    inject(lambda: make_brain("parrot"))
    return pipeline(f, Inject(), None)


def voice_prompt(f, inject, bad: Callable):
    segment = csm.Segment(0, "hi", f["chunks"][0], sample_rate=RATE)
    before = f["voice"].prompt("Hello there.", context=[segment])["input_ids"]
    inject(lambda: bad(f["voice"]))
    after = f["voice"].prompt("Hello there.", context=[segment])["input_ids"]
    return torch.cat([before, after], dim=1).numpy()


PAGES = []


def server_stream(f, inject, bad_message):
    """The server's gate: a bad message is refused before the Opus decoder sees it, so the stream
    decodes afterwards exactly as if the bad message had never come."""
    if not PAGES:
        writer = sphn.OpusStreamWriter(SAMPLE_RATE)
        tone = (0.3 * np.sin(np.arange(8 * FRAME_SIZE) / 9)).astype(np.float32)
        PAGES.extend(writer.append_pcm(tone[i:i + FRAME_SIZE]) for i in range(0, len(tone), FRAME_SIZE))
    reader, pcm = sphn.OpusStreamReader(SAMPLE_RATE), []
    for i, page in enumerate(PAGES):
        if i == 3:
            inject(lambda: audio_payload(bad_message(PAGES[i])))
        pcm.append(reader.append_bytes(audio_payload(b"\x01" + page)))
    return np.concatenate(pcm)


@dataclass(frozen=True)
class Case:
    layer: str
    kind: str
    error: type
    words: str  # the message names the problem or says what to do instead
    job: Callable


CASES = [
    Case("codec", "NaN samples", AudioFormatError, "NaN", lambda f, i: codec_encode(f, i, np.full(99, np.nan, np.float32))),
    Case("codec", "int8 samples", AudioFormatError, "dtype int8", lambda f, i: codec_encode(f, i, np.zeros(99, np.int8))),
    Case("codec", "sample rate changes mid-stream", AudioFormatError, "changed mid-stream",
         lambda f, i: codec_encode(f, i, f["chunks"][1], 44_100)),
    Case("codec", "codes out of range", CodesError, r"\[0, 1024\)", lambda f, i: codec_decode(f, i, lambda c: c + 5000)),
    Case("codec", "too few codebooks", CodesError, "codebooks", lambda f, i: codec_decode(f, i, lambda c: c[:3])),
    Case("codec", "a closed session", StreamClosedError, "closed", codec_closed),
    Case("pipeline", "NaN chunk", AudioFormatError, "NaN", lambda f, i: pipeline(f, i, np.full(320, np.nan, np.float32))),
    Case("pipeline", "3-D chunk", AudioFormatError, "dims", lambda f, i: pipeline(f, i, np.zeros((2, 2, 2), np.float32))),
    Case("pipeline", "sample rate changes mid-stream", AudioFormatError, "sample rate changed",
         lambda f, i: pipeline(f, i, f["chunks"][2], 8000)),
    Case("pipeline", "unknown brain", ConfigError, "choose one of", pipeline_brain),
    Case("voice", "empty text", CsmlabError, "non-empty string", lambda f, i: voice_prompt(f, i, lambda v: v.prompt("  "))),
    Case("voice", "NaN context audio", AudioFormatError, "context turn 0",
         lambda f, i: voice_prompt(f, i, lambda v: v.prompt("Hi.", context=[csm.Segment(0, "x", np.full(4800, np.nan))]))),
    Case("voice", "negative speaker id", CsmlabError, "speaker ids are ints",
         lambda f, i: voice_prompt(f, i, lambda v: v.prompt("Hi.", speaker=-1))),
    Case("server", "unknown kind byte", ProtocolError, "0x07", lambda f, i: server_stream(f, i, lambda p: b"\x07" + p)),
    Case("server", "truncated Ogg page", ProtocolError, "truncated", lambda f, i: server_stream(f, i, lambda p: b"\x01" + p[:-9])),
    Case("server", "not Ogg at all", ProtocolError, "not an Ogg page", lambda f, i: server_stream(f, i, lambda p: b"\x01RIFF" + p)),
    Case("server", "corrupted Ogg page (bad CRC)", ProtocolError, "CRC",
         lambda f, i: server_stream(f, i, lambda p: b"\x01" + p[:-1] + bytes([p[-1] ^ 0x10]))),
    Case("server", "empty message", ProtocolError, "empty", lambda f, i: server_stream(f, i, lambda p: b"")),
    Case("server", "text frame", ProtocolError, "binary", lambda f, i: server_stream(f, i, lambda p: "hello")),
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.layer}: {c.kind}" for c in CASES])
def test_bad_input_is_refused_clearly_and_loses_nothing(case, request):
    needs = {"codec": ["small_codec", "chunks"], "pipeline": ["small_codec", "chunks"], "voice": ["voice", "chunks"], "server": []}
    fixtures = {name: request.getfixturevalue(name) for name in needs[case.layer]}
    clean = case.job(fixtures, Inject())
    inject = Inject(case.error, case.words)
    dirty = case.job(fixtures, inject)
    assert isinstance(inject.raised, CsmlabError), f"{case.kind}: nothing raised, or not a CsmlabError"
    assert len(str(inject.raised)) > 25  # a sentence, not a code
    assert np.array_equal(clean, dirty), f"{case.kind}: the run after the bad input differs from a clean run"


def test_the_matrix_covers_every_layer_with_at_least_15_kinds():
    assert len(CASES) >= 15 and {c.layer for c in CASES} >= {"codec", "pipeline", "voice", "server"}
