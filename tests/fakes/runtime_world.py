"""Helpers for runtime tests: a user with traders in a migrated database, and a runtime over it."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, Analyst
from tradeengine.clock import Clock
from tradeengine.exchange.broker import Broker
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.exchange.paper import PaperBroker
from tradeengine.runtime.bootstrap import sim_queue_config
from tradeengine.runtime.journal import DurableWriter, Journal
from tradeengine.runtime.tenant import RuntimeConfig, StrategyCompiler, TenantRuntime
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Trader, User


async def seed_user(
    factory: SessionFactory, traders: Sequence[dict[str, Any]], *, paper_balance: Decimal | None = None
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Insert a user and traders (keyword overrides per trader); return their ids."""
    user_id = uuid.uuid4()
    ids: list[uuid.UUID] = []
    async with factory() as session:
        session.add(User(id=user_id, email=f"{user_id.hex[:8]}@example.com", tier="pro", paper_balance=paper_balance))
        await session.flush()
        for spec in traders:
            trader_id = uuid.uuid4()
            values: dict[str, Any] = {
                "id": trader_id,
                "user_id": user_id,
                "name": "t",
                "signal_code": "def check_signal(s, t, k):\n    return False\n",
                "ai_instructions": "buy dips",
                "timeframes": ["5m"],
                "check_interval": "5m_close",
                "reanalysis_interval": "1h",
                "symbols": ["BTC/USDT"],
                "stop_loss_pct": None,
                "take_profit_pct": None,
                "max_open_positions": 3,
            }
            values.update(spec)
            session.add(Trader(**values))
            ids.append(trader_id)
        await session.commit()
    return user_id, ids


class ScriptedAnalyst:
    """Returns the queued results in order (a fake of the Analyst port for decision tests)."""

    def __init__(self, results: Sequence[AnalysisResult] = ()) -> None:
        self.results = list(results)
        self.requests: list[AnalysisRequest] = []

    async def analyze(self, request: AnalysisRequest) -> AnalysisResult:
        self.requests.append(request)
        return self.results.pop(0)


def make_runtime(
    factory: SessionFactory,
    user_id: uuid.UUID,
    clock: Clock,
    tmp_path: Path,
    *,
    analyst: Analyst | None = None,
    broker: Broker | None = None,
    compile_strategy: StrategyCompiler | None = None,
    store: KlineStore | None = None,
    settle: bool = True,
    write_behind: int = 0,
) -> TenantRuntime:
    from tradeengine.sandbox.strategy import compile_strategy as sandbox_compile

    return TenantRuntime(
        user_id=user_id,
        clock=clock,
        store=store or KlineStore(),
        broker=broker or PaperBroker({"USDT": Decimal(10000)}),
        analyst=analyst or ScriptedAnalyst(),
        session_factory=factory,
        writer=DurableWriter(
            factory,
            Journal(tmp_path / f"journal-{uuid.uuid4().hex[:6]}.db"),
            clock,
            write_behind=write_behind,
        ),
        compile_strategy=compile_strategy or (lambda source: sandbox_compile(source, time_limit_ms=1000)),
        config=RuntimeConfig(monitor_interval_s=None, settle_analyses=settle, queue=sim_queue_config()),
    )
