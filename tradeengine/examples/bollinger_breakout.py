# Bollinger breakout (5m): a close above the upper band on expanding volume.
# Runs inside the strategy sandbox: helpers such as get_latest_bollinger_bands are provided there.
# ruff: noqa: F821
# mypy: ignore-errors


def check_signal(symbol, ticker, klines):
    candles = klines["5m"]
    if len(candles) < 30:
        return False
    upper, middle, lower = get_latest_bollinger_bands(candles, 20, 2.0)
    volume = get_latest_volume(candles)
    average = get_latest_volume_ma(candles, 20)
    width = (upper - lower) / middle
    # Breakouts out of a tight range only; wide bands mean the move already happened.
    return candles.close[-1] > upper and volume > 2.0 * average and width < 0.03


def signal_series(symbol, klines):
    # The same condition for every close of a replay at once (backtests skip check_signal where
    # this is false). The ta helpers give, close by close, what the get_latest_* helpers give.
    candles = klines["5m"]
    upper, middle, lower = ta.bollinger_bands(candles, 20, 2.0)
    average = ta.sma(candles.volume, 20)
    width = (upper - lower) / middle
    return (candles.close > upper) & (candles.volume > 2.0 * average) & (width < 0.03)
