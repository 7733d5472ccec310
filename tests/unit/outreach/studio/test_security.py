"""Sign-in throttle, redirects after sign-in, trusted proxies."""

from __future__ import annotations

from services.outreach.studio.security import LoginThrottle, parse_networks, safe_next, trusted


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_throttle_pauses_a_key_after_the_limit_until_the_oldest_failure_ages_out():
    clock = Clock()
    throttle = LoginThrottle(3, 300, clock)
    for _ in range(3):
        assert throttle.wait_s("ada") == 0
        throttle.failed("ada")
        clock.t += 10
    assert throttle.wait_s("ada") == 300 - 30
    assert throttle.wait_s("bob") == 0  # other users are not affected
    clock.t += 271
    assert throttle.wait_s("ada") == 0


def test_a_success_clears_the_failures():
    throttle = LoginThrottle(2, 300, Clock())
    throttle.failed("ada")
    throttle.succeeded("ada")
    throttle.failed("ada")
    assert throttle.wait_s("ada") == 0


def test_only_local_paths_are_followed_after_sign_in():
    assert safe_next("/templates/x?y=1") == "/templates/x?y=1"
    for bad in ("https://evil.example/", "//evil.example", "/\\evil.example", "", None):
        assert safe_next(bad) == "/templates"


def test_trusted_proxies():
    networks = parse_networks("10.0.0.0/8, ::1/128")
    assert trusted("10.1.2.3", networks)
    assert trusted("::1", networks)
    assert not trusted("192.168.0.1", networks)
    assert not trusted("not-an-ip", networks)
    assert not trusted(None, networks)
