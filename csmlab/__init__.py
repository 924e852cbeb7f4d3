"""csmlab: the companion library of a course on real-time spoken dialogue with Mimi, Moshi and CSM.

The folders are its layers, lowest first; each imports only its own line and those above it:
  errors audio metrics locks host   the ground: errors and checks, audio, frame arithmetic, model locks, the CPU
  data/                real recordings (the two-party call, espeak-ng speech) and the synthetic training corpus
  weights/             where models come from: the real ones or offline stand-ins, checkpoints, conversion
  batching/            many streams in one forward pass: gathers, rows of one streaming state
  codec/ moshi/ csm/   the three models: Mimi, Moshi the brain, CSM the voice (neither imports the other)
  pipeline/            brain and voice meet here: the duplex session on one 80 ms clock, its brains
  widget/ serve/       the two front ends: the notebook's player, the WebSocket server (it speaks the widget's frames)
  bench/               measurements: `csmlab bench <what>`
  course/              what the notebooks use: exercises, plots, the noise vocoder, codec training, the test census
  cli.py doctor.py     the `csmlab` command and its check of this machine
`tests/test_layers.py` reads the imports and holds every module to this map.
"""
from csmlab.errors import CsmlabError

__version__ = "0.1.0"
__all__ = ["CsmlabError", "__version__"]
