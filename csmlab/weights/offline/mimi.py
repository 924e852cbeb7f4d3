"""A full-size Mimi with random weights but *calibrated* codebooks, saved like the real checkpoint.

`moshi.models.loaders.get_mimi(None)` returns a Mimi whose codebooks are empty (`_initialized` = 0,
`embedding_sum` = 0): every code is 0, and any equivalence test on it passes trivially. We calibrate
each residual quantizer level on latents of real speech instead, the way k-means initialisation
does: each codebook entry is a residual vector seen at that level plus a little noise. Codes of
speech then spread over every codebook, so comparing implementations means something.

One more step comes first. A random SEANet encoder outputs nearly the same vector for every frame
(its biases dominate: the spread across time is ~0.3% of the mean), so all latents sit in a tiny
ball and every nearest-codebook decision is a float near-tie. Standardising the encoder's last
convolution on speech (zero mean, unit spread per channel) spreads the latents out, as training
would, and makes the codes stable across implementations.

How much each level takes out matters. A frame that picks (a copy of) itself keeps `1 - SHRINK` of
its residual, so level `l` sees `(1 - SHRINK)**l` of the latent while float noise between
implementations (~1e-6 of the latent) stays put. With SHRINK = 0.5 the residual of level 20 is
1e-6 of the latent and deep codes are coin flips; SHRINK = 1 leaves zero residuals after level 0.
Measured on 16 s of the real recording, 32 codebooks (streaming vs batch / transformers vs moshi):
SHRINK 0.5: 46% / 77%; 0.25: 92% / 99.98%; 0.15: 99.25% / 99.98%, and moshi = rustymimi 100%
for 8 codebooks in batch and streaming; 0.1: 99.8% / 100% but rustymimi 99.8% and early
codebooks less spread. So 0.15.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from moshi.models import loaders
from moshi.modules.conv import pad_for_conv1d

from csmlab.weights.checkpoint import save_checkpoint

SEED = 1234
NOISE = 0.05  # entry = SHRINK * (residual + NOISE * std(residual) * N(0, 1))
SHRINK = 0.15  # each level removes a little of the residual, so deep levels still see speech structure


@torch.no_grad()
def standardize_encoder(mimi, audio_24k: np.ndarray) -> None:
    """Rescale the encoder's last conv so its output over `audio_24k` has zero mean, unit std."""
    x = torch.from_numpy(audio_24k).float()[None, None]
    out = mimi.encoder(pad_for_conv1d(x, mimi.frame_size, mimi.frame_size))  # [1, 512, T']
    mean, std = out.mean(dim=(0, 2)), out.std(dim=(0, 2))
    last = mimi.encoder.model[-1].conv.conv
    last.weight.div_(std[:, None, None])
    last.bias.sub_(mean).div_(std)


@torch.no_grad()
def calibrate_codebooks(mimi, audio_24k: np.ndarray, seed: int = SEED) -> None:
    """Fill every codebook of `mimi` from residual latents of `audio_24k` (mono float, 24 kHz)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(audio_24k).float()[None, None]
    latent = mimi._encode_to_unquantized_latent(x)  # [1, 512, T] at 12.5 Hz
    for rvq in (mimi.quantizer.rvq_first, mimi.quantizer.rvq_rest):
        residual = rvq.input_proj(latent)[0].T  # [T, 256]
        for layer in rvq.vq.layers:
            book = layer._codebook
            picks = torch.randint(0, residual.shape[0], (book.codebook_size,), generator=gen)
            noise = torch.randn(book.codebook_size, residual.shape[1], generator=gen)
            entries = SHRINK * (residual[picks] + NOISE * residual.std(0) * noise)
            book.embedding_sum.copy_(entries)
            book.cluster_usage.fill_(1.0)
            book._initialized.fill_(1.0)
            book._cached_initialized = False
            residual = residual - book.decode(book.encode(residual))


def build(path: Path, speech_24k: np.ndarray) -> Path:
    """Build the calibrated full-size Mimi and save it at `path` in the released format."""
    torch.manual_seed(SEED)
    mimi = loaders.get_mimi(None, num_codebooks=32)
    standardize_encoder(mimi, speech_24k)
    calibrate_codebooks(mimi, speech_24k)
    return save_checkpoint(mimi, path)
