# %% [markdown]
# <!-- notebook 05, section 7 "When the brain cannot keep up": these cells go after cell 24 (the
# SlowBrain demo of the skip policy) and replace cells 25-26 (the bench table, which reads the
# `policy`/`name` keys that `csmlab bench overload` now writes for its three runs). Re-run
# `csmlab bench overload --json data/results/bench_overload.json` quiet first. In the Summary, the
# overload bullet may become: "A brain that cannot keep up is flagged in words, and the session
# sheds work: it skips the compute of the silence that stands in for dropped frames, or, if you ask
# for it, runs the brain at a declared lower rate." -->
#
# Skipping concealed frames is one way to shed work. The other is to **declare a lower rate**: as soon
# as the session is overloaded, it decides that the brain runs on one frame in `every` (the compute per
# step over the 80 ms budget, rounded up), says so in words, and sends silence for the frames between
# without encoding, thinking or decoding them. A computed step then has the skipped frames' time
# before it counts as late. The price is stated, not hidden: the brain hears only one frame in
# `every` (its state follows a slower clock than the 12.5 Hz it was trained on), and you hear its
# replies in bursts, a step apart. Choose it with `DuplexWidget(overload="rate")` or
# `csmlab serve --overload rate`.

# %%
with DuplexSession(SlowBrain(cost_ms=136), clock="realtime", window=1, overload="rate") as slow:
    for seq in range(slow.overload.window):
        slow.push(np.zeros(FRAME_SIZE, np.float32), SAMPLE_RATE, seq=seq)
    every, before = slow.overload.every, slow.brain.calls
    print(slow.overload.state.upper(), "-", slow.overload.message())
    later = [s for seq in range(slow.overload.window, slow.overload.window + 4 * every)
             for s in slow.push(np.zeros(FRAME_SIZE, np.float32), SAMPLE_RATE, seq=seq)]
    rate_calls = slow.brain.calls - before
    print(f"the next {len(later)} frames: {len(later)} steps out, {rate_calls} brain calls, "
          f"{sum(s.shed for s in later)} shed (silence, no compute)")
assert rate_calls == len(later) // every  # the declared rate, kept
display(stamp())

# %% [markdown]
# What each policy buys at a page's pace, measured side by side (`csmlab bench overload`, 10 s per
# policy, the same 136 ms stand-in): frames answered with their own audio on time, frames the queue
# dropped, steps shed, brain calls, the compute spent on concealed steps, and the rate each declared.

# %%
bench = results.load("bench_overload")
rows = [f"| {r['name']} | {r['frames_sent']} | {r['answered']} | {r['dropped']} | {r['concealed_steps']} | "
        f"{r['shed_steps']} | {r['brain_calls']} | {r['concealed_compute_ms']:.0f} | 1 in {r['declared_every']} | "
        f"{r['flagged_after_s']} |" for r in bench["runs"]]
display(Markdown("| policy | frames sent | answered | dropped | concealed | shed | brain calls | ms on concealed steps "
                 "| brain ran on | flagged after (s) |\n|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
                 + f"\n\nMeasured: {results.provenance(bench)}"))
display(stamp(bench))  # measured when bench_overload.json was made, not now
