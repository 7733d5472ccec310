"""The shape the services keep (docs/architecture.md, "One spine"): entrypoints only
wire, so they stay short; no function in services/, common/ or replay/ runs past a screen."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_ENTRYPOINT_LINES = 200
MAX_FUNCTION_LINES = 60


def _sources() -> list[Path]:
    found = []
    for top in ("services", "common", "replay"):
        for path in (ROOT / top).rglob("*.py"):
            if "migrations" in path.parts or path.name.endswith("_pb2.py"):
                continue
            if path.name.endswith("_pb2_grpc.py"):
                continue
            found.append(path)
    return found


def long_functions(source: str, limit: int) -> list[tuple[str, int]]:
    """The functions of `source` longer than `limit` lines, with their lengths."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append((node.name, length))
    return found


def test_no_entrypoint_module_is_over_200_lines():
    entrypoints = [p for p in _sources() if "entrypoints" in p.parts]
    assert len(entrypoints) >= 8
    long = {
        str(p.relative_to(ROOT)): n
        for p in entrypoints
        if (n := len(p.read_text().splitlines())) > MAX_ENTRYPOINT_LINES
    }
    assert long == {}


def test_no_function_in_services_or_common_is_over_60_lines():
    long = {
        f"{p.relative_to(ROOT)}:{name}": n
        for p in _sources()
        for name, n in long_functions(p.read_text(), MAX_FUNCTION_LINES)
    }
    assert long == {}


def test_the_check_sees_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    assert long_functions(f"def f():\n{body}\n", MAX_FUNCTION_LINES) == [("f", 62)]
    assert long_functions("def g():\n    return 1\n", MAX_FUNCTION_LINES) == []
