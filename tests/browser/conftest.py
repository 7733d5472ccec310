"""The studio as its own process, and a real headless Chromium driven by Playwright.

Chromium is the system's (Debian's `chromium`, installed by `make system-deps`), not a
browser Playwright downloads: OUTREACH_CHROMIUM overrides the path. Screenshots go to
test-artifacts/studio/ (the current ones are copied into docs/images/ by hand).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, wait_for
from tests.doubles.sendgrid import SendGridDouble
from tests.doubles.twilio import TwilioDouble

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "studio"
PASSWORDS = {
    "ada": ("admin", "ada-correct-horse-1"),
    "eve": ("editor", "eve-correct-horse-2"),
    "vic": ("viewer", "vic-correct-horse-3"),
    "sam": ("support", "sam-correct-horse-4"),
}


def chromium_path() -> str:
    found = os.environ.get("OUTREACH_CHROMIUM") or shutil.which("chromium")
    if not found:
        raise RuntimeError(
            "no Chromium: `make system-deps` installs Debian's chromium (or set OUTREACH_CHROMIUM)"
        )
    return found


@dataclass
class StudioProcess:
    data_dir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    ops_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.outreach.studio", *args],
            env=self.env
            | {
                "OUTREACH_STUDIO_PORT": str(self.port),
                "OUTREACH_STUDIO_OPS_PORT": str(self.ops_port),
            },
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def start(self) -> None:
        log = open(self.data_dir / "studio.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.outreach.studio"],
            env=self.env
            | {
                "OUTREACH_STUDIO_PORT": str(self.port),
                "OUTREACH_STUDIO_OPS_PORT": str(self.ops_port),
            },
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self.ready, timeout=60, message="the studio to answer /readyz")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the studio exited:\n{self.logs()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def logs(self) -> str:
        path = self.data_dir / "studio.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def studio_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OUTREACH_DATA_DIR=str(data_dir),
        PYTHONPATH=str(ROOT),
        LOG_LEVEL="INFO",
        OUTREACH_STUDIO_LOGIN_ATTEMPTS="3",
        **extra,
    )
    return env


def add_users(studio: StudioProcess) -> None:
    for name, (role, password) in PASSWORDS.items():
        done = studio.cli("users", "add", name, "--role", role, "--password-stdin", stdin=password)
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def providers() -> Iterator[tuple[SendGridDouble, TwilioDouble]]:
    with SendGridDouble() as sendgrid, TwilioDouble() as twilio:
        yield sendgrid, twilio


@pytest.fixture(scope="module")
def studio(
    tmp_path_factory: pytest.TempPathFactory, providers: tuple[SendGridDouble, TwilioDouble]
) -> Iterator[StudioProcess]:
    sendgrid, twilio = providers
    data_dir = tmp_path_factory.mktemp("studio")
    env = studio_env(
        data_dir,
        SENDGRID_API_KEY=sendgrid.api_key,
        SENDGRID_FROM_EMAIL="care@shop.example",
        SENDGRID_API_BASE_URL=sendgrid.base_url,
        TWILIO_ACCOUNT_SID=twilio.account_sid,
        TWILIO_AUTH_TOKEN=twilio.auth_token,
        TWILIO_FROM_NUMBER="+15005550006",
        TWILIO_API_BASE_URL=twilio.base_url,
    )
    s = StudioProcess(data_dir, env)
    add_users(s)
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per module, never per session: Playwright's sync API keeps an event
    loop running in this thread while it is open, and pytest-asyncio cannot start its own
    loop for the async tests collected after it until that loop is closed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    p = context.new_page()
    try:
        yield p
    finally:
        context.close()


def screenshot(page: Any, name: str, *, full_page: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def sign_in(page: Any, studio: StudioProcess, user: str, next_path: str = "/templates") -> None:
    page.goto(f"{studio.url}{next_path}")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORDS[user][1])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{studio.url}{next_path}*")
