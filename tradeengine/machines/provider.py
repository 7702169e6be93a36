"""The MachineProvider port: where a user's tenant runtime runs (a Fly machine or a local process)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from tradeengine.domain.enums import MachineStatus, Tier

TENANT_PORT = 8080

# The seed's sizing: memory per tier and how many traders a machine of that size carries.
TIER_MEMORY_MB: Mapping[Tier, int] = {Tier.PRO: 256, Tier.ELITE: 512, Tier.POWER: 1024}
TIER_TRADER_CAP: Mapping[Tier, int] = {Tier.FREE: 0, Tier.PRO: 20, Tier.ELITE: 50, Tier.POWER: 100}


class MachineError(Exception):
    """A provider call failed; the message says which machine and what happened."""


class MachineStartError(MachineError):
    """The machine was created but never reached ``started`` (crashed, failed, or timed out)."""


class MachineNotFoundError(MachineError):
    """The provider does not know this machine (already destroyed, or never created)."""


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """What to run for one user."""

    name: str
    user_id: str
    image: str
    env: Mapping[str, str]
    memory_mb: int
    cpus: int = 1
    region: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """What the provider reports about a machine."""

    machine_id: str
    state: str  # the provider's own state name (Fly: created, started, stopped, failed, ...)
    status: MachineStatus  # the same, mapped to fly_machines.status
    base_url: str | None  # where the tenant API answers, e.g. http://127.0.0.1:41234
    ip_address: str | None = None
    region: str | None = None
    image: str | None = None


# Fly machine states -> our lifecycle statuses (seed: provisioning -> starting -> running -> ...).
_FLY_STATUS: Mapping[str, MachineStatus] = {
    "created": MachineStatus.PROVISIONING,
    "starting": MachineStatus.STARTING,
    "started": MachineStatus.RUNNING,
    "stopping": MachineStatus.STOPPING,
    "stopped": MachineStatus.STOPPED,
    "suspending": MachineStatus.STOPPING,
    "suspended": MachineStatus.STOPPED,
    "replacing": MachineStatus.STARTING,
    "updating": MachineStatus.STARTING,
    "failed": MachineStatus.ERROR,
    "destroying": MachineStatus.STOPPING,
    "destroyed": MachineStatus.DESTROYED,
}


def status_for_state(state: str) -> MachineStatus:
    """Map a provider state to ``fly_machines.status``; unknown states count as errors."""
    return _FLY_STATUS.get(state, MachineStatus.ERROR)


class MachineProvider(Protocol):
    """Creates, updates and destroys tenant machines. Implementations: Fly, local processes."""

    name: str

    async def create(self, spec: MachineSpec) -> MachineInfo:
        """Create and start a machine; returns as soon as the provider accepted it."""
        ...

    async def wait_started(self, machine_id: str, *, timeout_s: float = 60.0) -> MachineInfo:
        """Block until the machine is started; raise ``MachineStartError`` if it fails or times out."""
        ...

    async def get(self, machine_id: str) -> MachineInfo | None:
        """Current state, or None when the provider does not know the machine."""
        ...

    async def stop(self, machine_id: str) -> None:
        """Stop the machine (it keeps its config and can be started again)."""
        ...

    async def destroy(self, machine_id: str) -> None:
        """Remove the machine for good; a machine that is already gone is not an error."""
        ...

    async def update_image(self, machine_id: str, image: str) -> MachineInfo:
        """Replace the machine's image, keeping the rest of its config; the machine restarts."""
        ...

    async def aclose(self) -> None:
        """Release connections (the machines themselves keep running)."""
        ...
