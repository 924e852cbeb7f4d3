"""`csmlab doctor`: what this machine is, what is installed, and which weights each model will use.

It never downloads or builds anything (it asks `weights.locate`, not `resolve`), so it is safe and
fast to run first on any machine. It also gives the real compatibility check: the installed
versions against the ones csmlab pins (and its tests run on). pip's own check cannot: moshi is
installed without its dependencies on purpose (it declares torch<2.10), so pip reports moshi's
pins as conflicts after every install, and those lines are expected.

`csmlab doctor` then adds which brains keep real time on this machine (`csmlab.bench.realtime`: a short
bench, cached per host; `--no-bench` skips it). That bench loads the models, building the offline
stand-ins once if they are missing; it downloads nothing.
"""
from __future__ import annotations

import platform
import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

from packaging.requirements import Requirement

from csmlab.bench import machine
from csmlab.weights import SPECS, locate, locate_listening

PACKAGES = ("torch", "moshi", "transformers", "rustymimi", "numpy")
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"  # present in a source checkout


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _unmet(requirements: list[str]) -> list[tuple[Requirement, str]]:
    """The requirements that the installed packages do not meet, each with what is installed."""
    unmet = []
    for line in requirements:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        installed = _version(req.name)
        if installed == "not installed" or not req.specifier.contains(installed, prereleases=True):
            unmet.append((req, installed))
    return unmet


def pins() -> list[str]:
    """csmlab's pins: its package dependencies, and the stages `scripts/install.sh` installs first
    (torch, moshi) when the source tree is at hand."""
    found = list(requires("csmlab") or [])
    if PYPROJECT.exists():
        stages = tomllib.loads(PYPROJECT.read_text())["tool"]["csmlab"]["install"]
        found += stages["first"] + stages["no-deps"]
    return found


def compatibility() -> list[str]:
    """The compatibility report: pins not met (problems), then moshi's own pins overridden (expected)."""
    stack = pins()
    unmet = _unmet(stack)
    lines = [f"  {len(stack) - len(unmet)} of {len(stack)} pinned packages at csmlab's tested versions"]
    lines += [f"  !! {req.name} {installed}: csmlab is tested with {req.specifier} (run `make install`)"
              for req, installed in unmet]
    overridden = _unmet(requires("moshi") or []) if _version("moshi") != "not installed" else []
    if overridden:
        names = ", ".join(f"{req.name}{req.specifier} (have {installed})" for req, installed in overridden)
        lines.append(f"  moshi's own pins overridden on purpose, expected: {names}")
    return lines


def report(one_banner: bool = False) -> str:
    """A plain-text report, one fact a line, with loud banners for offline weights.

    `one_banner=True` (notebook 00) ends with one banner naming every stand-in instead of one each.
    """
    m = machine()
    lines = [
        "csmlab doctor",
        f"  platform   {m['platform']} (Python {platform.python_version()})",
        f"  cpu cores  {m['cpu_cores']}   ram {m['ram_gib']} GiB   gpu {m['gpu'] or 'none'}",
    ]
    lines += [f"  {p:<12} {_version(p)}" for p in PACKAGES]
    lines.append(_c_compiler())
    lines.append("compatibility:")
    lines += compatibility()
    lines.append("weights:")
    sources = [locate(model) for model in SPECS]
    lines += [f"  {source}" for source in sources]
    listening = locate_listening()
    lines.append(f"  for listening (load_codec(listen=True)): {listening}")
    stand_ins = [source for source in sources + [listening] if not source.is_real]
    if one_banner and stand_ins:
        lines.append(_one_banner(stand_ins))
    else:
        lines += [source.banner() for source in stand_ins]
    return "\n".join(lines)


def _c_compiler() -> str:
    """Whether Mimi's native CPU kernels (`csmlab.codec.native`) can be built here: named, not built."""
    from csmlab.codec import native

    name, command = native.compiler()
    if command is None:
        return (f"  c compiler   none ({name!r} not found): Mimi's CPU stream runs PyTorch's kernels only, "
                "not csmlab's native ones (install one, e.g. gcc, or set CC)")
    return f"  c compiler   {' '.join(command)}: csmlab builds Mimi's native CPU kernels with it on first use"


def _one_banner(stand_ins) -> str:
    """One loud notice for all the stand-ins: random weights compute like the real ones, say nothing."""
    bar = "!" * 78
    offline = [s for s in stand_ins if s.kind == "offline"]
    lines = [bar]
    if offline:
        lines += [f"!! {', '.join(s.model.upper() for s in offline)}: OFFLINE weights in the real file format, "
                  "NOT the released models; their audio, text and codes are noise."]
        lines += [f"!! {s.model.upper()}: {s.offline_cost()}." for s in offline]
    if any(s.kind == "small" for s in stand_ins):
        lines.append("!! For listening: a SMALL Mimi trained on synthetic speech, NOT Kyutai's Mimi.")
    lines += ["!! Get the real weights: run online (unset CSMLAB_OFFLINE) or set CSMLAB_<MODEL>.", bar]
    return "\n".join(lines)
