"""What the test suite proves, counted from the suite itself (notebook 06, question 4).

`collect()` asks pytest for every test item (`pytest --collect-only`, in a process of its own: test
modules are imported to be collected, and whatever they do at import time, e.g. a matplotlib
backend or torch's thread count, must not reach the notebook kernel that asks), so the count is the
suite as it stands, not a number typed somewhere. `CLAIMS` sorts the items by what
they establish, from their module and name; an item may back several claims, and `by_claim`
keeps the node ids so that any count can be checked by reading the tests it counts.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from csmlab.errors import CsmlabError

ROOT = Path(__file__).resolve().parents[2]

def _words(*words: str) -> str:
    """A pattern matching any of `words` at the start of a name part (test names join words with _)."""
    return r"(?:^|[_\[:/-])(?:" + "|".join(words) + ")"


# claim -> (what it means, regular expression over "tests/module.py::test_name[params]")
CLAIMS = {
    "streaming = batch": ("a stream fed in pieces gives what one batch call gives",
                          _words("streaming_equals", "stream_frames_are", "equals_batch", "session_decode_equals",
                                 "streaming_is", "streaming_equals_teacher")),
    "cross-implementation identity": ("moshi, rustymimi and transformers (and CSM's Mimi) agree",
                                      _words("moshi_and_rustymimi", "transformers", "csm_mimi_codes_match",
                                             "depth_walkthrough_equals", "csm_frames_are_moshi")),
    "token-exact CSM streaming": ("CSM streamed frame by frame gives generate()'s tokens exactly",
                                  r"test_csm\.py::test_(stream|sampled_stream|generate_with_context_streams)"),
    "fault injection": ("lost, late, broken or stalled parts are survived and reported",
                        _words("fault", "drop", "dropped", "stall", "stalls", "lost", "jitter", "conceal", "late",
                               "failure", "crash", "disconnect", "leaving", "survives", "survive")),
    "bad input": ("malformed input gets a clear error and the state stays intact",
                  _words("bad", "refuse", "refuses", "refused", "malformed", "wrong", "invalid", "unknown",
                         "error", "too_long", "matrix", "oversized")),
    "browser": ("the widget's page runs in a real browser (Chromium, fake media)",
                _words("browser", "chromium", "playwright")),
    "server protocol": ("csmlab serve speaks Moshi's protocol, with its limits and token, and holds "
                        "against hostile clients", r"^tests/test_serve(_config|_hostile|_rules)?\.py::"),
    "property-based": ("invariants checked on generated inputs (hypothesis), not on picked examples",
                       r"^tests/test_properties\.py::"),
    "soak": ("real speech through the server for a minute, RSS growth bounded (under 20 MiB a minute)", _words("soak")),
}


def collect(paths: tuple[str, ...] = ("tests",)) -> list[str]:
    """Node ids of every test pytest would run under `paths` (relative to the repository), listed by
    `pytest --collect-only -q` in a child process, so that collecting changes nothing here."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "--rootdir", str(ROOT), *paths], cwd=ROOT, env=env, capture_output=True, text=True)
    ids = [line for line in run.stdout.splitlines() if "::" in line and not line.startswith(" ")]
    if run.returncode != 0 or not ids:
        raise CsmlabError(f"pytest could not collect the suite (exit {run.returncode}):\n{(run.stdout + run.stderr)[-2000:]}")
    return ids


def by_claim(items: list[str]) -> dict[str, list[str]]:
    """Claim -> the node ids that back it."""
    return {claim: [i for i in items if re.search(pattern, i, re.IGNORECASE)] for claim, (_, pattern) in CLAIMS.items()}


def by_module(items: list[str]) -> dict[str, int]:
    """Module file -> number of test items (parametrized cases count one each)."""
    counts: dict[str, int] = {}
    for item in items:
        module = item.split("::", 1)[0]
        counts[module] = counts.get(module, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))
