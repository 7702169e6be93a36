# MACD trend (4h built from 1h candles): join an established uptrend on a 1h pullback.
# Runs inside the strategy sandbox: helpers such as get_latest_macd are provided there.
# ruff: noqa: F821
# mypy: ignore-errors


def check_signal(symbol, ticker, klines):
    slow = klines["4h"]
    fast = klines["1h"]
    if len(slow) < 35 or len(fast) < 60:  # MACD(12, 26, 9) needs 34 candles
        return False
    macd, signal, histogram = get_latest_macd(slow, 12, 26, 9)
    trend_up = macd > signal and histogram > 0 and macd > 0
    ema = get_latest_ema(fast, 50)
    rsi = get_latest_rsi(fast, 14)
    # In the 4h uptrend, price back near the 1h EMA(50) without being overbought.
    return trend_up and fast.close[-1] > ema and fast.close[-1] < ema * 1.01 and rsi < 60
