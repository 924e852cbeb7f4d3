# ---
# jupyter:
#   jupytext:
#     text_representation:
#       format_name: percent
# ---
# %% [markdown]
# # Notebook 05 changes (issue 22): what it should say
#
# For the integrator. Each block says where it goes in `notebooks/05_live_duplex_demo.ipynb`.
# Nothing here types a measured number: the cells print what the code measured.
#
# Keep in mind: `tests/test_browser.py` runs a copy of notebook 05 in JupyterLab. It finds the live
# cell by `DuplexWidget(brain=\"loopback\")` and the report cell by the text `live.report()`, whose
# output it parses as JSON. If the report cell changes to `print(live.summary())` (below), keep a
# cell that prints `json.dumps(live.report())` or change the fixture's `run_cell(page, "live.report()")`.

# %% [markdown]
# ## Replaces the "Playback" bullet of section 2 (the browser side)
#
# - **Playback: an adaptive jitter buffer** (`PlayoutBuffer` in `duplex-audio.js`, the idea of
#   WebRTC's NetEQ, small). Replies do not arrive exactly every 80 ms: the comm and the kernel bunch
#   them up. The buffer measures that: for each delivery, how much later it came than the audio in
#   hand lasted (the *inter-arrival excess*), and keeps in hand the recent 95th percentile of it, plus
#   10 ms. That is its **target**. A single stall is one sample of that statistic, so it does not raise
#   the target; hiccups that recur do.
# - When the buffer holds more than its target (after a stall, a burst arrives at once), it **sheds**
#   the excess: 10 ms blocks at the head, quiet ones first (silence, or a codec's noise floor), and
#   when the excess persists, blocks no louder than the median of what is queued, never two in a row.
#   Each cut is cross-faded over 2.5 ms, so there is no click. Every shed and dropped millisecond is
#   counted and shown under the widget's figures.
# - When it runs dry it plays silence (fading over 2 ms, no click), counts an *underrun*, and starts
#   again one target after the next arrival.
#
# Why it matters: a fixed start delay with a hard cap never gives back what a stall added. Issue 22
# measured 165 -> 437 ms round trip after three 400 ms stalls, for the rest of the session.

# %% [markdown]
# ## Section 1's budget cell: one label
#
# `jitter_ms` is now where the playback buffer *starts*; it then adapts to the measured jitter
# (through JupyterLab, typically more; in the offline twin, fed in lockstep, there is none). Label the
# bar `"playback buffer (start)"` instead of `"playback margin"`, and the printed line can add
# "+ the playback buffer's adaptation, transport and device latencies, measured live".

# %% [markdown]
# ## New, after section 3: "If the microphone will not start"
#
# Browsers give a page the microphone, and the AudioWorklets this widget runs on, only on `https://`
# or on `localhost`. If JupyterLab runs on another machine and you opened `http://that-machine:8888/`,
# the widget says so instead of starting. Open an SSH tunnel and browse to localhost:
#
# ```bash
# ssh -L 8888:localhost:8888 that-machine     # then open http://localhost:8888/ here
# ```
#
# or serve JupyterLab (or `csmlab serve`) behind TLS (`deploy/Caddyfile`).

# %% [markdown]
# ## Section 4 (live): the three figures the widget shows, and what they mean
#
# - **you hear it after (mouth to ear)**: the round trip the page measures (capture of a frame's
#   first sample to the moment its reply starts to play), plus the brain's own delay (the loopback
#   waits 160 ms by design, Moshi its acoustic delay), plus the device's latency that the
#   AudioContext reports (`baseLatency + outputLatency`, and the microphone's when the browser says).
# - **pipeline adds**: what the path adds on top of capturing a frame: transport + kernel (queue and
#   compute) + playback buffer. This is the part csmlab can make smaller.
# - **response time** (answering brains, e.g. `cascade`): from the end of your speech to the first
#   audio of the reply, as you hear it.
#
# The status turns **amber** ("behind") when the brain needs more than 80% of its 80 ms a step, and
# **red** ("overloaded") when it needs more than 80 ms: the widget then says, in words, how many ms the
# brain needs here and what to try. Change the brain with the selector while stopped (it is disabled
# while running). After Stop, the counts stay on screen.

# %% [markdown]
# ### The report cell (replaces `print(json.dumps(live.report(), indent=1))`)

# %%
# NBVAL_SKIP  (after Stop: what the kernel counted and what the page measured, in words)
live.stop(wait=True)
print(live.summary())  # before Start it says "press Start in the widget above first"

# %% [markdown]
# ## New section 6: "When the brain cannot keep up"
#
# A live session has 80 ms of compute for each 80 ms step. When the median of the last 12 steps
# needs more, no queue can save it: the page sends 12.5 frames a second whatever happens, the
# kernel's bounded queue drops the oldest, and the session conceals each dropped frame with silence.
# Before issue 22 every concealed frame still cost a full step (encode, brain, decode), so an
# overloaded brain spent most of its time on silence and fell further behind: `moshi` on this CPU
# ran 260 concealment steps out of 293, and the widget stayed green.
#
# Now the session **sheds work** while it is overloaded: a concealed frame skips encode, brain and
# decode and sends silence at no cost. The page turns red and says why. Below, a stand-in brain that
# needs 136 ms per step (it sleeps, so this cell costs no CPU): after 12 steps the session says so.

# %%
import time

from csmlab.bench.overload import SlowBrain
from csmlab.pipeline import DuplexSession

with DuplexSession(SlowBrain(cost_ms=136), clock="realtime") as slow:  # overload is judged on the real-time clock
    for seq in range(slow.overload.window):
        slow.push(np.zeros(FRAME_SIZE, np.float32), SAMPLE_RATE, seq=seq)
    before = slow.brain.calls
    steps = slow.push(np.zeros(FRAME_SIZE, np.float32), SAMPLE_RATE, seq=slow.overload.window + 10)  # 10 frames lost
    print(slow.overload.state.upper(), "-", slow.overload.message())
    print(f"{len(steps)} concealed steps after the gap cost {slow.brain.calls - before} brain calls")

# %% [markdown]
# What shedding buys at a page's pace, measured (`csmlab bench overload`, 10 s per policy, the same
# 136 ms stand-in): frames answered with their own audio, frames dropped, and the compute spent on
# concealed steps, with and without the policy.

# %%
import json
from pathlib import Path

bench = json.loads((Path("../data/results/bench_overload.json")).read_text())
rows = [f"| {'shed concealed steps' if r['shed'] else 'compute every step (before)'} | {r['frames_sent']} | {r['answered']} | "
        f"{r['dropped']} | {r['concealed_steps']} | {r['brain_calls']} | {r['concealed_compute_ms']:.0f} | {r['flagged_after_s']} |"
        for r in bench["runs"]]
display(Markdown("| policy | frames sent | answered | dropped | concealed | brain calls | ms on concealed steps | flagged after (s) |\n"
                 "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
                 + f"\n\n({bench['date']}, load {bench['machine']['load_average_1min']} on {bench['machine']['cpu_cores']} cores)"))

# %% [markdown]
# ## New, in section 6 (what matters live): the live path measured in a real browser
#
# `csmlab bench live` drives Chromium with a recording as its microphone, through JupyterLab (this
# widget, real-time clock, three forced 400 ms stalls of the kernel's worker) and through
# `csmlab serve`'s page, for 60 s each. Its last run on this machine:

# %%
live_bench = json.loads(Path("../data/results/bench_live.json").read_text())
lines = []
for path in ("jupyterlab", "serve", "serve_cascade"):
    if path not in live_bench:
        continue
    r = live_bench[path]
    line = (f"| {path} | {r['added_ms']['p50']:.0f} / {r['added_ms']['p95']:.0f} | {r['mouth_to_ear_ms']['p50']:.0f} | "
            f"{r['player']['shedMs']:.0f} | {r['player']['droppedMs']:.0f} | {r['player']['underruns']} | "
            f"{r['response_heard_ms']['p50']:.0f} |" if "response_heard_ms" in r else
            f"| {path} | {r['added_ms']['p50']:.0f} / {r['added_ms']['p95']:.0f} | {r['mouth_to_ear_ms']['p50']:.0f} | "
            f"{r['player']['shedMs']:.0f} | {r['player']['droppedMs']:.0f} | {r['player']['underruns']} | – |")
    lines.append(line)
stalls = live_bench.get("jupyterlab", {}).get("stalls", [])
display(Markdown(
    "| path | added p50 / p95 (ms) | mouth to ear p50 (ms) | shed (ms) | dropped (ms) | underruns | response heard p50 (ms) |\n"
    "|---|---|---|---|---|---|---|\n" + "\n".join(lines)
    + "\n\nAfter each forced 400 ms stall (JupyterLab): "
    + "; ".join(f"{s['before_ms']:.0f} -> {s['worst_ms']:.0f} ms, {s['after_2s_ms']} ms 2 s later" for s in stalls)
    + f"\n\n({live_bench['date']}, load {live_bench['load_1min_before']} -> {live_bench['load_1min_after']} "
    f"on {live_bench['machine']['cpu_cores']} cores: a loaded machine inflates every figure)"))

# %% [markdown]
# ## New exercise 4 (after exercise 3)
#
# **4.** The widget shows a round trip of 200 ms, the loopback brain waits 160 ms by design, and the
# AudioContext reports 10 ms `baseLatency` and 30 ms `outputLatency`. How long after you say a word do
# you hear its echo?

# %%
answer = ...
ex.mouth_to_ear_ms(answer, round_trip_ms=200, brain_delay_ms=160, device_ms=10 + 30)

# %%
answer = 200 + 160 + 10 + 30  # the path's round trip, the brain's own delay, the device's latency
ex.mouth_to_ear_ms(answer, round_trip_ms=200, brain_delay_ms=160, device_ms=10 + 30).must_pass()

# %% [markdown]
# ## Summary: add
#
# - The playback buffer adapts: it holds the recent high percentile of the arrivals' jitter, sheds
#   the rest (quiet stretches first, cross-faded), and counts every shed or dropped millisecond, so a
#   stall costs latency for a moment, not for the rest of the session.
# - A brain that cannot keep up is flagged in words, and the session stops spending compute on the
#   silence that stands in for dropped frames.
# - What you hear is the round trip plus the brain's delay plus the device's latency; the widget
#   shows all three.
