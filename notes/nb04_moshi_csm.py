# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# <!-- Notebook 04: a new section after "9. Faults on purpose", before the Summary. It uses the
# notebook's first cell (numpy, torch, Markdown, display, player, resolve already imported). -->
#
# ## 10. `moshi+csm`: Moshi leads the dialogue, CSM gives it its voice
#
# Moshi decides *when* to speak and *what* to say: its inner monologue is the text of its own speech,
# one piece at the step its word starts, padding while the word is spoken and while it listens.
# `MoshiCsmBrain` takes those words as Moshi samples them (one acoustic delay before Moshi's own audio
# of them), groups them into phrases and has CSM speak each phrase, frame by frame, with the
# conversation so far as its context. Moshi's own audio is muted (kept on a second channel here, to
# compare). When the user speaks while Moshi's text has fallen silent, Moshi has given the floor: the
# voice stops, and what was not said yet is dropped.
#
# Offline, Moshi's random weights say random word pieces with hardly any padding: nothing like a real
# Moshi's text stream. So the text here comes from a **replay**: Sheila's words in the real call, each
# utterance's words spread over its span, padding elsewhere. It is labelled as what it is wherever it
# appears. Diane is the user.

# %%
from csmlab.data import real_recording
from csmlab.pipeline import DuplexSession, make_brain
from csmlab.pipeline.call import stereo, user_side
from csmlab.pipeline.plots import plot_moshi_csm, system_audio

SECONDS = 18.0  # the call's first 18 s: three of Sheila's turns, Diane cutting in
rec = real_recording()
diane, sheila = user_side(rec, "Diane"), user_side(rec, "Sheila")
cut = int(SECONDS * rec.sample_rate)
brain = make_brain("moshi+csm", replay="Sheila", policy="k3", transcript=diane.transcript, ms_per_word=320,
                   moshi_voice="channel")
with DuplexSession(brain) as session:
    steps = list(session.run(np.concatenate([diane.audio[:cut], np.zeros(2 * rec.sample_rate, np.float32)]), rec.sample_rate))
print("text source:", session.events.of("text_source")[0].detail)
print("voice:", brain.voice.label)

# %% [markdown]
# On one time axis: when Sheila really spoke, the words as the replayed text stream gives them, and
# CSM's voice of them, phrase by phrase (the arrow runs from a phrase's first word to its first audio).

# %%
plot_moshi_csm(brain, steps, rec.transcript, "Sheila", "Diane",
               title=f"moshi+csm on the real call\ntext: {brain.stream.label}; voice: {brain.voice.label}");

# %%
fates = {}
for _, _, fate in brain.word_fates():
    fates[fate] = fates.get(fate, 0) + 1
lags = brain.lags()
print(f"{len(brain.words)} words in {lags['phrases']} phrases: {fates}")
print(f"lag per phrase, Moshi's first word to CSM's first audio: p50 {lags['lag_ms']['p50']:.0f} ms, "
      f"p95 {lags['lag_ms']['p95']:.0f} ms; against Moshi's own voice: p50 {lags['lag_vs_moshi_voice_ms']['p50']:.0f} ms")
print(f"CSM per frame (small offline model, this CPU): p50 {lags['frame_ms']['p50']:.0f} ms, "
      f"first frame of a phrase (prompt + frame) p50 {lags['first_frame_ms']['p50']:.0f} ms, against 80 ms of audio")

# %%
voice_words = "CSM with real weights" if "real" in brain.voice.label else "CSM's OFFLINE random weights: a buzz, not CSM's voice; timing real"
player(sheila.audio[:cut], rec.sample_rate, "the original: Sheila's side of the call (real speech)")
player(system_audio(steps), 24000, f"the system: Sheila's words as {voice_words}")
player(stereo(diane.audio[:cut], rec.sample_rate, system_audio(steps), 16000), 16000,
       f"left: Diane (the user, real); right: the system ({voice_words})")
player(brain.stereo(system_audio(steps)), 24000,
       "left: CSM's voice; right: 'Moshi's own voice', here the replay's: Sheila's real audio through the small Mimi, "
       "one acoustic delay after her words")

# %% [markdown]
# ### The lag, per phrase policy
#
# How many of Moshi's words CSM waits for before it speaks sets the lag; how smoothly phrases follow
# each other is the other side of the trade. `csmlab bench duplex --brain moshi+csm` plays the whole
# call once per policy (`k<N>`: N words; `punct`: a punctuation mark; `pause`: a pause in Moshi's
# text; every policy also closes a phrase at a pause). The cached run:

# %%
from csmlab.bench import results

lag_run = results.load("moshi_csm_lag")
mc = lag_run["brains"]["moshi+csm"]
rows = ["| policy | phrases | lag p50 / p95 ms | of which waited (steps) p50 / p95 ms | CSM's first frame p50 / p95 ms "
        "| vs Moshi's voice p50 / p95 ms | CSM frame p50 / p95 ms | joined / gaps | words voiced / cut / dropped |",
        "|---|---|---|---|---|---|---|---|---|"]
for name, p in mc["policies"].items():
    w = p["words"]
    rows.append(f"| {name} | {p['phrases']} | {p['lag_ms']['p50']:.0f} / {p['lag_ms']['p95']:.0f} "
                f"| {p['wait_ms']['p50']:.0f} / {p['wait_ms']['p95']:.0f} | {p['first_frame_ms']['p50']:.0f} / {p['first_frame_ms']['p95']:.0f} "
                f"| {p['lag_vs_moshi_voice_ms']['p50']:.0f} / {p['lag_vs_moshi_voice_ms']['p95']:.0f} "
                f"| {p['frame_ms']['p50']:.0f} / {p['frame_ms']['p95']:.0f} | {p['joined']} / {p['gaps']} "
                f"| {w.get('voiced', 0)} / {w.get('cut', 0)} / {w.get('dropped', 0)} |")
display(Markdown("\n".join(rows)))
print(f"text: {mc['text_source']}; voice: {mc['csm']}, at most {mc['ms_per_word']} ms per word")
print("measured:", results.provenance(lag_run))

# %% [markdown]
# The lag has two parts. The steps waited are the design's: a word is whole one step after its last
# piece, then the policy waits for its words, or for the previous phrase to finish. CSM's first frame
# is compute: its prompt carries the conversation (up to 10 s of audio, encoded again and prefilled for
# every phrase), so on a CPU it dwarfs the wait. Fewer, longer phrases pay it less often; more, shorter
# ones join better while Moshi talks. The compute part was measured on a busy shared CPU, whose load
# changed during the run (see its provenance): compare the waits across policies, not the compute.
