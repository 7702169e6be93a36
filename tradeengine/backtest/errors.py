"""Errors a backtest or demo user can act on."""


class BacktestError(ValueError):
    """Bad backtest input; the message names the option and how to fix it."""
