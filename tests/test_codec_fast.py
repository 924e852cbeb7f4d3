"""csmlab.codec.fast and .lean: the fast kernels equal PyTorch's and moshi's own, and leave no trace."""
import pytest
import torch
from moshi.quantization.core_vq import EuclideanCodebook
from torch import nn

from csmlab.codec import convs, fast, lean, load_codec
from csmlab.codec import backends, mimi_stream
from csmlab.codec.mimi_stream import _widen_attention_caches
from csmlab.errors import ConfigError

from conftest import streaming_tensors


@pytest.mark.parametrize("c_in, c_out, k, stride, dilation, steps", [(8, 16, 3, 1, 1, 9), (16, 8, 7, 1, 3, 30), (8, 12, 16, 8, 1, 40), (4, 4, 1, 1, 1, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_gemm_equals_conv1d(c_in, c_out, k, stride, dilation, steps, bias):
    torch.manual_seed(0)
    conv = nn.Conv1d(c_in, c_out, k, stride, dilation=dilation, bias=bias)
    x = torch.randn(2, c_in, steps)  # two streams' rows in one product (csmlab.codec.batch)
    assert torch.allclose(convs.conv1d_gemm(conv, x), conv(x), atol=1e-5)
    assert torch.allclose(convs.conv1d_linear(conv, x), conv(x), atol=1e-5)  # torch's own layout, measured per host


def _reloads(module):
    """A module's weights replaced the two ways a model is reloaded: a new Parameter, new values in place
    (`load_state_dict`, an optimizer step). Yields after each."""
    module.weight = nn.Parameter(torch.randn_like(module.weight))
    yield
    with torch.no_grad():
        module.weight.copy_(torch.randn_like(module.weight))
        if module.bias is not None:
            module.bias.copy_(torch.randn_like(module.bias))
    yield


@pytest.mark.parametrize("c_in, k, stride, dilation, steps", [(12, 3, 1, 1, 200), (12, 7, 1, 3, 130), (12, 1, 1, 1, 90),
                                                              (12, 8, 4, 1, 484), (12, 10, 5, 1, 485), (12, 5, 2, 1, 60),
                                                              (12, 8, 4, 1, 485), (1, 7, 1, 1, 90)])
@pytest.mark.parametrize("bias", [True, False])
def test_the_long_input_products_equal_conv1d_and_follow_a_reloaded_weight(c_in, k, stride, dilation, steps, bias):
    """Shifted products (stride 1), paired blocks (kernel = 2 x stride), PyTorch's conv for the rest: kernel
    5 at stride 2, a length that is no multiple of the stride (485 at 4), one input channel, several rows."""
    torch.manual_seed(0)
    conv = nn.Conv1d(c_in, 10, k, stride, dilation=dilation, bias=bias)
    for x in (torch.randn(1, c_in, steps), torch.randn(3, c_in, steps)):
        assert torch.allclose(convs.long_conv1d(conv, x), conv(x), atol=1e-5)
    x = torch.randn(1, c_in, steps)
    for _ in _reloads(conv):
        assert torch.allclose(convs.long_conv1d(conv, x), conv(x), atol=1e-4)


@pytest.mark.parametrize("c_in, c_out, stride, m, steps", [(16, 8, 8, 2, 2), (8, 4, 5, 2, 3), (6, 6, 2, 3, 1), (4, 4, 1, 1, 7)])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose1d_gemm_equals_conv_transpose1d(c_in, c_out, stride, m, steps, bias):
    torch.manual_seed(0)
    convtr = nn.ConvTranspose1d(c_in, c_out, m * stride, stride, bias=bias)
    x = torch.randn(1, c_in, steps)
    assert torch.allclose(convs.conv_transpose1d_gemm(convtr, x), convtr(x), atol=1e-5)


def test_a_fast_session_restores_the_model_and_the_thread_count():
    codec = load_codec(8, "moshi")
    model, threads = codec.backend.model, torch.get_num_threads()
    with codec.stream() as s:
        s.encode(torch.zeros(4000), 24000)
    assert not any("forward" in vars(m) for m in model.modules())  # no instance forward left behind
    assert not model.is_streaming and torch.get_num_threads() == threads
    assert not any({"_quantize", "encode", "decode"} & set(vars(m)) for m in model.modules())


@pytest.mark.parametrize("process, asked", [(1, 2), (2, 1), (2, None)])
def test_a_session_steps_on_the_threads_it_was_given_and_restores_the_process_count(process, asked):
    """What the encoder and decoder see during a stream's call is the session's count, not the
    process's; the process's comes back after it (issue 23: the session had been pinned to 1)."""
    model = load_codec(listen=True).backend.model
    seen = []
    hooks = [m.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads())) for m in (model.encoder, model.decoder)]
    previous = torch.get_num_threads()
    torch.set_num_threads(process)
    try:
        with load_codec(listen=True).stream(threads=asked) as s:
            s.decode(s.encode(torch.zeros(1920 * 2).numpy(), 24000))
            during = list(seen)
        after = torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)
        for hook in hooks:
            hook.remove()
    assert during and set(during) == {asked or mimi_stream.STREAM_THREADS}
    assert after == process


def test_only_a_positive_whole_thread_count_is_accepted_and_only_by_moshi_streams():
    codec = load_codec(listen=True)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError):
            codec.stream(threads=bad)
    with pytest.raises(ConfigError, match="backend='moshi'"):
        backends.refuse_threads("rustymimi", 2)


@pytest.fixture(scope="module")
def small_transformer():
    """The small trained Mimi's decoder transformer (a 32-step context: its ring cache wraps soon),
    with the fast linears installed as a streaming call installs them."""
    model = load_codec(listen=True).backend.model
    transformer = model.decoder_transformer.transformer
    assert lean.supports(transformer)
    for module in transformer.modules():
        if (forward := fast._fast_forward(module)) is not None and module is not transformer:
            module.forward = forward
    yield transformer
    for module in transformer.modules():
        vars(module).pop("forward", None)


def _stream(transformer, inputs, use_lean) -> list[torch.Tensor]:
    """`transformer` stepped over `inputs` in one streaming context; `use_lean(i)` picks the step.
    The ring caches are widened as a session widens them, so the mask's window is what bounds attention."""
    with torch.inference_mode(), transformer.streaming(inputs[0].shape[0]):
        _widen_attention_caches(transformer, 8)
        return [lean.lean_forward(transformer, x) if use_lean(i) else type(transformer).forward(transformer, x)
                for i, x in enumerate(inputs)]


@pytest.mark.parametrize("tokens", [1, 2, 8])
def test_the_lean_transformer_step_is_bit_identical_to_moshis(small_transformer, tokens):
    torch.manual_seed(0)
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = [torch.randn(1, tokens, dim) for _ in range(64 // tokens + 8)]  # past the 32-step window
    reference = _stream(small_transformer, inputs, lambda i: False)
    for use_lean in (lambda i: True, lambda i: i % 3 == 0):  # lean throughout, and taking turns with moshi's
        assert all(torch.equal(a, b) for a, b in zip(_stream(small_transformer, inputs, use_lean), reference))


def _batch_stream(transformer, inputs, use_lean) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Two streams in one batch, out of step: row 1 sits out steps 3-5 (exec mask) and row 0 restarts
    at step 8 (reset mask), as `csmlab.codec.batch` does when sessions idle, leave and join.
    Returns the outputs and every streaming tensor (ring caches, offsets) at the end."""
    with torch.inference_mode(), transformer.streaming(2):
        _widen_attention_caches(transformer, 8)
        outputs = []
        for i, x in enumerate(inputs):
            transformer.set_exec_mask(torch.tensor([True, not 3 <= i <= 5]))
            if i == 8:
                transformer.reset_streaming(torch.tensor([True, False]))
            step = lean.lean_forward if use_lean else type(transformer).forward
            outputs.append(step(transformer, x))
        states = [t.clone() for t in streaming_tensors(transformer.get_streaming_state())]
    return outputs, states


def test_the_lean_step_is_bit_identical_for_a_batch_of_streams_out_of_step(small_transformer):
    torch.manual_seed(1)
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = [torch.randn(2, 2, dim) for _ in range(24)]  # past the 32-step window
    lean_outputs, lean_states = _batch_stream(small_transformer, inputs, use_lean=True)
    moshi_outputs, moshi_states = _batch_stream(small_transformer, inputs, use_lean=False)
    assert all(torch.equal(a, b) for a, b in zip(lean_outputs, moshi_outputs))
    assert len(lean_states) == len(moshi_states) >= 4 * len(small_transformer.layers)  # every layer's caches and offsets
    assert all(torch.equal(a, b) for a, b in zip(lean_states, moshi_states))


@pytest.mark.parametrize("n_q", [None, 1, 3])
def test_the_lean_residual_loop_gives_moshis_codes(n_q):
    """Each codebook quantizes what the ones before it left: skipping the subtraction, or quantizing the
    latent each time, gives other codes from the second codebook on."""
    quantizer = load_codec(listen=True).backend.model.quantizer.rvq_rest
    vq = quantizer.vq
    assert lean.supports_rvq(vq)
    torch.manual_seed(0)
    with torch.inference_mode():
        x = quantizer.input_proj(torch.randn(2, quantizer.input_proj.in_channels, 5))  # [B, D, N], as a frame brings them
        codes = lean.lean_rvq_encode(vq, x, n_q)
        assert torch.equal(codes, vq.encode(x, n_q=n_q))
        assert torch.equal(lean.lean_rvq_decode(vq, codes), vq.decode(codes))  # the centroids summed, in order


def test_nearest_codes_are_cdists_codes_and_follow_a_new_embedding():
    codebook = next(m for m in load_codec(listen=True).backend.model.modules() if isinstance(m, EuclideanCodebook))
    torch.manual_seed(2)
    for rows in (1, 2, 30):
        x = 3 * codebook.embedding.std() * torch.randn(rows, codebook.embedding.shape[1])
        distances = torch.cdist(x[None], codebook.embedding[None], p=2)[0]
        assert torch.equal(fast.nearest_codes(codebook, x), distances.argmin(dim=-1))
    embedding = codebook._embedding
    try:
        codebook.register_buffer("_embedding", torch.flip(embedding, [0]), persistent=False)  # as training replaces it
        assert torch.equal(fast.nearest_codes(codebook, embedding[:5]), torch.arange(len(embedding))[-5:].flip(0))
    finally:
        codebook.register_buffer("_embedding", embedding, persistent=False)
    assert torch.equal(fast.nearest_codes(codebook, embedding[:5]), torch.arange(5))


@pytest.mark.parametrize("c_in, c_out, stride, m, steps", [(16, 8, 8, 2, 2), (8, 4, 5, 2, 3), (6, 6, 2, 3, 1)])
@pytest.mark.parametrize("kernel", [convs.conv_transpose1d_linear, convs.long_conv_transpose1d])
def test_the_transposed_weight_products_equal_conv_transpose1d_and_follow_a_reloaded_weight(c_in, c_out, stride, m, steps, kernel):
    torch.manual_seed(0)
    convtr = nn.ConvTranspose1d(c_in, c_out, m * stride, stride)
    for x in (torch.randn(1, c_in, steps), torch.randn(1, c_in, 40 + steps), torch.randn(3, c_in, steps)):
        assert torch.allclose(kernel(convtr, x), convtr(x), atol=1e-5)
    x = torch.randn(1, c_in, 40 + steps)  # one row: the copied weight's path
    for _ in _reloads(convtr):
        assert torch.allclose(kernel(convtr, x), convtr(x), atol=1e-4)


def _conv_steps(module, chunks, step) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`module` (a moshi streaming conv) stepped over `chunks` in one streaming context: the outputs, and the
    state it keeps after the last call."""
    with torch.inference_mode(), module.streaming(1):
        outputs = [step(module, x) for x in chunks]
        state = module._streaming_state
        return outputs, [getattr(state, "previous", getattr(state, "partial", None)).clone()]


@pytest.mark.parametrize("transpose, k, stride, dilation", [(False, 3, 1, 1), (False, 7, 1, 3), (False, 16, 8, 1),
                                                             (False, 1, 1, 1), (True, 16, 8, 1), (True, 4, 2, 1)])
def test_the_lean_streaming_convs_are_bit_identical_to_moshis(transpose, k, stride, dilation):
    """Left context and partial sums carried from call to call: dropping either changes every call's
    output after the first."""
    from moshi.modules.conv import StreamingConv1d, StreamingConvTranspose1d

    torch.manual_seed(0)
    if transpose:  # moshi's transposed conv takes no dilation
        module, step = StreamingConvTranspose1d(6, 5, k, stride, causal=True), lean.lean_conv_transpose
        chunks = [torch.randn(1, 6, n) for n in (2, 1, 3, 2)]
    else:
        module, step = StreamingConv1d(6, 5, k, stride, dilation=dilation, causal=True), lean.lean_conv
        chunks = [torch.randn(1, 6, n * stride) for n in (2, 1, 3, 2)]
    assert lean.supports_conv(module)
    lean_out, lean_state = _conv_steps(module, chunks, step)
    moshi_out, moshi_state = _conv_steps(module, chunks, lambda m, x: type(m).forward(m, x))
    assert all(torch.equal(a, b) for a, b in zip(lean_out + lean_state, moshi_out + moshi_state))


def test_weight_normed_or_replicate_padded_convs_keep_moshis_step():
    from moshi.modules.conv import StreamingConv1d

    assert not lean.supports_conv(StreamingConv1d(4, 4, 3, causal=True, pad_mode="replicate"))
    assert not lean.supports_conv(StreamingConv1d(4, 4, 3, causal=True, norm="weight_norm"))
    assert not lean.supports_conv(nn.Conv1d(4, 4, 3))
