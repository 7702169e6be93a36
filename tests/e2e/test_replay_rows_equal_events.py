"""The replay's row delivery (``subscribe_rows`` -> ``TenantRuntime.on_rows``, what backtests use)
stores exactly what its event delivery (``subscribe`` -> ``on_event``, what a live feed uses) does.

Two users with identical traders replay the same real candles, one per path. The traders read the
ticker (24h volume and change), a second timeframe, and have stops, take-profits and trailing
stops, so prices, tickers, the monitor, closes and re-analyses are all exercised.

The event replay's analyst also reads market data's formatted rows (as Gemini's does), so the
runtime formats all of them there and only the snapshot's few on the row paths (the offline
analyst reads candle columns): decisions and stored snapshots must not differ.

A third replay takes the row path with write-behind (what backtests on a throwaway database do):
its merged transactions (``batch.coalesce``) must leave exactly the rows that committing every
batch leaves.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

from fakes.runtime_world import make_runtime, seed_user
from sqlalchemy import select

from tradeengine.ai.offline import OfflineAnalyst
from tradeengine.clock import SimClock
from tradeengine.exchange.paper import PaperBroker
from tradeengine.exchange.replay import ReplayFeed
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import AnalysisHistory, Order, Position, Signal, SignalAnalysis, Trade, Trader

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
DAY = 86_400_000
T0 = 1_606_780_800_000  # 2020-12-01, first candle in the files
START, END = T0 + 3 * DAY, T0 + 5 * DAY  # 112 signals, 230 trades, every close reason
SYMBOLS = ["BTC/USDT", "ETH/USDT", "SOL/USDT"]

DIP_ON_VOLUME = """
def check_signal(symbol, ticker, klines):
    k = klines["5m"]
    hour = klines["1h"]
    if len(k) < 30 or len(hour) < 2 or ticker["volume24h"] is None:
        return False
    falling_day = ticker["priceChange24h"] < 0
    return k.close[-1] < get_latest_sma(k, 20) * 0.995 and (falling_day or hour.close[-1] < hour.open[-1])
"""
HOURLY_RSI = """
def check_signal(symbol, ticker, klines):
    return get_latest_rsi(klines["1h"], 14) < 40
"""
TRADERS: list[dict[str, Any]] = [
    {
        "name": "dip",
        "signal_code": DIP_ON_VOLUME,
        "timeframes": ["5m", "1h"],
        "symbols": SYMBOLS,
        "check_interval": "5m_close",
        "reanalysis_interval": "1h_close",
        "stop_loss_pct": Decimal("1.5"),
        "take_profit_pct": Decimal(3),
        "max_open_positions": 3,
    },
    {
        "name": "rsi",
        "signal_code": HOURLY_RSI,
        "timeframes": ["1h"],
        "symbols": SYMBOLS,
        "check_interval": "1h_close",
        "reanalysis_interval": "1h",
        "stop_loss_pct": Decimal(2),
        "trailing_stop_pct": Decimal(1),
        "max_open_positions": 2,
    },
]


class _RowReadingAnalyst(OfflineAnalyst):
    reads_kline_rows = True


async def _replay(factory: SessionFactory, tmp_path: Path, *, rows: bool, write_behind: int = 0) -> uuid.UUID:
    user_id, _ = await seed_user(factory, TRADERS)
    clock = SimClock(START)
    feed = ReplayFeed.from_directory(DATA, SYMBOLS, ["5m", "1h"], clock=clock, start_ms=START, end_ms=END)
    rt = make_runtime(
        factory,
        user_id,
        clock,
        tmp_path / f"{'rows' if rows else 'events'}-{write_behind}",
        analyst=OfflineAnalyst() if rows else _RowReadingAnalyst(),
        broker=PaperBroker({"USDT": Decimal(10000)}),
        store=feed.store,
        write_behind=write_behind,
    )
    await rt.start()
    if rows:
        feed.subscribe_rows(rt.on_rows)
    else:
        feed.subscribe(rt.on_event)
    await feed.run()
    await rt.flush()
    await rt.shutdown()
    await rt.writer.close()
    return user_id


async def _stored(factory: SessionFactory, user_id: uuid.UUID) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the runtime wrote for a user, ids replaced by what they point at."""
    async with factory() as session:

        async def rows(model: Any) -> list[Any]:
            return list((await session.execute(select(model).filter_by(user_id=user_id))).scalars())

        names = {t.id: t.name for t in await rows(Trader)}
        signals = await rows(Signal)
        signal_key = {s.id: (names[s.trader_id], s.symbol, s.timestamp) for s in signals}
        positions = await rows(Position)
        position_key = {p.id: (names[p.trader_id], p.symbol, p.opened_at) for p in positions}
        return {
            "signals": sorted(
                (
                    *signal_key[s.id],
                    s.status,
                    s.trigger_price,
                    s.current_price,
                    s.closed_at,
                    s.close_reason,
                    s.timeframe,
                    s.updated_at,
                )
                for s in signals
            ),
            "analyses": sorted(
                (signal_key[a.signal_id], a.timestamp, a.decision, a.confidence, a.reasoning, str(a.market_data))
                for a in await rows(AnalysisHistory)
            ),
            "signal_analyses": sorted(
                (signal_key[a.signal_id], a.decision, a.confidence, a.reasoning, a.created_at)
                for a in await rows(SignalAnalysis)
            ),
            "orders": sorted(
                (
                    signal_key.get(o.signal_id, ()),  # () sorts with the tuples; None would not
                    position_key.get(o.position_id, ()),
                    o.purpose,
                    o.side,
                    o.status,
                    o.quantity,
                    o.filled_quantity,
                    o.average_price,
                    o.fee,
                    o.created_at,
                    o.updated_at,
                )
                for o in await rows(Order)
            ),
            "positions": sorted(
                (
                    *position_key[p.id],
                    p.side,
                    p.status,
                    p.entry_price,
                    p.exit_price,
                    p.size,
                    p.stop_loss,
                    p.take_profit,
                    p.fees,
                    p.pnl,
                    p.highest_price,
                    p.lowest_price,
                    p.version,
                    p.updated_at,
                    p.closed_at,
                    p.close_reason,  # last: the test reads it as p[-1]
                )
                for p in positions
            ),
            "trades": sorted(
                (position_key[t.position_id], t.side, t.status, t.price, t.quantity, t.fee, t.executed_at)
                for t in await rows(Trade)
            ),
        }


async def test_row_delivery_stores_what_event_delivery_stores(session_factory: SessionFactory, tmp_path: Path) -> None:
    by_events = await _stored(session_factory, await _replay(session_factory, tmp_path, rows=False))
    by_rows = await _stored(session_factory, await _replay(session_factory, tmp_path, rows=True))
    # The workload is not trivial: both traders signal, positions open and close several ways.
    assert len({s[0] for s in by_events["signals"]}) == 2
    assert len(by_events["trades"]) >= 100  # 230 over these two days
    assert {p[-1] for p in by_events["positions"]} >= {"stop_loss", "take_profit", "trailing_stop", "ai_close"}
    for table in by_events:
        assert by_rows[table] == by_events[table], table
    merged = await _stored(session_factory, await _replay(session_factory, tmp_path, rows=True, write_behind=16))
    for table in by_events:
        assert merged[table] == by_events[table], f"{table} with write-behind"
