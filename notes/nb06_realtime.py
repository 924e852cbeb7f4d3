# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---
# Belongs in notebook 06, in its hardware answer after the codec row (issue 23, goal 3). It reads
# data/results/duplex_moshi_realtime.json, written by
#   csmlab bench duplex --brain moshi --clock realtime --minutes 5 --split 30 --json data/results/duplex_moshi_realtime.json

# %% [markdown]
# ### A Moshi conversation on the real-time clock
#
# `MoshiBrain` with the full-size Mimi in and out (offline: random weights, the real compute) and the
# small Moshi, fed the real call for five minutes on the wall clock. Each step is due 80 ms after its
# frame is complete. The step runs its layers one after the other, so its compute *is* the frame's way
# from input to output; the second core helps as intra-op threads, measured against one thread when the
# session starts. Overlapping the layers (encoding the next frame while this one's LM and decode run)
# would raise throughput, not shorten a frame's way through: each output would come one frame later.

# %%
from IPython.display import Markdown

from csmlab.bench import results

run = results.load("duplex_moshi_realtime")
moshi = run["brains"]["moshi"]
total, layers = moshi["compute_ms"]["total"], moshi["compute_ms"]
chosen = moshi["threads"]
rows = [[name, f"{layers[name]['p50']:.1f}", f"{layers[name]['p95']:.1f}"] for name in ("encode", "brain", "decode", "total")
        if name in layers]
timed = ", ".join(f"{k} thread(s): {v:.1f} ms" for k, v in chosen["median_ms_per_step"].items()) or "not timed"
text = [results.markdown_table(["layer", "p50 ms", "p95 ms"], rows), "",
        f"Threads per step: **{chosen['threads']}** ({chosen['how']}; trial steps {timed}).",
        f"Late: **{moshi['steps_late']} of {moshi['steps']}** steps ({moshi['late_pct']:.2f}%). Goal: p95 <= 70 ms and "
        f"<= 1% late, quiet: **{'met' if total['p95'] <= 70 and moshi['late_pct'] <= 1 else 'not met'}** "
        f"(load average {moshi['load_average_1min']['start']:.1f} at start, {moshi['load_average_1min']['end']:.1f} at end)."]
split = run["brains"].get("split")
if split:
    text.append("Side by side, all frames ready (ms per step, throughput): "
                + ", ".join(f"{k} {v:.1f}" for k, v in split["ms_per_step"].items())
                + f"; same tokens: {split['same_tokens']}.")
text.append(f"_{results.provenance(run)}_")
Markdown("\n\n".join(text))
