"""csmlab.metrics: the numbers every codec comparison in the course rests on."""
import numpy as np
import pytest

from csmlab import metrics


@pytest.fixture
def speechlike():
    rng = np.random.default_rng(0)
    t = np.arange(24000) / 24000
    return (np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.1 * rng.standard_normal(len(t))).astype(
        np.float32
    )


def test_si_sdr_is_scale_invariant_and_falls_with_noise(speechlike):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(len(speechlike)).astype(np.float32)
    assert metrics.si_sdr(speechlike, speechlike) > 80
    a = metrics.si_sdr(speechlike, speechlike + 0.01 * noise)
    assert metrics.si_sdr(speechlike, 3.0 * (speechlike + 0.01 * noise)) == pytest.approx(a, abs=1e-6)
    b = metrics.si_sdr(speechlike, speechlike + 0.1 * noise)
    assert a > b + 15  # ten times the noise amplitude is 20 dB less
    assert b == pytest.approx(10 * np.log10(np.mean(speechlike**2) / 0.01), abs=1.0)


def test_si_sdr_accepts_torch_and_cuts_the_padded_tail(speechlike):
    torch = pytest.importorskip("torch")
    padded = np.concatenate([speechlike, np.zeros(1000, np.float32)])
    assert metrics.si_sdr(torch.from_numpy(speechlike), padded) > 80


def test_log_mel_distance_is_zero_for_identical_and_grows_with_distortion(speechlike):
    rng = np.random.default_rng(2)
    noise = rng.standard_normal(len(speechlike)).astype(np.float32)
    assert metrics.log_mel_distance(speechlike, speechlike, 24000) == pytest.approx(0.0, abs=1e-9)
    near = metrics.log_mel_distance(speechlike, speechlike + 0.01 * noise, 24000)
    far = metrics.log_mel_distance(speechlike, speechlike + 0.3 * noise, 24000)
    assert 0 < near < far


def test_empty_signals_are_refused():
    with pytest.raises(ValueError):
        metrics.si_sdr([], [])


def test_bitrate_and_frame_arithmetic_match_mimi():
    assert metrics.FRAME_RATE == 12.5
    assert metrics.frame_ms() == 80.0
    assert metrics.bitrate(8) == 1100.0  # Moshi's 1.1 kbps
    assert metrics.bitrate(32) == 4400.0
    assert metrics.raw_bitrate() == 384_000
    assert metrics.num_frames(1) == 1 and metrics.num_frames(1920) == 1 and metrics.num_frames(1921) == 2
    assert metrics.complete_frames(1919) == 0 and metrics.complete_frames(3840) == 2


def test_percentiles_names_median_p95_and_max():
    p = metrics.percentiles(np.arange(1, 101))
    assert p["p50"] == pytest.approx(50.5) and p["max"] == 100 and 95 <= p["p95"] <= 96


def test_periodicity_tells_a_voice_from_noise_at_any_pitch_in_range():
    t = np.arange(24000) / 24000
    noise = np.random.default_rng(1).standard_normal(len(t))
    for f0 in (70, 150, 380):
        saw = (t * f0) % 1 - 0.5  # a buzz with all harmonics, like a glottal source
        assert metrics.periodicity(saw, 24000).mean() > 0.95
    assert metrics.periodicity(noise, 24000).mean() < 0.2
    assert metrics.periodicity(np.zeros(2400), 24000).max() == 0.0  # silence is not periodic


def test_voiced_periodicity_scores_the_estimate_on_the_references_voiced_frames():
    t = np.arange(24000) / 24000
    voice = np.where(t < 0.5, np.sin(2 * np.pi * 140 * t), 0.01 * np.random.default_rng(2).standard_normal(len(t)))
    whisper = np.random.default_rng(3).standard_normal(len(t))
    ref_p, same_p = metrics.voiced_periodicity(voice, voice, 24000)
    assert ref_p == same_p > 0.9
    assert metrics.voiced_periodicity(voice, whisper, 24000)[1] < 0.3
    with pytest.raises(ValueError, match="no voiced frame"):
        metrics.voiced_periodicity(whisper, voice, 24000)
    with pytest.raises(ValueError, match="at least one"):
        metrics.periodicity(voice[:100], 24000)
