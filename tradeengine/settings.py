"""Process settings: one frozen class read from ``TRADEENGINE_*`` environment variables."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "TRADEENGINE_"


class Mode(StrEnum):
    CONTROL = "control"
    TENANT = "tenant"


class LogFormat(StrEnum):
    AUTO = "auto"  # readable on a terminal, JSON lines otherwise
    TEXT = "text"
    JSON = "json"


class FeedKind(StrEnum):
    CCXT = "ccxt"
    REPLAY = "replay"


class BrokerKind(StrEnum):
    PAPER = "paper"
    TESTNET = "testnet"
    LIVE = "live"


class AnalystKind(StrEnum):
    AUTO = "auto"  # gemini when a key is configured, else offline
    OFFLINE = "offline"
    GEMINI = "gemini"
    HTTP = "http"


class MachineProviderKind(StrEnum):
    LOCAL = "local"
    FLY = "fly"


class SettingsError(Exception):
    """Settings could not be read; the message names the offending variable(s)."""


class Settings(BaseSettings):
    """Everything a process needs to start. Immutable once read."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, frozen=True, extra="ignore", case_sensitive=False, env_file=None
    )

    # Process
    mode: Mode = Mode.CONTROL
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.AUTO
    graceful_timeout_s: float = Field(default=5.0, gt=0, le=300)

    # Persistence
    database_url: str = "sqlite+aiosqlite:///./tradeengine.db"
    database_pool_size: int = Field(default=5, ge=1, le=100)
    journal_path: Path = Path("./tradeengine-journal.db")

    # Auth and secrets
    jwt_secret: SecretStr | None = None
    jwt_audience: str = "authenticated"
    jwks_url: str | None = None
    master_key: SecretStr | None = None  # encrypts users' exchange keys at rest
    tenant_token: SecretStr | None = None  # the bearer token a tenant's own API accepts
    control_url: str | None = None  # where a tenant reaches the control plane

    # Tenant runtime
    user_id: str | None = None
    default_symbols: tuple[str, ...] = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "ADA/USDT", "XRP/USDT")
    feed: FeedKind = FeedKind.CCXT
    replay_data_dir: Path = Path("./data")
    replay_speed: float = Field(default=0.0, ge=0)  # 0 = as fast as the CPU allows
    replay_start_ms: int | None = None  # replay window (epoch ms); None = the files' first/last candle
    replay_end_ms: int | None = None
    broker: BrokerKind = BrokerKind.PAPER
    paper_balance: Decimal = Field(default=Decimal("10000"), gt=0)
    fee_rate: Decimal = Field(default=Decimal("0.001"), ge=0, lt=1)
    slippage_bps: Decimal = Field(default=Decimal("0"), ge=0, lt=10000)
    heartbeat_interval_s: float = Field(default=30.0, gt=0)
    strategy_time_limit_ms: int = Field(default=50, ge=1, le=10_000)

    # Exchange
    exchange_id: str = "binance"
    exchange_api_key: SecretStr | None = None
    exchange_secret: SecretStr | None = None
    exchange_rest_url: str | None = None  # test override, e.g. a local fake
    exchange_ws_url: str | None = None
    reconcile_interval_s: float = Field(default=60.0, ge=0)  # live/testnet periodic reconciliation; 0 = off

    # AI
    analyst: AnalystKind = AnalystKind.AUTO
    gemini_api_key: SecretStr | None = None
    gemini_model: str = "gemini-2.5-flash"
    gemini_base_url: str | None = None
    gemini_timeout_s: float = Field(default=30.0, gt=0)
    gemini_requests_per_minute: int = Field(default=60, ge=1)
    analyses_per_user_concurrency: int = Field(default=4, ge=1)

    # Machines
    machine_provider: MachineProviderKind = MachineProviderKind.LOCAL
    fly_api_token: SecretStr | None = None
    fly_api_url: str = "https://api.machines.dev"
    fly_app: str = "tradeengine-tenants"
    fly_region: str = "iad"
    tenant_image: str = "registry.fly.io/tradeengine:latest"

    # Control plane API (issue 9): per-user request budgets on the expensive routes
    generate_requests_per_minute: int = Field(default=10, ge=1)
    analyze_requests_per_minute: int = Field(default=120, ge=1)

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if value.startswith(("postgres://", "postgresql://")):
            # Supabase hands out plain postgres:// URLs; we always talk through asyncpg.
            return "postgresql+asyncpg://" + value.split("://", 1)[1]
        if not value.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
        return value

    def secret_values(self) -> list[str]:
        """Return every configured secret, so the log redactor can hide them."""
        values: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                values.append(value.get_secret_value())
        return values


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; raise SettingsError naming each bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
