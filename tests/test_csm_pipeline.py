"""CSM <-> Moshi on the small offline models: one Mimi, so codes pass from one model to the other.

The bridge lives in `csmlab.pipeline.bridge`; `csmlab.csm` alone must not pull in `csmlab.moshi`.
"""
import subprocess
import sys

import numpy as np
import pytest

from csmlab import csm
from csmlab import moshi as M
from csmlab.errors import CsmlabError
from csmlab.metrics import FRAME_SIZE
from csmlab.pipeline import bridge


def test_csm_frames_are_moshi_user_tokens(voice, moshi):
    codes = voice.generate_codes("Hello, this is Diane.", max_audio_ms=800, sampling=csm.Sampling(greedy=True))
    steps = bridge.csm_codes_to_moshi(moshi, codes, seed=0)
    assert [s.index for s in steps] == list(range(len(codes)))
    assert steps[-1].audio.shape == (moshi.lm.dep_q,)  # Moshi answers with its own 8 codebooks
    again = bridge.csm_codes_to_moshi(moshi, codes, seed=0)
    assert [s.text_token for s in again] == [s.text_token for s in steps]  # seeded: reproducible


def test_moshi_monologue_is_voiced_by_csm(voice, moshi):
    steps = [M.Step(0, 5, " hello", None, 0.0), M.Step(1, 3, "", None, 0.0), M.Step(2, 9, " there", None, 0.0)]
    assert bridge.moshi_says(steps) == "hello there"
    chunks = list(bridge.moshi_to_csm(voice, steps, max_audio_ms=240, sampling=csm.Sampling(greedy=True)))
    assert [c.shape for c in chunks] == [(FRAME_SIZE,)] * 3
    assert all(np.isfinite(c).all() for c in chunks)
    with pytest.raises(CsmlabError, match="empty"):
        bridge.moshi_to_csm(voice, steps[1:2])


def test_csm_does_not_import_moshi():
    """Voice and brain meet only in the pipeline: loading csmlab.csm leaves the Moshi LM code unloaded."""
    code = "import sys, csmlab.csm; print(sorted(m for m in sys.modules if m.startswith(('csmlab.moshi', 'moshi'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys, csmlab.pipeline.bridge; print('csmlab.moshi' in sys.modules)"  # the check can see an import
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "True"


def test_compatibility_table_is_computed_from_the_configs():
    rows = dict((prop, (c, m)) for prop, c, m in bridge.compatibility_table())
    assert rows["codebooks per frame"] == ("32", "8 (Moshi) + 8 (user)")
    other = {**M.REAL_CONFIG, "dep_q": 4, "n_q": 8}
    rows = dict((prop, (c, m)) for prop, c, m in bridge.compatibility_table(moshi_config=other))
    assert rows["codebooks per frame"][1] == "4 (Moshi) + 4 (user)"
