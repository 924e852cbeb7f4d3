"""csmlab: the companion library of a course on real-time spoken dialogue with Mimi, Moshi and CSM.

Data flows one way through its layers:
audio in -> `codec` (Mimi) -> `moshi` (dialogue brain) -> `csm` (voice) -> `codec` -> audio out.
`weights` says where every model comes from; `bench` measures; `cli` is the `csmlab` command.
"""
from csmlab.errors import CsmlabError

__version__ = "0.1.0"
__all__ = ["CsmlabError", "__version__"]
