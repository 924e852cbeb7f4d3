"""Fixtures that many test modules share: one torch thread, the real call, the loaded models.

Models load once per test session (the offline Moshi and CSM take seconds each) and tests only
read them: every csmlab call on a model installs its own session's streaming state under the
model's lock (`csmlab.locks`), so no test's streams reach another's. Codecs come from
`load_codec`, which caches them anyway. Audio is loaded per module (cheap), so that no module
sees what another did to its arrays.
"""
from contextlib import contextmanager

import pytest
import torch

from csmlab import csm
from csmlab import moshi as M
from csmlab.codec import load_codec
from csmlab.data import real_recording


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` for a block: one setting for the whole process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Small models on a shared CPU: one torch thread is faster, and on a busy 2-core machine
    several times faster (DEVELOPERS.md, "Threads"). Tests that need more set it themselves."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def call():
    """The real two-party telephone call at its own rate (16 kHz): (audio, sample_rate)."""
    rec = real_recording()
    return rec.audio, rec.sample_rate


@pytest.fixture(scope="module")
def speech():
    """1 s of speech from the call at 16 kHz (the call opens with 7 s of hiss)."""
    return real_recording(16_000).audio[8 * 16_000: 9 * 16_000]


@pytest.fixture(scope="session")
def mimi():
    """The full-size offline Mimi (random weights) with Moshi's 8 codebooks, on moshi's backend."""
    return load_codec(8, "moshi")


@pytest.fixture(scope="session")
def small_codec():
    """The small trained Mimi: fast, and its audio follows the input (checks run before the model)."""
    return load_codec(8, listen=True)


@pytest.fixture(scope="session")
def moshi():
    """The small offline Moshi (real structure, random weights), shared by every module."""
    return M.load()


@pytest.fixture(scope="session")
def voice():
    """The small offline CSM (real structure, random weights), shared by every module."""
    return csm.load_csm()

