# %% [markdown]
# ## 4 · How can a testing framework validate the whole pipeline? Proved, not counted
#
# *(For notebook 06, after the cell that counts the suite by claim: it replaces "a count shows how
# many tests exist" with evidence that they would catch a bug.)*
#
# A count says how many tests exist, not whether they would notice a bug. Two standard tools answer
# that:
#
# - **property-based tests** (`hypothesis`): an invariant is checked on hundreds of generated inputs
#   (random losses, duplicates, reorderings, counters that wrap), not on a few picked examples;
# - **mutation testing** (`mutmut`): the code is changed in small ways (a `<` for a `<=`, a constant off
#   by one, a message emptied) and the tests must fail on each change. The share of such *mutants*
#   killed measures what the tests would catch.
#
# What each layer's tests assert, in one table (module names from the suite itself):

# %%
import ast
import json

import numpy as np
from IPython.display import Markdown, display

from csmlab import testsuite

LAYERS = {  # layer -> (test modules, what they assert)
    "codec": ("test_codec*.py", "streaming equals batch; moshi, rustymimi and transformers give the same codes"),
    "brain (Moshi)": ("test_moshi.py", "a streamed step equals the reference; bad codes and options are refused"),
    "voice (CSM)": ("test_csm*.py", "frame-by-frame streaming gives generate()'s tokens exactly"),
    "pipeline": ("test_pipeline*.py", "every frame is consumed, concealed or counted; faults give silence, not a crash"),
    "server": ("test_serve*.py", "Moshi's protocol, its limits, and hostile clients (slow readers, foreign origins, slowloris)"),
    "all layers": ("test_bad_input_matrix.py", "a bad input raises a clear error and the result equals a clean run's"),
    "invariants": ("test_properties.py", "the properties below hold on generated inputs"),
}
items = testsuite.collect()
rows = []
for layer, (pattern, asserts) in LAYERS.items():
    modules = sorted(p.name for p in (testsuite.ROOT / "tests").glob(pattern))
    n = sum(1 for i in items if i.split("::")[0].rsplit("/", 1)[-1] in modules)
    rows.append(f"| {layer} | {', '.join(modules)} | {n} | {asserts} |")
display(Markdown("| layer | modules | tests | what they assert |\n|---|---|---|---|\n" + "\n".join(rows)))

# %% [markdown]
# ### The invariants, checked on generated inputs
#
# Each property test states one invariant in its name and docstring; hypothesis draws the inputs.
# CI runs a fixed, derandomized set (the "ci" profile: fast and the same every time);
# `pytest tests/test_properties.py --hypothesis-profile thorough` runs 2,000 examples of each.

# %%
source = (testsuite.ROOT / "tests" / "test_properties.py").read_text()
tests = [node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
display(Markdown("\n".join(f"- `{name}`: {name[5:].replace('_', ' ')}" for name in tests)))

# %% [markdown]
# Run one live: the jitter buffer under 200 generated networks (loss, duplicates, reordering, a 16-bit
# counter that wraps). Every frame pushed must come out once, be dropped and counted, or still be held;
# concealment must stay within its bound.

# %%
from hypothesis import given, settings, strategies as st

from csmlab.pipeline.jitter import JitterBuffer

WRAP = 1 << 16


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=80), st.integers(WRAP - 40, WRAP - 1))
def accounted(network, start):
    jb, out, seqs = JitterBuffer(window=3, max_gap=50, max_conceal=12), [], []
    for i, (delay, twice) in sorted(enumerate(network), key=lambda e: e[0] + e[1][0]):
        for _ in range(1 + twice):
            seqs.append((start + i) % WRAP)
            out += jb.push(seqs[-1], np.ones(4, np.float32))
    c = jb.counts
    assert c.received == len(seqs) == c.consumed + c.duplicate + c.late + jb.held
    out += jb.flush()
    assert len(out) == c.consumed + c.concealed and c.concealed <= 12 + c.consumed


accounted()
print("200 generated networks: every frame accounted for")

# %% [markdown]
# And one of the hostile-client checks: a single flipped bit anywhere in an Ogg page is refused
# (CRC, capture pattern or framing), never handed to the Opus decoder.

# %%
import sphn

from csmlab.serve.protocol import ProtocolError, check_ogg_pages

writer = sphn.OpusStreamWriter(24_000)
page = writer.append_pcm(np.zeros(1920, np.float32)) + writer.append_pcm(np.full(1920, 0.1, np.float32))
refused = 0
for byte in range(len(page)):
    for bit in range(8):
        try:
            check_ogg_pages(page[:byte] + bytes([page[byte] ^ (1 << bit)]) + page[byte + 1:])
        except ProtocolError:
            refused += 1
print(f"{refused} of {8 * len(page)} single-bit corruptions refused")
assert refused == 8 * len(page)

# %% [markdown]
# ### The mutation score
#
# `make mutation` (minutes; not in CI) runs mutmut over the modules where a silent bug costs most and
# writes `data/results/mutation.json` with the date, commit and machine load. A survivor is a change
# the tests let through; the ones that behave exactly like the original (equivalent mutants) are
# listed with why and left out of the score.

# %%
import matplotlib.pyplot as plt

result = json.loads((testsuite.ROOT / "data" / "results" / "mutation.json").read_text())
rows = [f"| {module} | {m['total']} | {m['killed']} | {m.get('survived', 0)} | {m['equivalent']} | {m['killed_pct']}% |"
        for module, m in result["modules"].items()]
display(Markdown(f"{result['tool']}, commit `{result['commit'][:10]}`, {result['date']}, load "
                 f"{result['load_average_1min']} on {result['cpu_cores']} cores; tests: {', '.join(result['tests'])}\n\n"
                 "| module | mutants | killed | survived | equivalent | killed (of non-equivalent) |\n|---|---|---|---|---|---|\n"
                 + "\n".join(rows)))
fig, ax = plt.subplots(figsize=(7, 2.2))
ax.barh(list(result["modules"]), [m["killed_pct"] for m in result["modules"].values()])
ax.axvline(90, color="k", linestyle=":", label="goal: 90%")
ax.set_xlim(0, 100)
ax.set_xlabel("mutants killed (%)")
ax.legend(loc="lower right")
fig.tight_layout()
