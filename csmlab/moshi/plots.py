"""Pictures of Moshi: the 17 delayed streams as a grid, and a streamed conversation as a timeline."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from csmlab.metrics import FRAME_RATE, SAMPLE_RATE
from csmlab.moshi.architecture import REAL_CONFIG, SYSTEM, USER, stream_layout

_KINDS = ["start token", "text", "Moshi semantic", "Moshi acoustic", "user semantic", "user acoustic"]
_COLOURS = ["#dddddd", "#f4a261", "#2a9d8f", "#8ecae6", "#e76f51", "#ffb4a2"]


def _kind(stream) -> int:
    if stream.owner == "text":
        return 1
    return {SYSTEM: 2, USER: 4}[stream.owner] + (stream.codebook > 0)


def plot_streams(config: dict = REAL_CONFIG, steps: int = 6):
    """The token grid the temporal transformer reads: row = stream, column = 80 ms step.

    Each cell says which frame that stream carries at that step: frame `t - delay`, or the start
    token while `t < delay`. The acoustic rows lag one column: that is the acoustic delay.
    """
    streams = stream_layout(config)
    kinds = np.array([[_kind(s) if t >= s.delay else 0 for t in range(steps)] for s in streams])
    fig, ax = plt.subplots(figsize=(1.1 * steps + 2.5, 0.33 * len(streams) + 1.2))
    ax.imshow(kinds, cmap=ListedColormap(_COLOURS), vmin=0, vmax=len(_COLOURS) - 1, aspect="auto")
    for row, stream in enumerate(streams):
        for t in range(steps):
            ax.text(t, row, "S" if t < stream.delay else f"f{t - stream.delay}", ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(streams)), [f"{s.name}  (delay {s.delay})" for s in streams], fontsize=8)
    ax.set_xticks(range(steps), [f"step {t}\n{t * 80} ms" for t in range(steps)], fontsize=8)
    ax.set_xticks(np.arange(-0.5, steps), minor=True)
    ax.set_yticks(np.arange(-0.5, len(streams)), minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _COLOURS]
    ax.legend(handles, _KINDS, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    ax.set_title("Moshi's 17 streams: which frame each one carries at each step (S = start token)")
    fig.tight_layout()
    return fig


def plot_timeline(user_audio: np.ndarray, system_audio: np.ndarray, pieces: list[str], first_frame: int = 0,
                  sample_rate: int = SAMPLE_RATE):
    """User audio, Moshi's audio and Moshi's text tokens on one time axis.

    `pieces[i]` is the decoded text token of frame `first_frame + i` ("" for padding, drawn as a
    grey tick so the mostly-empty monologue stays visible).
    """
    fig, axes = plt.subplots(3, 1, figsize=(12, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 2, 1.4]})
    for ax, audio, label, colour in ((axes[0], user_audio, "user (input)", "#e76f51"),
                                     (axes[1], system_audio, "Moshi (output)", "#2a9d8f")):
        ax.plot(np.arange(len(audio)) / sample_rate, audio, color=colour, linewidth=0.5)
        ax.set_ylabel(label)
    text_ax = axes[2]
    times = (first_frame + np.arange(len(pieces))) / FRAME_RATE
    spoken = [(t, p) for t, p in zip(times, pieces) if p.strip()]
    text_ax.vlines([t for t, p in zip(times, pieces) if not p.strip()], 0, 0.15, color="#bbbbbb", linewidth=0.6)
    for i, (t, piece) in enumerate(spoken):
        text_ax.text(t, 0.25 + 0.25 * (i % 3), piece.strip(), fontsize=7, rotation=0, ha="left")
    text_ax.set_ylim(0, 1.1)
    text_ax.set_yticks([])
    text_ax.set_ylabel("Moshi's text")
    text_ax.set_xlabel("time (s); grey ticks: padding tokens")
    fig.suptitle(f"A streamed conversation: {sum(1 for p in pieces if not p.strip())} of {len(pieces)} text tokens are padding")
    fig.tight_layout()
    return fig
