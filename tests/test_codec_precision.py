"""csmlab.codec.precision: the opt-in int8 codec is separate, says so, stays close to fp32, and streams
as it batches (up to bf16 near-ties).

Measured on the small trained Mimi, all of data/speech (209 frames, 8 codebooks): int8 codes equal
fp32's on 99.5% of codebook 0 and 95.6% of all codes, log-mel distance 0.017 from fp32's round
trip (fp32's own distance from the input: 1.03); int8 streaming (250 ms chunks) equals int8 batch
on 100% of codebook 0 and 98.9% of all codes, as isolated flips at bf16 near-ties (fp32 streaming:
100%). The thresholds sit a little under those figures; scales 20% off (a broken quantizer) drop
agreement with fp32 to 70% of codebook 0 and 26% of all codes.
"""
import numpy as np
import pytest
import torch
from torch import nn

from csmlab.bench.codec_precision import fidelity
from csmlab.codec import load_codec, precision
from csmlab.codec.batch import agreement
from csmlab.data import speech_utterances
from csmlab.errors import ConfigError
from csmlab.metrics import snr

MIN_CODEBOOK0_VS_FP32, MIN_ALL_VS_FP32 = 0.98, 0.93
MAX_LOG_MEL_VS_FP32 = 0.05
MIN_CODEBOOK0_STREAM, MIN_ALL_STREAM = 0.98, 0.97
MIN_DECODE_SNR_DB = 40  # same codes, session vs batch decode: measured 64-73 dB (bf16 steps; fp32's ~114 dB)


@pytest.fixture(scope="module")
def small(small_codec):
    """The small trained Mimi (conftest's) and its int8 copy: (fp32, int8)."""
    return small_codec, load_codec(8, listen=True, precision="int8")


@pytest.mark.parametrize("kwargs, hint", [({"precision": "int4"}, "choose one of"), ({"precision": None}, "choose one of"),
                                          ({"precision": "int8", "backend": "rustymimi"}, "moshi backend")])
def test_an_unknown_or_unsupported_precision_is_a_config_error(kwargs, hint):
    with pytest.raises(ConfigError, match=hint):
        load_codec(8, **kwargs)


def _layers():
    torch.manual_seed(0)
    return [(nn.Linear(64, 96), precision.Int8Linear, torch.randn(1, 40, 64)),
            (nn.Conv1d(32, 48, 5, 2, dilation=2), precision.Int8Conv1d, torch.randn(1, 32, 90)),
            (nn.ConvTranspose1d(48, 32, 8, 4), precision.Int8ConvTranspose1d, torch.randn(1, 48, 30))]


@pytest.mark.parametrize("index", range(3), ids=["linear", "conv", "convtr"])
def test_an_int8_layer_follows_fp32_and_its_two_kernels_agree(index, monkeypatch):
    fp32, int8_class, x = _layers()[index]
    layer = int8_class(fp32)
    with torch.inference_mode():
        few_rows, reference = layer(x), fp32(x)  # these inputs fit in FEW_ROWS: the int8 kernel
        monkeypatch.setattr(precision, "FEW_ROWS", 0)  # every input "long": dequantize + fp32 BLAS
        many_rows = layer(x)
    assert (few_rows - reference).norm() / reference.norm() < 0.02  # int8 + bf16: measured ~0.8%
    assert torch.allclose(few_rows, many_rows, rtol=2**-7, atol=1e-6)  # at most one bf16 step apart
    assert (few_rows == many_rows).float().mean() > 0.99  # and mostly not even that


def test_the_fp32_codec_is_untouched_by_a_reduced_one(small):
    fp32, _ = small
    audio, rate, _ = speech_utterances()["thanks_en+f3_24k"]
    before = fp32.encode(audio, rate), fp32.decode(fp32.encode(audio, rate))
    reduced = precision.ReducedMoshiBackend(fp32.weights.path, 8, fp32.weights.config)  # a fresh one, not the cache's
    assert reduced.model is not fp32.backend.model
    after = fp32.encode(audio, rate), fp32.decode(fp32.encode(audio, rate))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(before, after))
    assert not any(hasattr(m, "qweight") for m in fp32.backend.model.modules())
    assert fp32.precision == "fp32" and "REDUCED" not in repr(fp32)


def test_a_reduced_codec_says_so_and_holds_fewer_bytes(small):
    _, int8 = small
    assert int8.name == "moshi-int8" and int8.precision == "int8"
    assert "REDUCED PRECISION" in repr(int8)
    kinds = {type(m) for m in int8.backend.model.modules()}
    assert {precision.Int8Linear, precision.Int8Conv1d, precision.Int8ConvTranspose1d} <= kinds
    assert int8.backend.megabytes < 0.6 * int8.backend.fp32_megabytes  # measured 7.0 vs 12.5 MB
    assert int8.backend.matrix_megabytes < 0.5 * int8.backend.fp32_matrix_megabytes  # 4.9 vs 10.4 MB (small convs stay fp32)


def test_int8_codes_and_audio_stay_close_to_fp32(small):
    figures = fidelity(*small)
    assert figures["codes_vs_fp32"]["codebook0"] >= MIN_CODEBOOK0_VS_FP32
    assert figures["codes_vs_fp32"]["overall"] >= MIN_ALL_VS_FP32
    assert figures["log_mel_vs_fp32_round_trip"] <= MAX_LOG_MEL_VS_FP32


def test_int8_streaming_equals_int8_batch_up_to_bf16_near_ties(small):
    _, int8 = small
    streamed, batched = [], []
    for audio, rate, _ in speech_utterances().values():
        chunk = rate // 4  # 250 ms: the session encodes 3 frames, then 3, then 4, ...
        with int8.stream() as s:
            codes = [s.encode(audio[i : i + chunk], rate) for i in range(0, len(audio), chunk)] + [s.flush()]
            streamed.append(np.concatenate(codes, axis=1))  # [K, n]
            batched.append(int8.encode(audio, rate))
            pcm = np.concatenate([s.decode(batched[-1][:, i : i + 3]) for i in range(0, batched[-1].shape[1], 3)])
        assert snr(int8.decode(batched[-1]), pcm) >= MIN_DECODE_SNR_DB
    a = agreement(np.concatenate(streamed, 1), np.concatenate(batched, 1))
    assert a["codebook0"] >= MIN_CODEBOOK0_STREAM and a["overall"] >= MIN_ALL_STREAM
