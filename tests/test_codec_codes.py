"""`csmlab.codec.codes` alone: what counts as codes, and what each refusal says. Fast (no model),
so that `make mutation` can run it against every mutant of the module."""
import numpy as np
import pytest
import torch

from csmlab.codec.codes import check_range, integer_codes
from csmlab.errors import CodesError


@pytest.mark.parametrize("codes", [np.arange(6, dtype=np.uint16).reshape(2, 3), [[1, 2], [3, 4]],
                                   torch.arange(6).reshape(2, 3), torch.arange(4, dtype=torch.int16), np.int64(7)])
def test_integer_codes_keep_their_values(codes):
    out = integer_codes(codes)
    assert isinstance(out, np.ndarray) and np.issubdtype(out.dtype, np.integer)
    assert np.array_equal(out, np.asarray(codes.numpy() if hasattr(codes, "numpy") else codes))


def test_a_tensor_becomes_a_numpy_array_of_its_integer_dtype():
    out = integer_codes(torch.arange(3).reshape(1, 3))
    assert out.tolist() == [[0, 1, 2]] and out.dtype == np.int64


@pytest.mark.parametrize("codes, message", [
    (torch.empty(2, 3, device="meta", dtype=torch.long),
     "codes are on the meta device (a shape without values); encode real audio to get codes"),
    (torch.zeros(2, dtype=torch.bfloat16),
     "codes must be integers, not torch.bfloat16: pass the codes a codec returned, or codes.long()"),
    (torch.zeros(2, dtype=torch.complex64),
     "codes must be integers, not torch.complex64: pass the codes a codec returned, or codes.long()"),
    (np.zeros(3, np.float32), "codes must be integers, not float32: use the codes encode() returned, or codes.astype(np.int64)"),
    (np.zeros(3, bool), "codes must be integers, not bool: use the codes encode() returned, or codes.astype(np.int64)"),
    (["a", "b"], "codes must be integers, not <U1: use the codes encode() returned, or codes.astype(np.int64)"),
])
def test_what_is_not_integer_codes_is_refused_with_advice(codes, message):
    with pytest.raises(CodesError) as caught:
        integer_codes(codes)
    assert str(caught.value) == message


def test_ragged_codes_are_refused():
    with pytest.raises(CodesError, match=r"^codes must form one rectangular integer array; these do not \(.+\)$"):
        integer_codes([[1, 2], [3]])


@pytest.mark.parametrize("codes", [np.array([0, 2047]), np.zeros((8, 0), np.int64), np.array([[5]])])
def test_codes_in_range_pass(codes):
    check_range(codes, 2048)


@pytest.mark.parametrize("codes, low, high", [(np.array([0, 2048]), 0, 2048), (np.array([-1, 5]), -1, 5),
                                              (np.array([[3, -2], [9000, 1]]), -2, 9000)])
def test_codes_out_of_range_say_the_range_and_what_came(codes, low, high):
    with pytest.raises(CodesError) as caught:
        check_range(codes, 2048)
    assert str(caught.value) == f"codes must lie in [0, 2048); got values from {low} to {high}"
