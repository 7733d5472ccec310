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
