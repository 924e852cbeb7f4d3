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


def report() -> str:
    """A plain-text report, one fact a line, with loud banners for offline weights."""
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
    lines += [source.banner() for source in sources + [listening] if not source.is_real]
    return "\n".join(lines)
