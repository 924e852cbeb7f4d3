"""`csmlab doctor`: what this machine is, what is installed, and which weights each model will use.

It never downloads or builds anything (it asks `weights.locate`, not `resolve`), so it is safe and
fast to run first on any machine.
"""
from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

from csmlab.bench import machine
from csmlab.weights import SPECS, locate, locate_listening

PACKAGES = ("torch", "moshi", "transformers", "rustymimi", "numpy")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


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


def _one_banner(stand_ins) -> str:
    """One loud notice for all the stand-ins: random weights compute like the real ones, say nothing."""
    bar = "!" * 78
    offline = ", ".join(s.model.upper() for s in stand_ins if s.kind == "offline")
    lines = [bar]
    if offline:
        lines += [f"!! {offline}: OFFLINE weights in the real file format, NOT the released models.",
                  "!! Compute, memory and timing are real; their audio, text and codes are noise."]
    if any(s.kind == "small" for s in stand_ins):
        lines.append("!! For listening: a SMALL Mimi trained on synthetic speech, NOT Kyutai's Mimi.")
    lines += ["!! Get the real weights: run online (unset CSMLAB_OFFLINE) or set CSMLAB_<MODEL>.", bar]
    return "\n".join(lines)
