"""Notebook 01's small tools: residual vector quantization from scratch, and quality vs codebooks.

RVQ (Zeghidour et al., "SoundStream", 2021; used by EnCodec and Mimi) quantizes a vector in
stages: level 1 picks the nearest entry of its codebook, level 2 quantizes what level 1 missed (the
residual), and so on. Each level adds log2(codebook size) bits per frame and removes part of the
remaining error, which is why a codec's bitrate is "number of codebooks x 11 bits x 12.5 Hz" and
why dropping late codebooks degrades quality gracefully. Here the vectors are log-mel frames of real
speech and the codebooks come from k-means, so the whole idea fits in a few lines of numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class ResidualVQ:
    """A stack of codebooks; level l quantizes the residual left by levels 0..l-1."""

    codebooks: list[np.ndarray]  # each [codebook_size, D]

    @classmethod
    def fit(cls, x: np.ndarray, levels: int, codebook_size: int, seed: int = 0) -> ResidualVQ:
        books, residual = [], x
        for level in range(levels):
            book = kmeans(residual, codebook_size, seed=seed + level)
            residual = residual - book[nearest(residual, book)]
            books.append(book)
        return cls(books)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """`[T, D]` vectors -> `[L, T]` codes."""
        codes, residual = [], x
        for book in self.codebooks:
            codes.append(nearest(residual, book))
            residual = residual - book[codes[-1]]
        return np.stack(codes)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """`[L', T]` codes (any first L' levels) -> `[T, D]`: the sum of the chosen entries."""
        return sum(book[c] for book, c in zip(self.codebooks, codes))

    def relative_errors(self, x: np.ndarray) -> list[float]:
        """Squared error over signal energy (around the mean) using the first 1, 2, ..., L levels."""
        codes, energy = self.encode(x), ((x - x.mean(0)) ** 2).sum()
        return [float(((x - self.decode(codes[:n])) ** 2).sum() / energy) for n in range(1, len(self.codebooks) + 1)]


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
