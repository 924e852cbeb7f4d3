"""Notebook 01's small tools: k-means and nearest-entry search for its RVQ, pictures, quality vs codebooks.

RVQ (Zeghidour et al., "SoundStream", 2021; used by EnCodec and Mimi) quantizes a vector in
stages: level 1 picks the nearest entry of its codebook, level 2 quantizes what level 1 missed (the
residual), and so on. Each level adds log2(codebook size) bits per frame and removes part of the
remaining error, which is why a codec's bitrate is "number of codebooks x 11 bits x 12.5 Hz" and
why dropping late codebooks degrades quality gracefully. Notebook 01 writes the RVQ itself, where
the learner reads it; this module keeps the plumbing it stands on (k-means, nearest entry).
"""
from __future__ import annotations

import numpy as np

from csmlab import metrics


def log_mel_frames(audio: np.ndarray, sample_rate: int, n_mels: int = 40, hop_s: float = 0.02) -> np.ndarray:
    """Log-mel feature frames `[T, n_mels]`: the vectors our toy RVQ quantizes."""
    import librosa

    hop = int(hop_s * sample_rate)
    mel = librosa.feature.melspectrogram(y=audio, sr=sample_rate, n_fft=4 * hop, hop_length=hop, n_mels=n_mels)
    return np.log(mel + 1e-6).T.astype(np.float64)


def nearest(x: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook row for each row of `x`: `[T, D], [K, D] -> [T]`."""
    d = (x**2).sum(1, keepdims=True) - 2 * x @ codebook.T + (codebook**2).sum(1)
    return d.argmin(1)


def kmeans(x: np.ndarray, k: int, iters: int = 25, seed: int = 0) -> np.ndarray:
    """Plain Lloyd k-means with k-means++-style seeding: a `[k, D]` codebook for rows of `x`."""
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(len(x))]]
    d = ((x - centers[0]) ** 2).sum(1)  # squared distance to the nearest centre so far
    for _ in range(1, k):  # seed far from the centres so far
        centers.append(x[rng.choice(len(x), p=d / d.sum())])
        d = np.minimum(d, ((x - centers[-1]) ** 2).sum(1))
    centers = np.array(centers)
    for _ in range(iters):
        assign = nearest(x, centers)
        for j in range(k):
            if (assign == j).any():
                centers[j] = x[assign == j].mean(0)
    return centers


def plot_rvq_2d(x: np.ndarray, level1: np.ndarray, level2: np.ndarray):
    """RVQ's geometry on 2-D points `x` `[T, 2]`: level 1's centroids, the residuals, level 2's centroids.

    Left: the points and level 1's codebook. Middle: what level 1 misses (each point minus its
    centroid), all gathered round the origin, and level 2's codebook fitted to them. Right: every
    sum of one level-1 and one level-2 entry: the finer grid two codes can address.
    """
    import matplotlib.pyplot as plt

    first = nearest(x, level1)
    residual = x - level1[first]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.9))
    ax[0].scatter(*x.T, c=first, cmap="tab10", s=6, alpha=0.5)
    ax[0].scatter(*level1.T, marker="X", s=120, c="k", label=f"level 1: {len(level1)} centroids")
    ax[0].set_title("points and level-1 centroids")
    ax[1].scatter(*residual.T, c=first, cmap="tab10", s=6, alpha=0.5)
    ax[1].scatter(*level2.T, marker="P", s=110, c="crimson", label=f"level 2: {len(level2)} centroids")
    ax[1].set_title("residuals (point - its centroid)")
    grid = (level1[:, None, :] + level2[None, :, :]).reshape(-1, 2)
    ax[2].scatter(*x.T, c="0.75", s=6)
    ax[2].scatter(*grid.T, marker=".", s=60, c="crimson", label=f"{len(level1)} x {len(level2)} sums")
    ax[2].scatter(*level1.T, marker="X", s=120, c="k")
    ax[2].set_title("what 2 codes can address")
    for a in ax:
        a.set_aspect("equal", "datalim"), a.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def quality_curve(codec, audio_24k: np.ndarray, counts=(1, 2, 4, 8, 32)) -> dict[int, dict]:
    """Encode once with all of `codec`'s codebooks; decode with the first k: audio and scores per k.

    `codec` is a `load_codec(32, "moshi")` (or the small Mimi, `load_codec(8, listen=True)`: counts
    above its 8 codebooks are skipped); moshi's decoder accepts any first k codebooks, which is
    exactly what dropping late codebooks (lowering the bitrate) means.
    """
    import torch

    codes = codec.encode(audio_24k, 24_000)  # [K, T]
    out = {}
    for k in (k for k in counts if k <= codec.num_codebooks):
        with torch.inference_mode():
            audio = codec.backend.model.decode(torch.from_numpy(codes[:k])[None])[0, 0].numpy()
        audio = audio[: len(audio_24k)]
        out[k] = {
            "audio": audio,
            "kbps": metrics.bitrate(k, codec.codebook_size) / 1000,
            "si_sdr": metrics.si_sdr(audio_24k, audio),
            "log_mel": metrics.log_mel_distance(audio_24k, audio, 24_000),
        }
    return out


# Published bitrates of other speech tokenizers, for the notebook's table.
PUBLISHED_BITRATES = [
    # (codec, rate, frames/s, codebooks x bits, kbps, source)
    ("SpeechTokenizer", "16 kHz", 50, "8 x 10", 4.0, "Zhang et al., SpeechTokenizer, ICLR 2024 (arXiv:2308.16692)"),
    ("SpeechTokenizer, RVQ-1 only", "16 kHz", 50, "1 x 10", 0.5, "same paper: its first, semantic layer"),
    ("SemantiCodec", "16 kHz", "25-100 tokens", "semantic+acoustic", "0.31-1.40", "Liu et al., arXiv:2405.00233, 2024"),
    ("Mimi (Moshi)", "24 kHz", 12.5, "8 x 11", 1.1, "Défossez et al., Moshi, arXiv:2410.00037, 2024"),
    ("Mimi (CSM)", "24 kHz", 12.5, "32 x 11", 4.4, "Sesame CSM uses all 32 codebooks"),
]


def model_size(module) -> dict[str, int]:
    """Numbers a model holds: `parameters` (trained by gradient) and `buffers` (Mimi's codebooks, kept by EMA)."""
    return {"parameters": sum(p.numel() for p in module.parameters()),
            "buffers": sum(b.numel() for b in module.buffers())}
