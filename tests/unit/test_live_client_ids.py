"""Protective client order ids: deterministic, within Binance's 36 characters, distinct from the runtime's."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from tradeengine.domain.enums import OrderPurpose
from tradeengine.exchange.ccxt_broker import parse_protective_client_order_id, protective_client_order_id
from tradeengine.runtime.state import parse_client_order_id


@given(st.uuids(), st.sampled_from([OrderPurpose.STOP_LOSS, OrderPurpose.TAKE_PROFIT]), st.integers(0, 999))
def test_round_trip_and_length(position_id: uuid.UUID, purpose: OrderPurpose, attempt: int) -> None:
    value = protective_client_order_id(position_id, purpose, attempt)
    assert len(value) <= 36
    assert value == protective_client_order_id(position_id, purpose, attempt)
    assert parse_protective_client_order_id(value) == (position_id, purpose, attempt)
    # The runtime's crash recovery must not mistake a resting stop for one of its market steps.
    assert parse_client_order_id(value) is None


def test_foreign_ids_are_not_ours() -> None:
    for value in ("web_manual_1", "te-abc-open", "tep-short-sl0", "tep-" + "a" * 26 + "-xx1"):
        assert parse_protective_client_order_id(value) is None
