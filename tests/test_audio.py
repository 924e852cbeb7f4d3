"""csmlab.audio: every accepted audio format becomes the same mono float32; the rest is refused clearly."""
import numpy as np
import pytest
import torch

from csmlab import audio
from csmlab.errors import AudioFormatError


@pytest.fixture
def mono():
    rng = np.random.default_rng(0)
    return np.clip(0.3 * rng.standard_normal(4000), -0.99, 0.99).astype(np.float32)


def test_layouts_dtypes_and_torch_all_give_the_same_mono(mono):
    stereo = np.stack([mono, mono])  # [2, T]
    pcm = np.round(mono * 32767).astype(np.int16)
    assert np.array_equal(audio.to_mono(mono), mono)
    assert np.array_equal(audio.to_mono(stereo), mono)
    assert np.array_equal(audio.to_mono(stereo.T), mono)  # [T, 2]
    assert np.array_equal(audio.to_mono(torch.from_numpy(stereo)), mono)
    assert np.array_equal(audio.to_mono(mono.astype(np.float64)), mono)
    assert np.abs(audio.to_mono(pcm) - mono).max() < 2 / 32768  # rounding + the 32767/32768 scale
    assert audio.to_mono(pcm).dtype == np.float32


def test_half_precision_from_a_model_is_accepted(mono):
    for half in (torch.bfloat16, torch.float16):
        expected = torch.from_numpy(mono).to(half).float().numpy()
        assert np.array_equal(audio.to_mono(torch.from_numpy(mono).to(half)), expected)
    assert np.array_equal(audio.to_mono(mono.astype(np.float16)), mono.astype(np.float16).astype(np.float32))


def test_a_misspelt_layout_is_refused_even_for_mono(mono):
    with pytest.raises(AudioFormatError, match="layout must be one of"):
        audio.to_mono(mono, layout="channel_first")


def test_stereo_is_averaged(mono):
    assert np.allclose(audio.to_mono(np.stack([mono, np.zeros_like(mono)])), mono / 2)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.array([0.1, np.nan, 0.2], np.float32), "NaN/Inf"),
        (np.array([0.1, np.inf], np.float32), "NaN/Inf"),
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((1, 2, 100), np.float32), "3 dims"),
        (np.zeros((6, 100), np.float32), "no axis of 1 or 2 channels"),
        (np.zeros((2, 2), np.float32), "ambiguous"),
        (np.zeros(10, np.uint8), "dtype uint8"),
        ([0.1, 0.2], "numpy array or a torch tensor"),
    ],
)
def test_bad_audio_is_refused_with_a_message_that_says_what_to_do(bad, match):
    with pytest.raises(AudioFormatError, match=match):
        audio.to_mono(bad)


def test_an_ambiguous_shape_is_resolved_by_an_explicit_layout():
    x = np.array([[0.1, 0.3], [0.5, 0.7]], np.float32)
    assert np.allclose(audio.to_mono(x, layout="channels_first"), [0.3, 0.5])
    assert np.allclose(audio.to_mono(x, layout="channels_last"), [0.2, 0.6])
    with pytest.raises(AudioFormatError, match="layout must be"):
        audio.to_mono(x, layout="rows")


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, "16k", True, None])
def test_bad_sample_rates_are_refused(rate):
    with pytest.raises(AudioFormatError, match="sample_rate"):
        audio.check_sample_rate(rate)


def test_integral_rates_of_any_number_type_are_accepted():
    assert audio.check_sample_rate(np.int64(44100)) == 44100
    assert audio.check_sample_rate(16000.0) == 16000


@pytest.mark.parametrize("rate", [16000, 44100, 24000])
def test_the_streaming_resampler_ignores_how_the_input_is_cut(mono, rate):
    rng = np.random.default_rng(rate)
    whole = audio.resample(mono, rate)
    r, out, i = audio.Resampler(rate), [], 0
    while i < len(mono):
        n = int(rng.choice([1, 3, 160, 777]))
        out.append(r.push(mono[i : i + n]))
        i += n
    out.append(r.push(np.zeros(0, np.float32), last=True))
    assert np.array_equal(np.concatenate(out), whole)
    assert abs(len(whole) - len(mono) * 24000 / rate) <= 1
