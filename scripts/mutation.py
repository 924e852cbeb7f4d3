"""`make mutation`: mutmut 3 over the modules where a silent bug costs most; the score per module
goes to data/results/mutation.json with the date, the commit and the machine.

A mutant is a copy of the code with one small change (a `<` for a `<=`, a constant off by one, a
call removed). The tests *kill* it when one of them fails. A mutant that survives is either a bug
the tests would let through, or an equivalent mutant (same behaviour; listed with why in the JSON's
`equivalent`). Which modules and tests: `[tool.mutmut]` in pyproject.toml. On demand, not in CI: a
run takes minutes (every mutant runs the tests that reach it).

    python scripts/mutation.py            # fresh run (deletes mutants/), then the report
    python scripts/mutation.py --report   # the report of the last run only
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "data" / "results" / "mutation.json"
MUTMUT = [sys.executable, "-m", "mutmut"]
# mutmut's words for a mutant's fate -> ours. A timeout (the mutant looped) counts as caught.
FATES = {"killed": "killed", "timeout": "killed", "survived": "survived", "no tests": "not_reached",
         "suspicious": "suspicious", "skipped": "skipped", "segfault": "killed", "not checked": "not_run"}
# Survivors examined and found to behave exactly like the original, recognised by their diff:
# (text of the original line, text of the mutated line, why it cannot change behaviour).
EQUIVALENT = [
    ('"utf-8"', '"UTF-8"', "Python's codec names are case-insensitive"),
    ("self._last_len = 0", "self._last_len = ", "read only by _conceal, which needs a held frame after a released "
                                                 "one: the first frame released sets it before"),
    ('host.partition(":")', 'host.rpartition(":")', "only used when the host has exactly one ':'"),
    ('headers.get("Authorization", "")', 'headers.get("Authorization", "XXXX")',
     "any default that is not a 'Bearer ' header falls through to the query, as the empty one does"),
    ("self._flushed = False", "self._flushed = None", "CodecSession reads _flushed only for its truth"),
    ("return self._shed(seq, at, ms)", "return self._shed(None, at, ms)",
     "only a concealed frame is shed, and a frame that is all concealment has no sender seq: seq is None already"),
    ('"", seq, False, ms, 1000 * at, True, None)', '"", None, False, ms, 1000 * at, True, None)',
     "_shed's seq is always None (a frame that is all concealment has no sender seq)"),
    ("1000 * at, True, None)", "1000 * at, True, )", "Step's fault defaults to None"),
    ("self.ms.get(self.layer, 0.0)", "self.ms.get(None, 0.0)",
     "each layer is timed once per step, so the get always returns its default"),
    ("shutdown(wait=self._busy is None)", "shutdown(wait=None)",
     "wait=None is wait=False; without a stalled call the worker has no work left to wait for"),
    ("ThreadPoolExecutor(1, thread_name_prefix", "ThreadPoolExecutor(None, thread_name_prefix",
     "one brain call at most is ever in flight (_think submits nothing while a stalled call runs): "
     "a larger pool never starts a second thread"),
    ("ThreadPoolExecutor(1, thread_name_prefix", "ThreadPoolExecutor(2, thread_name_prefix",
     "one brain call at most is ever in flight: a larger pool never starts a second thread"),
    ("ThreadPoolExecutor(1, thread_name_prefix", "ThreadPoolExecutor(thread_name_prefix",
     "one brain call at most is ever in flight: a larger pool never starts a second thread"),
    ("initializer=torch.set_num_threads, initargs", "initargs=(threads,))",
     "on this torch build the intra-op thread count is process-wide (a fresh thread reads the caller's "
     "setting, checked): the initializer only matters where it is per thread"),
    ("yield from self.tick(due)", "yield from self.tick(None)",
     "tick(None) reads the clock just after wait_until(due), which returns at due (simulated, or a test's "
     "clock) or within a frame of it (real time): the same steps are due"),
    ("steps = self.tick(at) if self._disconnected_at is not None else []",
     "steps = self.tick(at) if (self._disconnected_at is not None) or True else []",
     "tick() returns [] while connected"),
    ('ms.get("input", 0.0))', 'ms.get("input", ', "every step's compute has an input share (the push's or tick's): "
                                                   "get's default is never used"),
    ('ms.get("input", 0.0))', 'ms.get("input", None))', "every step's compute has an input share: get's default is never used"),
    ('ms.get("input", 0.0))', 'ms.get("input", 1.0))', "every step's compute has an input share: get's default is never used"),
    ('def _log(self, layer: str, kind: str, detail: str = "")', 'def _log(self, layer: str, kind: str, detail: str = "XXXX")',
     "every call of _log passes its detail"),
    ("self.closing = False", "self.closing = None", "Chat reads closing only for its truth"),
    ("self.cut = False", "self.cut = None", "Chat reads cut only for its truth"),
    ("self.ended = False", "self.ended = None", "ended is read only for its truth (the server's slot count)"),
    ('"audio_s": round(n * FRAME_MS / 1000, 3)', '"audio_s": round(n * FRAME_MS / 1000, 4)',
     "n * 80 / 1000 has at most two decimals"),
]


def _mutants() -> dict[str, str]:
    """Every mutant of the last run and its fate, from `mutmut results --all true`."""
    text = subprocess.run(MUTMUT + ["results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    found = (re.match(r"\s*(\S+__mutmut_\d+): (.+)$", line) for line in text.splitlines())
    return {m.group(1): m.group(2).strip() for m in found if m}


def _equivalent(mutant: str) -> str | None:
    """Why `mutant` behaves like the original (an `EQUIVALENT` entry matching its diff), or None."""
    diff = subprocess.run(MUTMUT + ["show", mutant], cwd=ROOT, capture_output=True, text=True).stdout.splitlines()
    removed = " ".join(line for line in diff if line.startswith("-") and not line.startswith("---"))
    added = " ".join(line for line in diff if line.startswith("+") and not line.startswith("+++"))
    return next((why for before, after, why in EQUIVALENT if before in removed and after in added), None)


def _module(mutant: str) -> str:
    """'csmlab.serve.access.x_redact__mutmut_3' -> 'csmlab/serve/access.py'."""
    dotted = re.split(r"\.x[_ǁ]", mutant, maxsplit=1)[0]
    return dotted.replace(".", "/") + ".py"


def report(mutants: dict[str, str]) -> dict:
    per_module: dict[str, Counter] = {}
    survivors: dict[str, list[str]] = {}
    for name, fate in sorted(mutants.items()):
        ours = FATES.get(fate, fate)
        module = _module(name)
        per_module.setdefault(module, Counter())[ours] += 1
        if ours == "survived":
            survivors.setdefault(module, []).append(name)
    modules = {}
    for module, counts in per_module.items():
        total = sum(counts.values())
        equivalent = [n for n in survivors.get(module, []) if _equivalent(n)]
        scored = total - len(equivalent)
        modules[module] = {**dict(counts), "total": total, "equivalent": len(equivalent),
                           "killed_pct": round(100 * counts["killed"] / scored, 1) if scored else None,
                           "survivors": [n for n in survivors.get(module, []) if n not in equivalent]}
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip(),
        "dirty": bool(subprocess.run(["git", "status", "--porcelain", "--", "csmlab", "tests"], cwd=ROOT,
                                     capture_output=True, text=True).stdout.strip()),
        "tool": "mutmut " + subprocess.run(MUTMUT + ["--version"], cwd=ROOT, capture_output=True, text=True).stdout.split()[-1],
        "tests": config["pytest_add_cli_args_test_selection"],
        "load_average_1min": round(os.getloadavg()[0], 2),
        "cpu_cores": os.cpu_count(),
        "modules": modules,
        "equivalent": {n: _equivalent(n) for names in survivors.values() for n in names if _equivalent(n)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="report the last run; do not run mutmut")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    args = parser.parse_args()
    if not args.report:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)  # mutmut reuses stale results otherwise
        env = {**os.environ, "CSMLAB_OFFLINE": "1"}
        env.pop("PYTHONPATH", None)  # the mutants' copy must be the code under test, not this checkout
        subprocess.run(MUTMUT + ["run", "--max-children", str(args.children)], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, check=True)
    result = report(_mutants())
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    for module, counts in result["modules"].items():
        print(f"{module}: {counts['killed']} of {counts['total'] - counts['equivalent']} killed "
              f"({counts['killed_pct']}%); {counts.get('survived', 0)} survived, {counts['equivalent']} of them equivalent")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
