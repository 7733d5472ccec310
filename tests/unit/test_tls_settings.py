"""TLS settings of preferences (server) and outreach (its client): half a configuration is
refused at start-up with the variables' names, never served or dialled in plaintext."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from services.outreach.adapters.contact_plans import PreferencesTls
from services.outreach.config import Settings as OutreachSettings
from services.preferences.config import Settings as PreferencesSettings


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "some.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_preferences_refuses_a_certificate_without_its_key(pem, monkeypatch):
    monkeypatch.setenv("PREFERENCES_TLS_CERT", str(pem))
    with pytest.raises(ValidationError, match="PREFERENCES_TLS_CERT and PREFERENCES_TLS_KEY"):
        PreferencesSettings()


def test_preferences_refuses_a_client_ca_without_a_server_certificate(pem, monkeypatch):
    monkeypatch.setenv("PREFERENCES_TLS_CLIENT_CA", str(pem))
    with pytest.raises(ValidationError, match="PREFERENCES_TLS_CLIENT_CA"):
        PreferencesSettings()


def test_preferences_refuses_a_certificate_file_that_does_not_exist(pem, monkeypatch):
    monkeypatch.setenv("PREFERENCES_TLS_CERT", str(pem.parent / "missing.pem"))
    monkeypatch.setenv("PREFERENCES_TLS_KEY", str(pem))
    with pytest.raises(ValidationError, match="tls_cert"):
        PreferencesSettings()


def test_outreach_dials_preferences_in_plaintext_unless_tls_is_configured(pem, monkeypatch):
    assert OutreachSettings().preferences_channel_tls() is None
    monkeypatch.setenv("OUTREACH_PREFERENCES_TLS_CA", str(pem))
    monkeypatch.setenv("OUTREACH_PREFERENCES_TLS_SERVER_NAME", "preferences.internal")
    assert OutreachSettings().preferences_channel_tls() == PreferencesTls(
        ca=pem, server_name="preferences.internal"
    )


def test_outreach_tls_with_system_roots_needs_no_files(monkeypatch):
    monkeypatch.setenv("OUTREACH_PREFERENCES_TLS", "true")
    assert OutreachSettings().preferences_channel_tls() == PreferencesTls()


def test_outreach_refuses_a_client_certificate_without_its_key(pem, monkeypatch):
    monkeypatch.setenv("OUTREACH_PREFERENCES_TLS_CERT", str(pem))
    with pytest.raises(ValidationError, match="OUTREACH_PREFERENCES_TLS_KEY"):
        OutreachSettings()
