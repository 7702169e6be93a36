"""Report writers: trades CSV, equity/drawdown PNG, JSON summary, one self-contained HTML page,
and the rich summary table the CLI prints."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from rich.table import Table

from tradeengine.backtest.metrics import EquityCurve, Summary, TradeRecord

CSV_COLUMNS = (
    "position_id",
    "trader",
    "symbol",
    "side",
    "opened_at",
    "closed_at",
    "entry_price",
    "exit_price",
    "quantity",
    "fees",
    "pnl",
    "pnl_percent",
    "close_reason",
)


@dataclass(frozen=True, slots=True)
class ReportFiles:
    trades_csv: Path
    equity_png: Path
    summary_json: Path
    report_html: Path

    def as_dict(self) -> dict[str, str]:
        return {
            "tradesCsv": str(self.trades_csv),
            "equityPng": str(self.equity_png),
            "summaryJson": str(self.summary_json),
            "reportHtml": str(self.report_html),
        }


def _cents(value: Decimal) -> str:
    """Money for people: 2 decimals, thousands separators, never "-0.00"."""
    return f"{value.quantize(Decimal('0.01')) + 0:,.2f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.2f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_rows(summary: Summary) -> list[tuple[str, str]]:
    """(label, value) pairs shared by the terminal table and the HTML page."""
    return [
        ("Period", f"{summary.start:%Y-%m-%d %H:%M} → {summary.end:%Y-%m-%d %H:%M} UTC"),
        ("Candles replayed", f"{summary.candles:,}"),
        ("Signals / analyses", f"{summary.signals:,} / {summary.analyses:,}"),
        ("Trades (closed)", str(summary.trades)),
        ("Open at end", str(summary.open_positions)),
        ("Win rate", _pct(summary.win_rate)),
        ("Initial balance", _cents(summary.initial_balance)),
        ("Final equity", _cents(summary.final_equity)),
        ("Total return", _pct(summary.total_return)),
        ("Annualized return", _pct(summary.annualized_return)),
        ("Max drawdown", _pct(summary.max_drawdown)),
        ("Sharpe (daily, ann.)", _num(summary.sharpe)),
        ("Sortino (daily, ann.)", _num(summary.sortino)),
        ("Profit factor", _num(summary.profit_factor)),
        ("Realized P&L", _cents(summary.realized_pnl)),
        ("Unrealized P&L", _cents(summary.unrealized_pnl)),
        ("Fees paid", _cents(summary.fees)),
        ("Exposure time", _pct(summary.exposure)),
        (
            "Avg trade duration",
            "n/a" if summary.average_trade_hours is None else f"{summary.average_trade_hours:.1f} h",
        ),
        (
            "Best / worst trade",
            "n/a"
            if summary.best_trade is None
            else f"{_cents(summary.best_trade)} / {_cents(summary.worst_trade or summary.best_trade)}",
        ),
    ]


def summary_table(summary: Summary) -> Table:
    table = Table(title="Backtest summary", show_header=False, title_justify="left")
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    return table


def per_symbol_table(summary: Summary) -> Table:
    table = Table(title="Per symbol", title_justify="left")
    for name in ("symbol", "trades", "win rate", "P&L", "fees"):
        table.add_column(name, justify="left" if name == "symbol" else "right")
    for s in summary.per_symbol:
        table.add_row(s.symbol, str(s.trades), _pct(s.win_rate), _cents(s.pnl), _cents(s.fees))
    return table


def write_trades_csv(path: Path, trades: Sequence[TradeRecord]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for trade in trades:
            writer.writerow(trade.as_row())
    return path


def equity_png(curve: EquityCurve, title: str = "Equity and drawdown") -> bytes:
    """Render the equity curve over the drawdown (Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import numpy as np

    times = (curve.time_ms.astype("datetime64[ms]")) if len(curve.time_ms) else np.array([], "datetime64[ms]")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    try:
        top.plot(times, curve.equity, color="#1f77b4", linewidth=1.2)
        top.set_ylabel("equity (quote)")
        top.set_title(title)
        top.grid(True, alpha=0.3)
        bottom.fill_between(times, -curve.drawdown * 100, 0, color="#d62728", alpha=0.5, linewidth=0)
        bottom.set_ylabel("drawdown %")
        bottom.grid(True, alpha=0.3)
        bottom.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))  # type: ignore[no-untyped-call]
        fig.autofmt_xdate()
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def render_html(summary: Summary, trades: Sequence[TradeRecord], png: bytes, title: str) -> str:
    """One page with everything inline (the PNG as a base64 data URI): mail it, open it offline."""
    esc = html.escape
    rows = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in summary_rows(summary))
    symbols = "\n".join(
        f"<tr><td>{esc(s.symbol)}</td><td>{s.trades}</td><td>{esc(_pct(s.win_rate))}</td>"
        f"<td>{_cents(s.pnl)}</td><td>{_cents(s.fees)}</td></tr>"
        for s in summary.per_symbol
    )
    trade_rows = "\n".join(
        "<tr>" + "".join(f"<td>{esc(t.as_row()[c])}</td>" for c in CSV_COLUMNS[1:]) + "</tr>" for t in trades
    )
    head = "".join(f"<th>{esc(c)}</th>" for c in CSV_COLUMNS[1:])
    image = base64.b64encode(png).decode("ascii")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}
th,td{{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}}
th{{text-align:left}}.trades td{{font-size:12px}}img{{max-width:100%}}
</style></head><body>
<h1>{esc(title)}</h1>
<h2>Summary</h2><table class="summary">{rows}</table>
<h2>Equity and drawdown</h2><img alt="equity curve and drawdown" src="data:image/png;base64,{image}">
<h2>Per symbol</h2>
<table><tr><th>symbol</th><th>trades</th><th>win rate</th><th>P&amp;L</th><th>fees</th></tr>
{symbols}</table>
<h2>Trades ({len(trades)})</h2><table class="trades"><tr>{head}</tr>
{trade_rows}</table>
</body></html>
"""


def write_reports(
    out_dir: Path,
    summary: Summary,
    trades: Sequence[TradeRecord],
    curve: EquityCurve,
    *,
    title: str = "tradeengine backtest",
    extra: dict[str, Any] | None = None,
) -> ReportFiles:
    """Write trades.csv, equity.png, summary.json and report.html into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        out_dir / "trades.csv", out_dir / "equity.png", out_dir / "summary.json", out_dir / "report.html"
    )
    write_trades_csv(files.trades_csv, trades)
    png = equity_png(curve, title)
    files.equity_png.write_bytes(png)
    payload = {**summary.to_dict(), **(extra or {})}
    files.summary_json.write_text(json.dumps(payload, indent=2) + "\n")
    files.report_html.write_text(render_html(summary, trades, png, title))
    return files
