"""The conda environment and pyproject.toml must pin the same versions, or users get two stacks."""
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _pins(requirements: list[str]) -> dict[str, str]:
    return dict(r.lower().split("==") for r in requirements)


def test_environment_yml_pins_match_pyproject():
    py = _pyproject()
    expected = _pins(py["tool"]["csmlab"]["install"]["first"] + py["project"]["dependencies"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_section) == expected


def test_environment_yml_explains_the_no_deps_install():
    no_deps = _pyproject()["tool"]["csmlab"]["install"]["no-deps"]
    text = (ROOT / "environment.yml").read_text()
    assert all(f"pip install --no-deps {pin}" in text for pin in no_deps)


def test_every_dependency_is_pinned_exactly():
    py = _pyproject()
    for requirement in py["project"]["dependencies"] + py["tool"]["csmlab"]["install"]["no-deps"]:
        assert requirement.count("==") == 1, f"{requirement} is not pinned exactly"
