"""CSM <-> Moshi on the small offline models: one Mimi, so codes pass from one model to the other."""
import numpy as np
import pytest
import torch

from csmlab import csm
from csmlab import moshi as M
from csmlab.errors import CsmlabError
from csmlab.metrics import FRAME_SIZE


@pytest.fixture(scope="module")
def models():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: one thread is faster
    yield csm.load_csm(), M.load()
    torch.set_num_threads(threads)


def test_csm_frames_are_moshi_user_tokens(models):
    voice, moshi = models
    codes = voice.generate_codes("Hello, this is Diane.", max_audio_ms=800, sampling=csm.Sampling(greedy=True))
    steps = csm.csm_codes_to_moshi(moshi, codes, seed=0)
    assert [s.index for s in steps] == list(range(len(codes)))
    assert steps[-1].audio.shape == (moshi.lm.dep_q,)  # Moshi answers with its own 8 codebooks
    again = csm.csm_codes_to_moshi(moshi, codes, seed=0)
    assert [s.text_token for s in again] == [s.text_token for s in steps]  # seeded: reproducible


def test_moshi_monologue_is_voiced_by_csm(models):
    voice, moshi = models
    steps = [M.Step(0, 5, " hello", None, 0.0), M.Step(1, 3, "", None, 0.0), M.Step(2, 9, " there", None, 0.0)]
    assert csm.moshi_says(steps) == "hello there"
    chunks = list(csm.moshi_to_csm(voice, steps, max_audio_ms=240, sampling=csm.Sampling(greedy=True)))
    assert [c.shape for c in chunks] == [(FRAME_SIZE,)] * 3
    assert all(np.isfinite(c).all() for c in chunks)
    with pytest.raises(CsmlabError, match="empty"):
        csm.moshi_to_csm(voice, steps[1:2])
