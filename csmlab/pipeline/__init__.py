"""Duplex orchestration: audio in, codec, brain, voice, codec, audio out, on one 80 ms clock.

- `bridge`: CSM next to Moshi (the config table, CSM's frames as Moshi's user stream, Moshi's
  monologue voiced by CSM). Brain and voice meet here, never inside `csmlab.csm`.
"""
