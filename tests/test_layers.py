"""The package's layers, read from its imports with `ast` (issue 27): the drawing the review uses, as a test.

Every `import` in `csmlab/`, at the top of a module or inside a function, is an edge from the module
that writes it to the module it names. The layers, lowest first, are those `csmlab/__init__.py` maps;
a module may import its own layer and the ones below, never one above, nor its sibling (moshi/csm).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "csmlab"

# the layers, lowest first: a layer may import itself and those above it in this list; the two
# models on one line are siblings, which import neither each other (brain and voice meet in pipeline/)
LAYERS = [
    ("ground", ["errors", "audio", "metrics", "locks", "host"]),   # every layer may use these
    ("data", ["data"]),                                            # recordings and synthetic speech
    ("weights", ["weights"]),                                      # where models come from
    ("batching", ["batching"]),                                    # many streams in one forward
    ("codec", ["codec"]),
    ("moshi", ["moshi"]), ("csm", ["csm"]),                        # siblings: rank below
    ("pipeline", ["pipeline"]),
    ("widget", ["widget"]),                                        # front end: the notebook's player
    ("serve", ["serve"]),                                          # front end: the server (speaks the widget's frames)
    ("bench", ["bench"]),
    ("course", ["course"]),                                        # what the notebooks use
    ("command", ["cli", "doctor"]),
]
SIBLINGS = {"moshi": "csm", "csm": "moshi"}
LAYER_OF = {name: layer for layer, names in LAYERS for name in names}
RANKS = {layer: rank for rank, (layer, _) in enumerate(LAYERS)}
# the one import of course/ from the library: `csmlab train-codec` runs the course's trainer
COURSE_IMPORTERS = {"csmlab.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """The csmlab modules `path` imports: `from csmlab.x import y` names csmlab.x.y when y is a module."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "csmlab"}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; csmlab imports by full path"
            if node.module and node.module.split(".")[0] == "csmlab":
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    found.add(sub if is_module(sub) else node.module)
    return found


GRAPH = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return LAYER_OF.get(parts[1], parts[1]) if len(parts) > 1 else None  # None: the package's own __init__


def test_every_module_has_a_layer():
    top = {m.split(".")[1] for m in GRAPH if "." in m}
    assert top == set(LAYER_OF), "a new top-level module or package needs a layer here and a line in csmlab/__init__.py"


def runs_up_or_sideways(a: str, b: str) -> bool:
    return RANKS[layer(b)] > RANKS[layer(a)] or SIBLINGS.get(layer(a)) == layer(b)


def test_no_import_runs_up_or_sideways():
    wrong = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
                   if layer(a) and layer(b) and runs_up_or_sideways(a, b))
    assert not wrong, "imports from a lower layer to a higher one, or between siblings:\n" + "\n".join(wrong)


@pytest.mark.parametrize("lower, higher", [("csm", "moshi"), ("pipeline", "widget"), ("pipeline", "serve"),
                                           ("pipeline", "course"), ("bench", "course")])
def test_named_boundaries(lower, higher):
    """The review's three: csm/ knows nothing of moshi/, pipeline/ no front end, the library no course."""
    wrong = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps if layer(a) == lower and layer(b) == higher)
    assert not wrong, "\n".join(wrong)


def test_course_is_imported_by_nothing_in_the_library():
    wrong = sorted(f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
                   if layer(b) == "course" and layer(a) != "course" and a not in COURSE_IMPORTERS)
    assert not wrong, "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_circle_among_the_modules():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
