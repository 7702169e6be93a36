# RSI reversal (1h): buy a washed-out market once it stops falling.
# Runs inside the strategy sandbox: helpers such as get_latest_rsi are provided there.
# ruff: noqa: F821
# mypy: ignore-errors


def check_signal(symbol, ticker, klines):
    candles = klines["1h"]
    if len(candles) < 50:
        return False
    rsi = get_latest_rsi(candles, 14)
    closes = candles.close
    # Oversold, and the last candle closed up: the selling is pausing, not accelerating.
    return rsi < 30 and closes[-1] > closes[-2]


def signal_series(symbol, klines):
    # The same condition for every close of a replay at once (backtests skip check_signal where
    # this is false). ta.rsi gives, close by close, what get_latest_rsi gives on check_signal's view.
    candles = klines["1h"]
    return (ta.rsi(candles, 14) < 30) & (candles.close > candles.close.shift(1))
