"""Cached results of the larger `csmlab bench` runs (`data/results/*.json`), read by notebook 06.

A notebook re-runs what is quick; what takes minutes (the real-size models, the 10-minute soak) is
measured once with `csmlab bench WHAT --json data/results/NAME.json`, and each file says when, with
which command and on which machine (`provenance`). Rerun the command to replace a file.
"""
from __future__ import annotations

import json
from pathlib import Path

from csmlab.data import DATA_DIR
from csmlab.errors import CsmlabError

RESULTS_DIR = DATA_DIR / "results"


def load(name: str, folder: Path = RESULTS_DIR) -> dict:
    """The figures of `data/results/<name>.json`."""
    path = Path(folder) / f"{name}.json"
    if not path.is_file():
        raise CsmlabError(f"{path} is missing: measure it with `csmlab bench ... --json {path}` "
                          f"(see {folder / 'README.md'})")
    return json.loads(path.read_text())


def provenance(result: dict) -> str:
    """When, how and where a result was measured, and whether the machine was busy."""
    m = result["machine"]
    load_1 = m.get("load_average_1min")
    if load_1 is None:
        busy = "; load not recorded"
    elif load_1 > m["cpu_cores"]:
        busy = f"; load {load_1:.1f} on {m['cpu_cores']} cores: a busy shared machine, timings inflated"
    else:
        busy = f"; load {load_1:.1f}"
    gpu = m["gpu"] or "no GPU"
    return (f"`{result.get('command', '?')}` on {result.get('date', '?')}: {m.get('cpu_model', m['processor'])}, {m['cpu_cores']} cores, "
            f"{m['ram_gib']} GiB, {gpu}, torch {m['torch']}{busy}")


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table, for `IPython.display.Markdown`."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def bandwidth() -> tuple[float, str]:
    """This CPU's weight-read bandwidth (GB/s, one core, fp32 matrix-vector), from the one measurement
    every notebook and the README read (`csmlab bench codec`'s weight-read floor in bench_codec.json),
    with its provenance."""
    result = load("bench_codec")
    return result["weight_read_floor"]["gb_per_s"], provenance(result)
