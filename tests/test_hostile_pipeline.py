"""Hostile input through the layers built on issue 12's (pipeline, server): a bad push gets a clear
`CsmlabError`, changes nothing, and the session goes on with the next chunk."""
import asyncio
import math

import aiohttp
import numpy as np
import pytest
import torch

from csmlab.errors import AudioFormatError
from csmlab.pipeline import DuplexSession, ScriptedBrain, Utterance, make_brain
from csmlab.pipeline.brain import Said
from csmlab.serve import Settings
from csmlab.serve.app import serve_in_thread
from csmlab.widget.frames import KIND_MIC, KIND_SYSTEM, pack_frame, unpack_frame

RATE = 24_000
FRAME = 1920


def tone(seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def scripted() -> ScriptedBrain:
    return ScriptedBrain([Utterance(0, tone(0.32), RATE, "hello")])  # no codec: cheap


def pushed(bad_seqs=()) -> tuple[np.ndarray, dict]:
    """A session fed 6 numbered frames, with each of `bad_seqs` pushed (and refused) after the second."""
    session = DuplexSession(scripted())
    audio, steps = tone(0.48), []
    for i in range(6):
        steps += session.push(audio[i * FRAME:(i + 1) * FRAME], RATE, seq=i)
        if i == 1:
            for seq in bad_seqs:
                with pytest.raises(AudioFormatError, match="seq must be an int"):
                    session.push(audio[:FRAME], RATE, seq=seq)
    frames = session.report()["frames"]
    session.close()
    return np.concatenate([s.pcm for s in steps]), frames


def test_a_bad_seq_is_refused_before_anything_changes():
    """"abc" and NaN escaped as a bare ValueError after the jitter buffer had counted the frame
    (received != consumed + held); 1.5 and True were taken as frames 1 and 1."""
    clean, clean_frames = pushed()
    got, frames = pushed(["abc", math.nan, 1.5, True, b"2"])
    assert np.array_equal(got, clean)
    assert frames == clean_frames


def test_a_bad_audio_frame_to_the_server_is_answered_and_the_session_goes_on():
    """A well-formed frame whose samples are not audio (int16 PCM sent as float, 1e20) passes the
    frame layout check and is refused by the pipeline's push: the server used to close the whole
    session (1011); it answers with an error and keeps streaming."""

    async def talk(port):
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{port}/api/frames") as ws:
                await ws.receive_json(timeout=10)  # ready
                errors = []
                for seq, scale in enumerate([32767, 1e20]):
                    await ws.send_bytes(pack_frame(KIND_MIC, seq, 0.0, tone(0.08) * scale))
                    errors.append(await ws.receive_json(timeout=10))
                await ws.send_bytes(pack_frame(KIND_MIC, 2, 0.0, tone(0.08)))
                reply = await ws.receive(timeout=10)
                return errors, reply

    with serve_in_thread(Settings(port=0, listen=True), scripted) as server:
        errors, reply = asyncio.run(talk(server.port))
    assert [e["type"] for e in errors] == ["error", "error"]
    assert "divide by 32768" in errors[0]["message"] and "not audio samples" in errors[1]["message"]
    assert reply.type == aiohttp.WSMsgType.BINARY and unpack_frame(reply.data, kind=KIND_SYSTEM).seq == 2


BAD_OUTPUTS = {  # what a brain (a learner's, or one with a bug) might return
    "codes as a 0-d array": Said(codes=np.int64(5)),
    "codes in bf16": Said(codes=torch.zeros(8, dtype=torch.bfloat16)),
    "two frames of 4 codes": Said(codes=np.zeros((2, 4), np.int64)),
    "pcm at int16 scale": Said(pcm=np.full(FRAME, 9000.0, np.float32)),
    "pcm of 1e20": Said(pcm=np.full(FRAME, 1e20, np.float32)),
    "pcm as text": Said(pcm="abc"),
}


@pytest.mark.parametrize("case", BAD_OUTPUTS)
def test_a_bad_brain_output_is_silence_and_a_fault_and_the_session_goes_on(case):
    """A 0-d or bf16 `codes` escaped from push as IndexError/TypeError (the frame was lost); a pcm
    of 9000 or 1e20 went out to the speaker as it was."""
    brain = make_brain("loopback")
    brain.step = lambda heard: BAD_OUTPUTS[case]
    session = DuplexSession(brain)
    try:
        steps = session.push(tone(0.08), RATE)
        assert len(steps) == 1 and steps[0].fault in ("bad_output", "decode_error")
        assert not steps[0].pcm.any()
        brain.step = lambda heard: Said(pcm=np.full(FRAME, 0.25, np.float32))
        assert session.push(tone(0.08), RATE)[0].pcm[0] == np.float32(0.25)  # the next step is fine
    finally:
        session.close()


# ---- issue 25: compute bounded by real input ----------------------------------------------------
def test_a_seq_jump_after_a_long_chunk_costs_the_real_audio_not_minutes_of_concealment():
    """push(10 s chunk, seq=last+50) was 5,875 steps (470 s): concealment took the chunk's length
    for each of 49 missing frames. Now the gap is longer than the concealment credit: skipped."""
    with DuplexSession(scripted()) as session:
        steps = [s for i in range(5) for s in session.push(tone(0.08), RATE, seq=i)]
        steps += session.push(tone(10.0), RATE, seq=4 + 50) + session.end()  # held until more come, or the end
        frames = session.report()["frames"]
    assert len(steps) == 5 + 10_000 // 80  # the real audio's frames, and nothing else
    assert frames["skipped"] == 49 and frames["concealed"] == 0
    assert frames["received"] == frames["consumed"] == 6


def test_concealment_never_exceeds_the_credit_plus_the_frames_consumed():
    """A sender that jumps by the concealment credit every frame gets at most one concealed frame
    per real one (after the first burst), each as long as its shorter real neighbour."""
    from csmlab.pipeline.jitter import JitterBuffer

    jb = JitterBuffer(window=1, max_gap=50, max_conceal=12)
    out, seq = [], 0
    for i in range(40):
        out += jb.push(seq, np.ones(100 if i % 2 else 10_000, np.float32))
        seq += 13 if i % 2 else 2  # gaps of 12 (the whole credit) and of 1
    c = jb.counts
    assert c.concealed <= jb.max_conceal + c.consumed and c.skipped > 0
    concealed = [r for r in out if r.concealed]
    assert concealed and max(len(r.audio) for r in concealed) <= 100  # the short neighbour's length
