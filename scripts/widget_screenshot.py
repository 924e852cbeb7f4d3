"""Notebook 05's picture of the live widget in use: `make widget-screenshot` (about a minute).

It runs the browser test's JupyterLab run (`tests/test_browser.py`: headless Chromium, a recording of
the real call as the microphone, notebook 05's live cell on the loopback brain), which writes
`out/browser/widget_running.png` after 12 s of streaming and before the test's forced faults; then
it stores that picture, reduced to a small palette PNG, beside the notebooks as `notebooks/05_widget_in_use.png`.
Run offline; Chromium and JupyterLab as for the tests (`scripts/install.sh`).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SHOT = REPO / "out" / "browser" / "widget_running.png"
TARGET = REPO / "notebooks" / "05_widget_in_use.png"
COLOURS = 64  # the widget is flat UI: a small palette keeps it sharp and the file small


def main() -> int:
    env = {**os.environ, "CSMLAB_OFFLINE": os.environ.get("CSMLAB_OFFLINE", "1")}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/test_browser.py", "-k", "frames_reach_the_kernel"],
                         cwd=REPO, env=env)
    if run.returncode or not SHOT.exists():
        print(f"the browser run failed (exit {run.returncode}); no picture written", file=sys.stderr)
        return run.returncode or 1
    picture = Image.open(SHOT).convert("RGB").quantize(COLOURS, method=Image.Quantize.MEDIANCUT)
    picture.save(TARGET, optimize=True)
    print(f"wrote {TARGET.relative_to(REPO)} ({TARGET.stat().st_size / 1024:.0f} KiB, {picture.width}x{picture.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
