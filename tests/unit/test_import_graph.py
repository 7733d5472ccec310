"""No import cycle among the modules of services/ and common/, counting every import:
at the top, inside functions and behind TYPE_CHECKING. A cycle hides which module
depends on which (a composition root importing an entrypoint, a port importing the
modules that implement it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules() -> dict[str, Path]:
    found = {}
    for folder in ("services", "common", "replay"):
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "proto" in parts or "migrations" in parts:
                continue  # generated stubs; alembic's scripts
            name = ".".join(parts).removesuffix(".__init__")
            found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            for name in [node.module, *(f"{node.module}.{a.name}" for a in node.names)]:
                if name in known:
                    out.add(name)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
    return out


def cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path from `start` back to itself, if there is one."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_module_of_services_or_common_imports_itself_back():
    known = modules()
    assert "common.kafka" in known and "services.outreach.bootstrap" in known
    graph = {name: imports(path, known) - {name} for name, path in known.items()}
    cycles = [c for name in sorted(graph) if (c := cycle_from(name, graph))]
    assert not cycles, " -> ".join(cycles[0])


def test_the_check_sees_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycle_from("a", graph) == ["a", "b", "c", "a"]
    assert cycle_from("d", graph) is None
