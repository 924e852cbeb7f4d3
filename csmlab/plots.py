"""Figures the course draws more than once: the layer stack and a recording's overview.

Learners should *see* audio at every stage, so these helpers return matplotlib figures that
notebooks show as they are; notebooks stay short.
"""
from __future__ import annotations

import librosa
import librosa.display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from csmlab.data import Recording

STACK = [
    ("audio in", "microphone\n24 kHz mono", "#d9e8f5"),
    ("Mimi encoder", "1920 samples\n-> 1 frame of codes\n12.5 Hz, 8-32 books", "#c6e2c3"),
    ("Moshi (brain)", "listens and thinks\nin text; 7B temporal\n+ depth transformer", "#f7d9a8"),
    ("CSM (voice)", "text + context\n-> 32 codebooks; 1B\n+ depth decoder", "#f3c1c1"),
    ("Mimi decoder", "1 frame of codes\n-> 80 ms of audio", "#c6e2c3"),
    ("audio out", "speaker\n24 kHz mono", "#d9e8f5"),
]


def stack_diagram() -> plt.Figure:
    """The layers the course builds, left to right in the direction data flows."""
    fig, ax = plt.subplots(figsize=(14, 2.8))
    width, gap = 1.9, 0.35
    for i, (name, detail, colour) in enumerate(STACK):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0), width, 1, boxstyle="round,pad=0.05", fc=colour, ec="#444"))
        ax.text(x + width / 2, 0.8, name, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(x + width / 2, 0.35, detail, ha="center", va="center", fontsize=8.5)
        if i:
            ax.add_patch(FancyArrowPatch((x - gap + 0.02, 0.5), (x - 0.02, 0.5), arrowstyle="-|>", mutation_scale=14))
    ax.set_xlim(-0.2, len(STACK) * (width + gap))
    ax.set_ylim(-0.2, 1.2)
    ax.axis("off")
    ax.set_title("csmlab: audio in -> codec -> brain -> voice -> codec -> audio out")
    return fig


def recording_overview(rec: Recording) -> plt.Figure:
    """Waveform, log-mel spectrogram and speaker turns of `rec`, on one time axis."""
    fig, (wave, spec, turns) = plt.subplots(3, 1, figsize=(12, 6.5), sharex=True,
                                            gridspec_kw={"height_ratios": [1, 2, 0.8]})
    librosa.display.waveshow(rec.audio, sr=rec.sample_rate, ax=wave, color="#3b6ea5")
    wave.set(title="waveform", ylabel="amplitude", xlabel=None)
    mel = librosa.feature.melspectrogram(y=rec.audio, sr=rec.sample_rate, n_mels=64)
    librosa.display.specshow(librosa.power_to_db(mel, ref=np.max), sr=rec.sample_rate, x_axis="time",
                             y_axis="mel", ax=spec)
    spec.set(title="log-mel spectrogram", xlabel=None)
    speakers = sorted({t.speaker for t in rec.turns})
    for turn in rec.turns:
        row = speakers.index(turn.speaker)
        turns.broken_barh([(turn.start, turn.end - turn.start)], (row - 0.4, 0.8), color=f"C{row}")
    turns.set(yticks=range(len(speakers)), yticklabels=speakers, xlabel="time (s)", title="who speaks when (RTTM)")
    fig.tight_layout()
    return fig
