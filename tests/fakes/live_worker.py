"""A live-execution process for kill -9 tests: ``python live_worker.py protect-then-place|place|recover``.

Settings come from ``TRADEENGINE_*`` (broker, keys, exchange URL, database, user id) like a
tenant's. ``place`` records and sends one market buy (``LIVE_CLIENT_ID``, ``LIVE_SIGNAL_ID``,
``LIVE_TRADER_ID``, ``LIVE_QUANTITY``); ``protect-then-place`` first places a stop-loss of
``LIVE_STOP_QUANTITY`` for ``LIVE_POSITION_ID`` at ``LIVE_STOP``; ``recover`` is a restart:
reconcile once, then resume the ``place`` intent the way the runtime resumes a pending order
(same client id). Each step prints one JSON line; the test kills it with SIGKILL at the worst moment.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from decimal import Decimal

from tradeengine.domain.enums import OrderPurpose, OrderType, TradeSide
from tradeengine.exchange.broker import OrderRequest
from tradeengine.exchange.ccxt_broker import CcxtBroker
from tradeengine.exchange.order_log import OrderLinks, OrderLog
from tradeengine.exchange.reconcile import Reconciler
from tradeengine.settings import load_settings
from tradeengine.store.engine import create_engine, create_session_factory


def say(**values: object) -> None:
    print(json.dumps(values, default=str), flush=True)


async def main(command: str) -> None:
    settings = load_settings()
    assert settings.user_id is not None
    user_id = uuid.UUID(settings.user_id)
    engine = create_engine(settings)
    factory = create_session_factory(engine)
    broker = CcxtBroker.from_settings(settings, order_log=OrderLog(factory, user_id), timeout_ms=60_000)
    broker.retry_delay_s = 0.05
    try:
        if command == "protect-then-place":
            state = await broker.place_protective(
                uuid.UUID(os.environ["LIVE_POSITION_ID"]),
                "BTC/USDT",
                TradeSide.SELL,
                Decimal(os.environ["LIVE_STOP_QUANTITY"]),
                OrderPurpose.STOP_LOSS,
                Decimal(os.environ["LIVE_STOP"]),
            )
            say(step="protected", status=state.status.value, clientOrderId=state.client_order_id)
            command = "place"
        request = OrderRequest(
            client_order_id=os.environ["LIVE_CLIENT_ID"],
            symbol="BTC/USDT",
            side=TradeSide.BUY,
            type=OrderType.MARKET,
            quantity=Decimal(os.environ["LIVE_QUANTITY"]),
            purpose=OrderPurpose.ENTRY,
        )
        links = OrderLinks(
            signal_id=uuid.UUID(os.environ["LIVE_SIGNAL_ID"]),
            trader_id=uuid.UUID(os.environ["LIVE_TRADER_ID"]),
        )
        if command == "place":
            await OrderLog(factory, user_id).ensure_pending(request, links)
            say(step="recorded")
            state = await broker.place_order(request, links)
            say(step="placed", status=state.status.value)
        elif command == "recover":
            report = await Reconciler(broker, factory, user_id, symbols=["BTC/USDT"]).run_once()
            say(
                step="reconciled",
                fills=report.fills_applied,
                opened=report.positions_opened,
                closed=report.positions_closed,
                events=report.events,
            )
            state = await broker.place_order(request, links)  # the resumed intent: must not resend
            say(step="resumed", status=state.status.value, filled=str(state.filled_quantity))
    finally:
        await broker.close()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
