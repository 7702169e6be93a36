"""Helpers for live-execution tests: the fake Binance with an account, settings, seeded rows."""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import numpy as np
from fakes.binance import FakeBinance
from fakes.binance_account import FakeBinanceAccount
from fakes.store_rows import T0, make_position, make_signal, make_trader, make_user
from pydantic import SecretStr

from tradeengine.exchange.files import load_freqtrade_json
from tradeengine.indicators.klines import Klines
from tradeengine.settings import BrokerKind, Settings
from tradeengine.store.engine import SessionFactory
from tradeengine.store.models import Trade
from tradeengine.store.uow import UnitOfWork

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "market"
START = 1610236800000  # 2021-01-10 00:00 UTC
API_KEY = "live-test-key"
SECRET = "live-test-secret"


@functools.cache
def candles(count: int = 50) -> dict[tuple[str, str], Klines]:
    klines = load_freqtrade_json(DATA / "BTC_USDT-5m.json")
    first = int(np.searchsorted(klines.open_time, START))
    rows = slice(first, first + count)
    btc = Klines(
        klines.open_time[rows],
        klines.open[rows],
        klines.high[rows],
        klines.low[rows],
        klines.close[rows],
        klines.volume[rows],
    )
    return {("BTC/USDT", "5m"): btc}


async def start_exchange(
    balances: dict[str, Decimal] | None = None,
) -> tuple[FakeBinance, FakeBinanceAccount]:
    data = candles()
    fake = FakeBinance(data, now_ms=int(data[("BTC/USDT", "5m")].open_time[-1]), push_interval_s=None)
    account = FakeBinanceAccount(
        fake,
        api_key=API_KEY,
        secret=SECRET,
        balances=balances or {"USDT": Decimal("10000"), "BTC": Decimal("0")},
    ).install()
    account.prices["BTCUSDT"] = Decimal("40000")
    await fake.start()
    return fake, account


def live_settings(
    fake: FakeBinance,
    db_url: str,
    *,
    broker: BrokerKind = BrokerKind.LIVE,
    user_id: uuid.UUID | None = None,
    **extra: object,
) -> Settings:
    return Settings(
        broker=broker,
        exchange_api_key=SecretStr(API_KEY),
        exchange_secret=SecretStr(SECRET),
        exchange_rest_url=fake.base_url,
        database_url=db_url,
        user_id=str(user_id) if user_id else None,
        **extra,  # type: ignore[arg-type]
    )


@dataclass
class Seeded:
    user_id: uuid.UUID
    trader_id: uuid.UUID
    signal_id: uuid.UUID
    position_id: uuid.UUID | None


async def seed(
    factory: SessionFactory,
    *,
    real_trading: bool = True,
    position_size: Decimal | None = None,
    entry: Decimal = Decimal("40000"),
) -> Seeded:
    """A user (opted in to real trading by default), a trader, a signal and optionally a long."""
    async with UnitOfWork(factory) as uow:
        user = uow.users.add(make_user(real_trading_enabled=real_trading))
        trader = uow.traders.add(make_trader(user, trade_type="real"))
        signal = uow.signals.add(make_signal(trader, symbol="BTC/USDT", status="position_open"))
        position = None
        if position_size is not None:
            fee = (entry * position_size * Decimal("0.001")).quantize(Decimal("0.00000001"))
            position = uow.positions.add(
                make_position(
                    signal,
                    symbol="BTC/USDT",
                    size=position_size,
                    entry_price=entry,
                    trade_type="real",
                    fees=fee,
                    stop_loss=Decimal("38000"),
                )
            )
            await uow.flush()
            uow.trades.add(
                Trade(
                    position_id=position.id,
                    user_id=user.id,
                    type="real",
                    side="BUY",
                    symbol="BTC/USDT",
                    price=entry,
                    quantity=position_size,
                    fee=fee,
                    fee_asset="USDT",
                    status="filled",
                    executed_at=T0,
                )
            )
        await uow.commit()
        return Seeded(user.id, trader.id, signal.id, position.id if position else None)
