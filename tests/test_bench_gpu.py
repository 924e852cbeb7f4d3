"""`csmlab bench gpu` as a dry run on the CPU, the real-size builders, and device/dtype discipline.

The GPU run is one short lease: everything it executes runs here first, on the small offline
models (`--size small`) and on the real-size code path with shrunk configs (`--size real`), so a
typo cannot spend it. A CPU has no second device to catch a tensor left behind, so the device
checks use `meta` (a device with shapes and no data) and `SameDevice`, which records any op whose
tensors sit on two devices (what fails on a GPU, or silently runs a layer on the CPU).
"""
import json

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from csmlab.cli import main

SETS = ("moshi_one", "moshi_batch", "csm", "pipeline", "mimi")
TINY = ["--device", "cpu", "--steps", "2", "--warmup", "1", "--batch-steps", "1", "--batches", "1", "2",
        "--mimi-batches", "1", "2", "--seconds", "0.5", "--csm-frames", "3", "--threads", "1"]


def _run(tmp_path, *extra):
    main(["bench", "gpu", "--out", str(tmp_path), *TINY, *extra])
    return {name: json.loads((tmp_path / f"gpu_{name}.json").read_text()) for name in SETS
            if (tmp_path / f"gpu_{name}.json").exists()}


def _check_common(files, size: str, sets=SETS):
    assert set(files) == set(sets)
    for name, figures in files.items():
        assert "error" not in figures, (name, figures.get("error"))
        assert figures["device"] == "cpu" and figures["size"] == size and figures["torch"] == torch.__version__
        assert figures["command"].startswith("csmlab bench gpu --out") and "--size" in figures["command"]
        assert figures["machine"]["cpu_cores"] >= 1 and figures["name"]
    one = files["moshi_one"]["eager"]
    for part in ("step", "temporal", "depformer", "step_unsplit"):
        assert one["lm"][part]["n"] == 2 and one["lm"][part]["p50"] > 0
    assert one["mimi"]["encode"]["p50"] > 0 and one["mimi"]["decode"]["p50"] > 0
    for run in files["csm"]["runs"].values():
        assert run["frames"] >= 1 and run["audio_s"] == pytest.approx(run["frames"] * 0.08)
        assert run["first_audio_ms"] > 0 and run["rtf"] > 0
    pipe = files["pipeline"]
    assert pipe["all_on_device"] and pipe["devices_seen"]["moshi lm (text ids)"] == ["cpu"]
    assert pipe["report"]["compute_ms"]["total"]["n"] >= 1
    if "moshi_batch" in files:
        batch = files["moshi_batch"]["batches"]
        assert [row["conversations"] for row in batch][:1] == [1]
        assert all(row["kv_state_mib_per_conversation"] > 0 for row in batch)
    if "mimi" in files:
        assert [row["streams"] for row in files["mimi"]["batches"]] == [1, 2]


def test_dry_run_on_the_small_offline_models(tmp_path, moshi):
    """The loading paths of `--size small` (the batch and Mimi sets use the same models: the real-size
    run below covers all five)."""
    sets = ("moshi_one", "csm", "pipeline")
    files = _run(tmp_path, "--size", "small", "--only", *sets)
    _check_common(files, "small", sets)
    assert all("OFFLINE" in w for w in files["pipeline"]["weights"])


@pytest.fixture
def shrunk(monkeypatch):
    """`--size real` builds the released configs; here the same builders on small ones."""
    from transformers import CsmDepthDecoderConfig

    from csmlab.bench import gpu
    from csmlab.moshi import REAL_CONFIG
    from csmlab.weights.offline.csm import DEPTH_ROPE, SMALL_BACKBONE, SMALL_DEPTH
    from csmlab.weights.offline.moshi import SMALL

    depth = CsmDepthDecoderConfig(backbone_hidden_size=SMALL_BACKBONE["hidden_size"], rope_scaling=DEPTH_ROPE, **SMALL_DEPTH)
    monkeypatch.setattr(gpu, "REAL_MOSHI", REAL_CONFIG | SMALL)
    monkeypatch.setattr(gpu, "REAL_CSM", dict(SMALL_BACKBONE, depth_decoder_config=depth.to_dict()))


def test_dry_run_of_the_real_size_path_on_shrunk_configs(tmp_path, shrunk):
    files = _run(tmp_path, "--size", "real")
    _check_common(files, "real")
    assert all("RANDOM" in w for w in files["csm"]["weights"]) and len(files["csm"]["weights"]) == 2
    assert files["csm"]["model_dtype"] == "torch.bfloat16"


def test_a_failing_set_is_written_and_the_command_fails(tmp_path, monkeypatch):
    from csmlab.bench import gpu

    def broken(models, args):
        raise RuntimeError("no kernel for this op")

    monkeypatch.setitem(gpu.FIGURES, "csm", broken)
    with pytest.raises(SystemExit, match="csm"):
        main(["bench", "gpu", "--out", str(tmp_path), "--only", "csm", *TINY])
    assert "no kernel for this op" in json.loads((tmp_path / "gpu_csm.json").read_text())["error"]


# --------------------------------------------------------------------------- real-size random weights
def test_random_lm_is_built_through_meta_and_filled_on_the_device():
    from csmlab.bench.on_device import STD, random_lm
    from csmlab.moshi import REAL_CONFIG
    from csmlab.weights.offline.moshi import SMALL

    lm = random_lm(REAL_CONFIG | SMALL, "cpu", torch.bfloat16, seed=3)
    params = dict(lm.named_parameters())
    assert {p.device.type for p in params.values()} == {"cpu"} and {p.dtype for p in params.values()} == {torch.bfloat16}
    for name, p in params.items():  # to_empty leaves garbage: every tensor must have been written
        assert torch.isfinite(p.float()).all(), name
        if p.dim() == 1:
            assert (p == (0 if name.endswith("bias") else 1)).all(), name
        elif p.numel() > 10_000:
            assert abs(p.float().std().item() - STD) < 0.1 * STD, name
    again = random_lm(REAL_CONFIG | SMALL, "cpu", torch.bfloat16, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(lm.parameters(), again.parameters()))


def test_random_mimi_fills_its_codebooks_and_codes_spread():
    from csmlab.bench.on_device import random_mimi

    mimi = random_mimi("cpu", num_codebooks=8)
    assert not any(t.is_meta for t in [*mimi.parameters(), *mimi.buffers()])
    books = [m for n, m in mimi.named_modules() if n.endswith("_codebook")]
    assert len(books) == 32 and all(b.initialized and b.embedding.abs().sum() > 0 for b in books)
    with torch.no_grad():
        codes = mimi.encode(0.1 * torch.randn(1, 1, 1920 * 4, generator=torch.Generator().manual_seed(0)))
    assert codes.shape == (1, 8, 4) and len(codes.unique()) > 4  # an uninitialised codebook gives 0 everywhere


# --------------------------------------------------------------------------- device and dtype discipline
class SameDevice(TorchFunctionMode):
    """Records every torch call whose tensor arguments sit on more than one device (CPU scalars aside:
    those are allowed beside GPU tensors)."""

    def __init__(self):
        super().__init__()
        self.mixed = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        tensors = [t for t in tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
        if len(devices) > 1 and func not in (torch.Tensor.to, torch.Tensor.copy_, torch.Tensor.__setitem__):
            self.mixed.append((getattr(func, "__name__", str(func)), sorted(devices)))
        return func(*args, **(kwargs or {}))


def _meta_moshi():
    """A Moshi whose LM and Mimi sit on `meta` (shapes only), as `random_moshi` returns them."""
    from pathlib import Path

    from moshi.models.loaders import get_mimi

    from csmlab.bench.on_device import NumberedPieces
    from csmlab.moshi import REAL_CONFIG, Moshi, meta_model
    from csmlab.weights.offline.moshi import SMALL
    from csmlab.weights import WeightsSource

    lm = meta_model(REAL_CONFIG | SMALL).eval()
    mimi = get_mimi(None, device="meta").eval()
    return Moshi(lm, mimi, NumberedPieces(), WeightsSource("moshi", "random", Path("random:meta"), "a test"))


def _state_devices(states) -> set:
    return {v.device.type for s in states.values() for v in vars(s).values() if isinstance(v, torch.Tensor)}


def test_the_sessions_codec_follows_moshis_device():
    """A session's Mimi stayed on the CPU beside a Moshi on the GPU (`MoshiBackend` loaded on "cpu",
    `moshi_codec` passed no device): every encode and decode would have run there."""
    from csmlab.codec.batch import CodecBatch
    from csmlab.pipeline.moshi_brain import moshi_codec

    model = _meta_moshi()
    codec = moshi_codec(model)
    assert codec.backend.device.type == "meta" and not codec.weights.is_real
    with codec.stream() as session:
        assert _state_devices(session._stream._state) == {"meta"}
    batch = CodecBatch(codec, 2)
    assert _state_devices(batch.state) == {"meta"}
    slot = batch.join()
    with SameDevice() as mode, pytest.raises(NotImplementedError):  # meta holds no data to copy back
        batch.encode({slot: np.zeros(1920, np.float32)})
    assert mode.mixed == []


def test_a_bf16_moshi_keeps_every_session_tensor_in_bf16():
    from csmlab import moshi as M
    from csmlab.moshi.batch import MoshiBatch

    model = M.load(dtype=torch.bfloat16)
    stream = M.MoshiStream(model, seed=1)
    codes = np.arange(model.num_user_codebooks)
    steps = [stream.step(codes) for _ in range(3)]
    assert steps[-1].audio is not None and steps[-1].audio.dtype == torch.int64
    batch = MoshiBatch(model, 2)
    slot = batch.join(seed=1)
    assert [batch.step({slot: codes}) for _ in range(3)][-1][slot].audio is not None
    for states in (*stream._state, *batch.states):
        floats = {v.dtype for s in states.values() for v in vars(s).values()
                  if isinstance(v, torch.Tensor) and v.is_floating_point()}
        caches = {s.kv_cache.cache.dtype for s in states.values() if getattr(s, "kv_cache", None) is not None}
        assert floats | caches <= {torch.bfloat16}, floats | caches


def test_csm_loads_and_streams_in_bf16():
    """`load_csm(dtype=bf16)` failed: the codebooks CSM holds in bf16 were compared with fp32 Mimi's at
    atol 1e-3, and bf16 rounding alone is larger."""
    from csmlab.csm import load_csm

    voice = load_csm(dtype=torch.bfloat16)
    chunks = list(voice.stream("Hello there.", max_audio_ms=160))
    assert voice.model.dtype == torch.bfloat16 and len(chunks) >= 1 and all(len(c) == 1920 for c in chunks)


def test_the_states_csmlab_keeps_never_replay_moshis_cuda_graphs(monkeypatch, moshi, mimi):
    """On a GPU moshi builds every LMGen and Mimi streaming state with CUDA graphs on; csmlab's states
    change rows and shapes between calls, so each one it keeps must have them off (here moshi is made
    to build them as on a GPU)."""
    from moshi.utils import compile as moshi_compile

    from csmlab.codec.batch import CodecBatch
    from csmlab.moshi import MoshiStream
    from csmlab.moshi.batch import MoshiBatch

    built, init = [], moshi_compile.CUDAGraphed.__init__

    def as_on_a_gpu(self, func, warmup_steps=1, disable=False):
        init(self, func, warmup_steps, disable=False)
        built.append(self)

    monkeypatch.setattr(moshi_compile.CUDAGraphed, "__init__", as_on_a_gpu)
    kept = [MoshiStream(moshi), MoshiBatch(moshi, 2), mimi.stream(), CodecBatch(mimi, 2)]
    assert len(built) >= 2 * 2 + 2 * 4 and all(graph.disable for graph in built), len(kept)
