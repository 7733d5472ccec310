"""outreachctl's surface: help for every command and option, and explain's exit codes
and output against two local HTTP servers (one may be away)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from common import cli

DOWN = "http://127.0.0.1:9"  # nothing listens on the discard port


def _parsers(parser: argparse.ArgumentParser, path: str = "outreachctl") -> Any:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, f"{path} {name}")


def _root() -> argparse.ArgumentParser:
    captured: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def capture(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        captured.append(self)
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture  # type: ignore[method-assign]
    try:
        with pytest.raises(SystemExit):
            cli.main([])
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    return captured[0]


def test_every_command_and_option_has_help() -> None:
    missing = []
    for path, parser in _parsers(_root()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{path} {a.dest}" for a in action._choices_actions if not a.help]
            elif not action.help:
                missing.append(f"{path} {action.dest}")
    assert not missing, f"without help: {missing}"


def test_every_command_but_templates_and_rehearse_takes_output_json() -> None:
    """The three that run another module's command take it there (rehearse and
    outcomes: --output)."""
    leaves = [
        (path, parser)
        for path, parser in _parsers(_root())
        if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    ]
    assert len(leaves) >= 9
    for path, parser in leaves:
        options = {o for a in parser._actions for o in a.option_strings}
        assert "--output" in options or path.endswith(("templates", "rehearse", "outcomes")), path


@pytest.fixture
def risk(httpserver: HTTPServer) -> str:
    httpserver.expect_request("/customers/c-1/explain").respond_with_json({"score": 71})
    return httpserver.url_for("").rstrip("/")


def explain(capsys: pytest.CaptureFixture[str], risk_url: str, outreach_url: str) -> Any:
    code = cli.main(
        ["explain", "c-1", "--risk-url", risk_url, "--outreach-url", outreach_url,
         "--output", "json"]
    )  # fmt: skip
    out = capsys.readouterr()
    # Log lines of the in-process HTTP server may share stdout (JSON, one per line).
    printed = "".join(
        line for line in out.out.splitlines(keepends=True) if not line.startswith('{"event"')
    )
    return code, json.loads(printed), out.err


def test_explain_says_how_many_services_answered(risk: str, capsys: Any) -> None:
    code, document, err = explain(capsys, risk, risk)  # both answer (one server, both paths)
    assert code == 0 and document["risk"] == {"score": 71} and err == ""
    code, document, err = explain(capsys, risk, DOWN)
    assert code == 3 and document["risk"] == {"score": 71}
    assert "error" in document["outreach"] and "outreach did not answer" in err
    code, document, err = explain(capsys, DOWN, DOWN)
    assert code == 1 and "risk_detector did not answer" in err


def test_explain_reports_an_http_error_as_not_answered(httpserver: HTTPServer, capsys: Any) -> None:
    httpserver.expect_request("/customers/c-1/explain").respond_with_json(
        {"error": "unknown customer"}, status=404
    )
    url = httpserver.url_for("").rstrip("/")
    code, document, _ = explain(capsys, url, url)
    assert code == 1 and document["outreach"]["error"] == "HTTP 404"
