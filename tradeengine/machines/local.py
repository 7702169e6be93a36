"""LocalProcessProvider: each tenant is a ``tradeengine serve --mode tenant`` subprocess on loopback.

The embedded default (laptop, demo, tests). A "machine" is a child process of the control plane;
its id encodes the port so a restarted control plane can still reach a tenant it started before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import aiohttp
from loguru import logger

from tradeengine.domain.enums import MachineStatus
from tradeengine.machines.provider import (
    MachineInfo,
    MachineNotFoundError,
    MachineSpec,
    MachineStartError,
    status_for_state,
)


def default_tenant_command() -> list[str]:
    """The ``tradeengine`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("tradeengine")
    if script.exists():
        return [str(script)]
    found = shutil.which("tradeengine")
    if found:
        return [found]
    return [sys.executable, "-c", "from tradeengine.cli import main; main()"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass(slots=True)
class _Process:
    spec: MachineSpec
    port: int
    process: asyncio.subprocess.Process
    image: str
    state: str


class LocalProcessProvider:
    """Tenants as local subprocesses. ``command`` is the program prefix; the provider appends
    ``serve --mode tenant --user-id U --host H --port P`` and passes ``spec.env`` on top of
    this process's environment."""

    name = "local"

    def __init__(
        self,
        *,
        command: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        log_dir: Path | None = None,
        stop_timeout_s: float = 10.0,
        base_env: Mapping[str, str] | None = None,
        state_dir: Path | None = None,
        stop_on_close: bool = True,
    ) -> None:
        self._command = list(command) if command is not None else default_tenant_command()
        self._host = host
        self._log_dir = log_dir
        self._stop_timeout_s = stop_timeout_s
        self._base_env = dict(base_env) if base_env is not None else dict(os.environ)
        self._machines: dict[str, _Process] = {}
        # Pid files let another process (a later CLI call) find and stop a tenant we started.
        self._state_dir = state_dir or Path(tempfile.gettempdir()) / "tradeengine-tenants"
        self._stop_on_close = stop_on_close

    def _pidfile(self, machine_id: str) -> Path:
        return self._state_dir / f"{machine_id}.pid"

    def _write_pidfile(self, machine_id: str, pid: int, user_id: str) -> None:
        self._state_dir.mkdir(parents=True, exist_ok=True)
        self._pidfile(machine_id).write_text(f"{pid} {user_id}\n")

    def _orphan_pid(self, machine_id: str) -> int | None:
        """The pid of a tenant started by another provider instance, if it still runs."""
        try:
            pid_text, user_id = self._pidfile(machine_id).read_text().split()
            pid = int(pid_text)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        # Only a tenant of this user: a recycled pid must never be signalled.
        return pid if user_id.encode() in cmdline and b"tenant" in cmdline else None

    def _machine_id(self, spec: MachineSpec, port: int) -> str:
        return f"local-{spec.user_id.replace('-', '')[:12]}-{port}"

    def _url(self, port: int) -> str:
        return f"http://{self._host}:{port}"

    def _info(self, machine_id: str, entry: _Process) -> MachineInfo:
        state = entry.state
        if entry.process.returncode is not None and state in {"starting", "started"}:
            state = "failed"
            entry.state = state
        return MachineInfo(
            machine_id=machine_id,
            state=state,
            status=status_for_state(state),
            base_url=self._url(entry.port),
            ip_address=self._host,
            region="local",
            image=entry.image,
        )

    async def _spawn(self, spec: MachineSpec, port: int) -> asyncio.subprocess.Process:
        argv = [
            *self._command,
            "serve", "--mode", "tenant", "--user-id", spec.user_id, "--host", self._host, "--port", str(port),
        ]  # fmt: skip
        env = {**self._base_env, **spec.env}
        env["TRADEENGINE_PORT"] = str(port)
        env["TRADEENGINE_HOST"] = self._host
        output: int = asyncio.subprocess.DEVNULL
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            output = os.open(self._log_dir / f"{spec.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # A new session: a Ctrl-C in the control plane's terminal must not kill tenants
            # before they had the chance to shut down gracefully.
            process = await asyncio.create_subprocess_exec(
                *argv, env=env, stdout=output, stderr=output, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        finally:
            if output >= 0:
                os.close(output)
        logger.info("local: started tenant for user {} (pid {}, port {})", spec.user_id, process.pid, port)
        return process

    async def create(self, spec: MachineSpec) -> MachineInfo:
        port = free_port(self._host)
        process = await self._spawn(spec, port)
        machine_id = self._machine_id(spec, port)
        self._machines[machine_id] = _Process(spec, port, process, spec.image, "starting")
        self._write_pidfile(machine_id, process.pid, spec.user_id)
        return self._info(machine_id, self._machines[machine_id])

    async def get(self, machine_id: str) -> MachineInfo | None:
        entry = self._machines.get(machine_id)
        if entry is None:
            if self._orphan_pid(machine_id) is None:
                return None
            port = int(machine_id.rsplit("-", 1)[1])
            return MachineInfo(
                machine_id,
                "started",
                status_for_state("started"),
                self._url(port),
                ip_address=self._host,
                region="local",
            )
        return self._info(machine_id, entry)

    async def wait_started(self, machine_id: str, *, timeout_s: float = 60.0) -> MachineInfo:
        entry = self._machines.get(machine_id)
        if entry is None:
            raise MachineStartError(f"local: unknown machine {machine_id}")
        deadline = time.monotonic() + timeout_s
        url = self._url(entry.port) + "/health"
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while time.monotonic() < deadline:
                if entry.process.returncode is not None:
                    entry.state = "failed"
                    raise MachineStartError(
                        f"local: tenant {machine_id} exited with code {entry.process.returncode} while starting"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as resp:
                        if resp.status == 200:
                            entry.state = "started"
                            return self._info(machine_id, entry)
                await asyncio.sleep(0.1)
        entry.state = "failed"
        raise MachineStartError(f"local: tenant {machine_id} not healthy after {timeout_s:.0f}s")

    async def _terminate(self, entry: _Process) -> None:
        process = entry.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._stop_timeout_s)
            except TimeoutError:
                logger.warning("local: tenant pid {} ignored SIGTERM; killing", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def stop(self, machine_id: str) -> None:
        entry = self._machines.get(machine_id)
        if entry is None:
            raise MachineNotFoundError(f"local: unknown machine {machine_id}")
        entry.state = "stopping"
        await self._terminate(entry)
        entry.state = "stopped"

    async def destroy(self, machine_id: str) -> None:
        entry = self._machines.pop(machine_id, None)
        if entry is not None:
            await self._terminate(entry)
        else:
            pid = self._orphan_pid(machine_id)
            if pid is None:
                logger.info("local: machine {} already gone", machine_id)
            else:
                await self._terminate_pid(pid)
        self._pidfile(machine_id).unlink(missing_ok=True)

    async def _terminate_pid(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._stop_timeout_s
        while time.monotonic() < deadline:
            if _is_zombie(pid):  # also True once the process is gone
                return
            await asyncio.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def update_image(self, machine_id: str, image: str) -> MachineInfo:
        # A local "image" is whatever code is installed; updating means restarting the process
        # on the same port so the control plane's record stays valid.
        entry = self._machines.get(machine_id)
        if entry is None:
            raise MachineNotFoundError(f"local: unknown machine {machine_id}")
        entry.state = "replacing"
        await self._terminate(entry)
        spec = replace(entry.spec, image=image)
        entry.process = await self._spawn(spec, entry.port)
        self._write_pidfile(machine_id, entry.process.pid, spec.user_id)
        entry.spec = spec
        entry.image = image
        entry.state = "starting"
        return self._info(machine_id, entry)

    def running(self) -> dict[str, MachineStatus]:
        """Machines this provider started, with their status (for diagnostics and tests)."""
        return {mid: self._info(mid, entry).status for mid, entry in self._machines.items()}

    async def aclose(self) -> None:
        """Stop every tenant this provider started (the control plane owns its children), unless
        ``stop_on_close`` is False (the CLI: tenants outlive the command that provisioned them)."""
        if not self._stop_on_close:
            self._machines.clear()
            return
        for machine_id in list(self._machines):
            await self.destroy(machine_id)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
