from __future__ import annotations

import io
import json
import tomllib
from pathlib import Path

import pytest
from loguru import logger

from tradeengine.logging import configure_logging, register_secret
from tradeengine.settings import Mode, SettingsError, load_settings

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("TRADEENGINE_"):
            monkeypatch.delenv(key)
    settings = load_settings()
    assert settings.mode is Mode.CONTROL
    assert settings.database_url == "sqlite+aiosqlite:///./tradeengine.db"


def test_invalid_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEENGINE_PORT", "eighty")
    monkeypatch.setenv("TRADEENGINE_MODE", "banana")
    with pytest.raises(SettingsError) as error:
        load_settings()
    assert "TRADEENGINE_PORT" in str(error.value)
    assert "TRADEENGINE_MODE" in str(error.value)


def test_database_url_must_use_an_async_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEENGINE_DATABASE_URL", "mysql://x")
    with pytest.raises(SettingsError, match="TRADEENGINE_DATABASE_URL"):
        load_settings()
    monkeypatch.setenv("TRADEENGINE_DATABASE_URL", "postgres://u:p@h:5432/db")
    assert load_settings().database_url == "postgresql+asyncpg://u:p@h:5432/db"


def test_settings_are_frozen_and_secrets_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEENGINE_GEMINI_API_KEY", "gm-supersecret-123")
    settings = load_settings()
    assert "gm-supersecret-123" not in repr(settings)
    with pytest.raises(Exception):
        settings.port = 1  # type: ignore[misc]


def test_log_filter_never_lets_a_secret_through(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADEENGINE_JWT_SECRET", "jwt-secret-value-xyz")
    monkeypatch.setenv("TRADEENGINE_LOG_FORMAT", "json")
    sink = io.StringIO()
    configure_logging(load_settings(), sink=sink)
    register_secret("binance-key-abcdef")
    logger.bind(key="binance-key-abcdef").info("jwt is jwt-secret-value-xyz and key binance-key-abcdef")
    try:
        raise ValueError("boom binance-key-abcdef")
    except ValueError:
        logger.exception("failed")
    output = sink.getvalue()
    assert "jwt-secret-value-xyz" not in output
    assert "binance-key-abcdef" not in output
    first = json.loads(output.splitlines()[0])
    assert "***" in first["record"]["message"]


def test_fly_toml_runs_the_control_process() -> None:
    config = tomllib.loads((REPO / "fly.toml").read_text())
    assert config["app"]
    assert config["processes"]["app"].startswith("serve --mode control")
    service = config["http_service"]
    assert service["internal_port"] == 8080
    checks = service["checks"]
    assert any(check["path"] == "/health" for check in checks)


def test_dockerfile_runs_as_non_root_with_the_cli_entrypoint() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM python:3.11-slim") or "FROM python:3.11-slim" in dockerfile
    assert 'ENTRYPOINT ["tradeengine"]' in dockerfile
    assert 'CMD ["serve", "--mode", "control"' in dockerfile
    assert "USER " in dockerfile and "USER root" not in dockerfile
    assert "HEALTHCHECK" in dockerfile
