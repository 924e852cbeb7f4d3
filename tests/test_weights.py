"""The resolver picks the right source and says why; the offline Mimi has the released format."""
import json
import socket
import time

import numpy as np
import pytest
import torch
from moshi.models import loaders
from safetensors import safe_open

from csmlab.weights.checkpoint import checkpoint_state
from csmlab.data import real_recording
from csmlab.errors import ConfigError, CsmlabError, WeightsNotFoundError
from csmlab.weights import MIMI_FILE, MOSHI_FILE, MOSHI_TOKENIZER, locate, resolve


@pytest.fixture
def online(monkeypatch):
    """Pretend offline is not forced (CI forces it)."""
    monkeypatch.delenv("CSMLAB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to open a network connection."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network touched: {args}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # a lookup comes first: offline it fails, and is retried


def test_missing_explicit_path_says_what_to_do(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="CSMLAB_MIMI") as err:
        resolve("mimi", tmp_path / "nope.safetensors")
    assert isinstance(err.value, CsmlabError)


def test_env_var_path_wins(tmp_path, monkeypatch):
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"x")
    monkeypatch.setenv("CSMLAB_MIMI", str(ckpt))
    source = resolve("mimi")
    assert (source.kind, source.path, source.is_real) == ("local", ckpt, True)
    assert "CSMLAB_MIMI" in source.why


def test_unknown_model_is_rejected():
    with pytest.raises(ConfigError, match="choose one of"):
        locate("whisper")


def test_forced_offline_touches_no_network(monkeypatch, no_network):
    monkeypatch.setenv("CSMLAB_OFFLINE", "1")
    source = resolve("mimi")
    assert source.kind == "offline" and not source.is_real
    assert "CSMLAB_OFFLINE" in source.why
    assert "NOT the released model" in source.banner()


def test_hugging_face_cache_is_used_without_network(tmp_path, monkeypatch, online, no_network):
    snapshot = tmp_path / "models--kyutai--moshiko-pytorch-bf16" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / MIMI_FILE).write_bytes(b"x")
    (tmp_path / "models--kyutai--moshiko-pytorch-bf16" / "refs").mkdir()
    (tmp_path / "models--kyutai--moshiko-pytorch-bf16" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    source = resolve("mimi")
    assert source.kind == "hub" and source.path == snapshot / MIMI_FILE
    assert "cache" in source.why


def _hub_cache(root, repo: str, files: dict[str, str]):
    """A Hugging Face cache folder laid out as the hub lays it out: snapshots/<hash>/..., refs/main."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    for name, text in files.items():
        (snapshot / name).write_text(text)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    return snapshot


@pytest.mark.parametrize("with_config", [False, True])
def test_moshi_from_a_warm_cache_without_network_needs_no_config_fetch(tmp_path, monkeypatch, online, no_network,
                                                                       with_config):
    """On a plane: real weights in the HF cache, no network. moshi's `from_hf_repo` would fetch config.json."""
    files = {MOSHI_FILE: "x", MIMI_FILE: "x", MOSHI_TOKENIZER: "x"}
    if with_config:
        files["config.json"] = json.dumps({"dim": 64, "text_card": 100})
    snapshot = _hub_cache(tmp_path, "kyutai/moshiko-pytorch-bf16", files)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("csmlab.weights.hub_reachable", lambda *a, **k: False)  # what a plane answers

    def fetch(*args, **kwargs):  # moshi's loader asking the hub: offline, 5 retries (23 s here), then a guess
        raise AssertionError(f"tried to fetch {args}")

    monkeypatch.setattr("moshi.models.loaders.hf_hub_download", fetch)
    source = resolve("moshi")
    assert source.kind == "hub" and source.path == snapshot and source.is_real
    info = source.checkpoint_info()
    assert (info.moshi_weights, info.mimi_weights, info.tokenizer) == tuple(snapshot / f for f in files if f != "config.json")
    assert info.raw_config == (json.loads(files["config.json"]) if with_config else None)  # None: moshi's 7B defaults


def test_unreachable_hub_falls_back_within_seconds(tmp_path, monkeypatch, online):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # loopback port with no server
    start = time.monotonic()
    source = resolve("mimi")
    assert time.monotonic() - start < 10
    assert source.kind == "offline" and "unreachable" in source.why


@pytest.fixture(scope="module")
def offline_mimi(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSMLAB_OFFLINE", "1")
        return resolve("mimi").path


def test_offline_mimi_has_the_released_keys_and_shapes(offline_mimi):
    expected = {k: tuple(v.shape) for k, v in checkpoint_state(loaders.get_mimi(None)).items()}
    with safe_open(str(offline_mimi), "pt") as f:
        stored = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert stored == expected
    assert any(k.endswith("self_attn.in_proj_weight") for k in stored)
    assert not any("in_projs" in k or "out_projs" in k for k in stored)


@pytest.fixture(scope="module")
def speech():
    audio = real_recording(24000).audio[24000 * 7 : 24000 * 15]  # both speakers talk here
    return audio[None, None].astype(np.float32)  # [B, C, T]


def test_offline_mimi_codes_are_diverse_in_every_codebook(offline_mimi, speech):
    mimi = loaders.get_mimi(offline_mimi, num_codebooks=8)
    with torch.no_grad():
        codes = mimi.encode(torch.from_numpy(speech))[0]  # [K, T]
    distinct = [len(torch.unique(row)) for row in codes]
    assert min(distinct) >= codes.shape[1] // 5, distinct


def test_offline_mimi_loads_in_rustymimi_with_the_same_codes(offline_mimi, speech):
    rustymimi = pytest.importorskip("rustymimi")
    mimi = loaders.get_mimi(offline_mimi, num_codebooks=8)
    with torch.no_grad():
        expected = mimi.encode(torch.from_numpy(speech)).numpy()
    codes = rustymimi.Tokenizer(str(offline_mimi), num_codebooks=8).encode(speech)
    assert codes.shape == expected.shape
    assert (codes[:, 0] == expected[:, 0]).all()
    assert (codes == expected).mean() >= 0.99
