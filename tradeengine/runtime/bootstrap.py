"""Tenant composition root: ``build_tenant(settings)`` opens everything a tenant runs and closes it.

    async with build_tenant(settings) as tenant:   # recovered, timers and feed running
        app = tenant.app                             # the tenant HTTP API (Starlette)

``build_tenant_app(settings)`` wraps the same in an ASGI app whose lifespan owns it, which is what
``tradeengine serve --mode tenant --user-id U`` serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from loguru import logger
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from tradeengine import __version__
from tradeengine.ai.analyst import Analyst
from tradeengine.clock import Clock, LiveClock, SimClock
from tradeengine.domain.enums import TradeType
from tradeengine.exchange.broker import Broker
from tradeengine.exchange.feed import MarketFeed
from tradeengine.exchange.kline_store import KlineStore
from tradeengine.exchange.replay import ReplayFeed
from tradeengine.runtime.analysis_queue import QueueConfig
from tradeengine.runtime.heartbeat import Heartbeat
from tradeengine.runtime.journal import DurableWriter, Journal
from tradeengine.runtime.tenant import RuntimeConfig, StrategyCompiler, TenantRuntime
from tradeengine.settings import AnalystKind, BrokerKind, FeedKind, Settings
from tradeengine.store.committer import ProcessCommitter

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from tradeengine.exchange.ccxt_broker import CcxtBroker
    from tradeengine.store.engine import SessionFactory


class TenantConfigError(ValueError):
    """The settings cannot start a tenant; the message names the variable."""


@dataclass(slots=True)
class Tenant:
    """A running tenant: the runtime, its feed, heartbeat and HTTP app."""

    settings: Settings
    runtime: TenantRuntime
    feed: MarketFeed | None
    heartbeat: Heartbeat | None
    app: Starlette | None = None
    feed_task: asyncio.Task[None] | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _shutdown_result: dict[str, Any] | None = None

    def feed_status(self) -> dict[str, Any]:
        if self.feed is None:
            return {"connected": False, "reconnects": 0}
        status = self.feed.status()
        return {
            "connected": status.connected,
            "reconnects": status.reconnects,
            "lastMessageMs": status.last_message_ms,
            "gapCandlesBackfilled": status.gap_candles_backfilled,
            "candlesClosed": status.candles_closed,
            "lastError": status.last_error,
        }

    async def health(self) -> dict[str, Any]:
        rt = self.runtime
        feed = self.feed_status()
        degraded = rt.writer.degraded or not feed["connected"]
        return {
            "status": "stopped" if self.stopped.is_set() else ("degraded" if degraded else "healthy"),
            "mode": "tenant",
            "version": __version__,
            "uptime": round(rt.uptime_s()),
            "activeTraders": rt.snapshot_metrics()["activeTraders"],
            "openPositions": len(rt.state.positions),
            "websocketConnected": feed["connected"],
            "feed": feed,
            "journalPending": rt.writer.pending,
        }

    def metrics(self) -> dict[str, Any]:
        data = self.runtime.snapshot_metrics()
        feed = self.feed_status()
        data["websocketStatus"] = "connected" if feed["connected"] else "disconnected"
        data["feedReconnects"] = feed["reconnects"]
        last = data.get("lastKlineUpdate")
        if isinstance(last, int):
            from tradeengine.clock import ms_to_datetime

            data["lastKlineUpdate"] = ms_to_datetime(last).isoformat().replace("+00:00", "Z")
        stats = self.runtime.queue.stats
        data["analysis"] = {
            "submitted": stats.submitted,
            "completed": stats.completed,
            "failed": stats.failed,
            "retries": stats.retries,
            "dropped": stats.dropped,
            "coalesced": stats.coalesced,
            "p50Ms": stats.latency_ms.quantile(0.5),
            "p99Ms": stats.latency_ms.quantile(0.99),
        }
        data["heartbeats"] = self.heartbeat.sent if self.heartbeat else 0
        return data

    async def resubscribe(self) -> None:
        """After a trader reload: a live feed needs restarting when the symbol set grew."""
        if self.feed is None or self.settings.feed is not FeedKind.CCXT:
            return
        wanted = self.runtime.subscriptions()
        current = getattr(self.feed, "symbols", None), getattr(self.feed, "timeframes", None)
        have = {(s, tf) for s in current[0] or [] for tf in current[1] or []}
        if wanted <= have:
            return
        await self._stop_feed()
        self.feed = _build_feed(self.settings, self.runtime.clock, self.runtime.store, wanted)
        self._start_feed()

    def _start_feed(self) -> None:
        if self.feed is not None:
            if isinstance(self.feed, ReplayFeed):
                self.feed.subscribe_rows(self.runtime.on_rows)  # same stream, no event objects
            else:
                self.feed.subscribe(self.runtime.on_event)
            self.feed_task = asyncio.create_task(self.feed.run(), name="market-feed")

    async def _stop_feed(self) -> None:
        if self.feed is not None:
            await self.feed.stop()
        if self.feed_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self.feed_task, timeout=10)
            self.feed_task = None

    async def shutdown(self, reason: str = "shutdown") -> dict[str, Any]:
        """Stop timers, finish in-flight work, persist, close the feed (idempotent)."""
        if self._shutdown_result is not None:
            return self._shutdown_result
        result = await self.runtime.shutdown(reason)
        await self._stop_feed()
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        await self.runtime.writer.flush()
        self._shutdown_result = result
        self.stopped.set()
        return result


# Replays check every 32nd close the series form skipped: ~1/30 of the check cost, and a series
# form that misses a strategy's matches systematically is caught within a few dozen of them.
SERIES_AUDIT_EVERY = 32


def sim_queue_config(concurrency: int = 4, *, run_in_join: bool = False) -> QueueConfig:
    """Queue settings for simulated time: a replay waits for its analyses at each candle, so nothing
    in the queue may sleep on the SimClock (no rate limit, immediate retries, no breaker pause).
    ``run_in_join``: the waiting replay runs them itself (``QueueConfig.run_in_join``)."""
    return QueueConfig(
        concurrency=concurrency,
        run_in_join=run_in_join,
        rate_per_minute=None,
        backoff_base_s=0.0,
        backoff_max_s=0.0,
        breaker_threshold=1_000_000,
    )


def _user_id(settings: Settings) -> uuid.UUID:
    if not settings.user_id:
        raise TenantConfigError("TRADEENGINE_USER_ID: a tenant needs the id of the user it runs for")
    try:
        return uuid.UUID(settings.user_id)
    except ValueError:
        raise TenantConfigError(f"TRADEENGINE_USER_ID: {settings.user_id!r} is not a UUID") from None


def _build_broker(settings: Settings) -> Broker:
    if settings.broker is BrokerKind.PAPER:
        from tradeengine.exchange.paper import PaperBroker

        return PaperBroker.from_settings(settings)
    from tradeengine.exchange.ccxt_broker import CcxtBroker

    return CcxtBroker.from_settings(settings)


async def _build_analyst(
    settings: Settings,
    resources: contextlib.AsyncExitStack,
    *,
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> Analyst:
    """The tenant's analyst for ``settings.analyst``; whatever it opens is closed by ``resources``.

    AUTO: Gemini when a key is set; else the control plane (HTTP) when this is a provisioned
    tenant (control URL and tenant token both set); else offline.
    """
    kind = settings.analyst
    if kind is AnalystKind.AUTO:
        if settings.gemini_api_key is not None:
            kind = AnalystKind.GEMINI
        elif settings.control_url and settings.tenant_token is not None:
            kind = AnalystKind.HTTP
        else:
            kind = AnalystKind.OFFLINE
    if kind is AnalystKind.OFFLINE:
        from tradeengine.ai.offline import OfflineAnalyst

        return OfflineAnalyst()
    if kind is AnalystKind.GEMINI:
        if settings.gemini_api_key is None:
            raise TenantConfigError("TRADEENGINE_GEMINI_API_KEY: required for TRADEENGINE_ANALYST=gemini")
        from tradeengine.ai.factory import gemini_services

        # The shared quota (Postgres-backed on Postgres), cache, recorder and ai_prompts templates.
        ai = await resources.enter_async_context(
            gemini_services(settings, engine=engine, session_factory=session_factory, data_dir=settings.replay_data_dir)
        )
        return ai.analyst
    if kind is AnalystKind.HTTP:
        missing = [
            name
            for name, value in (
                ("TRADEENGINE_CONTROL_URL", settings.control_url),
                ("TRADEENGINE_TENANT_TOKEN", settings.tenant_token),
            )
            if not value
        ]
        if missing:
            raise TenantConfigError(
                f"{' and '.join(missing)}: required for TRADEENGINE_ANALYST=http (the tenant asks the control plane)"
            )
        from tradeengine.ai.http_analyst import HttpAnalyst

        try:
            http = HttpAnalyst.from_settings(settings)
        except ValueError as exc:
            raise TenantConfigError(f"TRADEENGINE_CONTROL_URL / TRADEENGINE_TENANT_TOKEN: {exc}") from None
        resources.push_async_callback(http.aclose)
        return http
    raise TenantConfigError(f"TRADEENGINE_ANALYST: {kind.value} is not supported by the tenant runtime")


def _compiler(settings: Settings) -> StrategyCompiler:
    from tradeengine.sandbox.strategy import compile_strategy

    def compile_source(source: str) -> Any:
        return compile_strategy(source, time_limit_ms=settings.strategy_time_limit_ms)

    return compile_source


def _replay_clock(settings: Settings) -> SimClock:
    """A SimClock that starts at the replay window, or at the data's first candle.

    Starting at epoch 0 would make every fixed-interval timer tick through fifty years of empty
    boundaries before the first candle arrives.
    """
    from tradeengine.exchange.files import earliest_open_time_ms

    start = settings.replay_start_ms
    if start is None:
        start = earliest_open_time_ms(settings.replay_data_dir) or 0
    return SimClock(start)


def _build_feed(settings: Settings, clock: Clock, store: KlineStore, wanted: set[tuple[str, str]]) -> MarketFeed | None:
    if not wanted:
        return None
    symbols = sorted({s for s, _ in wanted})
    timeframes = sorted({tf for _, tf in wanted})
    if settings.feed is FeedKind.REPLAY:
        return ReplayFeed.from_directory(
            settings.replay_data_dir,
            symbols,
            timeframes,
            clock=clock,
            store=store,
            speed=settings.replay_speed,
            start_ms=settings.replay_start_ms,
            end_ms=settings.replay_end_ms,
        )
    from tradeengine.exchange.ccxt_feed import CcxtFeed

    return CcxtFeed(
        symbols,
        timeframes,
        store=store,
        clock=clock,
        exchange_id=settings.exchange_id,
        rest_url=settings.exchange_rest_url,
        ws_url=settings.exchange_ws_url,
    )


@contextlib.asynccontextmanager
async def build_tenant(
    settings: Settings,
    *,
    clock: Clock | None = None,
    broker: Broker | None = None,
    analyst: Analyst | None = None,
    compile_strategy: StrategyCompiler | None = None,
    start_feed: bool = True,
    feed_factory: Callable[[Clock, KlineStore, set[tuple[str, str]]], MarketFeed | None] | None = None,
    write_behind: int = 0,
    series_audit_every: int | None = None,
) -> AsyncIterator[Tenant]:
    """Open a tenant for ``settings.user_id``: recover state, start timers, feed and heartbeat.

    ``write_behind`` > 0 (backtests on a throwaway database only) buffers that many write batches
    per transaction instead of committing each state change before the next step.
    ``series_audit_every`` is ``RuntimeConfig``'s; None: ``SERIES_AUDIT_EVERY`` on a SimClock
    (replays), 0 (off) otherwise.
    """
    from tradeengine.store.engine import create_engine, create_session_factory

    user_id = _user_id(settings)
    replay = settings.feed is FeedKind.REPLAY
    if clock is None:
        clock = _replay_clock(settings) if replay and settings.replay_speed == 0 else LiveClock()
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    live_broker: CcxtBroker | None = None  # opened here, so closed here (its polling/reconcile/stop-sync loops too)
    if broker is None and settings.broker is not BrokerKind.PAPER:
        # Live/testnet: opt-in check, durable order log and start reconciliation (issue 7).
        from tradeengine.exchange.ccxt_broker import LiveTradingNotAllowedError
        from tradeengine.exchange.live import open_live_broker

        try:
            broker = live_broker = await open_live_broker(settings, factory, user_id)
        except LiveTradingNotAllowedError as exc:
            await engine.dispose()
            raise TenantConfigError(str(exc)) from None
        except BaseException:
            await engine.dispose()
            raise
    # Write-behind merges are committed by a child process, beside the replay (see store.committer).
    committer = ProcessCommitter(settings.database_url) if write_behind > 0 else None
    journal = Journal(settings.journal_path)
    writer = DurableWriter(factory, journal, clock, write_behind=write_behind, committer=committer)
    store = KlineStore()
    simulated = isinstance(clock, SimClock)
    config = RuntimeConfig(
        default_symbols=tuple(settings.default_symbols),
        trade_type=TradeType.PAPER if settings.broker is BrokerKind.PAPER else TradeType.REAL,
        monitor_interval_s=None if simulated else 1.0,
        settle_analyses=simulated,
        series_audit_every=series_audit_every if series_audit_every is not None else SERIES_AUDIT_EVERY * simulated,
        # The offline analyst answers without waiting on anything: the replay runs its analyses
        # itself, in queue order. A model behind a network keeps its concurrent workers.
        queue=sim_queue_config(
            settings.analyses_per_user_concurrency, run_in_join=settings.analyst is AnalystKind.OFFLINE
        )
        if simulated
        else QueueConfig(
            concurrency=settings.analyses_per_user_concurrency,
            rate_per_minute=settings.gemini_requests_per_minute,
        ),
    )
    # Owns what the analyst opened (Gemini client, HTTP session); closed after the runtime drains.
    resources = contextlib.AsyncExitStack()
    if analyst is None:
        try:
            analyst = await _build_analyst(settings, resources, engine=engine, session_factory=factory)
        except BaseException:
            await resources.aclose()
            if live_broker is not None:
                await live_broker.close()
            await writer.close()
            await engine.dispose()
            raise
    runtime = TenantRuntime(
        user_id=user_id,
        clock=clock,
        store=store,
        broker=broker or _build_broker(settings),
        analyst=analyst,
        session_factory=factory,
        writer=writer,
        compile_strategy=compile_strategy or _compiler(settings),
        config=config,
    )
    if settings.broker is not BrokerKind.PAPER:
        from tradeengine.exchange.ccxt_broker import CcxtBroker
        from tradeengine.exchange.live import attach_runtime_state

        if isinstance(runtime.broker, CcxtBroker):  # exchange-stop fills reach the in-memory positions
            attach_runtime_state(runtime.broker, factory, runtime.state, runtime.executor.lock)
    heartbeat: Heartbeat | None = None
    tenant: Tenant | None = None
    try:
        await runtime.start()
        # feed_factory: backtests build their own replay window (issue 10) on the runtime's store.
        build_feed = feed_factory or (lambda c, s, w: _build_feed(settings, c, s, w))
        feed = build_feed(clock, store, runtime.subscriptions())
        heartbeat = Heartbeat(factory, clock if not simulated else LiveClock(), user_id, settings.heartbeat_interval_s)
        tenant = Tenant(settings=settings, runtime=runtime, feed=feed, heartbeat=heartbeat)
        from tradeengine.api.tenant import build_tenant_api

        token = settings.tenant_token.get_secret_value() if settings.tenant_token else None
        tenant.app = build_tenant_api(tenant, token)
        heartbeat.start()
        if start_feed:
            tenant._start_feed()
        yield tenant
    finally:
        try:
            if tenant is not None:
                await tenant.shutdown("process exit")
            elif heartbeat is not None:
                await heartbeat.stop()
        except Exception:
            logger.exception("tenant shutdown failed")
        if live_broker is not None:
            try:
                await live_broker.close()
            except Exception:
                logger.exception("closing the live broker failed")
        await writer.close()
        try:
            await resources.aclose()
        except Exception:
            logger.exception("closing the analyst failed")
        await engine.dispose()


def build_tenant_app(settings: Settings) -> Any:
    """ASGI app for ``serve --mode tenant``: the lifespan opens the tenant, requests go to its API."""
    state: dict[str, Tenant] = {}
    stack = contextlib.AsyncExitStack()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    try:
                        state["tenant"] = await stack.enter_async_context(build_tenant(settings))
                    except Exception as exc:
                        logger.exception("tenant failed to start")
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await stack.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        tenant = state.get("tenant")
        if tenant is None or tenant.app is None:
            raise RuntimeError("tenant is not running")
        await tenant.app(scope, receive, send)

    return app
