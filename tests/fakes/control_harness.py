"""A control-plane app wired to a real database, the fake Fly API and a fake tenant, for tests.

Everything is real except the network peers (Fly, the tenant runtime, the strategy model), which
are local servers or a scripted generator behind our ``StrategyGeneration`` port.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
from fakes.fly import FakeFlyApi
from fakes.tenant import FakeTenant
from starlette.applications import Starlette

from tradeengine.ai.analyst import Analyst
from tradeengine.ai.offline import OfflineAnalyst
from tradeengine.api.auth import TokenVerifier, issue_service_token, issue_user_token
from tradeengine.api.control import ControlServices, create_control_app
from tradeengine.api.services import (
    ControlService,
    GeneratedTrader,
    StrategyGeneration,
    StrategyGenerationError,
    sandbox_validator,
)
from tradeengine.domain.enums import Tier
from tradeengine.domain.secrets import SecretBox
from tradeengine.machines.fly import FlyMachinesProvider
from tradeengine.machines.service import MachineConfig, MachineService
from tradeengine.settings import Settings, load_settings
from tradeengine.store.engine import SessionFactory, create_engine, create_session_factory
from tradeengine.store.models import AnalysisHistory, Position, Signal, Trade, Trader, User
from tradeengine.store.uow import UnitOfWork

JWT_SECRET = "test-jwt-secret-0123456789abcdef0123456789"
MASTER_KEY = "test-master-key-0123456789abcdef"
FLY_TOKEN = "fly-test-token"

STRATEGY_CODE = """
def check_signal(symbol, ticker, klines):
    candles = klines["1h"]
    if len(candles) < 2:
        return False
    closes = candles.close
    return closes[-1] > closes[-2]
"""


def strategy_code_validator(source: str) -> None:
    """The real strategy sandbox (the control plane's default validator)."""
    sandbox_validator(source)


@dataclass
class ScriptedGenerator:
    """Our ``StrategyGeneration`` port, answering from a script (no model)."""

    code: str = STRATEGY_CODE
    fail_with: str | None = None
    calls: list[str] = field(default_factory=list)

    async def generate(self, description: str, *, tier: Tier, user_id: uuid.UUID) -> GeneratedTrader:
        self.calls.append(description)
        if self.fail_with:
            raise StrategyGenerationError(self.fail_with)
        return GeneratedTrader(
            name="RSI reversal", signal_code=self.code,
            ai_instructions="Buy oversold dips; stop below swing low.",
            timeframes=["1h", "4h"], check_interval="1h_close", reanalysis_interval="15m",
            symbols=["BTC/USDT"], trigger_rate=0.04,
        )  # fmt: skip


@dataclass
class Harness:
    settings: Settings
    app: Starlette
    client: httpx.AsyncClient
    factory: SessionFactory
    fly: FakeFlyApi
    tenant: FakeTenant
    machines: MachineService
    generator: ScriptedGenerator
    users: dict[str, uuid.UUID]
    tokens: dict[str, str]

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    async def add_user(self, name: str, tier: Tier = Tier.PRO) -> uuid.UUID:
        async with UnitOfWork(self.factory) as uow:
            user = uow.users.add(User(email=f"{name}-{uuid.uuid4().hex[:6]}@example.com", tier=tier.value))
            await uow.commit()
        self.users[name] = user.id
        self.tokens[name] = issue_user_token(JWT_SECRET, user.id, email=user.email)
        return user.id

    async def seed_rows(self, name: str, *, symbol: str = "BTC/USDT", count: int = 1) -> dict[str, list[uuid.UUID]]:
        """A trader with ``count`` signals, each with a position, a trade and an analysis."""
        user_id = self.users[name]
        ids: dict[str, list[uuid.UUID]] = {
            "traders": [],
            "signals": [],
            "positions": [],
            "trades": [],
            "analyses": [],
        }
        base = datetime(2026, 1, 1, tzinfo=UTC)
        async with UnitOfWork(self.factory) as uow:
            trader = uow.traders.add(Trader(
                user_id=user_id, name=f"{name}-trader", signal_code=STRATEGY_CODE, ai_instructions="x",
                timeframes=["1h"], check_interval="1m", reanalysis_interval="5m", symbols=[symbol],
            ))  # fmt: skip
            await uow.flush()
            ids["traders"].append(trader.id)
            for i in range(count):
                at = base + timedelta(hours=i)
                signal = uow.signals.add(Signal(
                    user_id=user_id, trader_id=trader.id, symbol=symbol, timestamp=at,
                    status="watching" if i % 2 else "position_open", trigger_price=Decimal("100.5") + i,
                ))  # fmt: skip
                await uow.flush()
                position = uow.positions.add(Position(
                    user_id=user_id, trader_id=trader.id, signal_id=signal.id, symbol=symbol, side="long",
                    entry_price=Decimal("100.12345678"), size=Decimal("0.5"), opened_at=at,
                    status="closed", closed_at=at + timedelta(minutes=5),
                ))  # fmt: skip
                await uow.flush()
                trade = uow.trades.add(Trade(
                    user_id=user_id, position_id=position.id, type="paper", side="BUY", symbol=symbol,
                    price=Decimal("100.12345678"), quantity=Decimal("0.5"), executed_at=at,
                ))  # fmt: skip
                analysis = uow.analyses.add(AnalysisHistory(
                    user_id=user_id, trader_id=trader.id, signal_id=signal.id, timestamp=at,
                    decision="open_long", reasoning="r", confidence=80, meta={"stopLoss": "99"},
                ))  # fmt: skip
                await uow.flush()
                ids["signals"].append(signal.id)
                ids["positions"].append(position.id)
                ids["trades"].append(trade.id)
                ids["analyses"].append(analysis.id)
            await uow.commit()
        return ids


@contextlib.asynccontextmanager
async def control_harness(
    db_url: str,
    *,
    generation: StrategyGeneration | None = None,
    analyst: Analyst | None = None,
    **settings_overrides: Any,
) -> AsyncIterator[Harness]:
    """``generation`` replaces the scripted generator (e.g. the AI layer's, on a fake Gemini);
    ``analyst`` replaces the offline analyst (e.g. ``gemini_services(...).analyst``)."""
    settings = load_settings(database_url=db_url, jwt_secret=JWT_SECRET, master_key=MASTER_KEY, **settings_overrides)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    tenant = FakeTenant(token=None)
    await tenant.start()
    async with FakeFlyApi(token=FLY_TOKEN, start_delay_s=0.02) as fly:
        provider = FlyMachinesProvider(api_url=fly.url, app="tenants", token=FLY_TOKEN, tenant_url_template=tenant.url)
        box = SecretBox(MASTER_KEY)
        machines = MachineService(
            factory, provider,
            MachineConfig(image="registry.fly.io/tradeengine:v1", database_url=db_url,
                          control_url="http://control.internal:8080", region="iad",
                          start_timeout_s=5, health_timeout_s=2),
            box,
        )  # fmt: skip
        generator = ScriptedGenerator()
        service = ControlService(
            factory,
            machines=machines,
            generator=generation or generator,
            analyst=analyst or OfflineAnalyst(),
            secrets=box,
            validate_code=strategy_code_validator,
        )
        verifier = TokenVerifier(jwt_secret=JWT_SECRET, tenant_tokens=machines)
        app = create_control_app(settings, ControlServices(service=service, verifier=verifier))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://control.test") as client:
            harness = Harness(
                settings=settings, app=app, client=client, factory=factory, fly=fly, tenant=tenant,
                machines=machines, generator=generator, users={}, tokens={},
            )  # fmt: skip
            harness.tokens["admin"] = issue_service_token(JWT_SECRET)
            await harness.add_user("alice")
            await harness.add_user("bob")
            try:
                yield harness
            finally:
                await provider.aclose()
    await tenant.stop()
    await engine.dispose()
