"""Codes from anywhere, as an integer numpy array, or a `CodesError` that says what they are instead.

Codes reach csmlab as numpy arrays, torch tensors (on any device or dtype) or nested lists. The
layers that take them (`Codec.check_codes`, `MoshiStream.step`, `CsmVoice.decode`) each check
their own shape; what "is this an integer array at all" means is decided here, once: ragged
lists, strings, objects, floats, bools and `meta` tensors (shapes without values) are refused.
"""
from __future__ import annotations

import numpy as np

from csmlab.errors import CodesError


def integer_codes(codes) -> np.ndarray:
    """`codes` as an integer numpy array of any integer dtype (range and shape not checked here)."""
    if hasattr(codes, "detach"):  # a torch.Tensor, without importing torch
        if codes.device.type == "meta":
            raise CodesError("codes are on the meta device (a shape without values); encode real audio to get codes")
        if codes.is_floating_point() or codes.is_complex():
            raise CodesError(f"codes must be integers, not {codes.dtype}: pass the codes a codec returned, or codes.long()")
        codes = codes.detach().cpu().numpy()
    try:
        codes = np.asarray(codes)
    except (ValueError, TypeError) as err:
        raise CodesError(f"codes must form one rectangular integer array; these do not ({err})") from err
    if codes.dtype == np.bool_ or not np.issubdtype(codes.dtype, np.integer):
        raise CodesError(
            f"codes must be integers, not {codes.dtype}: use the codes encode() returned, or codes.astype(np.int64)"
        )
    return codes


def check_range(codes: np.ndarray, cardinality: int) -> None:
    """A `CodesError` unless every code lies in `[0, cardinality)`."""
    if codes.size and (codes.min() < 0 or codes.max() >= cardinality):
        raise CodesError(f"codes must lie in [0, {cardinality}); got values from {codes.min()} to {codes.max()}")
