"""Control-plane use cases behind the HTTP handlers: users, traders, reads, generate, analyze.

Every method takes the acting user's id and scopes its queries to it; a row of another user is
reported as "not found" (never "forbidden"), so ids of other users' rows can't be probed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from loguru import logger

from tradeengine.ai.analyst import AnalysisRequest, AnalysisResult, Analyst, PositionSnapshot
from tradeengine.api import schemas
from tradeengine.api.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UpstreamUnavailableError,
)
from tradeengine.domain.enums import Tier, TraderStatus
from tradeengine.domain.secrets import SecretBox
from tradeengine.machines.provider import TIER_TRADER_CAP, MachineError
from tradeengine.machines.service import MachineService, ProvisioningError, TierNotAllowedError
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import FlyMachine, Trader, User
from tradeengine.store.repositories import InvalidCursorError, Page
from tradeengine.store.uow import UnitOfWork


@dataclass(frozen=True, slots=True)
class GeneratedTrader:
    """What a strategy generator returns (already proven to compile and run)."""

    name: str
    signal_code: str
    ai_instructions: str
    timeframes: list[str]
    check_interval: str
    reanalysis_interval: str
    symbols: list[str] | None = None
    trigger_rate: float | None = None
    description: str | None = None


class StrategyGenerationError(Exception):
    """The generator could not produce a working strategy; the message is for the user."""


class StrategyGeneration(Protocol):
    async def generate(self, description: str, *, tier: Tier, user_id: uuid.UUID) -> GeneratedTrader:
        """Turn a description into a trader; raise ``StrategyGenerationError`` with the reason."""
        ...


CodeValidator = Callable[[str], None]  # raises ValueError (or a StrategyError) naming the problem


def sandbox_validator(source: str) -> None:
    """Compile ``source`` in the strategy sandbox; raises ``StrategyCompileError`` naming the line."""
    from tradeengine.sandbox import compile_strategy  # RestrictedPython: imported on first use

    compile_strategy(source)


class ControlService:
    """The use cases; the HTTP layer only parses, calls one method and serializes."""

    def __init__(
        self,
        session_factory: SessionFactory,
        *,
        machines: MachineService | None = None,
        generator: StrategyGeneration | None = None,
        analyst: Analyst | None = None,
        secrets: SecretBox | None = None,
        validate_code: CodeValidator = sandbox_validator,
    ) -> None:
        self._factory = session_factory
        self.machines = machines
        self._generator = generator
        self._analyst = analyst
        self._secrets = secrets
        self._validate_code = validate_code

    # --- users -----------------------------------------------------------------------------------

    async def _user(self, uow: UnitOfWork, user_id: uuid.UUID) -> User:
        user = await uow.users.get(user_id)
        if user is None:
            raise NotFoundError(f"user not found: {user_id} has no account here")
        return user

    async def me(self, user_id: uuid.UUID) -> schemas.UserOut:
        async with UnitOfWork(self._factory) as uow:
            user = await self._user(uow, user_id)
            count = await uow.traders.count(user_id=user_id)
        return schemas.UserOut(
            id=user.id,
            email=user.email,
            tier=Tier(user.tier),
            subscription_status=user.subscription_status,
            has_exchange_keys=bool(user.binance_api_key and user.binance_secret_key),
            paper_trading_enabled=user.paper_trading_enabled,
            real_trading_enabled=user.real_trading_enabled,
            trader_cap=TIER_TRADER_CAP.get(Tier(user.tier), 0),
            trader_count=count,
        )

    async def set_exchange_keys(self, user_id: uuid.UUID, api_key: str, secret_key: str) -> schemas.UserOut:
        """Store the user's Binance keys encrypted; they reach the tenant at its next provisioning."""
        if self._secrets is None:
            raise UpstreamUnavailableError("exchange keys can't be stored: TRADEENGINE_MASTER_KEY is not configured")
        async with UnitOfWork(self._factory) as uow:
            user = await self._user(uow, user_id)
            user.binance_api_key = self._secrets.encrypt(api_key, user_id=user.id, field="binance_api_key")
            user.binance_secret_key = self._secrets.encrypt(secret_key, user_id=user.id, field="binance_secret_key")
            await uow.commit()
        logger.info("user {} stored new exchange keys", user_id)
        return await self.me(user_id)

    # --- traders ----------------------------------------------------------------------------------

    async def list_traders(self, user_id: uuid.UUID, query: schemas.TraderQuery) -> Page[Trader]:
        async with UnitOfWork(self._factory) as uow:
            return await _page(
                uow.traders.list_for_user(
                    user_id,
                    status=query.status.value if query.status else None,
                    cursor=query.cursor,
                    limit=query.limit,
                )
            )

    async def get_trader(self, user_id: uuid.UUID, trader_id: uuid.UUID) -> Trader:
        async with UnitOfWork(self._factory) as uow:
            return await self._owned_trader(uow, user_id, trader_id)

    async def _owned_trader(self, uow: UnitOfWork, user_id: uuid.UUID, trader_id: uuid.UUID) -> Trader:
        trader = await uow.traders.get(trader_id)
        if trader is None or trader.user_id != user_id:
            raise NotFoundError(f"traderId: no trader {trader_id}")
        return trader

    def _check_code(self, source: str) -> None:
        from tradeengine.sandbox.errors import StrategyError

        try:
            self._validate_code(source)
        except (StrategyError, ValueError, SyntaxError) as exc:
            raise BadRequestError(f"signalCode: {exc}") from None

    async def update_trader(
        self, user_id: uuid.UUID, trader_id: uuid.UUID, change: schemas.TraderUpdateRequest
    ) -> tuple[Trader, bool]:
        if change.signal_code is not None:
            self._check_code(change.signal_code)
        async with UnitOfWork(self._factory) as uow:
            trader = await self._owned_trader(uow, user_id, trader_id)
            values = change.model_dump(exclude_unset=True, exclude={"clear_symbols"})
            for name, value in values.items():
                setattr(trader, name, value)
            if change.clear_symbols:
                trader.symbols = None
            if change.signal_code is not None and trader.status == TraderStatus.ERROR.value:
                # New code that compiles gives an errored trader a fresh start.
                trader.status = TraderStatus.ACTIVE.value
                trader.error_message = None
            await uow.commit()
        return trader, await self._notify(user_id)

    async def set_trader_status(
        self, user_id: uuid.UUID, trader_id: uuid.UUID, status: TraderStatus
    ) -> tuple[Trader, bool]:
        async with UnitOfWork(self._factory) as uow:
            trader = await self._owned_trader(uow, user_id, trader_id)
            if status is TraderStatus.ACTIVE:
                if trader.status == TraderStatus.ERROR.value:
                    raise ConflictError("status: trader is in error; update its signalCode to resume it")
                await self._check_cap(uow, user_id, exclude=trader_id, active_only=True)
            trader.status = status.value
            await uow.commit()
        return trader, await self._notify(user_id)

    async def delete_trader(self, user_id: uuid.UUID, trader_id: uuid.UUID) -> bool:
        async with UnitOfWork(self._factory) as uow:
            trader = await self._owned_trader(uow, user_id, trader_id)
            open_positions = await uow.positions.open_for_trader(trader.id)
            if open_positions:
                raise ConflictError(
                    f"traderId: trader has {len(open_positions)} open position(s); close them or pause the trader"
                )
            await uow.traders.delete(trader)
            await uow.commit()
        return await self._notify(user_id)

    async def _notify(self, user_id: uuid.UUID) -> bool:
        if self.machines is None:
            return False
        return await self.machines.notify_reload(user_id)

    async def _check_cap(
        self,
        uow: UnitOfWork,
        user_id: uuid.UUID,
        *,
        exclude: uuid.UUID | None = None,
        active_only: bool = False,
    ) -> None:
        user = await self._user(uow, user_id)
        cap = TIER_TRADER_CAP.get(Tier(user.tier), 0)
        filters: dict[str, Any] = {"user_id": user_id}
        if active_only:
            filters["status"] = TraderStatus.ACTIVE.value
        count = await uow.traders.count(**filters)
        if exclude is not None and active_only is False:
            count -= 1
        if cap == 0:
            raise ForbiddenError(f"tier: {user.tier} accounts cannot run traders; upgrade to pro, elite or power")
        if count >= cap:
            raise ForbiddenError(f"tier: {user.tier} allows {cap} traders and you have {count}")

    # --- generation ------------------------------------------------------------------------------

    async def generate(
        self, user_id: uuid.UUID, request: schemas.GenerateStrategyRequest
    ) -> tuple[Trader, str | None, float | None]:
        """Generate, validate and save a trader; provision the user's machine on their first one."""
        async with UnitOfWork(self._factory) as uow:
            user = await self._user(uow, user_id)
            tier = Tier(user.tier)
            if request.tier is not None and request.tier is not tier:
                raise BadRequestError(f"tier: your account is {tier.value}, not {request.tier.value}")
            await self._check_cap(uow, user_id)
        if self._generator is None:
            raise UpstreamUnavailableError("strategy generation is not configured (no model available)")
        try:
            generated = await self._generator.generate(request.description, tier=tier, user_id=user_id)
        except StrategyGenerationError as exc:
            raise BadRequestError(f"description: {exc}") from None
        self._check_code(generated.signal_code)
        async with UnitOfWork(self._factory) as uow:
            await self._check_cap(uow, user_id)  # again: a concurrent call may have filled the last slot
            first = await uow.traders.count(user_id=user_id) == 0
            trader = uow.traders.add(
                Trader(
                    user_id=user_id,
                    name=request.name or generated.name,
                    description=request.description,
                    signal_code=generated.signal_code,
                    ai_instructions=generated.ai_instructions,
                    timeframes=list(generated.timeframes),
                    check_interval=generated.check_interval,
                    reanalysis_interval=generated.reanalysis_interval,
                    symbols=request.symbols if request.symbols is not None else generated.symbols,
                    status=TraderStatus.ACTIVE.value,
                )
            )
            await uow.commit()
        machine_id: str | None = None
        if self.machines is not None:
            if first:
                machine_id = await self._provision_first(user_id)
            else:
                await self._notify(user_id)
        return trader, machine_id, generated.trigger_rate

    async def _provision_first(self, user_id: uuid.UUID) -> str | None:
        assert self.machines is not None
        try:
            result = await self.machines.provision(user_id)
        except (MachineError, ProvisioningError) as exc:
            # The trader is saved; the machine can be provisioned again later (it is idempotent).
            logger.error("provisioning for user {} after first trader failed: {}", user_id, exc)
            return None
        if not result.created:
            await self._notify(user_id)
        return result.machine.machine_id if result.created else None

    # --- machines --------------------------------------------------------------------------------

    def _machines(self) -> MachineService:
        if self.machines is None:
            raise UpstreamUnavailableError("machine provisioning is not configured")
        return self.machines

    async def provision(self, user_id: uuid.UUID, tier: Tier | None) -> tuple[FlyMachine, bool]:
        machines = self._machines()
        async with UnitOfWork(self._factory) as uow:
            user = await self._user(uow, user_id)
        if tier is not None and tier.value != user.tier:
            raise BadRequestError(f"tier: the account is {user.tier}, not {tier.value}")
        try:
            result = await machines.provision(user_id)
        except TierNotAllowedError as exc:
            raise ForbiddenError(f"tier: {exc}") from None
        except ProvisioningError as exc:
            raise BadRequestError(str(exc)) from None
        except MachineError as exc:
            raise UpstreamUnavailableError(f"machine provider failed: {exc}") from None
        return result.machine, result.created

    async def destroy(self, user_id: uuid.UUID, reason: str) -> schemas.DestroyResponse:
        machines = self._machines()
        async with UnitOfWork(self._factory) as uow:
            await self._user(uow, user_id)
        try:
            result = await machines.destroy(user_id, reason)
        except MachineError as exc:
            raise UpstreamUnavailableError(f"machine provider failed: {exc}") from None
        return schemas.DestroyResponse(
            final_state=schemas.FinalStateOut(
                open_positions=result.final_state.open_positions,
                watching_signals=result.final_state.watching_signals,
            ),
            tenant_reached=result.tenant_reached,
        )

    async def machine(self, user_id: uuid.UUID) -> FlyMachine | None:
        async with UnitOfWork(self._factory) as uow:
            await self._user(uow, user_id)
            return await uow.machines.current_for_user(user_id)

    # --- analysis --------------------------------------------------------------------------------

    async def analyze(self, user_id: uuid.UUID | None, request: schemas.AnalyzeSignalRequest) -> AnalysisResult:
        """Analyze a signal of ``user_id``'s trader (None: an admin, any trader)."""
        if self._analyst is None:
            raise UpstreamUnavailableError("signal analysis is not configured")
        async with UnitOfWork(self._factory) as uow:
            trader = await uow.traders.get(request.trader_id)
            if trader is None or (user_id is not None and trader.user_id != user_id):
                raise NotFoundError(f"traderId: no trader {request.trader_id}")
            signal = await uow.signals.get(request.signal_id)
            if signal is None or signal.trader_id != trader.id:
                raise NotFoundError(f"signalId: no signal {request.signal_id} for this trader")
        position = None
        if request.position is not None:
            p = request.position
            position = PositionSnapshot(
                position_id=p.position_id, side=p.side, entry_price=p.entry_price, size=p.size,
                stop_loss=p.stop_loss, take_profit=p.take_profit, unrealized_pnl=p.unrealized_pnl,
                unrealized_pnl_percent=p.unrealized_pnl_percent,
            )  # fmt: skip
        market_data = request.market_data.model_dump(by_alias=True, exclude_none=True)
        analysis = AnalysisRequest(
            correlation_id=request.correlation_id or uuid.uuid4().hex,
            user_id=trader.user_id,
            trader_id=trader.id,
            signal_id=signal.id,
            symbol=request.symbol or request.market_data.symbol,
            ai_instructions=trader.ai_instructions,
            market_data=market_data,
            position=position,
            is_reanalysis=request.is_reanalysis,
            trader_settings=_trader_settings(trader),
            candle_key=request.candle_key,
            priority=request.priority,
        )
        return await self._analyst.analyze(analysis)

    # --- reads -----------------------------------------------------------------------------------

    async def list_rows(self, kind: str, user_id: uuid.UUID, query: schemas.ListQuery) -> Page[Any]:
        filters: dict[str, Any] = {"symbol": query.symbol, "trader_id": query.trader_id}
        status = getattr(query, "status", None)
        filters["status"] = status.value if status is not None else None
        if isinstance(query, schemas.AnalysisQuery):
            filters["decision"] = query.decision.value if query.decision else None
            filters["signal_id"] = query.signal_id
        if kind == "trades" and query.trader_id is not None:
            # trades carry no trader_id; filter through the trader's positions.
            filters.pop("trader_id")
        async with UnitOfWork(self._factory) as uow:
            repo: Any = {
                "signals": uow.signals, "positions": uow.positions,
                "trades": uow.trades, "analyses": uow.analyses,
            }[kind]  # fmt: skip
            if kind == "trades" and query.trader_id is not None:
                positions = await uow.positions.list_for_user(user_id, trader_id=query.trader_id, limit=500)
                filters["position_id"] = [p.id for p in positions.items] or [uuid.UUID(int=0)]
            if kind == "trades":
                filters.pop("trader_id", None)
            return await _page(
                repo.list_for_user(
                    user_id,
                    since=query.since,
                    until=query.until,
                    cursor=query.cursor,
                    limit=query.limit,
                    **filters,
                )
            )


async def _page(awaitable: Any) -> Page[Any]:
    try:
        page: Page[Any] = await awaitable
    except InvalidCursorError:
        raise BadRequestError("cursor: not a valid page cursor (use nextCursor from a previous page)") from None
    except ValueError as exc:
        raise BadRequestError(str(exc)) from None
    return page


def _trader_settings(trader: Trader) -> dict[str, Any]:
    settings: dict[str, Any] = dict(trader.settings or {})
    settings.update(
        position_size_pct=trader.position_size_pct,
        max_open_positions=trader.max_open_positions,
        stop_loss_pct=trader.stop_loss_pct,
        take_profit_pct=trader.take_profit_pct,
        trailing_stop_pct=trader.trailing_stop_pct,
        trade_type=trader.trade_type,
    )
    return settings


def utc_iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
