"""csmlab.course.testsuite sorts test ids by what they prove (notebook 06 counts the suite with it)."""
from csmlab.course import testsuite as ts

IDS = [
    "tests/test_codec_equivalence.py::test_streaming_equals_batch_on_random_partitions_16k_mono[0]",
    "tests/test_codec_equivalence.py::test_moshi_and_rustymimi_give_identical_codes",
    "tests/test_csm.py::test_stream_frames_are_generate_codes_greedy[loop]",
    "tests/test_pipeline.py::test_brain_that_stalls_gives_silence_is_counted_and_recovers",
    "tests/test_bad_input_matrix.py::test_bad_input_is_refused_clearly_and_loses_nothing[codec: NaN samples]",
    "tests/test_serve.py::test_handshake_then_streamed_audio_and_text_come_back",
    "tests/test_serve_soak.py::test_one_minute_soak_holds",
    "tests/test_environment.py::test_environment_yml_explains_the_no_deps_install",
]


def test_each_claim_finds_its_tests_and_words_match_whole_parts_only():
    claims = ts.by_claim(IDS)
    assert claims["streaming = batch"] == IDS[:1] + IDS[2:3]
    assert claims["cross-implementation identity"] == IDS[1:2]
    assert claims["token-exact CSM streaming"] == IDS[2:3]
    assert claims["fault injection"] == IDS[3:4]  # "install" is not a stall
    assert IDS[4] in claims["bad input"] and claims["server protocol"] == IDS[5:6] and claims["soak"] == IDS[6:7]
    assert not any(IDS[7] in ids for ids in claims.values())
    assert ts.by_module(IDS)["tests/test_codec_equivalence.py"] == 2


def test_collecting_the_suite_leaves_the_asking_process_alone():
    """Notebook 06 collects the suite in its kernel: that must not import the test modules here
    (one switched matplotlib to Agg at import, and 06 lost every figure drawn after it)."""
    import sys

    import matplotlib

    backend, modules = matplotlib.get_backend(), set(sys.modules)
    ids = ts.collect(("tests/test_batch_bench.py",))
    assert ids and all(i.startswith("tests/test_batch_bench.py::") for i in ids)
    assert matplotlib.get_backend() == backend
    assert not {m for m in set(sys.modules) - modules if "test_batch_bench" in m}


def test_no_test_module_switches_the_matplotlib_backend_when_imported():
    import ast

    for path in sorted((ts.ROOT / "tests").glob("*.py")):
        for node in ast.parse(path.read_text()).body:  # module level only: what runs at import
            for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
                name = ast.unparse(call.func)
                assert not name.endswith(("matplotlib.use", "switch_backend")), f"{path.name}: {name}() at import"
