"""The user's documentation agrees with the code: docs/API.md with /openapi.json and the problem
codes the service can answer, the README with the settings and with the repository itself.

Method: every list the documents are checked against is derived from the code, never written out
again here. Routes: the OpenAPI document as the server serves it (`openapi.build(ROUTES)`, the bytes
the app answers /openapi.json with). Problem codes: the domain's `RejectionCode` Literal, the codes
of the edge's refusal kinds and HTTP-level errors (read from their tables), the `code` Literal of
`errors.Unavailable`, and every code literal handed to `ProblemError`, `problem_response` or an
`Unavailable(code=...)`, or assigned to a `code` variable, found by walking the syntax trees of
`inventoryd/`; a code that reaches a problem document any other way fails the walk until the walk
is taught it. Settings: the environment variables that `inventoryd/config.py` and the embedded
server's launcher read.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any, get_args, get_type_hints

import pytest

from inventoryd import errors
from inventoryd.domain import RejectionCode
from inventoryd.http import app, openapi, problems
from inventoryd.http.routes import ROUTES

ROOT = Path(__file__).resolve().parent.parent
API_GUIDE = ROOT / "docs" / "API.md"
README = ROOT / "README.md"
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# `METHOD /path` in backticks, with or without a query string after the path.
_ROUTE_MENTION = re.compile(rf"`({'|'.join(METHODS)}) (/[^`?\s]*)(?:\?[^`]*)?`")
# An expression handed to ProblemError/problem_response as the code that is not a literal: each is
# one of the sources read below (a RejectionCode, an Unavailable's code, a table's value).
_CODE_EXPRESSIONS_READ_BELOW = {"code", "rejected.code", "error.code"}


def _section(text: str, heading: str) -> str:
    """The text under a `## heading`, up to the next heading of that level."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    assert match is not None, f"no section '## {heading}'"
    return match.group(1)


def _code_table(text: str) -> dict[str, set[str]]:
    """The Errors section's table: code → the statuses its row names."""
    rows = re.findall(r"^\| `([a-z_]+)` \| ([^|]+) \|", _section(text, "Errors"), re.MULTILINE)
    return {code: set(re.findall(r"\d{3}|\dxx", statuses)) for code, statuses in rows}


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    return node.func.attr if isinstance(node.func, ast.Attribute) else None


def answerable_codes() -> dict[str, set[int]]:
    """Every problem code the service can answer, with the statuses known for it from the code."""
    codes: dict[str, set[int]] = {}

    def add(code: Any, status: Any = None) -> None:
        assert isinstance(code, str), code
        codes.setdefault(code, set())
        if isinstance(status, int):
            codes[code].add(status)

    for code in get_args(RejectionCode):
        add(code, problems._REJECTION_STATUS[code])
    for status, code in problems._REFUSAL_STATUS.values():
        add(code, status)
    for code in get_args(get_type_hints(errors.Unavailable.__init__)["code"]):
        add(code, 503)
    for status, code in app._HTTP_CODES.items():
        add(code, status)
    unread = []
    for path in sorted((ROOT / "inventoryd").rglob("*.py")):
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = _call_name(node)
                if name in ("ProblemError", "problem_response") and len(node.args) >= 2:
                    status, code = node.args[0], node.args[1]
                    if isinstance(code, ast.Constant):
                        add(code.value, status.value if isinstance(status, ast.Constant) else None)
                    elif ast.unparse(code) not in _CODE_EXPRESSIONS_READ_BELOW:
                        unread.append(f"{where}:{node.lineno}: {ast.unparse(code)}")
                for keyword in node.keywords:
                    if keyword.arg == "code" and name == "Unavailable" and isinstance(keyword.value, ast.Constant):
                        add(keyword.value.value, 503)
                # A table's fallback: `_HTTP_CODES.get(status, "http_error")`.
                if (
                    name == "get"
                    and isinstance(node.func, ast.Attribute)
                    and ast.unparse(node.func.value) == "_HTTP_CODES"
                    and len(node.args) == 2
                    and isinstance(node.args[1], ast.Constant)
                ):
                    add(node.args[1].value)
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    pairs = (
                        zip(target.elts, node.value.elts, strict=False)
                        if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                        else [(target, node.value)]
                    )
                    for name_node, value in pairs:
                        if isinstance(name_node, ast.Name) and name_node.id == "code" and isinstance(value, ast.Constant):
                            add(value.value)
    assert not unread, f"problem codes from expressions this test does not read (teach answerable_codes): {unread}"
    return codes


def served_operations() -> set[tuple[str, str]]:
    document = openapi.build(ROUTES)
    return {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}


def test_the_guide_names_every_route_and_only_routes_that_exist() -> None:
    mentioned = set(_ROUTE_MENTION.findall(API_GUIDE.read_text()))
    served = served_operations()
    assert served == {(route.method, route.path) for route in ROUTES}
    missing = sorted(f"{method} {path}" for method, path in served - mentioned)
    assert not missing, f"docs/API.md does not name these routes as `METHOD /path`: {missing}"
    unknown = sorted(f"{method} {path}" for method, path in mentioned - served)
    assert not unknown, f"docs/API.md names routes the service does not serve: {unknown}"


def test_the_guide_lists_every_problem_code_with_its_statuses() -> None:
    table = _code_table(API_GUIDE.read_text())
    codes = answerable_codes()
    assert {"sold_out", "rate_limited", "idempotency_conflict", "request_timeout", "http_error"} <= set(codes)
    missing = sorted(set(codes) - set(table))
    assert not missing, f"docs/API.md's Errors table lacks these codes: {missing}"
    unknown = sorted(set(table) - set(codes))
    assert not unknown, f"docs/API.md's Errors table lists codes the service never answers: {unknown}"
    wrong = {code: sorted(statuses) for code, statuses in codes.items() if not {str(s) for s in statuses} <= table[code]}
    assert not wrong, f"docs/API.md's Errors table misses these statuses: {wrong}"


def test_the_readme_points_to_the_guide_not_outside_the_repository() -> None:
    readme = README.read_text()
    assert "docs/API.md" in readme
    assert "../" not in readme, "the README points outside the repository"
    for path in re.findall(r"`((?:inventoryd|persistence|tests|loadtests|docs)/[\w./-]+)`", readme):
        assert (ROOT / path).exists() or (ROOT / f"{path}.py").exists(), f"the README names {path}, which does not exist"


def _settings_read() -> set[str]:
    names: set[str] = set()
    for source in (ROOT / "inventoryd" / "config.py", ROOT / "persistence" / "embedded.py"):
        tree = ast.parse(source.read_text())
        constants = {
            target.id: node.value.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in ("get", "_env_number", "_env_choice") and node.args:
                argument = node.args[0]
                if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
                    names.add(argument.value)
                elif isinstance(argument, ast.Name) and argument.id in constants:
                    names.add(constants[argument.id])
    return {name for name in names if name.startswith("INVENTORYD_") or name == "DATABASE_URL"}


def test_the_readme_documents_every_setting() -> None:
    table = _section(README.read_text(), "Configuration")
    settings = _settings_read()
    assert {"DATABASE_URL", "INVENTORYD_PORT", "INVENTORYD_METRICS_TOKEN", "INVENTORYD_PG_BIN"} <= settings
    missing = sorted(name for name in settings if f"`{name}`" not in table)
    assert not missing, f"the README's configuration table lacks: {missing}"


@pytest.mark.parametrize("command", ["token", "audit"])
def test_the_readme_says_token_and_audit_need_the_servers_database(command: str) -> None:
    readme = README.read_text()
    assert re.search(rf"`{command}`[^.]*same `--data-dir`", readme), f"say that `{command}` needs the server's --data-dir"
