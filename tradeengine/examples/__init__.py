"""Example strategies for the demo and for trying ``tradeengine backtest``.

Each ``*.py`` file here is strategy source for the sandbox (a ``check_signal`` function using the
helpers), not a module to import. ``EXAMPLES`` holds what a trader needs besides the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True, slots=True)
class ExampleStrategy:
    name: str
    file: str
    timeframes: tuple[str, ...]
    check_interval: str
    reanalysis_interval: str
    ai_instructions: str
    description: str

    @property
    def path(self) -> Path:
        return HERE / self.file

    @property
    def source(self) -> str:
        return self.path.read_text()


EXAMPLES: tuple[ExampleStrategy, ...] = (
    ExampleStrategy(
        name="RSI reversal 1h",
        file="rsi_reversal.py",
        timeframes=("1h",),
        check_interval="1h_close",
        reanalysis_interval="4h_close",
        ai_instructions=(
            "Long only. Take oversold bounces when the broader move is not in free fall; stop below the "
            "recent swing low, target the previous resistance. Skip if volatility is extreme."
        ),
        description="RSI(14) below 30 and the last 1h candle closed up.",
    ),
    ExampleStrategy(
        name="MACD trend 4h",
        file="macd_trend.py",
        timeframes=("4h", "1h"),
        check_interval="1h_close",
        reanalysis_interval="4h_close",
        ai_instructions=(
            "Long only, trend following. Enter pullbacks in a 4h uptrend; keep the stop under the 1h EMA(50) "
            "area; trail the stop once the trade is 2R in profit."
        ),
        description="4h MACD above signal and zero; 1h close within 1% above EMA(50), RSI below 60.",
    ),
    ExampleStrategy(
        name="Bollinger breakout 5m",
        file="bollinger_breakout.py",
        timeframes=("5m",),
        check_interval="5m_close",
        reanalysis_interval="1h_close",
        ai_instructions=(
            "Long only. Trade breakouts from tight ranges on strong volume; tight stop back inside the band, "
            "take profit at twice the risk. Close early if momentum fades."
        ),
        description="Close above the upper band (20, 2) with volume over twice its 20-candle average, bands "
        "narrower than 3%.",
    ),
)


def example(name_or_file: str) -> ExampleStrategy:
    """Find an example by name or file name (``rsi_reversal`` or ``rsi_reversal.py``)."""
    wanted = name_or_file.removesuffix(".py").lower()
    for item in EXAMPLES:
        if wanted in (item.name.lower(), item.file.removesuffix(".py")):
            return item
    raise KeyError(f"no example strategy {name_or_file!r}; known: {', '.join(e.file for e in EXAMPLES)}")
