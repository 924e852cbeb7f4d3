# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# <!-- Notebook 06, section 1 ("How compatible is CSM with Mimi and Moshi?"): after the compatibility
# table. Uses 06's first cells (Markdown, display). -->
#
# **Moshi leading, CSM speaking.** The codes fit (the table above); the *text* is where the two
# models meet in a dialogue. Moshi's inner monologue is the text of its own speech, sampled one
# acoustic delay before its audio, so CSM can start from Moshi's words before Moshi's own voice would
# say them; but CSM needs a phrase of text before its first frame, and its prompt (with the
# conversation as context) costs more than a frame. `csmlab bench duplex --brain moshi+csm` measured
# what that costs on the real call, per phrase policy (offline: the text is a labelled replay of
# Sheila's words, CSM the small random-weight model):

# %%
from csmlab.bench import results

lag_run = results.load("moshi_csm_lag")
mc = lag_run["brains"]["moshi+csm"]
best = min(mc["policies"], key=lambda name: mc["policies"][name]["lag_ms"]["p50"])
b = mc["policies"][best]
display(Markdown(
    f"- text: {mc['text_source']}; voice: {mc['csm']}\n"
    f"- shortest lag with policy `{best}`: p50 {b['lag_ms']['p50']:.0f} ms, p95 {b['lag_ms']['p95']:.0f} ms from Moshi's first word "
    f"to CSM's first audio of the phrase; {b['lag_vs_moshi_voice_ms']['p50']:.0f} ms (p50) after Moshi's own voice would have said it\n"
    f"- words: {b['words']} (cut and dropped: the user took the floor while CSM was still behind)\n"
    f"- measured: {results.provenance(lag_run)}"))

# %% [markdown]
# So CSM is compatible with Moshi as its voice, at a price: every phrase arrives later than Moshi's own
# audio would, and in a call with quick turns (this one) some of Moshi's words are never voiced
# because the user has taken the floor by then. Moshi's own voice stays the lower-latency path;
# CSM buys a voice chosen for the conversation.

# %% [markdown]
# <!-- Notebook 06, section 3 ("What latency can a production deployment achieve?"): before the verdict. -->
#
# **Moshi + CSM.** The lag per phrase policy, and whether CSM-1B could voice Moshi in real time: per
# 80 ms step both Moshi's step and CSM's frame must fit (on one machine) — from the real-size runs
# cached by `csmlab bench csm` and `csmlab bench moshi`, and, marked as such, published GPU figures.

# %%
rows = ["| policy | lag p50 / p95 ms | vs Moshi's voice p50 ms | CSM frame p50 / p95 ms (small, this CPU) | keeps up |", "|---|---|---|---|---|"]
for name, p in mc["policies"].items():
    rows.append(f"| {name} | {p['lag_ms']['p50']:.0f} / {p['lag_ms']['p95']:.0f} | {p['lag_vs_moshi_voice_ms']['p50']:.0f} "
                f"| {p['frame_ms']['p50']:.0f} / {p['frame_ms']['p95']:.0f} | {'yes' if p['keeps_up'] else 'no'} |")
display(Markdown("\n".join(rows)))
rs = mc["real_size"]
cpu = rs["cpu"]
lines = [f"- this CPU, real size: CSM-1B {dtype} {ms:,.0f} ms per frame + Moshi-7B fp32 {cpu['moshi_7b_step_ms_fp32']:,.0f} ms per step "
         f"= {cpu['times_real_time'][dtype]:.0f}x slower than real time" for dtype, ms in cpu["csm_1b_frame_ms"].items()]
pub = rs["published_gpu"]
lines.append(f"- published, not measured here: Moshi {pub['moshi']['figure']} ({pub['moshi']['source']}); CSM-1B {pub['csm_1b']['figure']} "
             f"({pub['csm_1b']['source']}): {rs['gpu_csm_frame_ms']['rtf_eager']:.0f} / {rs['gpu_csm_frame_ms']['rtf_compiled']:.0f} ms per 80 ms frame")
display(Markdown("\n".join(lines)))

# %% [markdown]
# On a CPU, CSM-1B cannot voice Moshi in real time at any precision measured here. On a GPU the
# published figures leave room: CSM needs only part of each 80 ms frame, so whether it fits beside
# Moshi on one GPU depends on Moshi's own step on it, which Kyutai does not publish per step. The
# lag above is then the design's: the words of one phrase, plus the prompt's compute.

# %% [markdown]
# <!-- Notebook 03, section 7 ("What the cascade costs"): after the cell that contrasts Moshi alone with
# Moshi's text + CSM, replacing "collected into a turn" as the only way. -->
#
# **Without collecting a whole turn.** `csmlab.pipeline.moshi_csm.MoshiCsmBrain` (notebook 04,
# section 10) lets Moshi lead and has CSM voice its words a phrase at a time as they come, stopping
# when the user takes the floor. The lag that remains, measured over the real call:

# %%
from csmlab.bench import results

mc = results.load("moshi_csm_lag")["brains"]["moshi+csm"]
for name, p in mc["policies"].items():
    print(f"{name:<6} lag p50 {p['lag_ms']['p50']:6.0f} ms, p95 {p['lag_ms']['p95']:6.0f} ms   words {p['words']}")
print(f"({mc['text_source']}; {mc['csm']})")
