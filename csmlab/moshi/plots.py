"""Pictures of Moshi: the 17 delayed streams as a grid, its two transformers, delay patterns compared
(Moshi's, text ahead or behind audio, MusicGen's), and a streamed conversation as a timeline."""
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
    generated = 1 + config["dep_q"]  # text and Moshi's own codebooks: the rows Moshi predicts
    ax.axhline(generated - 0.5, color="black", lw=2.5)
    for label in ax.get_yticklabels()[:generated]:
        label.set_fontweight("bold")
    for label in ax.get_yticklabels()[generated:]:
        label.set_color("0.4")
    ax.text(steps - 0.45, generated / 2 - 0.5, "GENERATED\nby Moshi", rotation=90, va="center", fontsize=8, weight="bold")
    ax.text(steps - 0.45, (generated + len(streams)) / 2 - 0.5, "GIVEN\n(your audio)", rotation=90, va="center",
            fontsize=8, color="0.3")
    ax.set_xlim(-0.5, steps + 0.1)
    ax.set_title("Moshi's 17 streams: which frame each one carries at each step (S = start token)")
    fig.tight_layout()
    return fig


def plot_two_transformers(num_codebooks: int = 8):
    """One step of Moshi: the temporal transformer over the past steps, then the depformer codebook by codebook."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig, ax = plt.subplots(figsize=(12, 4.2))
    box = lambda x, y, w, h, text, colour, size=9: (
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.03", fc=colour, ec="#444")),
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size))
    arrow = lambda a, b, **kw: ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, **kw))
    for i, label in enumerate(["step t-2", "step t-1", "step t"]):  # the 17 tokens of each past step, summed
        box(0.2 + 1.3 * i, 0.2, 1.1, 0.7, f"{label}:\n17 tokens", "#eeeeee", 8)
        arrow((0.75 + 1.3 * i, 0.9), (0.75 + 1.3 * i, 1.35))
    box(0.1, 1.35, 3.9, 1.0, "temporal transformer\n32 layers x 4096 (the 7B's bulk)\nonce per 80 ms step", "#f7d9a8", 10)
    arrow((4.0, 1.85), (4.7, 1.85))
    ax.text(4.35, 2.0, "$z_t$", ha="center", fontsize=12)
    box(4.7, 1.45, 1.2, 0.8, "text head\n-> text token", "#f4a261")
    prev = (5.3, 1.45)
    for k in range(num_codebooks):  # depformer: one small pass per codebook, each fed the token chosen before it
        x = 6.3 + 0.72 * k
        box(x, 1.45, 0.62, 0.8, f"k={k}", "#8ecae6" if k else "#2a9d8f")
        arrow((prev[0] + (0.6 if k else 0), prev[1] + 0.4) if k else (5.9, 1.85), (x, 1.85), color="#555")
        prev = (x, 1.45)
    ax.text(6.3 + 0.36 * num_codebooks, 2.55, f"depformer: {num_codebooks} sequential passes, 6 layers x 1024, its own weights "
            "per codebook;\npass k sees $z_t$ and the token chosen just before it", ha="center", fontsize=9)
    ax.text(6.3 + 0.36 * num_codebooks, 1.05, "Moshi's 8 codes for this frame", ha="center", fontsize=9)
    ax.set(xlim=(0, 12.2), ylim=(0, 3.1))
    ax.axis("off")
    ax.set_title("One 80 ms step of Moshi: a big transformer across time, a small one across codebooks")
    return fig


def _delay_grid(ax, rows: list[tuple[str, int, str]], steps: int, title: str) -> None:
    """Rows of (name, delay, colour): the frame each stream carries at each step, '·' before its first."""
    for r, (name, delay, colour) in enumerate(rows):
        for t in range(steps):
            ax.add_patch(plt.Rectangle((t, -r), 0.92, 0.9, fc=colour if t >= delay else "#eeeeee"))
            ax.text(t + 0.46, -r + 0.45, f"{t - delay}" if t >= delay else "·", ha="center", va="center", fontsize=8)
        ax.text(-0.2, -r + 0.45, name, ha="right", va="center", fontsize=8)
    ax.set(xlim=(-3.4, steps), ylim=(-len(rows) + 0.8, 1.0), title=title)
    ax.title.set_fontsize(9.5)
    ax.axis("off")


def plot_delay_patterns(steps: int = 7, lag: int = 2):
    """Delay patterns side by side: Moshi's, text ahead of audio (TTS), text behind (ASR), MusicGen's.

    The number in a cell is the frame index the stream carries at that step. Shifting one stream
    against another decides what the model has seen when it predicts it (Défossez et al. 2024, sec. 3.4.4;
    Copet et al. 2023, MusicGen, for the per-codebook delay).
    """
    text, sem, aco = "#f4a261", "#2a9d8f", "#8ecae6"
    patterns = {
        "Moshi: text + semantic together, acoustic 1 step later": [("text", 0, text), ("semantic", 0, sem),
                                                                    ("acoustic 1-7", 1, aco)],
        f"text AHEAD by {lag} (audio delayed): the words come first, audio follows = TTS":
            [("text", 0, text), ("semantic", lag, sem), ("acoustic 1-7", lag + 1, aco)],
        f"text BEHIND by {lag}: audio first, its words follow = ASR":
            [("text", lag, text), ("semantic", 0, sem), ("acoustic 1-7", 1, aco)],
        "MusicGen: codebook k delayed k steps, no text": [(f"codebook {k}", k, sem if k == 0 else aco) for k in range(4)],
    }
    fig, axes = plt.subplots(2, 2, figsize=(12, 4.6))
    for ax, (title, rows) in zip(axes.flat, patterns.items()):
        _delay_grid(ax, rows, steps, title)
    fig.suptitle("Delay patterns: the number is the frame a stream carries at each step", fontsize=11)
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
