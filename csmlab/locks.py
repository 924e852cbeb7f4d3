"""One lock per loaded model: how csmlab lets many threads share one set of weights.

moshi keeps streaming state on the modules themselves, and rustymimi's tokenizer is a Rust object
that refuses a second caller ("Already borrowed"). csmlab therefore keeps each session's state
apart from the model and installs it only while holding the model's lock: calls on one model run
one at a time (a later issue batches them into one forward), each session sees only its own state,
and the batch path never sees a session's. The lock is re-entrant, so a call may nest another on
the same model (a stream's step encoding Moshi's silence frame).
"""
from __future__ import annotations

import contextlib
import threading
import weakref

from csmlab.errors import ComponentError

_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> RLock, freed with the model
_GUARD = threading.Lock()


def model_lock(model) -> threading.RLock:
    """The one re-entrant lock that every csmlab call on `model` holds while it runs."""
    with _GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


@contextlib.contextmanager
def exclusive(model, what: str):
    """Hold `model`'s lock with no streaming state installed, and leave none installed on exit.

    A moshi module found streaming on entry belongs to code outside csmlab (its own `streaming()`
    context), whose state csmlab must neither use nor clear: that is refused."""
    with model_lock(model):
        if model.is_streaming:
            raise ComponentError(f"this {what} is already streaming outside csmlab (a moshi streaming() context "
                                 "is open on it); leave that context first, or load a separate model")
        try:
            yield
        finally:
            for slots in streaming_slots(model).values():
                slots["_streaming_state"] = None


def streaming_slots(model) -> dict[str, dict]:
    """The attribute dict of every moshi streaming module under `model`, by the name its state goes
    under, in moshi's own order and reach (a detached child is not one): where a session's state is
    installed and cleared.

    moshi's `set_streaming_state` and `_stop_streaming` walk the same list through a callback and
    `nn.Module.__setattr__`: about 0.1 ms each on Mimi's 77 streaming modules, twice per codec call.
    The state is a plain attribute, so writing the dicts is the same act, ten times faster."""
    if model._cached_children is None:  # moshi builds its list on first use, and again once reset
        model._apply_named_streaming(lambda name, module: None)
    return {name: vars(module) for name, module in model._cached_children}
