"""Fixtures that many test modules share: one torch thread, the real call, the loaded models,
`csmlab serve` in a process of its own.

Models load once per test session (the offline Moshi and CSM take seconds each) and tests only
read them: every csmlab call on a model installs its own session's streaming state under the
model's lock (`csmlab.locks`), so no test's streams reach another's. Codecs come from
`load_codec`, which caches them anyway. Audio is loaded per module (cheap), so that no module
sees what another did to its arrays. Models are imported inside their fixtures: a module that needs
none (the server's config, the audio rules) does not pay for importing transformers.
"""
import os
from contextlib import contextmanager

import pytest
import torch
from hypothesis import settings

from csmlab.data import real_recording

# Property-based tests (hypothesis): CI runs a fixed, derandomized set of examples, quickly and the
# same every time, and keeps no example database in the repository. More on demand:
#   pytest tests/test_properties.py --hypothesis-profile thorough
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, deadline=None,
                          print_blob=True)
settings.register_profile("thorough", max_examples=2000, database=None, deadline=None)
settings.load_profile(os.environ.get("CSMLAB_HYPOTHESIS_PROFILE", "ci"))
# Mimi's CPU stream kernels are chosen by timing them once per host (csmlab.codec.tuning): tests run
# the fast path without timing anything; tests/test_codec_tuning.py tests the choice itself.
os.environ.setdefault("CSMLAB_CODEC_KERNELS", "fast")
# A duplex session with Moshi's brain measures its step on 1 and on 2 threads at start
# (csmlab.pipeline.threads): tests run one thread without timing; tests/test_step_threads.py tests the choice.
os.environ.setdefault("CSMLAB_STEP_THREADS", "1")


@contextmanager
def torch_threads(n: int):
    """torch's intra-op thread count set to `n` for a block: one setting for the whole process."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def streaming_tensors(tree) -> list[torch.Tensor]:
    """Every tensor in a nested moshi streaming state (ring caches, offsets), in a fixed order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree) for t in streaming_tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in streaming_tensors(item)]
    return [t for value in vars(tree).values() for t in streaming_tensors(value)] if hasattr(tree, "__dict__") else []


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
    from csmlab.codec import load_codec

    return load_codec(8, "moshi")


@pytest.fixture(scope="session")
def small_codec():
    """The small trained Mimi: fast, and its audio follows the input (checks run before the model)."""
    from csmlab.codec import load_codec

    return load_codec(8, listen=True)


@pytest.fixture(scope="session")
def moshi():
    """The small offline Moshi (real structure, random weights), shared by every module."""
    from csmlab import moshi

    return moshi.load()


@pytest.fixture(scope="session")
def voice():
    """The small offline CSM (real structure, random weights), shared by every module."""
    from csmlab.csm import load_csm

    return load_csm()


@pytest.fixture(scope="module")
def csmlab_serve():
    """`start(*flags)` runs `csmlab serve --port 0 *flags` offline in its own process and returns a
    `Served` once the brain is ready (`csmlab.bench.soak.start_server`); every process still running
    when the module ends is killed."""
    from csmlab.bench.soak import start_server

    processes = []

    def start(*flags: str):
        served = start_server(*flags, env={**os.environ, "CSMLAB_OFFLINE": "1"})
        processes.append(served.process)
        return served

    yield start
    for process in processes:
        process.kill()
        process.wait()
