"""The one exception hierarchy of csmlab.

Every error a learner can trigger is a `CsmlabError`, and its message says what went wrong
*and what to do about it*. Catch `CsmlabError` to handle them all. `is_number` is the check most of
them start from.
"""


def is_number(value, kind: type) -> bool:
    """`value` is a `kind` (`int`, `numbers.Integral`, `numbers.Real`, ...) and not a bool: Python
    counts True as 1, and a flag passed where a count, a rate or a seed belongs is a mistake to refuse."""
    return isinstance(value, kind) and not isinstance(value, bool)


class CsmlabError(Exception):
    """Base class of every error csmlab raises on purpose."""


class AudioFormatError(CsmlabError, ValueError):
    """Audio that cannot be used as given: NaN, empty, too many dims, bad sample rate, ..."""


class ConfigError(CsmlabError, ValueError):
    """An option csmlab cannot use: an unknown model, backend, method or speaker, a value out of its
    range (a temperature, a length), or an argument of the wrong kind (a context that is no list)."""


class TextError(CsmlabError, ValueError):
    """Text a model cannot speak as given: not a string, empty, or holding the model's control tokens."""


class CodesError(CsmlabError, ValueError):
    """Codec codes that are malformed: wrong codebook count, out of range, float dtype, ..."""


class StreamClosedError(CsmlabError, RuntimeError):
    """A streaming session was used after `close()`."""


class WeightsNotFoundError(CsmlabError, FileNotFoundError):
    """A checkpoint was asked for at a path or in a place where it does not exist."""


class PromptTooLongError(CsmlabError, ValueError):
    """A prompt or conversation context does not fit the model's context window."""


class ComponentError(CsmlabError, RuntimeError):
    """A pipeline component crashed or stalled; the message names it and what was kept."""


class CapacityError(CsmlabError, RuntimeError):
    """A shared batch has no free slot for another conversation; the message says how to make room."""
