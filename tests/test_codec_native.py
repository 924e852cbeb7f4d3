"""csmlab.codec.native: Mimi's transformer call in C agrees with moshi's to float rounding, leaves the
state moshi's would (so the two can take turns), follows new weights, gives the same bits on 1 and 2
threads, falls back where it does not apply, and says why when it cannot be built."""
import os
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from csmlab.codec import fast, lean, load_codec, native, tuning
from csmlab.codec.mimi_stream import _widen_attention_caches
from csmlab.errors import ConfigError

from conftest import streaming_tensors, torch_threads


@pytest.fixture(scope="module")
def small_transformer():
    """The small trained Mimi's decoder transformer: a 32-step context, so its ring cache wraps soon."""
    if not native.available():
        pytest.skip(f"no native step here: {native.unavailable_reason()}")
    transformer = load_codec(listen=True).backend.model.decoder_transformer.transformer
    assert native.supports(transformer)
    return transformer


@pytest.fixture
def native_only(monkeypatch):
    """The lean steps made to fail: a test that says native ran cannot pass on a silent fallback."""
    def refuse(*args, **kwargs):
        raise AssertionError("the lean step ran where native's should have")

    monkeypatch.setattr(lean, "lean_forward", refuse)
    monkeypatch.setattr(lean, "lean_rvq_encode", refuse)


def _stream(transformer, inputs, use_native, rows: int = 1, widen: bool = True):
    """`transformer` stepped over `inputs` in one streaming context, its caches widened as a session
    widens them; `use_native(i)` picks native's step, else moshi's. Returns the outputs and every
    streaming tensor at the end (ring caches, offsets)."""
    with torch.inference_mode(), transformer.streaming(rows):
        if widen:
            _widen_attention_caches(transformer, 8)
        outputs = [native.native_forward(transformer, x) if use_native(i) else type(transformer).forward(transformer, x)
                   for i, x in enumerate(inputs)]
        return outputs, [t.clone() for t in streaming_tensors(transformer.get_streaming_state())]


def _inputs(dim, tokens, calls, rows=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, tokens, dim, generator=generator) for _ in range(calls)]


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to fp32 rounding over a few layers: within 1e-5 of the reference's scale."""
    return a.shape == b.shape and a.dtype == b.dtype and bool(((a - b).abs().max() <= 1e-5 * (1 + b.abs().max())).item())


@pytest.mark.parametrize("tokens", [1, 2, 3, 4])
def test_the_native_step_agrees_with_moshis_and_leaves_its_state(small_transformer, tokens, monkeypatch):
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = _inputs(dim, tokens, 64 // tokens + 8)  # past the 32-step window: the ring wraps
    reference, reference_state = _stream(small_transformer, inputs, lambda i: False)
    for use_native in (lambda i: True, lambda i: i % 3 == 0):  # native throughout, and taking turns with moshi's
        outputs, state = _stream(small_transformer, inputs, use_native)
        assert all(_close(a, b) for a, b in zip(outputs, reference))
        assert not all(torch.equal(a, b) for a, b in zip(outputs, reference))  # it is another kernel, not moshi's
        assert len(state) == len(reference_state) >= 4 * len(small_transformer.layers)
        assert all(_close(a, b) if a.is_floating_point() else torch.equal(a, b) for a, b in zip(state, reference_state))


@pytest.mark.parametrize("widen", [True, False])
def test_with_full_weight_residuals_a_slip_in_attention_would_show(small_transformer, widen, native_only):
    """LayerScale starts at 0.01, which hides a branch's errors under the residual: here scaled to 1
    (and without the session's wider caches too: capacity = context, moshi's own size)."""
    scales = [s.scale for layer in small_transformer.layers for s in (layer.layer_scale_1, layer.layer_scale_2)]
    saved = [s.detach().clone() for s in scales]
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = _inputs(dim, 2, 40, seed=9)
    try:
        with torch.no_grad():
            for s in scales:
                s.fill_(1.0)
        outputs, _ = _stream(small_transformer, inputs, lambda i: True, widen=widen)
        reference, _ = _stream(small_transformer, inputs, lambda i: False, widen=widen)
        assert all(_close(a, b) for a, b in zip(outputs, reference))
    finally:
        with torch.no_grad():
            for s, value in zip(scales, saved):
                s.copy_(value)


def test_the_same_bits_on_one_thread_and_on_two(small_transformer, native_only):
    """Each thread computes whole outputs (weight rows, attention heads) in one order: no sum is split."""
    if not native._library().threaded:
        pytest.skip("a build without OpenMP: one thread only")
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = _inputs(dim, 2, 24, seed=1)
    with torch_threads(1):
        one, _ = _stream(small_transformer, inputs, lambda i: True)
    with torch_threads(2):
        two, _ = _stream(small_transformer, inputs, lambda i: True)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@pytest.mark.parametrize("rows, tokens", [(2, 2), (1, 8)])
def test_several_rows_or_many_tokens_take_the_lean_step_which_is_moshis(small_transformer, rows, tokens):
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = _inputs(dim, tokens, 10, rows=rows, seed=2)
    outputs, _ = _stream(small_transformer, inputs, lambda i: True, rows)
    reference, _ = _stream(small_transformer, inputs, lambda i: False, rows)
    assert all(torch.equal(a, b) for a, b in zip(outputs, reference))


def test_a_replaced_or_reloaded_weight_is_read_at_the_next_call(small_transformer, native_only):
    layer = small_transformer.layers[-1]
    saved = {name: p.detach().clone() for name, p in layer.named_parameters()}
    dim = layer.self_attn.embed_dim
    inputs = _inputs(dim, 2, 6, seed=3)
    try:
        with torch.no_grad():
            layer.linear1.weight = torch.nn.Parameter(torch.randn_like(layer.linear1.weight) * 0.05)  # replaced
            layer.norm2.weight.mul_(1.5)  # in place
        outputs, _ = _stream(small_transformer, inputs, lambda i: True)
        reference, _ = _stream(small_transformer, inputs, lambda i: False)
        assert all(_close(a, b) for a, b in zip(outputs, reference))
    finally:
        with torch.no_grad():
            layer.linear1.weight = torch.nn.Parameter(saved["linear1.weight"])
            layer.norm2.weight.copy_(saved["norm2.weight"])


def test_a_full_size_mimi_session_streams_the_batch_paths_codes(native_only):
    """The released Mimi's shapes (offline weights): 8 layers, 8 heads of 64, a 250-step context."""
    if not native.available():
        pytest.skip(f"no native step here: {native.unavailable_reason()}")
    codec = load_codec(8)
    assert native.supports(codec.backend.model.encoder_transformer.transformer)
    audio = np.random.default_rng(4).normal(0, 0.1, 1920 * 6).astype(np.float32)
    stream = fast.stream_of("native", codec.backend.model, threads=1)
    streamed = np.concatenate([stream.encode(audio[i: i + 1920]) for i in range(0, len(audio), 1920)], axis=1)
    assert np.array_equal(streamed, codec.encode(audio, 24000))


@pytest.fixture
def rebuilt(monkeypatch, tmp_path):
    """`native`'s library looked for again under the environment a test sets, and as before afterwards."""
    monkeypatch.setenv("CSMLAB_CACHE", str(tmp_path / "cache"))
    native._library.cache_clear()
    yield tmp_path
    native._library.cache_clear()


def test_without_a_compiler_it_says_so_and_the_other_kernels_run(rebuilt, monkeypatch, call):
    monkeypatch.setenv("CC", str(rebuilt / "no-such-cc"))
    assert not native.available() and "no C compiler" in native.unavailable_reason()
    assert "native" not in tuning.runnable() and "by-shape" in tuning.runnable()
    monkeypatch.setenv(tuning.ENV, "native")
    with pytest.raises(ConfigError, match="no C compiler"):
        tuning.kernels_for(load_codec(listen=True).backend.model, 1, pytest.fail, rebuilt)
    codec = load_codec(listen=True)  # a stream asked for native's kernels still streams (the lean step)
    audio = codec.decode(codec.encode(*call))[: 1920 * 4]
    stream = fast.stream_of("native", codec.backend.model, threads=1)
    streamed = np.concatenate([stream.encode(audio[i: i + 1920]) for i in range(0, len(audio), 1920)], axis=1)
    assert np.array_equal(streamed, codec.encode(audio, 24000))


def test_a_failed_build_is_reported_with_the_compilers_words(rebuilt, monkeypatch):
    script = rebuilt / "broken-cc"
    script.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo broken-cc 1.0; exit 0; }\necho 'fatal: out of cheese' >&2\nexit 1\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("CC", str(script))
    assert not native.available()
    assert "building native.c failed" in native.unavailable_reason() and "out of cheese" in native.unavailable_reason()
    assert not list((rebuilt / "cache" / "native").glob("*.so"))  # nothing half-written left to load


def test_the_library_is_built_once_per_machine_and_reused(rebuilt):
    if not native.available():
        pytest.skip(f"no native step here: {native.unavailable_reason()}")
    [built] = list((rebuilt / "cache" / "native").glob("*.so"))
    modified = built.stat().st_mtime_ns
    native._library.cache_clear()  # a new process
    assert native.available() and built.stat().st_mtime_ns == modified
    assert os.access(built, os.R_OK)


@pytest.mark.parametrize("n_q", [None, 1, 3])
@pytest.mark.parametrize("threads", [1, 2])
def test_the_residual_loop_in_c_gives_moshis_codes(n_q, threads, native_only):
    """Latents of the small trained Mimi's encoder (the quantizer's own input), several rows at once."""
    if not native.available():
        pytest.skip(f"no native step here: {native.unavailable_reason()}")
    codec = load_codec(listen=True)
    model = codec.backend.model
    vq = model.quantizer.rvq_rest.vq
    assert native.supports_rvq(vq)
    generator = torch.Generator().manual_seed(5)
    latents = [torch.randn(2, vq.layers[0]._codebook.embedding.shape[1], 3, generator=generator) * scale
               for scale in (0.1, 1.0, 10.0)]
    with torch.inference_mode(), torch_threads(threads):
        for x in latents:
            expected = type(vq).encode(vq, x, n_q)  # moshi's loop, cdist's search
            assert torch.equal(native.rvq_encode(vq, x, n_q), expected)


def test_a_row_masked_out_takes_the_lean_step_and_does_not_advance(small_transformer):
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = _inputs(dim, 2, 10, seed=6)

    def run(use_native):
        with torch.inference_mode(), small_transformer.streaming(1):
            _widen_attention_caches(small_transformer, 8)
            outputs = []
            for i, x in enumerate(inputs):
                small_transformer.set_exec_mask(torch.tensor([not 3 <= i <= 5]))
                step = native.native_forward if use_native else type(small_transformer).forward
                outputs.append(step(small_transformer, x))
            return outputs, [t.clone() for t in streaming_tensors(small_transformer.get_streaming_state())]

    (outputs, state), (reference, reference_state) = run(True), run(False)
    assert all(_close(a, b) for a, b in zip(outputs, reference))
    assert all(_close(a, b) if a.is_floating_point() else torch.equal(a, b) for a, b in zip(state, reference_state))


def test_an_int8_mimi_keeps_the_lean_step_and_streams():
    """int8 linears (csmlab.codec.precision) subclass nn.Linear with a placeholder weight: native.c would
    read it as a full matrix (it crashed once), so such a transformer is not native's."""
    codec = load_codec(8, listen=True, precision="int8")
    model = codec.backend.model
    assert not native.supports(model.decoder_transformer.transformer)
    audio = np.random.default_rng(7).normal(0, 0.1, 1920 * 3).astype(np.float32)
    stream = fast.stream_of("native", model, threads=1)
    codes = np.concatenate([stream.encode(audio[i: i + 1920]) for i in range(0, len(audio), 1920)], axis=1)
    assert codes.shape == (8, 3) and stream.decode(codes).shape == (1920 * 3,)


def test_a_weight_replaced_by_one_of_another_size_is_an_error_not_a_crash(small_transformer):
    layer = small_transformer.layers[0]
    saved = layer.linear2.weight
    dim = layer.self_attn.embed_dim
    try:
        layer.linear2.weight = torch.nn.Parameter(saved.detach()[:, : saved.shape[1] // 2].contiguous())
        with pytest.raises(ValueError, match="make a new stream"):
            _stream(small_transformer, _inputs(dim, 2, 2, seed=8), lambda i: True)
    finally:
        layer.linear2.weight = saved


def test_a_cache_larger_than_native_takes_or_a_swapped_layer_sends_the_call_to_the_lean_step(small_transformer,
                                                                                           monkeypatch):
    dim = small_transformer.layers[0].self_attn.embed_dim
    inputs = _inputs(dim, 2, 6, seed=10)
    reference, _ = _stream(small_transformer, inputs, lambda i: False)
    monkeypatch.setattr(native, "MAX_CAPACITY", 8)  # below the widened cache's 39 slots
    outputs, _ = _stream(small_transformer, inputs, lambda i: True)
    assert all(torch.equal(a, b) for a, b in zip(outputs, reference))  # the lean step is moshi's, to the bit
    monkeypatch.undo()
    layer = small_transformer.layers[0]
    original = layer.linear1
    try:
        layer.linear1 = _Doubled(original)  # a kind native.c does not compute, swapped in after a first call
        swapped_outputs, _ = _stream(small_transformer, inputs, lambda i: True)
        swapped_reference, _ = _stream(small_transformer, inputs, lambda i: False)
        assert all(torch.equal(a, b) for a, b in zip(swapped_outputs, swapped_reference))
    finally:
        layer.linear1 = original
    outputs, _ = _stream(small_transformer, inputs, lambda i: True)
    assert all(_close(a, b) for a, b in zip(outputs, reference)) and not torch.equal(outputs[-1], reference[-1])


class _Doubled(torch.nn.Linear):
    """A Linear whose output is doubled: another kind of layer, with the same weight."""

    def __init__(self, linear):
        super().__init__(linear.in_features, linear.out_features, bias=False)
        self.weight = linear.weight

    def forward(self, x):
        return 2 * super().forward(x)


def test_the_threaded_build_joins_pytorchs_openmp_runtime_and_starts_no_other():
    """In a fresh process (here other libraries bring their own libgomp: sentencepiece's wheel does)."""
    if not native._library().threaded:
        pytest.skip("a build without OpenMP here")
    probe = ("import torch; from csmlab.codec import native; before = native._openmp_runtimes(); "
             "assert native._library().threaded; print(sorted(native._openmp_runtimes() - before), "
             "any(r.endswith('/torch/lib/libgomp.so.1') for r in before))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[]", "True"]  # none added; PyTorch's own was there before


def test_a_compiler_given_with_arguments_builds_and_a_silent_failure_says_so(rebuilt, monkeypatch):
    cc = shutil.which("cc")
    if cc is None:
        pytest.skip("no cc here")
    monkeypatch.setenv("CC", f"{cc} -DCSMLAB_TEST_ARGUMENT=1")  # as "ccache gcc" or "gcc -m64" would be
    assert native.compiler() == (f"{cc} -DCSMLAB_TEST_ARGUMENT=1", [cc, "-DCSMLAB_TEST_ARGUMENT=1"])
    assert native.available(), native.unavailable_reason()
    native._library.cache_clear()
    monkeypatch.setenv("CC", shutil.which("false") or "/bin/false")
    assert not native.available() and native.unavailable_reason().endswith("exited 1: it printed nothing")
