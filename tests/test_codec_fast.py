"""csmlab.codec.fast: the matrix-product convolutions equal PyTorch's own, and leave no trace."""
import pytest
import torch
from torch import nn

from csmlab.codec import fast, load_codec


@pytest.mark.parametrize("c_in, c_out, k, stride, dilation, steps", [(8, 16, 3, 1, 1, 9), (16, 8, 7, 1, 3, 30), (8, 12, 16, 8, 1, 40), (4, 4, 1, 1, 1, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_gemm_equals_conv1d(c_in, c_out, k, stride, dilation, steps, bias):
    torch.manual_seed(0)
    conv = nn.Conv1d(c_in, c_out, k, stride, dilation=dilation, bias=bias)
    x = torch.randn(1, c_in, steps)
    assert torch.allclose(fast.conv1d_gemm(conv, x), conv(x), atol=1e-5)


@pytest.mark.parametrize("c_in, c_out, stride, m, steps", [(16, 8, 8, 2, 2), (8, 4, 5, 2, 3), (6, 6, 2, 3, 1), (4, 4, 1, 1, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose1d_gemm_equals_conv_transpose1d(c_in, c_out, stride, m, steps, bias):
    torch.manual_seed(0)
    convtr = nn.ConvTranspose1d(c_in, c_out, m * stride, stride, bias=bias)
    x = torch.randn(1, c_in, steps)
    assert torch.allclose(fast.conv_transpose1d_gemm(convtr, x), convtr(x), atol=1e-5)


def test_a_fast_session_restores_the_model_and_the_thread_count():
    codec = load_codec(8, "moshi")
    model, threads = codec.backend.model, torch.get_num_threads()
    with codec.stream() as s:
        s.encode(torch.zeros(4000), 24000)
    assert not any("forward" in vars(m) for m in model.modules())  # no instance forward left behind
    assert not model.is_streaming and torch.get_num_threads() == threads
