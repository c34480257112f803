"""The code itself: types, lint and the layers are contracts the suite enforces.

Method: run the three checkers as the README's check commands do (`mypy` strict on `inventoryd/`, `loadtests/` and
`persistence/`, `ruff check`, `lint-imports`), each configured in pyproject.toml, and fail on any
finding, with the checker's own report as the message. Also: no bare `assert` outside the tests
(they vanish under `python -O`; the service's checks are `invariant()`), which ruff's S101 enforces
there; this test says so by name. And no function in the service over FUNCTION_LINES_MAX lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHECK_TIMEOUT_S = 600


def run_checker(command: str, *arguments: str) -> None:
    """Run one of the venv's checkers (installed beside this Python) from the project root."""
    executable = Path(sys.executable).parent / command
    result = subprocess.run(
        [str(executable), *arguments], cwd=ROOT, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S, check=False
    )
    assert result.returncode == 0, f"{command} {' '.join(arguments)} failed:\n{result.stdout}\n{result.stderr}"


def test_types_are_checked_strictly() -> None:
    run_checker("mypy")


def test_the_lint_finds_nothing() -> None:
    run_checker("ruff", "check", "inventoryd", "persistence", "tests", "loadtests")


def test_the_layers_hold() -> None:
    run_checker("lint-imports")


@pytest.mark.parametrize("package", ["inventoryd", "persistence"])
def test_no_bare_assert_outside_the_tests(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Assert)
    ]
    assert not found, f"bare assert (stripped by python -O): {found}"


# A function a reader takes in at once (the architecture issue's bound; TigerBeetle keeps 70).
FUNCTION_LINES_MAX = 70


@pytest.mark.parametrize("package", ["inventoryd", "persistence"])
def test_no_function_is_longer_than_a_screen(package: str) -> None:
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > FUNCTION_LINES_MAX
    ]
    assert not found, f"functions over {FUNCTION_LINES_MAX} lines: {found}"


# What test modules may import of the tests: their shared helpers, never another test module (whose
# fixtures and module-level set-up would come along, and whose change would break a stranger).
TEST_SUPPORT_MODULES = {"tests.helpers", "tests.cluster_node", "tests.conftest", "tests.fuzz_hooks"}


def test_tests_import_only_the_shared_helpers() -> None:
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            names += [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.name}: {name}" for name in names if name.startswith("tests.") and name not in TEST_SUPPORT_MODULES]
    assert not found, f"test modules importing other test modules: {found}"
