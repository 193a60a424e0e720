"""The mutation gate's own logic (scripts/mutants.py), and that its list fits the tree as it is."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutants_gate", ROOT / "scripts" / "mutants.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


gate = _load()

ENTRY = """
[[mutant]]
name = "demo"
file = "pkg/mod.py"
why = "the guard is gone"
original = 'if x > 0:'
replacement = 'if True:'
tests = ["tests/test_mod.py::test_guard"]
"""


def _tree(tmp_path: Path, source: str, test: str = "def test_guard():\n    pass\n") -> Path:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(source)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text(test)
    return tmp_path


def test_the_list_in_the_repo_fits_the_tree() -> None:
    defences = gate.load_defences()
    assert len(defences) >= 20
    assert [p for d in defences for p in gate.problems(d, ROOT)] == []


def test_a_fitting_entry_has_no_problems_and_mutates_its_one_snippet(tmp_path: Path) -> None:
    root = _tree(tmp_path, "def f(x):\n    if x > 0:\n        return 1\n")
    (d,) = gate.parse_defences(ENTRY)
    assert gate.problems(d, root) == []
    assert gate.mutate((root / d.file).read_text(), d) == (
        "def f(x):\n    if True:\n        return 1\n"
    )


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("def f(x):\n    return x\n", "does not occur"),
        ("def f(x):\n    if x > 0:\n        pass\n    if x > 0:\n        pass\n", "occurs 2 times"),
    ],
)
def test_a_snippet_that_does_not_occur_exactly_once_is_an_error(
    tmp_path: Path, source: str, said: str
) -> None:
    root = _tree(tmp_path, source)
    (d,) = gate.parse_defences(ENTRY)
    (problem,) = gate.problems(d, root)
    assert problem.startswith("demo: ") and said in problem
    with pytest.raises(gate.GateError, match=said):
        gate.mutate(source, d)


def test_a_replacement_that_does_not_compile_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path, "def f(x):\n    if x > 0:\n        return 1\n")
    (d,) = gate.parse_defences(ENTRY.replace("'if True:'", "'if True'"))
    (problem,) = gate.problems(d, root)
    assert "does not compile" in problem


def test_missing_files_tests_and_empty_test_lists_are_errors(tmp_path: Path) -> None:
    root = _tree(tmp_path, "if x > 0:\n    pass\n", test="def test_other():\n    pass\n")
    (d,) = gate.parse_defences(ENTRY)
    assert gate.problems(d, root) == ["demo: no test test_guard in tests/test_mod.py"]
    (d,) = gate.parse_defences(ENTRY.replace('["tests/test_mod.py::test_guard"]', "[]"))
    assert gate.problems(d, root) == ["demo: names no test, so nothing could kill it"]
    (d,) = gate.parse_defences(ENTRY.replace("pkg/mod.py", "pkg/gone.py"))
    assert gate.problems(d, root) == ["demo: no file pkg/gone.py"]


@pytest.mark.parametrize(
    ("text", "said"),
    [
        (ENTRY + ENTRY, "used twice"),
        (ENTRY.replace('why = "the guard is gone"\n', ""), "missing ['why']"),
        (ENTRY.replace('name = "demo"', 'name = "Demo Guard"'), "lower-case"),
        (ENTRY.replace('["tests/test_mod.py::test_guard"]', '"tests/x.py"'), "list of pytest"),
        ("", "no [[mutant]] entries"),
    ],
)
def test_a_malformed_list_is_refused(text: str, said: str) -> None:
    with pytest.raises(gate.GateError, match=said.replace("[", r"\[")):
        gate.parse_defences(text)


def test_pytest_exit_codes_other_than_0_and_1_are_not_kills() -> None:
    assert gate.verdict_of(1) == "killed"
    assert gate.verdict_of(0) == "SURVIVED"
    for code in (2, 3, 4, 5, -9):
        assert gate.verdict_of(code) == "ERROR"


def test_the_first_failing_node_id_is_read_from_the_short_summary() -> None:
    out = (
        "..F\n=========================== short test summary info ====\n"
        "FAILED tests/a.py::test_x[../evil-b] - AssertionError: assert 'a' == 'b'\n"
        "ERROR tests/b.py::test_y - RuntimeError\n"
        "1 failed, 2 passed\n"
    )
    assert gate.first_failure(out) == "tests/a.py::test_x[../evil-b]"
    assert gate.first_failure("ERROR tests/b.py::test_y\n") == "tests/b.py::test_y (error)"
    assert gate.first_failure("3 passed in 0.1s\n") is None
    spaced = "FAILED tests/t.py::test_z[input: a\\ntarget: pdf-2] - Failed: DID NOT RAISE\n"
    assert gate.first_failure(spaced) == "tests/t.py::test_z[input: a\\ntarget: pdf-2]"
