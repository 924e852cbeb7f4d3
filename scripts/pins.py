"""Print the pins of one install stage from pyproject.toml's [tool.csmlab.install].

Used by scripts/install.sh, so that pyproject.toml stays the one place where versions live.
"""
import sys
import tomllib
from pathlib import Path

pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
print(" ".join(pyproject["tool"]["csmlab"]["install"][sys.argv[1]]))
