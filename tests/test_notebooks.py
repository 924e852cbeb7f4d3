"""What a learner sees in the committed notebooks: hidden answers, every figure drawn, timings that
say where and under what load they were taken, and a course map that lists the whole course.

These read the notebooks as committed (the outputs nbval does not compare), so they fail when a
notebook is committed without being executed the way the course promises.
"""
import ast
import json
import re

import pytest

from csmlab.course import exercises as ex
from csmlab.bench import LOAD_HIGH
from csmlab.course import notebooks

PATHS = notebooks()


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _text(cell, stamps: bool = True) -> str:
    """What a reader of the rendered page sees of a cell's outputs (text, Markdown; not images or HTML);
    without the timing stamps (machine, threads, load) when `stamps` is False."""
    parts = []
    for out in cell.get("outputs", []):
        if not stamps and "timing_stamp" in out.get("metadata", {}).get("csmlab", {}):
            continue
        if out["output_type"] == "stream":
            parts.append("".join(out["text"]))
        data = out.get("data", {})
        parts.append("".join(data.get("text/markdown", "")) or "".join(data.get("text/plain", "")))
    return "\n".join(parts)


def _meta(cell, key):
    return [out["metadata"]["csmlab"][key] for out in cell.get("outputs", [])
            if key in out.get("metadata", {}).get("csmlab", {})]


def _solutions(path):
    return [(i, c) for i, c in enumerate(_cells(path)) if "solution" in c["metadata"].get("tags", [])]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_solution_cells_hide_source_and_outputs_and_print_no_answer(path):
    solutions = _solutions(path)
    assert solutions, f"{path.name} has no exercise with a solution"
    for i, cell in solutions:
        jupyter = cell["metadata"].get("jupyter", {})
        assert jupyter.get("source_hidden") is True and jupyter.get("outputs_hidden") is True, f"{path.name} cell {i}"
        assert _meta(cell, "solution"), f"{path.name} cell {i}: executed without a `.must_pass()` result shown"
        assert "correct:" not in _text(cell), f"{path.name} cell {i} prints its answer"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_no_output_above_an_exercise_prints_its_answer(path):
    cells = _cells(path)
    for i, cell in _solutions(path):
        answers = {d for digests in _meta(cell, "answer_sha256") for d in digests}
        for j in range(i):
            # a stamp's load average is the machine's, not a figure to derive (03's read "load 1.1", the
            # answer of its bitrate exercise, and failed this test)
            leaked = [f for f in ex.printed_forms(_text(cells[j], stamps=False)) if ex.digest(f) in answers]
            assert not leaked, f"{path.name}: cell {j} prints {leaked}, the answer of the exercise solved in cell {i}"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_no_prose_anywhere_states_an_exercises_answer(path):
    """The Markdown, above or below: 05's exercise 4 stated the loopback's 160 ms, exercise 3's answer."""
    cells = _cells(path)
    prose = [(j, "".join(c["source"])) for j, c in enumerate(cells) if c["cell_type"] == "markdown"]
    for i, cell in _solutions(path):
        answers = {d for digests in _meta(cell, "answer_sha256") for d in digests}
        for j, text in prose:
            leaked = [f for f in ex.answer_forms(text) if " " in f and ex.digest(f) in answers]  # "160 ms", not a bare "2.5"
            assert not leaked, f"{path.name}: Markdown cell {j} states {leaked}, the answer of the exercise solved in cell {i}"


DRAWS = re.compile(r"\bplt\.(show|subplots|figure|semilogy|imshow)\(|\b(plot|draw)_\w+\(|\w+_(diagram|overview|figure|strip)\(")


def _draws_at_top_level(source: str) -> bool:
    """The cell itself draws: a drawing call outside any `def` (a function defined for a slider draws later)."""
    tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("%", "!"))))
    top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return any(DRAWS.search(ast.unparse(n)) for n in top)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_every_cell_that_draws_has_its_figure(path):
    for i, cell in enumerate(_cells(path)):
        source = "".join(cell["source"])
        if cell["cell_type"] != "code" or "NBVAL_SKIP" in source or not _draws_at_top_level(source):
            continue
        kinds = {k for out in cell.get("outputs", []) for k in out.get("data", {})}
        if "application/vnd.jupyter.widget-view+json" in kinds:
            continue  # a slider: it draws when moved; its static twin is the next cell
        assert "image/png" in kinds, f"{path.name} cell {i} draws a figure but its outputs hold no image"


TIMES = re.compile(r"perf_counter|realtime\.measured\(|first_audio_s|measure_depths|\.measure\(|kernel_ms|compute_ms|real_time_factor|step_ms\[|train\.train\(")


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_timings_say_where_and_under_what_load(path):
    for i, cell in enumerate(_cells(path)):
        source = "".join(cell["source"])
        if (cell["cell_type"] == "code" and TIMES.search(source) and "NBVAL_SKIP" not in source
                and "solution" not in cell["metadata"].get("tags", []) and "= ..." not in source):
            assert _meta(cell, "timing_stamp"), f"{path.name} cell {i} times something but does not say on what machine, under what load"


# Apart from the stamps' presence, so that a notebook executed under load does not hide a cell without one.
@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_timings_were_taken_quiet(path):
    for i, cell in enumerate(_cells(path)):
        for s in _meta(cell, "timing_stamp"):
            if s["source"] == "executed":
                assert s["load_average_1min"] < LOAD_HIGH, (
                    f"{path.name} cell {i} was executed at load {s['load_average_1min']} on {s['cpu_cores']} cores "
                    f"({s['utc']}): re-execute it on a quiet machine before committing")


def test_the_course_map_lists_every_notebook():
    tour = next(p for p in PATHS if p.stem.startswith("00"))
    shown = "\n".join(_text(c) for c in _cells(tour))
    assert all(f"`{p.stem}`" in shown for p in PATHS), "00's map leaves out a notebook"


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_each_notebook_ends_with_three_lines_rendered_from_its_cells(path):
    last = _cells(path)[-1]
    assert last["cell_type"] == "code" and "summary(" in "".join(last["source"]), f"{path.name} ends without its summary"
    shown = _text(last)
    assert shown.count("\n- ") == 3 and "{" not in shown, f"{path.name}: the summary was not rendered: {shown!r}"


def test_a_cached_runs_stamp_says_when_and_where_that_run_was_measured():
    """A stored result stamped with today's time read as measured now, on this machine (06 showed an
    AMD EPYC run of 2026-11-30 "2026-12-03 08:59" on an Intel host)."""
    from csmlab.bench import results, stamp

    run = results.load("bench_codec")
    shown = repr(stamp(run))
    assert run["date"] in shown and run["machine"]["cpu_model"] in shown and "read from data/results" in shown
    assert "measured now" in repr(stamp())
