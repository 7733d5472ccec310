"""Honest dependencies: what the code imports is declared in pyproject.toml, what is
declared is used, and faust-streaming (whose private parts common/faust_private.py reads)
is pinned to the minor version those parts were read from."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from common.faust_private import FAUST_STREAMING

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("services", "common", "simulator")  # what the images run
OURS = {"services", "common", "simulator", "tests", "bench", "deploy"}

# Declared and used, though no module of ours imports them by name.
USED_WITHOUT_IMPORT = {
    "aiosqlite": "SQLAlchemy's driver for sqlite+aiosqlite:// URLs (the embedded default)",
    "psycopg": "SQLAlchemy's driver for preferences' postgresql+psycopg:// migrations",
    "tzdata": "zoneinfo's time zones on hosts (and images) without a system database",
}


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found is not None, requirement
    return re.sub(r"[-_.]+", "-", found.group(0)).lower()


def _declared() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_name(r): r for r in project["dependencies"]}


def _imported() -> set[str]:
    """Top-level modules the shipped code imports, other than the stdlib and ours."""
    modules: set[str] = set()
    for package in SHIPPED:
        for path in (ROOT / package).rglob("*.py"):
            if "node_modules" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in OURS}


def _providers() -> dict[str, set[str]]:
    """module -> the (normalised) distributions that install it."""
    return {
        module: {_name(d) for d in dists}
        for module, dists in importlib.metadata.packages_distributions().items()
    }


def test_every_module_the_code_imports_is_declared() -> None:
    declared, providers = _declared(), _providers()
    undeclared = {
        module: sorted(providers.get(module, {"?"}))
        for module in _imported()
        if not providers.get(module, set()) & declared.keys()
    }
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_every_declared_dependency_is_used() -> None:
    providers = _providers()
    used = set().union(*(providers.get(m, set()) for m in _imported()))
    unused = sorted(set(_declared()) - used - set(USED_WITHOUT_IMPORT))
    assert not unused, f"declared but never imported: {unused}"


def test_faust_streaming_is_pinned_to_the_minor_version_its_private_parts_were_read_from() -> None:
    requirement = _declared()["faust-streaming"]
    major, minor, _ = FAUST_STREAMING.split(".")
    assert f">={FAUST_STREAMING}" in requirement and f"<{major}.{int(minor) + 1}" in requirement
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    assert locked["faust-streaming"] == FAUST_STREAMING
