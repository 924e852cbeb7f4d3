"""Notebook 05's pictures: the live path with its latency budget, and what the widget would show."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

from csmlab.widget.replay import FRAME_MS, Replay

PATH = [  # (box, where it runs)
    ("microphone", "device"), ("capture\nworklet", "browser"), ("80 ms\nframes", "comm"),
    ("kernel\nqueue + session", "kernel"), ("80 ms\nframes", "comm"), ("playback worklet\njitter buffer", "browser"),
    ("speaker", "device"),
]
COLOURS = {"device": "#ddd", "browser": "#cfe3f7", "comm": "#f7e7c4", "kernel": "#d5efd5"}


def live_path_figure(budget: dict[str, float]) -> plt.Figure:
    """The boxes audio passes through, and below them the latency budget as a stacked bar (ms)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 4.2), gridspec_kw={"height_ratios": [1.3, 1]})
    for i, (label, where) in enumerate(PATH):
        top.add_patch(FancyBboxPatch((i * 1.5, 0), 1.2, 1, boxstyle="round,pad=0.05", fc=COLOURS[where], ec="#555"))
        top.text(i * 1.5 + 0.6, 0.5, label, ha="center", va="center", fontsize=9)
        if i:
            top.annotate("", (i * 1.5 - 0.02, 0.5), (i * 1.5 - 0.28, 0.5), arrowprops={"arrowstyle": "->"})
    for where, colour in COLOURS.items():
        top.bar(0, 0, color=colour, label=where)
    top.legend(loc="upper center", ncol=4, bbox_to_anchor=(0.5, 1.3), frameon=False, fontsize=8)
    top.set_xlim(-0.2, len(PATH) * 1.5 - 0.1)
    top.set_ylim(-0.2, 1.2)
    top.axis("off")
    left = 0.0
    for (part, ms), colour in zip(budget.items(), plt.cm.Set2.colors):
        bottom.barh(0, ms, left=left, color=colour, edgecolor="white")
        bottom.text(left + ms / 2, 0, f"{part}\n{ms:.0f} ms", ha="center", va="center", fontsize=8)
        left += ms
    bottom.set_yticks([])
    bottom.set_xlabel("ms from speaking to hearing the reply to that frame (the brain's own delay comes on top)")
    bottom.set_title(f"latency budget: {left:.0f} ms", fontsize=10)
    fig.tight_layout()
    return fig


def replay_figure(replay: Replay, title: str = "") -> plt.Figure:
    """Levels in and out, the text stream and the round trip per step: the widget's figures, over time."""
    t = np.arange(len(replay.seq)) * FRAME_MS / 1000  # [N] s
    fig, (levels, latency) = plt.subplots(2, 1, figsize=(11, 5), sharex=True)
    levels.plot(t, replay.input_db, label="mic (input)", lw=1)
    levels.plot(t, replay.output_db, label="system (output)", lw=1)
    for x, text in zip(t, replay.text):
        if text.strip():
            levels.text(x, -5, text.strip(), fontsize=7, rotation=60, va="bottom")
    levels.set_ylim(-92, 25)
    levels.set_ylabel("level (dBFS)")
    levels.legend(loc="lower right", fontsize=8)
    levels.set_title(title or "what the widget would show")
    capture = np.full(len(t), FRAME_MS)
    parts = [("capture (80 ms frame)", capture), ("kernel", replay.kernel_ms), ("playback buffer", replay.playback_ms)]
    latency.stackplot(t, *[p for _, p in parts], labels=[n for n, _ in parts], alpha=0.8)
    over = replay.late | (replay.kernel_ms > FRAME_MS)
    latency.scatter(t[over], replay.round_trip_ms[over], color="red", s=8, zorder=3,
                    label="kernel over 80 ms (more than the frame it answers)")
    latency.set_ylabel("round trip (ms)")
    latency.set_xlabel("time (s)")
    latency.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig
