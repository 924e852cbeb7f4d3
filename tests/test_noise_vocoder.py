"""csmlab.course.noise_vocoder: speech without pitch, the yardstick for a codec that loses the voice."""
import numpy as np
import pytest

from csmlab import metrics
from csmlab.course.noise_vocoder import band_edges, noise_vocode


@pytest.fixture(scope="module")
def vowel_glide():
    """A buzz at 120 Hz through one resonance that steps 500 -> 2000 Hz every 100 ms: a moving formant."""
    sr = 24000
    t = np.arange(sr) / sr
    buzz_spectrum = np.fft.rfft((t * 120) % 1 - 0.5)
    freqs = np.fft.rfftfreq(sr, 1 / sr)
    out = np.zeros(sr)
    for start in range(0, sr, sr // 10):
        centre = 500 + 1500 * start / sr
        shaped = np.fft.irfft(buzz_spectrum / (1 + ((freqs - centre) / 150) ** 2), sr)
        out[start:start + sr // 10] = shaped[start:start + sr // 10]
    return out.astype(np.float32)


def test_more_bands_follow_the_original_more_closely(vowel_glide):
    distance = {b: metrics.log_mel_distance(vowel_glide, noise_vocode(vowel_glide, 24000, b), 24000) for b in (2, 8, 32)}
    assert distance[32] < distance[8] < distance[2]


def test_it_keeps_the_envelope_and_drops_the_pitch(vowel_glide):
    vocoded = noise_vocode(vowel_glide, 24000, 16)
    ref_p, est_p = metrics.voiced_periodicity(vowel_glide, vocoded, 24000)
    assert ref_p > 0.9 and est_p < 0.6
    rms = lambda x: np.sqrt(np.mean(x.astype(np.float64) ** 2))
    assert abs(20 * np.log10(rms(vocoded) / rms(vowel_glide))) < 1.0  # same loudness


def test_it_is_seeded_and_refuses_what_it_cannot_do(vowel_glide):
    np.testing.assert_array_equal(noise_vocode(vowel_glide, 24000, seed=5), noise_vocode(vowel_glide, 24000, seed=5))
    assert not np.array_equal(noise_vocode(vowel_glide, 24000, seed=5), noise_vocode(vowel_glide, 24000, seed=6))
    assert np.all(np.diff(band_edges(16, 24000)) > 0)
    with pytest.raises(ValueError, match="at least one band"):
        noise_vocode(vowel_glide, 24000, bands=0)
    with pytest.raises(ValueError, match="at least 512"):
        noise_vocode(vowel_glide[:100], 24000)


def test_bands_respect_the_signals_bandwidth():
    """Telephone speech (nothing above 4 kHz): bands to Nyquist put one band across the cutoff; bands to
    the measured bandwidth cover only the signal, and the vocoder leaves the empty band above empty."""
    from csmlab.data import real_recording
    from csmlab.course.noise_vocoder import bandwidth

    call = real_recording(24000).audio[8 * 24000: 12 * 24000]
    top = bandwidth(call, 24000)
    assert 3000 < top < 4300, top  # stored at 16 kHz, band-limited at 4 kHz along the line
    edges = band_edges(9, 24000, fmax=top)
    assert edges[-1] == top and np.all(np.diff(edges) > 0)
    straddles = band_edges(9, 24000)
    assert any(lo < 4000 < hi and hi > 1.5 * 4000 for lo, hi in zip(straddles[:-1], straddles[1:]))
    vocoded = noise_vocode(call, 24000, 9, fmax=top)
    spectrum = np.abs(np.fft.rfft(vocoded)) ** 2
    freqs = np.fft.rfftfreq(len(vocoded), 1 / 24000)
    assert spectrum[freqs > top + 500].sum() < 1e-3 * spectrum.sum()
