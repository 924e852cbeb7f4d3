"""Duplex orchestration: the user's audio in, the system's audio and text out, on one 80 ms clock.

    from csmlab.pipeline import DuplexSession, make_brain
    session = DuplexSession(make_brain("loopback"), clock="simulated")   # or clock="realtime"
    for step in session.run(audio, sample_rate):    # a whole clip, streamed 80 ms at a time
        step.pcm, step.text                         # 1920 samples at 24 kHz; the text of this step
    steps = session.push(chunk, sample_rate, seq=17)   # live use: any chunk size, with sequence numbers
    session.report()                                   # latency per layer, drops, late frames, faults

Layers, in the order audio flows: `jitter` (input: sequence numbers, reorder, conceal, count) ->
a `csmlab.codec` session for the user -> a `brain` -> a `csmlab.codec` session for the system.
`session` runs them on a `clock` and writes every layer's `events` to one log.

- `brain`: the brain interface, `LoopbackBrain`, `ScriptedBrain`; `registry`: `make_brain`, `BRAINS`;
- `moshi_brain`: `MoshiBrain`, true full duplex (loaded on first use: it imports moshi);
- `cascade`: `CascadeBrain`: silero-vad turn taking (`vad`), a reply policy (`policies`), a voice
  (`voices`: CSM with the conversation as context, or the espeak-ng stand-in offline), barge-in;
- `moshi_csm`: `MoshiCsmBrain` ("moshi+csm"): Moshi's text stream leads, CSM voices its words a
  phrase at a time as they come; `replay`: `ReplayedMoshi`, a labelled replay of a real speaker's
  words standing in for Moshi's text stream offline;
- `faults`: lossy, jittery, broken sources and brains, for tests and the notebook;
- `bridge`: CSM next to Moshi (the config table, codes from one to the other). Brain and voice meet
  here, never inside `csmlab.csm`.
"""
from csmlab.pipeline.brain import Brain, Heard, LoopbackBrain, Said, ScriptedBrain, Utterance
from csmlab.pipeline.registry import BRAINS, make_brain
from csmlab.pipeline.clock import RealtimeClock, SimulatedClock
from csmlab.pipeline.events import Event, EventLog
from csmlab.pipeline.jitter import JitterBuffer
from csmlab.pipeline.session import DuplexSession, Packet, Step, packets


def __getattr__(name):
    """`MoshiBrain` and `CascadeBrain` load their heavier modules (moshi, silero-vad) only when asked for."""
    if name == "MoshiBrain":
        from csmlab.pipeline.moshi_brain import MoshiBrain

        return MoshiBrain
    if name == "CascadeBrain":
        from csmlab.pipeline.cascade import CascadeBrain

        return CascadeBrain
    raise AttributeError(f"module 'csmlab.pipeline' has no attribute {name!r}")


__all__ = [
    "BRAINS", "Brain", "CascadeBrain", "DuplexSession", "Event", "EventLog", "Heard", "JitterBuffer", "LoopbackBrain",
    "MoshiBrain", "Packet", "RealtimeClock", "Said", "ScriptedBrain", "SimulatedClock", "Step", "Utterance",
    "make_brain", "packets",
]
