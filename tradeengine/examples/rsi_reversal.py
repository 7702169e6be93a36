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
