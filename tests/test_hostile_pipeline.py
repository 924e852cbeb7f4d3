"""Hostile input through the layers built on issue 12's (pipeline, server): a bad push gets a clear
`CsmlabError`, changes nothing, and the session goes on with the next chunk."""
import math

import numpy as np
import pytest
import torch

from csmlab.errors import AudioFormatError
from csmlab.pipeline import DuplexSession, ScriptedBrain, Utterance, make_brain

RATE = 24_000
FRAME = 1920


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
