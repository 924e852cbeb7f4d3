"""Train a small Mimi on synthetic speech, on a CPU, in minutes (issue 7).

The model is Kyutai's Mimi architecture itself, built by `moshi.models.loaders.get_mimi` from a
smaller config (`SMALL_MIMI_CONFIG`): causal SEANet encoder/decoder, a causal transformer on each
side, and a split residual vector quantizer (1 "semantic" + 7 acoustic codebooks) at 12.5 Hz.
Only the sizes are shrunk, so the checkpoint is read by the same loaders as the real one.

Recipe (Défossez et al. 2024, "Moshi", arXiv:2410.00037, section 3.3 and its EnCodec ancestry),
reduced to what a CPU can train in an hour:
- reconstruction: multi-scale log-mel L1, linear mel L1, a multi-resolution STFT loss and a small
  waveform L1 (the one phase-sensitive term);
- the quantizer's commitment penalty; codebooks are EMA k-means whose dead codes moshi restarts
  from the batch (`EuclideanCodebook._check_expired_codes`), we monitor their usage (perplexity);
- quantizer dropout, so that 1, 2, 4 ... codebooks each give usable audio, and Mimi's "skip
  quantization for half the batch" trick;
- a variance-preserving initialisation, without which the small model's output ignores its input;
- AdamW with warm-up and a cosine schedule over a *time* budget, checkpointed so a run can resume.
Real Mimi adds adversarial losses and WavLM distillation into codebook 0; see notebook 01b.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import librosa
import numpy as np
import torch
import torch.nn.functional as F
from moshi.models.compression import MimiModel
from moshi.models.loaders import get_mimi
from safetensors.torch import save_file

from csmlab.data import corpus
from csmlab import metrics
from csmlab.weights.checkpoint import checkpoint_state
from csmlab.data import real_recording
from csmlab.errors import CsmlabError
from csmlab.metrics import FRAME_SIZE, SAMPLE_RATE
from csmlab.course.noise_vocoder import noise_vocode
from csmlab.weights import SMALL_MIMI_DIR

FRAME = FRAME_SIZE  # samples per 80 ms Mimi frame
ASSET_DIR = SMALL_MIMI_DIR  # where the shipped checkpoint lives; csmlab.weights offers it for listening

_SEANET = {"channels": 1, "dimension": 128, "causal": True, "n_filters": 16, "n_residual_layers": 1,
           "activation": "ELU", "compress": 2, "dilation_base": 2, "disable_norm_outer_blocks": 0,
           "kernel_size": 7, "residual_kernel_size": 3, "last_kernel_size": 3, "norm": "none",
           "pad_mode": "constant", "ratios": [8, 6, 5, 4], "true_skip": True}
SMALL_MIMI_CONFIG = {
    "sample_rate": SAMPLE_RATE, "channels": 1, "frame_rate": 12.5, "seanet": _SEANET,
    "quantizer": {"dimension": 64, "n_q": 8, "bins": 1024, "input_dimension": 128, "output_dimension": 128},
    # context 32 steps of 40 ms = 1.28 s, the training crop: inference never sees a longer attention span.
    "transformer": {"d_model": 128, "num_heads": 4, "num_layers": 2, "causal": True, "layer_scale": 0.01,
                    "context": 32, "conv_layout": True, "max_period": 10000, "gating": "none",
                    "norm": "layer_norm", "positional_embedding": "rope", "dim_feedforward": 512,
                    "input_dimension": 128, "output_dimensions": [128]},
}


@dataclass
class TrainConfig:
    """Everything that defines a run; recorded next to the checkpoint."""

    minutes: float = 45.0
    batch: int = 8
    segment_frames: int = 16  # 16 x 80 ms = 1.28 s crops
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-3
    commit_weight: float = 0.25
    wave_weight: float = 0.2  # relative waveform L1: phase matters for SI-SDR
    no_quant_prob: float = 0.5  # Mimi's trick: skip quantization for half the batch items
    full_codebook_prob: float = 0.5  # otherwise train with 1..7 codebooks (quantizer dropout)
    level_db: tuple[float, float] = (-30.0, -14.0)  # RMS level range of the crops, dBFS
    noise_prob: float = 0.4
    bandlimit_prob: float = 0.3
    seed: int = 0
    threads: int = 1
    save_every_s: float = 120.0
    log_every: int = 25


# ----------------------------------------------------------------------------- model and weights

def build_small_mimi(seed: int = 0) -> MimiModel:
    """A fresh, untrained small Mimi (moshi's own classes), in train mode, all 8 codebooks active."""
    torch.manual_seed(seed)
    model = get_mimi(None, mimi_config=SMALL_MIMI_CONFIG, num_codebooks=8)
    _variance_preserving_init(model)
    return model.train()


def _variance_preserving_init(model: MimiModel) -> None:
    """Re-initialise convolutions and projections with std 1/sqrt(fan_in) and zero biases.

    Why: with PyTorch's default init each of the ~30 layers shrinks the signal, so a fresh small
    Mimi's output depends on its input about 1e-5 as much as on its biases; the decoder then
    learns one average spectrum and ignores the codes (we saw two runs stall there for 500 steps).
    With this init the output varies with the input from step 0. Transformers keep moshi's init
    (their layer scale of 0.01 already makes them start near identity).
    """
    for name, module in model.named_modules():
        if name.startswith(("encoder_transformer", "decoder_transformer")):
            continue
        if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, torch.nn.Linear)):
            w = module.weight
            fan_in = w.shape[0] * w.shape[2] / module.stride[0] if isinstance(module, torch.nn.ConvTranspose1d) else w[0].numel()
            torch.nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)


def save_checkpoint(model: MimiModel, path: Path, config: dict | None = None,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write `model` as a released-format Mimi safetensors, with its `config.json` beside it.

    float32 (the default) round-trips exactly. `dtype=torch.float16` halves the file (the small
    Mimi ships so, to stay under 10 MB); loaders cast back to float32. For fp16 the codebook EMA
    buffers are rescaled first to keep their ratio, the centroids, precise: only
    `embedding_sum / cluster_usage` matters.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = checkpoint_state(model)
    rescale = [n for n in state if n.endswith("_codebook.cluster_usage")] if dtype != torch.float32 else []
    for name in rescale:
        scale = state[name].mean().clamp(min=1e-12)
        state[name] = state[name] / scale
        embedding = name.replace("cluster_usage", "embedding_sum")
        state[embedding] = state[embedding] / scale  # out of place: the tensors are the model's own
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, str(path))
    (path.parent / "config.json").write_text(json.dumps(config or SMALL_MIMI_CONFIG, indent=1))
    return path


def load_small_mimi(directory: Path = ASSET_DIR, num_codebooks: int = 8) -> MimiModel:
    """The shipped (or any saved) small Mimi, through moshi's own loader, in eval mode."""
    weights = Path(directory) / "model.safetensors"
    if not weights.exists():
        raise CsmlabError(f"No small Mimi checkpoint at {weights}: train one with `csmlab train-codec`.")
    config = json.loads((Path(directory) / "config.json").read_text())
    return get_mimi(weights, mimi_config=config, num_codebooks=num_codebooks).eval()


# ----------------------------------------------------------------------------- losses

@lru_cache(maxsize=None)
def _mel_basis(n_fft: int, n_mels: int) -> torch.Tensor:
    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=n_mels)).float()


def _magnitude(x: torch.Tensor, n_fft: int) -> torch.Tensor:
    """|STFT| of `x` [B, T] with hop n_fft/4, as [B, F, frames]."""
    window = torch.hann_window(n_fft, device=x.device)
    return torch.stft(x, n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()


def mel_losses(ref: torch.Tensor, est: torch.Tensor) -> dict[str, torch.Tensor]:
    """Reconstruction losses between waveforms [B, T]: why three of them.

    - `log_mel`: L1 between log-mel spectrograms at 5 scales (n_fft 128..2048): hears quiet detail,
      as the ear does, at several time/frequency trade-offs;
    - `mel`: L1 between linear mel spectrograms (n_fft 1024): weighs the loud parts, keeps levels right;
    - `stft`: multi-resolution STFT loss (spectral convergence + log-magnitude L1 on linear bins),
      which also sees the high frequencies that mel filters blur.
    """
    log_mel, lin_mel = 0.0, 0.0
    scales = [128, 256, 512, 1024, 2048]
    for n_fft in scales:
        basis = _mel_basis(n_fft, min(80, n_fft // 4))
        m_ref, m_est = basis @ _magnitude(ref, n_fft), basis @ _magnitude(est, n_fft)
        log_mel = log_mel + F.l1_loss(torch.log(m_est.clamp(min=1e-5)), torch.log(m_ref.clamp(min=1e-5)))
        if n_fft == 1024:  # relative, so that quiet and loud crops weigh the same
            lin_mel = F.l1_loss(m_est, m_ref) / m_ref.mean().clamp(min=1e-5)
    stft = 0.0
    for n_fft in (512, 1024, 2048):
        s_ref, s_est = _magnitude(ref, n_fft), _magnitude(est, n_fft)
        convergence = torch.linalg.norm(s_ref - s_est) / torch.linalg.norm(s_ref).clamp(min=1e-5)
        stft = stft + convergence + F.l1_loss(torch.log(s_est.clamp(min=1e-5)), torch.log(s_ref.clamp(min=1e-5)))
    return {"log_mel": log_mel / len(scales), "mel": lin_mel, "stft": stft / 3}


# ----------------------------------------------------------------------------- data

class SpeechCrops:
    """Random augmented crops of the training corpus, as [B, 1, T] batches.

    Augmentation, drawn per crop: an RMS level in `level_db`; light white noise at 15-40 dB SNR
    (with `noise_prob`); band-limiting to 4 or 8 kHz (with `bandlimit_prob`: telephone and 16 kHz
    recordings, like the real sample in data/real). The codec learns to reproduce its input, noise
    included.
    """

    def __init__(self, waves: list[np.ndarray], segment: int, seed: int, level_db: tuple[float, float],
                 noise_prob: float, bandlimit_prob: float):
        self.waves = [w for w in waves if len(w) > segment]
        if not self.waves:
            raise CsmlabError("The corpus has no utterance longer than one training crop.")
        self.segment, self.level_db = segment, level_db
        self.noise_prob, self.bandlimit_prob = noise_prob, bandlimit_prob
        self.rng = np.random.default_rng(seed)

    def _crop(self) -> np.ndarray:
        wave = self.waves[self.rng.integers(len(self.waves))]
        start = self.rng.integers(len(wave) - self.segment)
        x = wave[start:start + self.segment].astype(np.float64)
        x = x - x.mean()
        x *= 10 ** (self.rng.uniform(*self.level_db) / 20) / max(np.sqrt(np.mean(x ** 2)), 1e-4)
        if self.rng.random() < self.noise_prob:
            x += self.rng.standard_normal(len(x)) * np.sqrt(np.mean(x ** 2)) * 10 ** (-self.rng.uniform(15, 40) / 20)
        if self.rng.random() < self.bandlimit_prob:
            spec = np.fft.rfft(x)
            spec[int(self.rng.choice([4000, 8000]) * len(x) / SAMPLE_RATE):] = 0
            x = np.fft.irfft(spec, len(x))
        return np.clip(x, -1, 1).astype(np.float32)

    def batch(self, size: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([self._crop() for _ in range(size)]))[:, None]


# ----------------------------------------------------------------------------- training

def lr_at(progress: float, step: int, cfg: TrainConfig) -> float:
    """Linear warm-up over `warmup_steps`, then cosine decay to 5% as the time budget runs out."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train_step(model: MimiModel, opt: torch.optim.Optimizer, x: torch.Tensor, cfg: TrainConfig,
               n_q: int) -> dict[str, float]:
    """One optimisation step on batch `x` [B, 1, T] with `n_q` active codebooks; returns the losses."""
    model.train()
    model.set_num_codebooks(n_q)
    for rvq in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        rvq.no_quantization_rate = cfg.no_quant_prob
    result = model(x)
    losses = mel_losses(x[:, 0], result.x[:, 0])
    losses["wave"] = F.l1_loss(result.x, x) / x.abs().mean().clamp(min=1e-5)
    total = (losses["log_mel"] + losses["mel"] + losses["stft"] + cfg.wave_weight * losses["wave"]
             + cfg.commit_weight * result.penalty)
    opt.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    model.set_num_codebooks(8)
    out = {k: float(v.detach()) for k, v in losses.items()}
    out.update(total=float(total.detach()), commit=float(result.penalty.detach()), n_q=n_q,
               expired=float(result.metrics.get("rvq_expired", 0.0)))
    return out


def make_optimizer(model: MimiModel, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.8, 0.99), weight_decay=cfg.weight_decay)


@dataclass
class RunState:
    """What a run has done so far; saved with the weights so that a killed run resumes."""

    step: int = 0
    elapsed_s: float = 0.0
    history: list[dict] = field(default_factory=list)
    sessions: list[dict] = field(default_factory=list)  # one per (re)start: where it began, how it ran


def train(cfg: TrainConfig, out_dir: Path, waves: list[np.ndarray] | None = None, resume: bool = True,
          progress=None, command: str = "train()") -> tuple[MimiModel, RunState]:
    """Train for `cfg.minutes` of wall time, saving `out_dir/train_state.pt` every `save_every_s`.

    A resumed run goes on until its total wall time reaches `cfg.minutes`, so a longer budget extends
    a finished run (the cosine schedule stretches to the new budget); `RunState.sessions` records
    every (re)start with its `command`.

    `progress`, if given, is called as `progress(state, losses)` after every step (the notebook
    uses it for its tqdm bar and loss plot). Returns the model in eval mode and the run state.
    """
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, state = build_small_mimi(cfg.seed), RunState()
    opt = make_optimizer(model, cfg)
    state_path = out_dir / "train_state.pt"
    if resume and state_path.exists():
        saved = torch.load(state_path, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = RunState(**saved["state"])
        random.setstate(saved["py_rng"])
    if state.elapsed_s < cfg.minutes * 60:  # a finished run resumed with the same budget only re-saves
        state.sessions.append({"from_step": state.step, "from_minutes": round(state.elapsed_s / 60, 1),
                               "budget_minutes": cfg.minutes, "threads": cfg.threads, "command": command})
    data = SpeechCrops(waves if waves is not None else corpus.load_split("train"),
                       cfg.segment_frames * FRAME, cfg.seed + state.step, cfg.level_db, cfg.noise_prob,
                       cfg.bandlimit_prob)
    budget, last_save, t0 = cfg.minutes * 60, time.monotonic(), time.monotonic() - state.elapsed_s
    while state.elapsed_s < budget:
        for group in opt.param_groups:
            group["lr"] = lr_at(state.elapsed_s / budget, state.step, cfg)
        n_q = 8 if random.random() < cfg.full_codebook_prob else random.randint(1, 7)
        losses = train_step(model, opt, data.batch(cfg.batch), cfg, n_q)
        state.step += 1
        state.elapsed_s = time.monotonic() - t0
        losses.update(step=state.step, minutes=state.elapsed_s / 60, lr=opt.param_groups[0]["lr"])
        if state.step % cfg.log_every == 0 or state.step == 1:
            losses["perplexity"] = codebook_perplexity(model)
            state.history.append(losses)
        if progress is not None:
            progress(state, losses)
        if time.monotonic() - last_save > cfg.save_every_s:
            _save_state(state_path, model, opt, state)
            last_save = time.monotonic()
    _save_state(state_path, model, opt, state)
    model.set_num_codebooks(8)
    return model.eval(), state


def _save_state(path: Path, model: MimiModel, opt: torch.optim.Optimizer, state: RunState) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": asdict(state),
                "py_rng": random.getstate()}, tmp)
    tmp.replace(path)  # atomic: a run killed mid-save keeps its previous state


def codebook_perplexity(model: MimiModel) -> list[float]:
    """exp(entropy) of each codebook's EMA usage: 1 = one code used, 1024 = all used equally."""
    layers = [*model.quantizer.rvq_first.vq.layers, *model.quantizer.rvq_rest.vq.layers]
    out = []
    for layer in layers:
        p = layer._codebook.cluster_usage / layer._codebook.cluster_usage.sum()
        out.append(round(float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())), 1))
    return out


class NotebookProgress:
    """A `train(progress=...)` callback for notebooks: a tqdm bar over the time budget and a loss
    plot redrawn in place every `every` steps, so the learner watches the loss fall live."""

    def __init__(self, minutes: float, every: int = 10):
        from IPython.display import display
        from tqdm.auto import tqdm
        import matplotlib.pyplot as plt

        self.bar = tqdm(total=round(minutes * 60), unit="s", desc="training (wall-clock budget)")
        self.every, self.steps, self.losses = every, [], []
        self.fig, self.ax = plt.subplots(figsize=(6, 2.8))
        plt.close(self.fig)
        self.handle = display(self.fig, display_id=True)

    def __call__(self, state: RunState, losses: dict) -> None:
        self.steps.append(state.step)
        self.losses.append(losses["total"])
        self.bar.n = min(round(state.elapsed_s), self.bar.total)
        self.bar.set_postfix(step=state.step, loss=f"{losses['total']:.2f}")
        if state.step % self.every == 0:
            plot_loss(self.ax, self.steps, self.losses)
            self.handle.update(self.fig)

    def close(self) -> None:
        plot_loss(self.ax, self.steps, self.losses)
        self.handle.update(self.fig)
        self.bar.close()


def plot_loss(ax, steps: list[int], losses: list[float]) -> None:
    """Training loss per step, with a 20-step moving average on top of the raw, noisy values."""
    ax.clear()
    ax.plot(steps, losses, color="0.75", lw=0.8, label="per step")
    if len(losses) >= 20:
        ax.plot(steps[19:], np.convolve(losses, np.ones(20) / 20, mode="valid"), color="C0", label="20-step mean")
    ax.set(xlabel="step", ylabel="total loss", title="small Mimi training loss")
    ax.legend(loc="upper right")
    ax.figure.tight_layout()


# ----------------------------------------------------------------------------- evaluation

def silent_aware_si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    """`metrics.si_sdr`, except that a silent `est` scores -inf rather than 0 dB.

    An untrained small Mimi outputs exact silence (empty codebooks, zero biases); 0 dB would rank
    it above a trained codec whose waveform phase is off, which is wrong: silence has none of `ref`.
    """
    return metrics.si_sdr(ref, est) if np.any(est) else float("-inf")


def _frames(wave: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.pad(wave, (0, -len(wave) % FRAME)).astype(np.float32))[None, None]  # [1, 1, T]


@torch.no_grad()
def reconstruct(model: MimiModel, wave: np.ndarray, num_codebooks: int) -> tuple[np.ndarray, torch.Tensor]:
    """Encode then decode a 24 kHz waveform with `num_codebooks`; returns (audio, codes [1, K, T])."""
    model.eval()
    model.set_num_codebooks(num_codebooks)
    codes = model.encode(_frames(wave))
    audio = model.decode(codes)[0, 0, :len(wave)].numpy()
    model.set_num_codebooks(8)
    return audio, codes


@torch.no_grad()
def reconstruct_unquantized(model: MimiModel, wave: np.ndarray) -> np.ndarray:
    """Encode and decode *without* the codebooks: the path half of each training batch takes.

    Why: comparing it with `reconstruct` separates what the quantizer loses from what the encoder
    and decoder never learned. It follows `MimiModel.forward` with `no_quantization_rate=1`: the
    latent goes through both quantizers' projections, skipping their codebooks.
    """
    model.eval()
    latent = model._encode_to_unquantized_latent(_frames(wave))  # [1, D, frames]
    q = model.quantizer
    latent = sum(rvq.output_proj(rvq.input_proj(latent)) for rvq in (q.rvq_first, q.rvq_rest))
    latent = model._to_encoder_framerate(latent)
    (latent,) = model.decoder_transformer(latent)
    return model.decoder(latent)[0, 0, :len(wave)].numpy()


def heldout_clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """The first `n` held-out utterances (unseen texts and voices), synthesised afresh with espeak-ng.

    Same plan as the corpus' held-out split, so tests can re-make them without the corpus.
    """
    plan = corpus.plan_split(n, seed + 1, corpus.HELDOUT_ACCENTS, corpus.HELDOUT_VARIANTS,
                             corpus.HELDOUT_NOUNS, "heldout")
    return [corpus.synthesize(text, voice, speed, pitch) for _, voice, speed, pitch, text in plan]


def _voice_kept(ref: np.ndarray, est: np.ndarray) -> float:
    """`est`'s periodicity in `ref`'s voiced frames; NaN when `ref` has none (noise, silence), so
    that such a clip is left out of the mean instead of stopping the evaluation."""
    try:
        return metrics.voiced_periodicity(ref, est, SAMPLE_RATE)[1]
    except ValueError:
        return float("nan")


def _mean(values) -> float | None:
    values = [v for v in values if not np.isnan(v)]
    return round(float(np.mean(values)), 3) if values else None


def evaluate(model: MimiModel, waves: list[np.ndarray], codebooks=(1, 2, 4, 8)) -> dict:
    """Per codebook count: mean SI-SDR (dB), log-mel distance and periodicity in voiced frames
    (`metrics.voiced_periodicity`); and the code perplexity at 8 codebooks."""
    out, codes8 = {}, []
    for k in codebooks:
        scores = []
        for wave in waves:
            audio, codes = reconstruct(model, wave, k)
            scores.append((silent_aware_si_sdr(wave, audio), metrics.log_mel_distance(wave, audio, SAMPLE_RATE),
                           _voice_kept(wave, audio)))
            if k == 8:
                codes8.append(codes[0])
        si_sdr, log_mel, periodicity = zip(*scores)
        out[k] = {"si_sdr": round(float(np.mean(si_sdr)), 2), "log_mel": round(float(np.mean(log_mel)), 3),
                  "periodicity": _mean(periodicity)}
    flat = torch.cat(codes8, dim=-1) if codes8 else None
    perplexity = [] if flat is None else [
        round(float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum())), 1)
        for p in (torch.bincount(row, minlength=1024).float() / row.numel() for row in flat)]
    return {"by_codebooks": out, "perplexity": perplexity}


def diagnose(model: MimiModel, waves: list[np.ndarray]) -> dict:
    """Where the quality goes: the codec with and without its codebooks, beside yardsticks.

    Log-mel distance and voiced periodicity (means over `waves`) for: the original itself
    (periodicity only), the codec at 8 codebooks, the codec's unquantized path, and noise vocoders
    of the original with 8 and 16 bands (intelligible speech without pitch, `csmlab.course.noise_vocoder`).
    """
    versions = {"codec_8": lambda w: reconstruct(model, w, 8)[0],
                "unquantized": lambda w: reconstruct_unquantized(model, w),
                "noise_vocoder_16": lambda w: noise_vocode(w, SAMPLE_RATE, 16),
                "noise_vocoder_8": lambda w: noise_vocode(w, SAMPLE_RATE, 8)}
    rows = {name: [] for name in versions}
    original = [_voice_kept(wave, wave) for wave in waves]
    for wave in waves:
        for name, make in versions.items():
            audio = make(wave)
            rows[name].append((metrics.log_mel_distance(wave, audio, SAMPLE_RATE), _voice_kept(wave, audio)))
    out = {name: {"log_mel": round(float(np.mean([m for m, _ in r])), 3), "periodicity": _mean([p for _, p in r])}
           for name, r in rows.items()}
    return {"original": {"periodicity": _mean(original)}, **out}


# ----------------------------------------------------------------------------- command line

GUARD_CLIPS = 8  # held-out clips re-made by tests/test_train.py for the SI-SDR regression guard


def train_codec_cli(argv: list[str] | None = None) -> int:
    """`csmlab train-codec`: train the small Mimi, save it in release format, record its metrics."""
    parser = argparse.ArgumentParser(prog="csmlab train-codec", description=train_codec_cli.__doc__)
    parser.add_argument("--minutes", type=float, default=TrainConfig.minutes, help="wall-clock training budget")
    parser.add_argument("--out", type=Path, default=ASSET_DIR, help="folder for model.safetensors, config.json, metrics.json")
    parser.add_argument("--state-dir", type=Path, default=Path("out/train_codec"), help="resumable run state")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a run state exists")
    args = parser.parse_args(argv)
    cfg = TrainConfig(minutes=args.minutes, threads=args.threads, seed=args.seed)
    print("Training a SMALL Mimi locally on synthetic espeak-ng speech (not Kyutai's Mimi).")
    invoked = ["csmlab", "train-codec", *argv] if argv is not None else ["python", "-m", "csmlab.course.train", *sys.argv[1:]]
    model, state = train(cfg, args.state_dir, resume=not args.no_resume, progress=_print_progress,
                         command=shlex.join(invoked))
    save_checkpoint(model, args.out / "model.safetensors", dtype=torch.float16)
    shipped = load_small_mimi(args.out)  # evaluate what was written, fp16 rounding included
    metrics = record_metrics(shipped, cfg, state)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps({k: metrics[k] for k in ("heldout_espeak", "real_recording")}, indent=1))
    return 0


def _print_progress(state: RunState, losses: dict) -> None:
    if state.step % 100 == 0:
        print(f"step {state.step:5d}  {state.elapsed_s / 60:5.1f} min  loss {losses['total']:.3f}  "
              f"log-mel {losses['log_mel']:.3f}  lr {losses['lr']:.2e}", flush=True)


def record_metrics(model: MimiModel, cfg: TrainConfig, state: RunState) -> dict:
    """Held-out figures for `model` and for an untrained twin, with everything needed to redo the run."""
    torch.set_num_threads(cfg.threads)
    manifest = json.loads((corpus.DEFAULT_ROOT / "manifest.json").read_text())
    heldout, real = corpus.load_split("heldout"), [real_recording(SAMPLE_RATE).audio]
    untrained = build_small_mimi(cfg.seed).eval()
    guard = evaluate(model, heldout_clips(GUARD_CLIPS, manifest["seed"]), codebooks=(8,))["by_codebooks"][8]
    return {
        "warning": "A SMALL Mimi trained locally on synthetic espeak-ng speech; NOT Kyutai's Mimi.",
        "parameters": sum(p.numel() for p in model.parameters()),
        "command": state.sessions[-1]["command"] if state.sessions else None,
        "sessions": state.sessions,
        "train_config": asdict(cfg),
        "data": {"seed": manifest["seed"], "generator": "python data/make_corpus.py",
                 **{f"{name}_utterances": len(items) for name, items in manifest["splits"].items()},
                 "train_hours": round(sum(u["seconds"] for u in manifest["splits"]["train"]) / 3600, 2),
                 "train_voices": len({u["voice"] for u in manifest["splits"]["train"]}),
                 "heldout_voices": len({u["voice"] for u in manifest["splits"]["heldout"]})},
        "training": {"steps": state.step, "minutes": round(state.elapsed_s / 60, 1)},
        "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} thread(s), no GPU ({platform.platform()})",
        "heldout_espeak": evaluate(model, heldout),
        "real_recording": evaluate(model, real),
        "untrained": {"heldout_espeak": evaluate(untrained, heldout), "real_recording": evaluate(untrained, real)},
        "diagnosis": {"heldout_espeak": diagnose(model, heldout), "real_recording": diagnose(model, real)},
        "guard": {"clips": GUARD_CLIPS, "si_sdr_8": guard["si_sdr"], "threshold": round(guard["si_sdr"] - 1.5, 2),
                  "log_mel_8": guard["log_mel"], "log_mel_threshold": round(guard["log_mel"] + 0.15, 3)},
        "loss_curve": [[h["step"], round(h["minutes"], 2), round(h["total"], 4), round(h["log_mel"], 4)]
                       for h in state.history],
    }


if __name__ == "__main__":
    sys.exit(train_codec_cli())
