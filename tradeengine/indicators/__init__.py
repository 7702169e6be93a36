# ruff: noqa: N816 - the camelCase aliases are the seed's helper names, spelled as strategy code uses them
"""Technical indicators: pure numpy full-series functions and the helper API strategy code calls.

``HELPERS`` maps every helper name strategy code may use (snake_case and the seed's camelCase
spelling) to its function; the sandbox injects exactly this mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tradeengine.indicators.core import (
    adx,
    aroon,
    atr,
    bollinger_bands,
    cci,
    donchian_channels,
    ema,
    keltner_channels,
    macd,
    obv,
    roc,
    rsi,
    sma,
    stochastic,
    volume_change,
    volume_ma,
    vwap,
    williams_r,
    wma,
)
from tradeengine.indicators.helpers import (
    KlinesInput,
    clear_cache,
    get_closes,
    get_highest_high,
    get_highs,
    get_latest_adx,
    get_latest_aroon,
    get_latest_atr,
    get_latest_bollinger_bands,
    get_latest_cci,
    get_latest_donchian_channels,
    get_latest_ema,
    get_latest_keltner_channels,
    get_latest_macd,
    get_latest_obv,
    get_latest_roc,
    get_latest_rsi,
    get_latest_sma,
    get_latest_stochastic,
    get_latest_volume,
    get_latest_volume_change,
    get_latest_volume_ma,
    get_latest_vwap,
    get_latest_williams_r,
    get_latest_wma,
    get_lowest_low,
    get_lows,
    get_opens,
    get_price_change,
    get_price_change_percent,
    get_volumes,
)
from tradeengine.indicators.klines import Klines

# The seed's camelCase names ("Helper Functions Provided to User Code"), exactly as spelled there.
getLatestSMA = get_latest_sma
getLatestEMA = get_latest_ema
getLatestWMA = get_latest_wma
getLatestVWAP = get_latest_vwap
getLatestRSI = get_latest_rsi
getLatestMACD = get_latest_macd
getLatestStochastic = get_latest_stochastic
getLatestCCI = get_latest_cci
getLatestWilliamsR = get_latest_williams_r
getLatestROC = get_latest_roc
getLatestBollingerBands = get_latest_bollinger_bands
getLatestATR = get_latest_atr
getLatestKeltnerChannels = get_latest_keltner_channels
getLatestDonchianChannels = get_latest_donchian_channels
getLatestVolume = get_latest_volume
getLatestVolumeChange = get_latest_volume_change
getLatestOBV = get_latest_obv
getLatestVolumeMA = get_latest_volume_ma
getLatestADX = get_latest_adx
getLatestAroon = get_latest_aroon
getPriceChange = get_price_change
getPriceChangePercent = get_price_change_percent
getHighestHigh = get_highest_high
getLowestLow = get_lowest_low
getCloses = get_closes
getOpens = get_opens
getHighs = get_highs
getLows = get_lows
getVolumes = get_volumes

HELPERS: dict[str, Callable[..., Any]] = {
    "get_latest_sma": get_latest_sma,
    "get_latest_ema": get_latest_ema,
    "get_latest_wma": get_latest_wma,
    "get_latest_vwap": get_latest_vwap,
    "get_latest_rsi": get_latest_rsi,
    "get_latest_macd": get_latest_macd,
    "get_latest_stochastic": get_latest_stochastic,
    "get_latest_cci": get_latest_cci,
    "get_latest_williams_r": get_latest_williams_r,
    "get_latest_roc": get_latest_roc,
    "get_latest_bollinger_bands": get_latest_bollinger_bands,
    "get_latest_atr": get_latest_atr,
    "get_latest_keltner_channels": get_latest_keltner_channels,
    "get_latest_donchian_channels": get_latest_donchian_channels,
    "get_latest_volume": get_latest_volume,
    "get_latest_volume_change": get_latest_volume_change,
    "get_latest_obv": get_latest_obv,
    "get_latest_volume_ma": get_latest_volume_ma,
    "get_latest_adx": get_latest_adx,
    "get_latest_aroon": get_latest_aroon,
    "get_price_change": get_price_change,
    "get_price_change_percent": get_price_change_percent,
    "get_highest_high": get_highest_high,
    "get_lowest_low": get_lowest_low,
    "get_closes": get_closes,
    "get_opens": get_opens,
    "get_highs": get_highs,
    "get_lows": get_lows,
    "get_volumes": get_volumes,
    "getLatestSMA": getLatestSMA,
    "getLatestEMA": getLatestEMA,
    "getLatestWMA": getLatestWMA,
    "getLatestVWAP": getLatestVWAP,
    "getLatestRSI": getLatestRSI,
    "getLatestMACD": getLatestMACD,
    "getLatestStochastic": getLatestStochastic,
    "getLatestCCI": getLatestCCI,
    "getLatestWilliamsR": getLatestWilliamsR,
    "getLatestROC": getLatestROC,
    "getLatestBollingerBands": getLatestBollingerBands,
    "getLatestATR": getLatestATR,
    "getLatestKeltnerChannels": getLatestKeltnerChannels,
    "getLatestDonchianChannels": getLatestDonchianChannels,
    "getLatestVolume": getLatestVolume,
    "getLatestVolumeChange": getLatestVolumeChange,
    "getLatestOBV": getLatestOBV,
    "getLatestVolumeMA": getLatestVolumeMA,
    "getLatestADX": getLatestADX,
    "getLatestAroon": getLatestAroon,
    "getPriceChange": getPriceChange,
    "getPriceChangePercent": getPriceChangePercent,
    "getHighestHigh": getHighestHigh,
    "getLowestLow": getLowestLow,
    "getCloses": getCloses,
    "getOpens": getOpens,
    "getHighs": getHighs,
    "getLows": getLows,
    "getVolumes": getVolumes,
    "Klines": Klines,
}

__all__ = [
    "HELPERS",
    "Klines",
    "KlinesInput",
    "adx",
    "aroon",
    "atr",
    "bollinger_bands",
    "cci",
    "clear_cache",
    "donchian_channels",
    "ema",
    "keltner_channels",
    "macd",
    "obv",
    "roc",
    "rsi",
    "sma",
    "stochastic",
    "volume_change",
    "volume_ma",
    "vwap",
    "williams_r",
    "wma",
    *HELPERS,
]
