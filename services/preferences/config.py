"""preferences settings (environment variables, documented in docs/configuration.md)."""

from __future__ import annotations

from pydantic import FilePath, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings
from services.preferences.domain.access import Credentials


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="PREFERENCES_", extra="ignore")

    database_url: str | None = None
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    # Several replicas on one host share the gRPC port (SO_REUSEPORT: the kernel spreads
    # connections over them). Off by default, so that a second process on a taken port
    # fails loudly instead of quietly taking half the connections.
    grpc_reuse_port: bool = False
    http_port: int = 8084
    write_token: SecretStr | None = None
    read_token: SecretStr | None = None
    # The development profile: every RPC without credentials. Never in production.
    allow_anonymous: bool = False
    pseudonym_salt: SecretStr | None = None
    default_channel_order: str = "email,sms,whatsapp"
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    tls_client_ca: FilePath | None = None
    shutdown_grace_s: float = 10.0

    @model_validator(mode="after")
    def _tls_complete(self) -> Settings:
        # Half a TLS configuration must not quietly serve plaintext.
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("PREFERENCES_TLS_CERT and PREFERENCES_TLS_KEY go together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError(
                "PREFERENCES_TLS_CLIENT_CA (mTLS) needs PREFERENCES_TLS_CERT and _KEY as well"
            )
        return self

    def credentials(self) -> Credentials:
        """Who may call which RPC. Without the development profile, writes need the
        write token and reads the read token (or the write token, or a client
        certificate when mTLS is on); a configuration that would leave either open
        fails here, naming what to set."""
        write = self.write_token.get_secret_value() if self.write_token else None
        read = self.read_token.get_secret_value() if self.read_token else None
        mtls = self.tls_client_ca is not None
        if not self.allow_anonymous:
            if write is None:
                raise ValueError(
                    "PREFERENCES_WRITE_TOKEN is required (or PREFERENCES_ALLOW_ANONYMOUS=true,"
                    " for development only)"
                )
            if read is None and not mtls:
                raise ValueError(
                    "PREFERENCES_READ_TOKEN (or mTLS: PREFERENCES_TLS_CLIENT_CA) is required"
                    " (or PREFERENCES_ALLOW_ANONYMOUS=true, for development only)"
                )
        return Credentials(read=read, write=write, mtls=mtls, anonymous=self.allow_anonymous)

    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.service_dir('preferences') / 'preferences.db').resolve()}"

    def salt(self) -> str:
        if self.pseudonym_salt is not None:
            return self.pseudonym_salt.get_secret_value()
        path = self.service_dir("preferences") / ".pseudonym_salt"
        if not path.exists():
            import secrets

            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()
