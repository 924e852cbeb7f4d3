"""Where every model comes from, and an honest answer about which weights are in use.

Each model is resolved in this order, and the answer says which source won and why:

1. an explicit path (argument, or the env var `CSMLAB_MIMI` / `CSMLAB_MOSHI` / `CSMLAB_CSM`);
2. the Hugging Face cache, then the hub itself (with its progress bar), unless offline is forced
   with `CSMLAB_OFFLINE=1` (CI sets it) or `HF_HUB_OFFLINE=1`;
3. an **offline checkpoint in the real file format**, built locally once and cached under
   `CSMLAB_CACHE` (default `~/.cache/csmlab`). Its weights are random or locally calibrated: timings
   and memory on it are real figures, its audio and text are not the real model's.

| name    | real source                                   | what `path` is                           |
|---------|-----------------------------------------------|------------------------------------------|
| `mimi`  | kyutai/moshiko-pytorch-bf16, Mimi checkpoint  | moshi-format Mimi `.safetensors` file    |
| `moshi` | kyutai/moshiko-pytorch-bf16                   | folder: LM, Mimi, tokenizer (+config)    |
| `csm`   | sesame/csm-1b (gated: accept its licence)     | transformers folder for `from_pretrained`|

For *listening*, `resolve_listening()` swaps the offline Mimi for a fourth kind, `"small"`: a 2.6 M
parameter Mimi trained on this project's CPU on synthetic speech and shipped in
`csmlab/assets/mimi_small/` (notebook 01b). Its output follows the speech it is given (rhythm,
loudness, broad spectrum; not yet clear words) where the full-size random Mimi plays noise; the
full-size one stays the stand-in for compute and compatibility measurements.
"""
from __future__ import annotations

import hashlib
import json
import importlib
import inspect
import os
import shutil
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from filelock import FileLock

from csmlab.errors import ConfigError, WeightsNotFoundError

MIMI_FILE = "tokenizer-e351c8d8-checkpoint125.safetensors"
MOSHI_FILE = "model.safetensors"
MOSHI_TOKENIZER = "tokenizer_spm_32k_3.model"
HUB_TIMEOUT_S = 3.0
SMALL_MIMI_DIR = Path(__file__).resolve().parents[1] / "assets" / "mimi_small"
FULL_SIZE_OFFLINE = ("mimi",)  # the offline stand-ins built at the released size (Moshi and CSM are small)


@dataclass(frozen=True)
class WeightsSource:
    """Which checkpoint a model will load, where it lies, and why that one."""

    model: str
    kind: str  # "local", "hub", "offline", "small", or "random" (real-size random weights built on the device)
    path: Path
    why: str

    @property
    def is_real(self) -> bool:
        """True for released weights; False for the offline stand-ins, the small trained Mimi and random weights."""
        return self.kind in ("local", "hub")

    @property
    def config(self) -> dict | None:
        """The model config stored beside a small Mimi (its loaders need it); None for released formats."""
        return json.loads((self.path.parent / "config.json").read_text()) if self.kind == "small" else None

    def __str__(self) -> str:
        label = {"offline": "OFFLINE stand-in (random weights, NOT the real model)",
                 "random": "RANDOM weights at real size, built on the device (NOT the real model)",
                 "small": "SMALL Mimi trained locally on synthetic speech (NOT Kyutai's Mimi)"}
        return f"{self.model}: {label.get(self.kind, 'REAL weights')} [{self.kind}] {self.path} -- {self.why}"

    def banner(self) -> str:
        """A loud multi-line notice for notebooks and CLI output."""
        if self.is_real:
            return f"✅ {self.model}: real weights from {self.kind}: {self.path}"
        bar = "!" * 78
        if self.kind == "small":
            return (
                f"{bar}\n!! MIMI: a SMALL Mimi trained on this project's CPU on synthetic espeak-ng speech\n"
                f"!! (2.6 M parameters, 8 codebooks of 1024), NOT Kyutai's Mimi. Its audio keeps the\n"
                f"!! rhythm and broad colour of speech, not clear words; its codes are not Mimi's and\n"
                f"!! its timings say nothing about Mimi. Why: {self.why}\n"
                f"!! Get the real weights: run online (unset CSMLAB_OFFLINE) or set {_env_var(self.model)}.\n{bar}"
            )
        if self.kind == "random":
            return (f"{bar}\n!! {self.model.upper()}: RANDOM weights at the real size, built on the device: compute,\n"
                    f"!! memory and timing are real; its audio/text/codes are noise. Why: {self.why}\n{bar}")
        return (
            f"{bar}\n!! {self.model.upper()}: OFFLINE weights in the real file format, NOT the released model.\n"
            f"!! {self.offline_cost()}; its audio/text/codes\n!! are not what the real model would produce. Why: {self.why}\n"
            f"!! Get the real weights: run online (unset CSMLAB_OFFLINE) or set {_env_var(self.model)}.\n{bar}"
        )

    def offline_cost(self) -> str:
        """What an offline stand-in's timings mean: Mimi's is the real architecture (random weights cost
        what real ones do); Moshi's and CSM's are small models of the real structure, so their timings
        are not the released models' (`csmlab bench moshi|csm` time those at real size)."""
        if self.model in FULL_SIZE_OFFLINE:
            return "Real architecture, random weights: compute, memory and timing are real"
        return (f"A SMALL model of the real structure: its compute, memory and timing are NOT\n"
                f"!! the released model's (`csmlab bench {self.model}` times that at real size)")

    def checkpoint_info(self):
        """moshi's `CheckpointInfo` for a `moshi` source, so it loads through moshi's own loader.

        moshi's `from_hf_repo` asks the hub for `config.json` when none is given, and raises
        without a network, even with every weight in the cache. So the config is looked for beside
        the weights, then in the Hugging Face cache; without one and without a reachable hub we take
        moshi's own answer for a repository without config.json (the released Moshi 7B's
        architecture) without asking: offline with a warm cache works, as on a plane.
        """
        from moshi.models.loaders import CheckpointInfo

        if self.model != "moshi":
            raise ConfigError("checkpoint_info() is for the 'moshi' source")
        files = dict(moshi_weights=self.path / MOSHI_FILE, mimi_weights=self.path / MIMI_FILE,
                     tokenizer=self.path / MOSHI_TOKENIZER)
        config = self._moshi_config()
        if config is None and (offline_forced() or not hub_reachable()):
            return CheckpointInfo(**files)  # lm_config None: moshi's Moshi 7B defaults
        return CheckpointInfo.from_hf_repo(SPECS["moshi"].repo, **files, config_path=config)

    def _moshi_config(self) -> Path | None:
        """`config.json` beside the weights, else in the Hugging Face cache (no network), else None."""
        beside = self.path / "config.json"
        if beside.exists():
            return beside
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(SPECS["moshi"].repo, "config.json", local_files_only=True))
        except Exception:  # noqa: BLE001 - any failure means "not cached"
            return None


@dataclass(frozen=True)
class _Spec:
    repo: str
    files: tuple[str, ...]  # () means the whole repository snapshot
    build: Callable[[Path], Path]  # offline builder: cache folder -> checkpoint path


def _env_var(model: str) -> str:
    return f"CSMLAB_{model.upper()}"


def cache_dir() -> Path:
    return Path(os.environ.get("CSMLAB_CACHE", Path.home() / ".cache" / "csmlab"))


def offline_forced() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("CSMLAB_OFFLINE", "HF_HUB_OFFLINE"))


def _build_mimi(folder: Path) -> Path:
    from csmlab.data import real_recording, speech_utterances
    from csmlab.weights.offline import mimi
    import numpy as np
    import soxr

    clips = [real_recording(24000).audio]
    clips += [soxr.resample(a, sr, 24000) for a, sr, _ in speech_utterances().values()]
    return mimi.build(folder / MIMI_FILE, np.concatenate(clips).astype("float32"))


def _build_moshi(folder: Path) -> Path:
    from csmlab.weights.offline import moshi

    moshi.build(folder, mimi_path=resolve_offline("mimi").path)
    return folder


def _build_csm(folder: Path) -> Path:
    from csmlab.weights.offline import csm

    csm.build(folder, mimi_path=resolve_offline("mimi").path)
    return folder


SPECS = {
    "mimi": _Spec("kyutai/moshiko-pytorch-bf16", (MIMI_FILE,), _build_mimi),
    "moshi": _Spec("kyutai/moshiko-pytorch-bf16", (MOSHI_FILE, MIMI_FILE, MOSHI_TOKENIZER), _build_moshi),
    "csm": _Spec("sesame/csm-1b", (), _build_csm),
}


def _spec(model: str) -> _Spec:
    if model not in SPECS:
        raise ConfigError(f"unknown model {model!r}; choose one of {sorted(SPECS)}")
    return SPECS[model]


def _snapshot(spec: _Spec, local_only: bool) -> Path:
    """The checkpoint from the Hugging Face cache (`local_only`) or the hub, with its progress bar."""
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(spec.repo, allow_patterns=list(spec.files) or None, local_files_only=local_only))
    return folder / spec.files[0] if len(spec.files) == 1 else folder


def _from_cache(spec: _Spec) -> Path | None:
    """The checkpoint from the local Hugging Face cache, without touching the network."""
    try:
        found = _snapshot(spec, local_only=True)
    except Exception:  # noqa: BLE001 - any failure means "not cached"
        return None
    folder = found.parent if len(spec.files) == 1 else found
    return found if all((folder / f).exists() for f in spec.files) else None


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """A TCP connect to the hub, so an unreachable hub costs seconds instead of minutes of retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _explicit(model: str, path: str | Path | None) -> WeightsSource | None:
    given, origin = (path, "argument") if path is not None else (os.environ.get(_env_var(model)), _env_var(model))
    if not given:
        return None
    given = Path(given).expanduser()
    if not given.exists():
        raise WeightsNotFoundError(
            f"{model}: {origin} points to {given}, which does not exist. Fix the path, or unset "
            f"{_env_var(model)} to let csmlab use the Hugging Face cache/hub or its offline checkpoint."
        )
    return WeightsSource(model, "local", given, f"explicit path from {origin}")


def _builder_version(model: str) -> str:
    """A hash of the offline builders' source: editing one rebuilds the cached checkpoints.

    Moshi and CSM embed the offline Mimi, so Mimi's builder is part of every hash.
    """
    names = dict.fromkeys(["mimi", model])
    source = "".join(inspect.getsource(importlib.import_module(f"csmlab.weights.offline.{n}")) for n in names)
    return hashlib.sha256(source.encode()).hexdigest()[:10]


def _offline_folder(model: str) -> Path:
    return cache_dir() / "offline" / f"{model}-{_builder_version(model)}"


def _remove_stale(current: Path) -> None:
    """Delete offline checkpoints of older builder versions of the same model (hundreds of MB each)."""
    model = current.name.rsplit("-", 1)[0]
    for old in current.parent.glob(f"{model}-*"):
        if old.is_dir() and old != current:
            shutil.rmtree(old, ignore_errors=True)
            old.with_name(old.name + ".lock").unlink(missing_ok=True)


def resolve_offline(model: str, why: str = "offline requested") -> WeightsSource:
    """The offline stand-in for `model`, built on first use (under a file lock) and cached."""
    spec = _spec(model)
    folder = _offline_folder(model)
    done = folder / ".complete"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            print(f"[csmlab] building the offline {model} checkpoint in {folder} (once) ...", flush=True)
            done.write_text(str(spec.build(folder)))
            _remove_stale(folder)
    return WeightsSource(model, "offline", Path(done.read_text()), why)


def locate(model: str, path: str | Path | None = None) -> WeightsSource:
    """Which source `resolve` would use, without downloading or building anything.

    A hub source not yet downloaded has the path `hf://<repo>`; an offline checkpoint not yet
    built has its future cache folder as path. `csmlab doctor` uses this to report cheaply.
    """
    spec = _spec(model)
    explicit = _explicit(model, path)
    if explicit is not None:
        return explicit
    if offline_forced():
        return WeightsSource(model, "offline", _offline_folder(model), "offline forced by CSMLAB_OFFLINE/HF_HUB_OFFLINE")
    cached = _from_cache(spec)
    if cached is not None:
        return WeightsSource(model, "hub", cached, f"found {spec.repo} in the Hugging Face cache")
    if not hub_reachable():
        why = f"the Hugging Face hub is unreachable (no {spec.repo} in the cache)"
        return WeightsSource(model, "offline", _offline_folder(model), why)
    return WeightsSource(model, "hub", Path(f"hf://{spec.repo}"), f"{spec.repo} will be downloaded on first use")


def resolve(model: str, path: str | Path | None = None) -> WeightsSource:
    """Find the checkpoint for `model` ("mimi", "moshi", "csm"): explicit path, HF cache/hub, offline.

    Unlike `locate`, this downloads or builds what is missing, so `path` is ready to load.
    """
    plan = locate(model, path)
    if plan.kind == "offline":
        return resolve_offline(model, plan.why)
    if plan.kind == "local" or plan.path.exists():
        return plan
    spec = _spec(model)
    try:
        return WeightsSource(model, "hub", _snapshot(spec, local_only=False), f"downloaded {spec.repo}")
    except Exception as err:  # noqa: BLE001 - gated repo, auth, network: all fall back, and say why
        return resolve_offline(model, f"download of {spec.repo} failed ({type(err).__name__}: {err})")


def locate_listening(path: str | Path | None = None) -> WeightsSource:
    """Which Mimi `resolve_listening` would use, without downloading anything."""
    plan = locate("mimi", path)
    if plan.kind != "offline":
        return plan
    weights = SMALL_MIMI_DIR / "model.safetensors"
    if not weights.exists():
        raise WeightsNotFoundError(f"the small Mimi is missing from {SMALL_MIMI_DIR}: reinstall csmlab, "
                                   "or train one with `csmlab train-codec`")
    return WeightsSource("mimi", "small", weights, f"{plan.why}; the small trained Mimi is used for listening")


def resolve_listening(path: str | Path | None = None) -> WeightsSource:
    """Mimi for *hearing* results: the real one when `resolve("mimi")` would find it, else the small
    trained Mimi, whose loopback follows the speech it is given (the full-size stand-in's is noise)."""
    plan = locate_listening(path)
    return plan if plan.kind == "small" else resolve("mimi", path)


def default_device() -> str:
    """"cuda" when a CUDA GPU is present, else "cpu": where the notebooks put the models they load."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
