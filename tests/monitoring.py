"""What the alert rules and the Grafana dashboard in deploy/monitoring/ query."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"


def dashboard_expressions(name: str = "dashboard.json") -> list[str]:
    """The queries of a dashboard (`name`: "*" for every dashboard there is)."""
    paths = sorted(MONITORING.glob("*dashboard.json")) if name == "*" else [MONITORING / name]
    exprs: list[str] = []
    for path in paths:
        exprs += _expressions(json.loads(path.read_text()))
    return exprs


def _expressions(dash: Any) -> list[str]:
    exprs: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "definition", "query") and isinstance(value, str):
                    exprs.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dash)
    return exprs


def alert_expressions() -> list[str]:
    """The `expr:` of every rule: one line, or the `|` block indented below it."""
    text = (MONITORING / "alerts.yaml").read_text()
    pattern = r"^\s*expr: (?:\|\n((?:\s{10,}.*\n)+)|(.*))$"
    return [block or line for block, line in re.findall(pattern, text, re.M)]


def metrics_named(exprs: list[str]) -> set[str]:
    """The outreach_* series the expressions use."""
    return {name for expr in exprs for name in re.findall(r"\boutreach_[a-z_]+", expr)}
