"""Pictures of a duplex session: its layers (drawn from the live objects) and its timeline."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from csmlab.metrics import SAMPLE_RATE
from csmlab.pipeline.brain import FRAME_MS


def _describe(layer: str, obj) -> str:
    """A box's text: the class, and the settings that matter, read from the object itself."""
    if obj is None:
        return f"{layer}\n(not used:\nthe brain works on PCM)"
    name = type(obj).__name__
    if layer == "input":
        return f"{name}\nwindow {obj.window} frames\nthen soxr to 24 kHz,\n1920-sample frames"
    if layer in ("encode", "decode"):
        return f"{name}\n{obj.codec.name} Mimi, {obj.codec.num_codebooks} cb\nweights: {obj.codec.weights.kind}"
    extra = getattr(obj, "voice", None)
    return f"{name}\n{'hears codes' if obj.hears_codes else 'hears PCM'}, {'says codes' if obj.speaks_codes else 'says PCM'}" + (
        f"\nvoice: {type(extra).__name__}" if extra is not None else f"\nweights: {obj.weights}")


def draw_architecture(session):
    """The session's layers left to right (audio flows one way), its clock above, its event log below."""
    layers = session.layers()
    fig, ax = plt.subplots(figsize=(12, 3.6))
    boxes = [("user audio\n(any rate, seq)", "#eeeeee")] + [(_describe(n, o), "#cfe8f3" if o is not None else "#f5f5f5")
                                                              for n, o in layers] + [("Step\npcm [1920] 24 kHz\ntext", "#eeeeee")]
    width, gap = 1.6, 0.45
    for i, (text, colour) in enumerate(boxes):
        x = i * (width + gap)
        ax.add_patch(plt.Rectangle((x, 0), width, 1.2, facecolor=colour, edgecolor="#333333"))
        ax.text(x + width / 2, 0.6, text, ha="center", va="center", fontsize=8)
        if i:
            ax.annotate("", (x, 0.6), (x - gap, 0.6), arrowprops=dict(arrowstyle="->"))
        if 0 < i <= len(layers):
            ax.text(x + width / 2, 1.3, layers[i - 1][0], ha="center", fontsize=9, weight="bold")
            ax.annotate("", (x + width / 2, -0.55), (x + width / 2, 0), arrowprops=dict(arrowstyle="->", color="#999999"))
    right = len(boxes) * (width + gap) - gap
    ax.add_patch(plt.Rectangle((width + gap, -1.05), right - 2 * (width + gap), 0.5, facecolor="#fff3c4", edgecolor="#333"))
    ax.text(right / 2, -0.8, f"{type(session.events).__name__}: one log every layer writes to", ha="center", va="center", fontsize=9)
    ax.text(right / 2, 1.75, f"{type(session.clock).__name__}: one {FRAME_MS} ms step per frame", ha="center", fontsize=9)
    ax.set_xlim(-0.1, right + 0.1)
    ax.set_ylim(-1.2, 2.0)
    ax.axis("off")
    fig.tight_layout()
    return fig


def plot_timeline(steps, user_turns=(), vad=(), events=(), title: str = "", seconds: float | None = None, timeline=()):
    """One picture of a session: who speaks when, the VAD, the system's audio and text, barge-ins, latencies.

    `steps` are the session's `Step`s; `user_turns` the RTTM turns of the user; `vad` the cascade's
    `(end_ms, prob, speech)` trace; `events` the session's event log (its barge-ins); `timeline` the
    cascade's `timeline` (each reply's start and latency, as measured, not read back from a log line).
    """
    t_end = seconds or len(steps) * FRAME_MS / 1000
    fig, ax = plt.subplots(figsize=(12, 3.4))
    for turn in user_turns:
        ax.add_patch(plt.Rectangle((turn.start, 2.1), turn.end - turn.start, 0.7, color="#e76f51", alpha=0.8))
    if len(vad):
        v = np.asarray([(end / 1000, prob) for end, prob, _ in vad])
        ax.plot(v[:, 0], 1.1 + 0.8 * v[:, 1], color="#264653", linewidth=0.8)
    speaking = np.array([s.pcm.any() for s in steps])
    t = np.arange(len(steps)) * FRAME_MS / 1000
    ax.fill_between(t, 0.1, 0.1 + 0.8 * speaking, step="post", color="#2a9d8f", alpha=0.8)
    for s in steps:
        if s.text.strip():
            ax.text(s.index * FRAME_MS / 1000, 0.95, s.text.strip()[:24], fontsize=6, rotation=35, va="bottom")
    for e in events:
        if e.kind == "barge_in":
            ax.axvline(e.step * FRAME_MS / 1000, color="#d62828", linestyle="--", linewidth=1)
    for entry in timeline:
        if entry["kind"] == "system":
            ms = entry["latency_ms"]
            x = (entry["start_ms"] + FRAME_MS) / 1000  # the end of the step that played the reply's first frame
            ax.annotate("", (x, 2.0), (x - ms / 1000, 2.0), arrowprops=dict(arrowstyle="<->", color="#6a4c93"))
            ax.text(x - ms / 2000, 2.0, f"{ms:.0f} ms", fontsize=7, ha="center", va="bottom", color="#6a4c93")
    ax.set_yticks([0.5, 1.5, 2.45], ["system audio\n(+ its text)", "VAD p(speech)", "user speaks\n(RTTM)"])
    ax.set_xlim(0, t_end)
    ax.set_ylim(0, 3.0)
    ax.set_xlabel("seconds (dashed: barge-in; arrows: response latency, end of speech to first reply audio)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def system_audio(steps) -> np.ndarray:
    """The system's side of a session as one 24 kHz signal."""
    return np.concatenate([s.pcm for s in steps]) if steps else np.zeros(0, np.float32)


def fault_strip(steps, title: str = ""):
    """Which steps were concealed, late or faulted: one row each, a mark per step."""
    fig, ax = plt.subplots(figsize=(12, 1.8))
    rows = [("concealed input", [s.concealed for s in steps]), ("late", [s.late for s in steps]),
            ("brain fault", [bool(s.fault) for s in steps]), ("system speaks", [s.pcm.any() for s in steps])]
    for y, (label, marks) in enumerate(rows):
        idx = np.flatnonzero(marks)
        ax.plot(idx * FRAME_MS / 1000, [y] * len(idx), "|", markersize=10)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows], fontsize=8)
    ax.set_xlabel(f"seconds ({SAMPLE_RATE // 1000} kHz out, one step = {FRAME_MS} ms)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


STATUS_COLOURS = {"voiced": "#2a9d8f", "cut": "#f4a261", "dropped": "#adb5bd", "speaking": "#2a9d8f", "queued": "#adb5bd"}


def plot_moshi_csm(brain, steps, transcript, speaker: str, user: str, title: str = ""):
    """Moshi leads, CSM speaks, on one time axis: `speaker`'s real speech and `user`'s (the STM
    `transcript`), Moshi's words as they are sampled (`brain.words`), CSM's phrases from the step of
    their first frame to their end (coloured by what became of them), barge-ins, and the output."""
    fig, ax = plt.subplots(figsize=(13, 3.8))
    rows = {"user": 3.45, "real": 2.45, "text": 1.55, "voice": 0.65}
    for turn in transcript:
        if turn.speaker in (speaker, user):
            y = rows["real"] if turn.speaker == speaker else rows["user"]
            ax.add_patch(plt.Rectangle((turn.start, y - 0.3), turn.end - turn.start, 0.6, color="#e76f51" if y == rows["user"] else "#6a4c93", alpha=0.7))
    for step, word in brain.words:
        x = step * FRAME_MS / 1000
        ax.plot([x, x], [rows["text"] - 0.3, rows["text"] + 0.05], color="#264653", linewidth=0.8)
        ax.text(x, rows["text"] + 0.08, word, fontsize=6, rotation=55, va="bottom")
    for p in brain.phrases:
        if p.start_step is None:
            x = p.ready_step * FRAME_MS / 1000
            ax.plot(x, rows["voice"] + 0.35, marker="x", color=STATUS_COLOURS["dropped"])
            continue
        end = (p.end_step if p.end_step is not None else p.start_step + p.frames) * FRAME_MS / 1000
        start = p.start_step * FRAME_MS / 1000
        ax.add_patch(plt.Rectangle((start, rows["voice"] - 0.3), end - start, 0.6, color=STATUS_COLOURS[p.status], alpha=0.85,
                                   ec="white"))
        ax.annotate("", (start, rows["voice"] + 0.32), (p.first_word_step * FRAME_MS / 1000, rows["text"] - 0.32),
                    arrowprops=dict(arrowstyle="->", color="#999999", linewidth=0.6))
    for t in brain.trace:
        if t["barge_in"]:
            ax.axvline(t["step"] * FRAME_MS / 1000, color="#d62828", linestyle="--", linewidth=0.8, alpha=0.6)
    ax.set_yticks(list(rows.values()), [f"{user} (the user)", f"{speaker} really\nspeaks (STM)",
                                        "Moshi's text\n(replay: sampled)", "CSM's voice\n(phrases)"])
    ax.set_xlim(0, len(steps) * FRAME_MS / 1000)
    ax.set_ylim(0.2, 3.9)
    ax.set_xlabel("seconds (arrows: a phrase's first word to its first audio; green voiced, orange cut, grey/x dropped; "
                  "dashed: barge-in)")
    ax.set_title(title)
    fig.tight_layout()
    return fig
