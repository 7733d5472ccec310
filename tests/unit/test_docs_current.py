"""Generated docs stay true to the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_doc_lists_every_setting_with_its_current_default():
    result = subprocess.run(
        [sys.executable, "deploy/dev/gen_config_docs.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_runbook_section():
    import re

    alerts = re.findall(r"- alert: (\w+)", (ROOT / "deploy/monitoring/alerts.yaml").read_text())
    runbook = (ROOT / "docs/operations.md").read_text()
    assert alerts
    for alert in alerts:
        assert f"### {alert}\n" in runbook, alert


def _documents() -> list[Path]:
    found = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for path in sorted((ROOT / "deploy").rglob("README.md")):
        if "node_modules" not in path.parts:
            found.append(path)
    return found


def test_the_docs_stand_alone_every_link_stays_in_the_repository():
    """A reader has the repository, nothing beside it: every relative link resolves to a
    file or folder inside it, and no document sends them to the specification outside."""
    import re

    broken = []
    for doc in _documents():
        text = doc.read_text()
        if "../shared" in text or "SPEC.md" in text:
            broken.append(f"{doc.relative_to(ROOT)}: refers to the specification outside")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor in the same page
            path = (doc.parent / target.split("#", 1)[0]).resolve()
            if not path.is_relative_to(ROOT) or not path.exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, broken
