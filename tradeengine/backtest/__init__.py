"""Backtests on the live code path: the tenant runtime on a SimClock with the replay feed and the
paper broker; metrics from what it stored; CSV/PNG/JSON/HTML reports.

Public API: ``tradeengine.backtest.runner`` (``run_backtest``, ``BacktestConfig``, ``TraderSpec``),
``tradeengine.backtest.report`` (``write_reports``), ``tradeengine.backtest.metrics`` (``summarize``).
This package module stays import-light so the CLI can register its commands cheaply.
"""
