"""A tenant replaying files starts its simulated clock at the data, not at epoch 0."""

from __future__ import annotations

from pathlib import Path

from tradeengine.exchange.files import earliest_open_time_ms
from tradeengine.runtime.bootstrap import _replay_clock
from tradeengine.settings import FeedKind, load_settings

MARKET = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market"


def test_earliest_open_time_is_the_first_row_over_all_files(tmp_path: Path) -> None:
    (tmp_path / "AAA_USDT-1h.json").write_text("[[1700003600000,1,1,1,1,1],[1700007200000,1,1,1,1,1]]")
    (tmp_path / "BBB_USDT-5m.json").write_text(" [ [1700000300000, 2, 2, 2, 2, 0]]")
    (tmp_path / "notes.json").write_text('{"not": "candles"}')
    assert earliest_open_time_ms(tmp_path) == 1700000300000
    assert earliest_open_time_ms(tmp_path / "missing") is None


def test_real_data_starts_on_2020_12_01() -> None:
    assert earliest_open_time_ms(MARKET) == 1606780800000


def test_replay_clock_starts_at_the_window_or_the_data(tmp_path: Path) -> None:
    (tmp_path / "AAA_USDT-1h.json").write_text("[[1700003600000,1,1,1,1,1]]")
    from_data = load_settings(feed=FeedKind.REPLAY, replay_data_dir=tmp_path)
    assert _replay_clock(from_data).now_ms() == 1700003600000
    windowed = load_settings(feed=FeedKind.REPLAY, replay_data_dir=tmp_path, replay_start_ms=1800000000000)
    assert _replay_clock(windowed).now_ms() == 1800000000000
