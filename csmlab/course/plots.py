"""Figures the course draws more than once: the two paths audio can take, a recording's overview,
and captioned audio players.

Learners should *see* audio at every stage, so these helpers return matplotlib figures that
notebooks show as they are; notebooks stay short. Every player says what the learner hears.
"""
from __future__ import annotations

import librosa
import librosa.display
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.ticker import FormatStrFormatter

from csmlab.data import Recording, Turn, overlap_intervals

RANDOM_WEIGHTS = "random weights: what compute sounds like, not speech"
CODEC, BRAIN, VOICE, EDGE = "#c6e2c3", "#f7d9a8", "#f3c1c1", "#d9e8f5"
PATHS = {
    "full duplex: Moshi alone": [
        ("microphone", "24 kHz, every\n80 ms", EDGE), ("Mimi encoder", "1920 samples\n-> 8 codes", CODEC),
        ("Moshi", "hears you and speaks\nat once: text + its\nown 8 codes, 80 ms", BRAIN),
        ("Mimi decoder", "8 codes\n-> 80 ms audio", CODEC), ("speaker", "24 kHz", EDGE)],
    "cascade: a text brain, CSM as the voice": [
        ("microphone", "24 kHz, every\n80 ms", EDGE), ("Mimi encoder", "1920 samples\n-> 8 codes", CODEC),
        ("Moshi's text\n(or any LLM)", "decides WHAT to say:\na turn of text", BRAIN),
        ("CSM", "text + context\n-> 32 codes a frame;\nneeds the turn's text", VOICE),
        ("Mimi decoder", "32 codes\n-> 80 ms audio", CODEC), ("speaker", "24 kHz", EDGE)],
}


def two_paths_diagram() -> plt.Figure:
    """The two ways the course's models make a voice agent, one row each, data flowing left to right."""
    fig, ax = plt.subplots(figsize=(14, 4.6))
    width, gap = 1.9, 0.35
    for row, (title, boxes) in enumerate(PATHS.items()):
        y = 1.6 * (1 - row)
        ax.text(-0.1, y + 1.18, title, fontsize=12, weight="bold")
        for i, (name, detail, colour) in enumerate(boxes):
            x = i * (width + gap)
            ax.add_patch(FancyBboxPatch((x, y), width, 1, boxstyle="round,pad=0.05", fc=colour, ec="#444"))
            ax.text(x + width / 2, y + 0.78, name, ha="center", va="center", fontsize=10.5, weight="bold")
            ax.text(x + width / 2, y + 0.33, detail, ha="center", va="center", fontsize=8.5)
            if i:
                ax.add_patch(FancyArrowPatch((x - gap + 0.02, y + 0.5), (x - 0.02, y + 0.5), arrowstyle="-|>",
                                             mutation_scale=14))
    ax.text(5 * (width + gap) + 0.1, 2.1, "listens while it speaks:\ninterruptions, 'mm-hm',\noverlap",
            fontsize=9, color="#7a4b00", va="center")
    ax.text(6 * (width + gap) + 0.1, 0.5, "waits for a turn:\nlatency = the text\n+ CSM's first frame",
            fontsize=9, color="#8a2020", va="center")
    ax.set_xlim(-0.2, 7.3 * (width + gap))
    ax.set_ylim(-0.2, 2.95)
    ax.axis("off")
    return fig


def shade_overlaps(ax, turns, **kwargs) -> None:
    """Shade on `ax` every stretch where two speakers talk at once."""
    for i, (start, end) in enumerate(overlap_intervals(turns)):
        ax.axvspan(start, end, color="#555555", alpha=0.28, lw=0, label="both speak" if i == 0 else None, **kwargs)


def draw_turns(ax, turns: list[Turn]) -> None:
    """One bar per turn, one row per speaker (named on the y axis), on a time axis in seconds."""
    speakers = sorted({t.speaker for t in turns})
    for turn in turns:
        row = speakers.index(turn.speaker)
        ax.broken_barh([(turn.start, turn.end - turn.start)], (row - 0.4, 0.8), color=f"C{row}")
    ax.set(yticks=range(len(speakers)), yticklabels=speakers, xlabel="time (s)")


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
    draw_turns(turns, rec.turns)
    turns.set(title="who speaks when (RTTM); shaded: both at once")
    for ax in (wave, spec, turns):
        shade_overlaps(ax, rec.turns)
    turns.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def call_window(rec: Recording, start: float, seconds: float = 3.0) -> plt.Figure:
    """A few seconds of `rec`: spectrogram over who speaks, overlaps shaded; for zooming in."""
    a, b = int(start * rec.sample_rate), int((start + seconds) * rec.sample_rate)
    fig, (spec, turns) = plt.subplots(2, 1, figsize=(9, 3.6), sharex=True, gridspec_kw={"height_ratios": [2, 0.8]})
    mel = librosa.feature.melspectrogram(y=rec.audio[a:b], sr=rec.sample_rate, n_mels=64, hop_length=160)
    librosa.display.specshow(librosa.power_to_db(mel, ref=np.max), sr=rec.sample_rate, hop_length=160,
                             x_axis="time", y_axis="mel", ax=spec, x_coords=start + np.arange(mel.shape[1]) * 160 / rec.sample_rate)
    draw_turns(turns, rec.turns)
    for ax in (spec, turns):
        shade_overlaps(ax, rec.turns)
    turns.set(xlim=(start, start + seconds))
    # librosa's time axis labels whole seconds, which repeats a label ("12 12 12") on a 3 s window
    turns.xaxis.set_major_formatter(FormatStrFormatter("%.1f"))
    spec.set(title=f"{start:.1f} to {start + seconds:.1f} s; shaded: both speak", xlabel=None)
    fig.tight_layout()
    return fig


def player(audio, rate: int, caption: str) -> None:
    """Show `caption` (what the learner is about to hear) above an audio player.

    Exact silence plays as silence (IPython would divide by its zero peak to normalise it).
    """
    from IPython.display import Audio, Markdown, display

    display(Markdown(f"🔊 *{caption}*"), Audio(audio, rate=rate, normalize=bool(np.any(audio))))


def streaming_state_diagram(window: int = 250, step_rate: float = 25.0, kernel: int = 7, stride: int = 4) -> plt.Figure:
    """What a streaming codec keeps between 80 ms frames, and why its first frame is special.

    Top: a causal convolution with kernel `kernel` and stride `stride` needs `kernel - stride` input
    samples from before the current chunk; the streaming module keeps them as state. At the very
    first frame there is no past, so it sees zeros, exactly as batch mode pads the start: that is why
    streaming gives the batch codes. Bottom: the transformer keeps keys and values of past steps (its
    KV cache) but attends only to the last `window` of them (Mimi's transformers run at `step_rate` 25 Hz).
    """
    fig, (conv, kv) = plt.subplots(2, 1, figsize=(12, 4.6), gridspec_kw={"height_ratios": [1, 1]})
    keep = kernel - stride
    chunk = 3 * stride  # samples per chunk in this sketch
    for name, x0, first in (("frame 0 (first)", 0, True), ("frame t", chunk + keep + 6, False)):
        ctx_colour, ctx_label = ("white", "zeros") if first else ("#f7d9a8", "kept from frame t-1")
        conv.add_patch(plt.Rectangle((x0, 0), keep, 1, fc=ctx_colour, ec="#444", hatch="//" if first else None))
        conv.text(x0 + keep / 2, 1.25, ctx_label, ha="center", fontsize=9)
        conv.add_patch(plt.Rectangle((x0 + keep, 0), chunk, 1, fc="#c6e2c3", ec="#444"))
        conv.text(x0 + keep + chunk / 2, 0.5, "new samples", ha="center", va="center", fontsize=9)
        conv.text(x0 + (keep + chunk) / 2, -0.55, name, ha="center", fontsize=10, weight="bold")
        conv.annotate("", xy=(x0 + kernel, -0.12), xytext=(x0, -0.12),
                      arrowprops=dict(arrowstyle="<->", color="crimson"))
        conv.text(x0 + kernel / 2, -0.33, f"first output sees {kernel} samples", ha="center", fontsize=8, color="crimson")
    conv.set(xlim=(-1, 2 * (chunk + keep) + 8), ylim=(-0.8, 1.6), title=(
        f"a causal conv (kernel {kernel}, stride {stride}) keeps its last {keep} input samples between frames; "
        "the first frame sees zeros instead, as batch mode does"))
    conv.axis("off")
    older = window // 5
    kv.add_patch(plt.Rectangle((0, 0), older, 1, fc="0.85", lw=0))
    kv.add_patch(plt.Rectangle((older, 0), window, 1, fc="#9ec5e8", ec="#3b6ea5"))
    kv.add_patch(plt.Rectangle((older + window, 0), 4, 1, fc="crimson", lw=0))
    for step in range(older, older + window, 10):
        kv.plot([step, step], [0, 1], color="white", lw=0.6)
    kv.annotate("", xy=(older, 1.2), xytext=(older + window + 4, 1.2), arrowprops=dict(arrowstyle="<->", color="#3b6ea5"))
    kv.text(older + window / 2, 1.35, f"the step now attends to the last {window} steps: {window / step_rate:.0f} s at "
            f"{step_rate:g} Hz, kept as keys and values (the KV cache)", ha="center", fontsize=9, color="#3b6ea5")
    kv.text(older / 2, 0.5, "older:\ndropped", ha="center", va="center", fontsize=8)
    kv.text(older + window + 6, 0.5, "now", va="center", color="crimson", fontsize=9)
    kv.text(older + window / 2, -0.3, "at the first step the cache is empty: the step attends only to itself",
            ha="center", fontsize=8.5)
    kv.set(xlim=(-2, older + window + 20), ylim=(-0.5, 1.8), title="the transformer's memory between steps")
    kv.axis("off")
    fig.tight_layout()
    return fig


def playback_schedule(ready_s: list[float], chunk_s: float = 0.08) -> tuple[np.ndarray, float]:
    """When each audio chunk would play if playback starts with the first and waits when one is late.

    `ready_s[i]`: when chunk i (of `chunk_s` seconds of audio) was ready. Returns the play start of
    each chunk and the total time playback stalled waiting for audio.
    """
    starts, clock, stalled = [], ready_s[0], 0.0
    for ready in ready_s:
        start = max(clock, ready)
        stalled += start - clock
        starts.append(start)
        clock = start + chunk_s
    return np.array(starts), stalled


def plot_playback(ready_s: list[float], chunk_s: float = 0.08, label: str = "streamed"):
    """Audio ready against audio played in real time from the first chunk: where the lines cross, it stalls."""
    ready = np.asarray(ready_s)
    starts, stalled = playback_schedule(ready_s, chunk_s)
    audio = chunk_s * np.arange(1, len(ready) + 1)  # seconds of audio available once chunk i is ready
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.step(ready, audio, where="post", label=f"audio ready ({label})", color="C0")
    ideal = ready[0] + np.array([0.0, audio[-1]])
    ax.plot(ideal, [0, audio[-1]], "--", color="0.4", label="real-time playback from the first chunk")
    played_t = np.stack([starts, starts + chunk_s], axis=1).ravel()  # each chunk plays for chunk_s seconds
    played = np.stack([audio - chunk_s, audio], axis=1).ravel()
    ax.plot(played_t, played, color="C3", lw=1.2, label=f"what is heard: flat where it stalls ({stalled:.2f} s in all)")
    ax.set(xlabel="seconds after the request", ylabel="seconds of audio", xlim=(0, None), ylim=(0, None),
           title="Can playback keep up? Below the dashed line, the listener waits")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def slider_view(draw, slider):
    """A slider that redraws `draw(value)` below it when moved (in a live notebook).

    Nothing is drawn until the slider moves: an executed notebook (nbval, CI, the static page) shows
    the widget and relies on the cell below it, which calls `draw` once with a fixed value: the
    slider's static twin.
    """
    import ipywidgets as widgets

    out = widgets.Output()

    def redraw(change):
        with out:
            out.clear_output(wait=True)
            draw(change["new"])
            plt.show()

    slider.observe(redraw, names="value")
    return widgets.VBox([slider, widgets.Label("move the slider to draw; the static view is below"), out])
