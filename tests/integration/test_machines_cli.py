"""Admin CLI: users create/token, tenants provision/list/destroy, machines update (real DB, fake Fly)."""

from __future__ import annotations

import uuid
from pathlib import Path

import jwt
import pytest
from fakes.fly import FakeFlyApi
from typer.testing import CliRunner

from tradeengine.cli import app
from tradeengine.domain.enums import Tier
from tradeengine.machines.commands import (
    CommandError,
    create_user,
    destroy_tenant,
    list_tenants,
    provision_tenant,
    update_machines,
)
from tradeengine.settings import MachineProviderKind, load_settings

SECRET = "cli-test-secret-0123456789abcdef01234567"


def test_users_create_list_and_token_through_the_cli(sqlite_url: str) -> None:
    runner = CliRunner()
    env = {
        "TRADEENGINE_DATABASE_URL": sqlite_url,
        "TRADEENGINE_JWT_SECRET": SECRET,
        "TRADEENGINE_LOG_LEVEL": "ERROR",
    }
    result = runner.invoke(app, ["users", "create", "--email", "Ann@Example.com", "--tier", "elite"], env=env)
    assert result.exit_code == 0, result.output
    assert "user ann@example.com (elite) id" in result.output
    user_id = uuid.UUID(result.output.strip().rsplit(" ", 1)[1])

    result = runner.invoke(app, ["users", "create", "--email", "nobody", "--tier", "pro"], env=env)
    assert result.exit_code == 2
    assert "--email: 'nobody' is not an email address" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["users", "create", "--email", "a@b.c", "--tier", "gold"], env=env)
    assert result.exit_code == 2  # typer names the option

    result = runner.invoke(app, ["tenants", "list"], env=env)
    assert result.exit_code == 0, result.output
    assert "ann@example.com" in result.output
    assert "elite" in result.output

    result = runner.invoke(app, ["users", "token", "--email", "ann@example.com"], env=env)
    assert result.exit_code == 0, result.output
    claims = jwt.decode(result.output.strip(), SECRET, algorithms=["HS256"], audience="authenticated")
    assert claims["sub"] == str(user_id)

    result = runner.invoke(app, ["tenants", "provision", "--email", "ghost@example.com"], env=env)
    assert result.exit_code == 2
    assert "no user 'ghost@example.com'" in result.output


async def test_provision_list_update_destroy_with_fly(sqlite_url: str, tmp_path: Path) -> None:
    async with FakeFlyApi(token="tok") as fly:
        settings = load_settings(
            database_url=sqlite_url, master_key="cli-master-key-0123456789abcdef", machine_provider="fly",
            fly_api_url=fly.url, fly_api_token="tok", fly_app="tenants", tenant_image="img:v1",
        )  # fmt: skip
        await create_user(settings, "pat@example.com", Tier.POWER)
        await create_user(settings, "fay@example.com", Tier.FREE)
        machine, created = await provision_tenant(settings, "pat@example.com")
        assert created
        assert fly.machines[machine.machine_id].config["guest"]["memory_mb"] == 1024
        again, created = await provision_tenant(settings, "pat@example.com")
        assert (again.machine_id, created) == (machine.machine_id, False)
        with pytest.raises(CommandError, match="tier free has no trading machine"):
            await provision_tenant(settings, "fay@example.com")

        rows = {r.email: r for r in await list_tenants(settings)}
        assert rows["pat@example.com"].status == "running"
        assert rows["pat@example.com"].machine_id == machine.machine_id
        assert rows["fay@example.com"].machine_id is None

        positions, watching, graceful = await destroy_tenant(settings, "pat@example.com", "user_request")
        assert (positions, watching, graceful) == (0, 0, False)  # its tenant API is not reachable from here
        assert fly.machines[machine.machine_id].state == "destroyed"
        rows = {r.email: r for r in await list_tenants(settings)}
        assert rows["pat@example.com"].machine_id is None

        # The rolling update itself is covered in test_machines_service; here: nothing left to update.
        assert await update_machines(settings, "img:v2") == []
        with pytest.raises(CommandError, match="--image"):
            await update_machines(settings, " ")

        with pytest.raises(CommandError, match="FLY_API_TOKEN"):
            await provision_tenant(
                settings.model_copy(update={"fly_api_token": None}),
                "pat@example.com",
                MachineProviderKind.FLY,
            )
