"""Build the machine provider and service from settings (shared by the control app and the CLI)."""

from __future__ import annotations

import secrets

from loguru import logger

from tradeengine.domain.secrets import SecretBox
from tradeengine.machines.provider import MachineProvider
from tradeengine.machines.service import MachineConfig, MachineService
from tradeengine.settings import MachineProviderKind, Settings
from tradeengine.store.engine import SessionFactory


def secret_box(settings: Settings) -> tuple[SecretBox, bool]:
    """The box for tenant tokens and exchange keys; ``(box, durable)``.

    Without ``TRADEENGINE_MASTER_KEY`` an ephemeral key still lets tenants authenticate until the
    control plane restarts, but exchange keys must not be stored under it (``durable`` False)."""
    if settings.master_key is not None:
        return SecretBox(settings.master_key.get_secret_value()), True
    logger.warning("TRADEENGINE_MASTER_KEY is not set: using an ephemeral key; exchange keys can't be stored")
    return SecretBox(secrets.token_urlsafe(32)), False


def build_provider(
    settings: Settings, kind: MachineProviderKind | None = None, *, detach_local: bool = False
) -> MachineProvider:
    """The provider named by ``kind`` (default: settings.machine_provider)."""
    kind = kind or settings.machine_provider
    if kind is MachineProviderKind.FLY:
        from tradeengine.machines.fly import FlyMachinesProvider

        if settings.fly_api_token is None:
            raise ValueError("TRADEENGINE_FLY_API_TOKEN is required for the fly machine provider")
        return FlyMachinesProvider(
            api_url=settings.fly_api_url,
            app=settings.fly_app,
            token=settings.fly_api_token.get_secret_value(),
        )
    from tradeengine.machines.local import LocalProcessProvider

    return LocalProcessProvider(stop_on_close=not detach_local)


def build_machine_service(
    settings: Settings, factory: SessionFactory, provider: MachineProvider, box: SecretBox
) -> MachineService:
    control_url = settings.control_url or f"http://{settings.host}:{settings.port}"
    return MachineService(
        factory,
        provider,
        MachineConfig(
            image=settings.tenant_image,
            database_url=settings.database_url,
            control_url=control_url,
            region=settings.fly_region if provider.name == "fly" else None,
        ),
        box,
    )
