"""Every brain by name: `make_brain("moshi", ...)` for the session, the server, the widget and the benches.

The registry lives beside the brains rather than in `csmlab.pipeline.brain`, so the base class
imports none of its subclasses and no circle runs through it. The heavy brains are imported when
asked for: naming "loopback" loads neither Moshi nor CSM.
"""
from __future__ import annotations

from csmlab.errors import ConfigError
from csmlab.pipeline.brain import Brain, LoopbackBrain, ScriptedBrain


def make_brain(name: str, **kwargs) -> Brain:
    """A brain by name: "loopback", "scripted", "moshi", "cascade" or "moshi+csm"; `kwargs` go to its constructor."""
    if name == "loopback":
        return LoopbackBrain(**kwargs)
    if name == "scripted":
        return ScriptedBrain(**kwargs)
    if name == "moshi":
        from csmlab.pipeline.moshi_brain import MoshiBrain

        return MoshiBrain(**kwargs)
    if name == "cascade":
        from csmlab.pipeline.cascade import CascadeBrain

        return CascadeBrain(**kwargs)
    if name == "moshi+csm":
        from csmlab.pipeline.moshi_csm import moshi_csm_brain

        return moshi_csm_brain(**kwargs)
    raise ConfigError(f"unknown brain {name!r}; choose one of {BRAINS}")


BRAINS = ("loopback", "moshi", "cascade", "moshi+csm", "scripted")
