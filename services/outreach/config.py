"""outreach settings (environment variables, documented in docs/configuration.md)."""

from __future__ import annotations

from pydantic import AliasChoices, Field, FilePath, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from common.settings import ServiceSettings
from services.outreach.adapters.contact_plans import PreferencesTls
from services.outreach.adapters.render_pool import RenderPool
from services.outreach.domain import experiments as trials
from services.outreach.domain.conversations import HandoffPolicy
from services.outreach.domain.corrections import DEFAULT as corrections_default
from services.outreach.domain.corrections import CorrectionPolicy
from services.outreach.domain.storms import StormPolicy
from services.outreach.domain.surveys import SurveyPolicy


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


def _names(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="OUTREACH_", extra="ignore")

    http_port: int = 8083
    database_url: str | None = None
    preferences_grpc_target: str = Field(
        "localhost:50051", validation_alias=_env("PREFERENCES_GRPC_TARGET")
    )
    preferences_token: SecretStr | None = None
    preferences_cache_ttl_s: float = 300.0
    preferences_cache_max_entries: int = Field(100_000, ge=0)
    # TLS to preferences (docs/operations.md, "preferences over gRPC"): on when
    # preferences_tls is true or a CA is given; cert + key add a client certificate (mTLS).
    preferences_tls: bool = False
    preferences_tls_ca: FilePath | None = None
    preferences_tls_cert: FilePath | None = None
    preferences_tls_key: FilePath | None = None
    preferences_tls_server_name: str | None = None
    public_base_url: str = "http://127.0.0.1:8083"
    unsubscribe_secret: SecretStr | None = None
    offer_secret: SecretStr | None = None
    cap_messages: int = Field(3, ge=0)
    cap_window_days: float = Field(7, gt=0)
    holdout_share: float = Field(0.0, ge=0, le=1)
    # Experiments (docs/outcomes.md): `<name> <subject> <control share>` entries,
    # separated by `;` — `apology-effect intent:apology 10%; offers remedy:* 50%`.
    experiments: str = ""
    # How often the studio exports the outcome report's gauges (the business dashboard).
    outcomes_refresh_s: float = Field(300.0, gt=0)
    # Consolidation (docs/consolidation.md): how long a message about an incident waits
    # for the customer's other incidents so that one message names each (0: at once).
    consolidate_s: float = Field(0.0, ge=0, le=3600)
    max_attempts: int = Field(5, ge=1)
    concurrency: int = Field(16, ge=1, le=256)
    in_doubt_after_s: float = Field(600.0, gt=0)
    in_doubt_check_s: float = Field(30.0, gt=0)
    in_doubt_settle_s: float = Field(30.0, gt=0)
    in_doubt_give_up_s: float = Field(86_400.0, gt=0)
    provider_timeout_s: float = Field(10.0, gt=0)
    relay_lease_s: float = Field(10.0, gt=0)
    event_retry_s: float = Field(3600.0, gt=0)
    webhook_max_age_s: float = Field(600.0, gt=0)
    ledger_retention_days: float = Field(90.0, gt=0)
    render_processes: int = Field(2, ge=1, le=64)
    render_timeout_s: float = Field(2.0, gt=0)
    render_memory_mb: int = Field(512, ge=128)
    breaker_failures: int = Field(5, ge=1)
    breaker_reset_s: float = Field(30.0, gt=0)
    provider_rate_per_s: float = Field(50.0, gt=0)
    scheduler_interval_s: float = Field(1.0, gt=0)
    template_refresh_s: float = Field(2.0, gt=0)
    controls_refresh_s: float = Field(1.0, gt=0)
    ledger_metrics_s: float = Field(30.0, gt=0)
    resume_ramp_minutes: float = Field(10.0, ge=0)
    shop_name: str = "Example Shop"
    support_url: str = "https://shop.example/help"
    support_email: str = "help@shop.example"
    support_phone: str = "+49 30 1234567"

    # Replies (docs/conversations.md). Email replies reach outreach through SendGrid's
    # Inbound Parse on reply_domain (unset: emails carry no reply-to of ours); the Parse
    # webhook's URL carries HTTP Basic credentials, checked against these.
    reply_domain: str | None = None
    reply_secret: SecretStr | None = None
    inbound_parse_user: str | None = None
    inbound_parse_password: SecretStr | None = None
    # Which replies go to a person (support.handoffs): intents and tones, comma-separated.
    handoff_intents: str = "complaint,wants_person,question,other"
    handoff_tones: str = "angry"
    handoff_critical: bool = True
    handoff_history: int = Field(20, ge=1, le=200)
    reply_sweep_s: float = Field(30.0, gt=0)
    # Asking how we did (docs/conversations.md): the kinds that carry the survey, and how
    # often one customer may be asked.
    survey_kinds: str = "post_incident_checkin"
    survey_quiet_days: float = Field(30.0, ge=0)
    # A survey answer this low goes to a person (0: none does).
    handoff_survey_below: int = Field(3, ge=0, le=5)
    # Corrections (docs/corrections.md): the incident closings (kind:resolution, `*` any
    # kind) that contradict a message already sent and so get one correction.
    corrections: str = corrections_default

    # Storms (docs/storms.md): this many incidents of one cause (a carrier's hub, a
    # carrier, the shop's dispatch) within this many seconds make a storm
    # ("<incidents>/<seconds>"); from the approval size on, its messages wait for an
    # operator in the studio (0: they never wait); a storm is over after the quiet time.
    storm_rate: str = "50/600"
    storm_approval_size: int = Field(0, ge=0)
    storm_quiet_s: float = Field(1800.0, gt=0)

    @field_validator("storm_rate")
    @classmethod
    def _storm_rate_parse(cls, value: str) -> str:
        StormPolicy.parse(value, 0, 1.0)
        return value

    @field_validator("experiments")
    @classmethod
    def _experiments_parse(cls, value: str) -> str:
        trials.parse(value)
        return value

    @field_validator("corrections")
    @classmethod
    def _corrections_parse(cls, value: str) -> str:
        CorrectionPolicy.parse(value)  # a typo fails at start, not at the first closing
        return value

    # The helpdesk adapter (python -m services.outreach.helpdesk, docs/conversations.md):
    # hand-offs become Zendesk tickets; the agents' outcomes come back by webhook.
    helpdesk_port: int = 8087
    zendesk_subdomain: str | None = Field(None, validation_alias=_env("ZENDESK_SUBDOMAIN"))
    zendesk_email: str | None = Field(None, validation_alias=_env("ZENDESK_EMAIL"))
    zendesk_api_token: SecretStr | None = Field(None, validation_alias=_env("ZENDESK_API_TOKEN"))
    zendesk_api_base_url: str | None = Field(None, validation_alias=_env("ZENDESK_API_BASE_URL"))
    zendesk_webhook_secret: SecretStr | None = Field(
        None, validation_alias=_env("ZENDESK_WEBHOOK_SECRET")
    )

    # The template studio (python -m services.outreach.studio), see docs/studio.md.
    studio_port: int = 8085
    studio_ops_port: int = 8086
    studio_secure_cookies: bool = False
    studio_session_hours: float = Field(12.0, gt=0)
    studio_login_attempts: int = Field(5, ge=1)
    studio_login_window_s: float = Field(300.0, gt=0)
    studio_trusted_user_header: str | None = None
    studio_trusted_role_header: str | None = None
    studio_trusted_default_role: str = "viewer"
    studio_trusted_proxies: str = "127.0.0.1/32,::1/128"
    studio_test_sends_per_hour: int = Field(20, ge=0)

    twilio_account_sid: str | None = Field(None, validation_alias=_env("TWILIO_ACCOUNT_SID"))
    twilio_auth_token: SecretStr | None = Field(None, validation_alias=_env("TWILIO_AUTH_TOKEN"))
    twilio_from_number: str | None = Field(None, validation_alias=_env("TWILIO_FROM_NUMBER"))
    twilio_whatsapp_from: str | None = Field(None, validation_alias=_env("TWILIO_WHATSAPP_FROM"))
    twilio_api_base_url: str = Field(
        "https://api.twilio.com", validation_alias=_env("TWILIO_API_BASE_URL")
    )
    sendgrid_api_key: SecretStr | None = Field(None, validation_alias=_env("SENDGRID_API_KEY"))
    sendgrid_from_email: str | None = Field(None, validation_alias=_env("SENDGRID_FROM_EMAIL"))
    sendgrid_webhook_public_key: str | None = Field(
        None, validation_alias=_env("SENDGRID_WEBHOOK_PUBLIC_KEY")
    )
    sendgrid_api_base_url: str = Field(
        "https://api.sendgrid.com", validation_alias=_env("SENDGRID_API_BASE_URL")
    )

    @model_validator(mode="after")
    def _leases_outlast_provider_calls(self) -> Settings:
        # A lease shorter than a provider call would let the sweeper ask the provider
        # before a slow call lands, find nothing, and send again.
        if self.in_doubt_after_s < 2 * self.provider_timeout_s:
            raise ValueError(
                "OUTREACH_IN_DOUBT_AFTER_S must be at least twice OUTREACH_PROVIDER_TIMEOUT_S"
            )
        if self.in_doubt_settle_s < self.provider_timeout_s:
            raise ValueError(
                "OUTREACH_IN_DOUBT_SETTLE_S must be at least OUTREACH_PROVIDER_TIMEOUT_S"
            )
        return self

    @model_validator(mode="after")
    def _replies_configured(self) -> Settings:
        from services.outreach.domain.replies import ReplyIntent, Tone

        for name, value, known in (
            ("OUTREACH_HANDOFF_INTENTS", self.handoff_intents, {i.value for i in ReplyIntent}),
            ("OUTREACH_HANDOFF_TONES", self.handoff_tones, {t.value for t in Tone}),
        ):
            unknown = set(_names(value)) - known
            if unknown:
                raise ValueError(f"{name}: unknown {sorted(unknown)}; known: {sorted(known)}")
        if self.reply_domain and self.reply_secret is None:
            # Each worker would sign with a secret of its own, and one worker could not
            # read the reply-to addresses of another's emails.
            raise ValueError("OUTREACH_REPLY_DOMAIN needs OUTREACH_REPLY_SECRET")
        if (self.inbound_parse_user is None) != (self.inbound_parse_password is None):
            raise ValueError(
                "OUTREACH_INBOUND_PARSE_USER and OUTREACH_INBOUND_PARSE_PASSWORD go together"
            )
        return self

    def storm_policy(self) -> StormPolicy:
        return StormPolicy.parse(self.storm_rate, self.storm_approval_size, self.storm_quiet_s)

    def experiment_list(self) -> tuple[trials.Experiment, ...]:
        """The experiments configured (without the holdout, which the policy adds)."""
        return trials.parse(self.experiments)

    def correction_policy(self) -> CorrectionPolicy:
        return CorrectionPolicy.parse(self.corrections)

    def survey_policy(self) -> SurveyPolicy:
        return SurveyPolicy(
            kinds=frozenset(_names(self.survey_kinds)), quiet_days=self.survey_quiet_days
        )

    def handoff_policy(self) -> HandoffPolicy:
        return HandoffPolicy(
            intents=frozenset(_names(self.handoff_intents)),
            tones=frozenset(_names(self.handoff_tones)),
            critical=self.handoff_critical,
            survey_below=self.handoff_survey_below,
            history=self.handoff_history,
        )

    @model_validator(mode="after")
    def _preferences_tls_complete(self) -> Settings:
        if (self.preferences_tls_cert is None) != (self.preferences_tls_key is None):
            raise ValueError(
                "OUTREACH_PREFERENCES_TLS_CERT and OUTREACH_PREFERENCES_TLS_KEY go together"
            )
        return self

    def preferences_channel_tls(self) -> PreferencesTls | None:
        """How outreach secures its channel to preferences; None for plaintext."""
        wanted = self.preferences_tls or self.preferences_tls_ca or self.preferences_tls_cert
        if not wanted:
            return None
        return PreferencesTls(
            ca=self.preferences_tls_ca,
            cert=self.preferences_tls_cert,
            key=self.preferences_tls_key,
            server_name=self.preferences_tls_server_name,
        )

    def render_pool(self) -> RenderPool:
        """Where templates are rendered: worker processes under hard limits."""
        return RenderPool(
            processes=self.render_processes,
            timeout_s=self.render_timeout_s,
            memory_mb=self.render_memory_mb,
        )

    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.service_dir('outreach') / 'outreach.db').resolve()}"

    def secret(self, value: SecretStr | None, name: str) -> str:
        """A configured secret, or one generated once and kept in the data dir (dev only)."""
        if value is not None:
            return value.get_secret_value()
        path = self.service_dir("outreach") / f".{name}"
        if not path.exists():
            import secrets

            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()
