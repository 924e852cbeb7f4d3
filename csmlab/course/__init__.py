"""The course itself, read from `notebooks/`: notebook 00 renders its map from here, so that a
notebook added or renamed shows up without anyone retyping a table."""
from __future__ import annotations

import json
import re
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"


def notebooks(folder: Path = NOTEBOOKS) -> list[Path]:
    return sorted(Path(folder).glob("[0-9]*.ipynb"))


def outline(path: Path) -> tuple[str, str]:
    """(title, first learning goal) of a notebook: its "# NN · Title" heading and the first bullet of
    its "You will learn" list."""
    first = "".join(json.loads(Path(path).read_text())["cells"][0]["source"])
    title = re.search(r"^#\s+(.+)$", first, re.MULTILINE)
    goal = re.search(r"You will learn\W*\n-\s*((?:.+\n?)(?:  .+\n?)*)", first)
    clean = lambda s: " ".join(s.split())
    return clean(title.group(1)) if title else path.stem, clean(goal.group(1)) if goal else ""


def course_map(folder: Path = NOTEBOOKS) -> str:
    """A Markdown table of every notebook: file, title, and what you learn first."""
    rows = ["| notebook | title | you will learn, first |", "|---|---|---|"]
    rows += [f"| `{p.stem}` | {title} | {goal} |" for p in notebooks(folder) for title, goal in [outline(p)]]
    return "\n".join(rows)


def summary(*lines: str):
    """A notebook's last cell: three lines of what it measured, each rendered from the notebook's own
    variables (so the summary cannot drift from the cells above it)."""
    from IPython.display import Markdown

    if len(lines) != 3:
        raise ValueError(f"a summary has three lines, not {len(lines)}")
    return Markdown("**What this notebook measured** (this run, on this machine)\n" + "".join(f"\n- {line}" for line in lines))
