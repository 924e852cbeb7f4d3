"""moshi-format Mimi -> transformers `MimiModel`: same codes, same audio, and the >10 s window fix.

Measured on the calibrated offline Mimi, real recording: first 8 codebooks 100% identical at 8 s and
at 16 s with the fix (98.4% at 16 s without it, on the SHRINK=0.5 calibration), all 32 codebooks
99.98%-100%; decoding the same codes agrees to ~123 dB SNR.
"""
import pytest
import torch
from moshi.models.loaders import get_mimi

from csmlab.weights import convert
from csmlab.data import real_recording
from csmlab.errors import WeightsNotFoundError
from csmlab.metrics import snr
from csmlab.weights import resolve

WINDOW_S = 10  # sliding_window=250 steps at 25 Hz


@pytest.fixture(scope="module")
def models():
    path = resolve("mimi").path
    return get_mimi(str(path), num_codebooks=32, device="cpu").eval(), convert.to_transformers_mimi(path, 32)


@pytest.fixture(scope="module")
def clip():
    audio = real_recording(24000).audio
    return torch.from_numpy(audio[: 12 * 24000])[None, None]  # [1, 1, T] 12 s: past the window


def test_config_and_state_match_transformers(models):
    config, state = convert.transformers_mimi_state(resolve("mimi").path, num_codebooks=8)
    assert config.num_quantizers == 8
    from transformers import MimiModel

    missing, unexpected = MimiModel(config).load_state_dict(state, strict=False)
    assert missing == [] and unexpected == []


def test_rope_permute_is_a_row_permutation_between_pair_layouts():
    d, heads = 8, 2
    w = torch.arange(d * 3, dtype=torch.float32).view(d, 3)
    out = convert.rope_permute(w, heads)
    # head 0 rows (0, 1, 2, 3) in interleaved pairs (0, 1), (2, 3) become halves (0, 2 | 1, 3)
    assert torch.equal(out[:4], w[[0, 2, 1, 3]]) and torch.equal(out[4:], w[[4, 6, 5, 7]])


@torch.no_grad()
def test_codes_and_audio_identical_to_moshi_within_the_window(models, clip):
    moshi, hf = models
    x = clip[..., : 8 * 24000]
    a, b = moshi.encode(x)[0], hf.encode(x).audio_codes[0]  # [32, T]
    assert torch.equal(a[:8], b[:8])
    assert (a == b).float().mean() > 0.997  # the figure; deep codebooks may flip on float near-ties
    assert snr(moshi.decode(a[None])[0, 0], hf.decode(a[None]).audio_values[0, 0]) > 100


@torch.no_grad()
def test_without_the_rope_permute_the_transformer_disagrees(models, clip):
    moshi, hf = models
    x = clip[..., : 2 * 24000]
    config, state = convert.transformers_mimi_state(resolve("mimi").path, 32)
    layer = "encoder_transformer.layers.0.self_attn."
    unpermuted = dict(state)
    for name in ("q_proj.weight", "k_proj.weight"):  # undo the permute: back to moshi's row order
        heads = config.num_attention_heads
        w = state[layer + name]
        unpermuted[layer + name] = w.view(heads, 2, -1, w.shape[1]).transpose(1, 2).reshape(w.shape)
    hf.load_state_dict(unpermuted)
    try:
        wrong = convert.transformers_latent(hf, x)
    finally:
        hf.load_state_dict(state)
    right, ref = convert.transformers_latent(hf, x), moshi._encode_to_unquantized_latent(x)
    err_right, err_wrong = (right - ref).abs().max(), (wrong - ref).abs().max()
    assert err_right < 1e-3
    assert err_wrong > 10 * err_right  # random layer scales (0.01) keep attention's share small


@torch.no_grad()
def test_beyond_10s_only_the_sliding_window_mask_matches_moshi(models, clip):
    moshi, hf = models
    steps = WINDOW_S * 25 // 2  # latent frames (12.5 Hz) inside the window
    assert convert.sliding_window_fixed()
    drift = convert.window_drift(moshi, hf, clip)  # [150] per frame, each way
    assert convert.sliding_window_fixed()  # window_drift puts the fix back
    fixed, plain = drift["sliding window (fixed)"], drift["causal mask (4.57.6)"]
    assert fixed.max() < 1e-3
    assert plain[:steps].max() < 1e-3  # inside 10 s the masks are the same
    assert plain[steps + 1 :].min() > 10 * fixed.max()  # beyond, the full-causal mask drifts


def test_a_missing_or_foreign_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no Mimi checkpoint"):
        convert.transformers_mimi_state(tmp_path / "nope.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(WeightsNotFoundError, match="released Mimi naming"):
        convert.transformers_mimi_state(tmp_path / "other.safetensors")
