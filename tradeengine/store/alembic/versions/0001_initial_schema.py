# ruff: noqa: E501
"""Initial schema: every table of the seeds plus orders and machine_events.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 02:39:47.234042
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import tradeengine.store.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ai_prompts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_prompts")),
        sa.UniqueConstraint("type", "version", name="uq_ai_prompts_type_version"),
    )
    with op.batch_alter_table("ai_prompts", schema=None) as batch_op:
        batch_op.create_index("idx_ai_prompts_type_active", ["type", "is_active"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("tier", sa.Text(), nullable=False),
        sa.Column("subscription_status", sa.Text(), nullable=True),
        sa.Column("binance_api_key", sa.Text(), nullable=True),
        sa.Column("binance_secret_key", sa.Text(), nullable=True),
        sa.Column("paper_trading_enabled", sa.Boolean(), nullable=False),
        sa.Column("real_trading_enabled", sa.Boolean(), nullable=False),
        sa.Column("paper_balance", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "subscription_status IN ('active', 'cancelled', 'past_due')",
            name=op.f("ck_users_subscription_status"),
        ),
        sa.CheckConstraint("tier IN ('free', 'pro', 'elite', 'power')", name=op.f("ck_users_tier")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
    )
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.create_index("idx_users_tier", ["tier"], unique=False)

    op.create_table(
        "fly_machines",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("machine_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("ip_address", sa.Text(), nullable=True),
        sa.Column("region", sa.Text(), nullable=True),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("tenant_token_hash", sa.Text(), nullable=True),
        sa.Column(
            "final_state",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_heartbeat", tradeengine.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("destroyed_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('provisioning', 'starting', 'running', 'stopping', 'stopped', 'destroyed', 'error')",
            name=op.f("ck_fly_machines_status"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_fly_machines_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fly_machines")),
        sa.UniqueConstraint("machine_id", name=op.f("uq_fly_machines_machine_id")),
    )
    with op.batch_alter_table("fly_machines", schema=None) as batch_op:
        batch_op.create_index("idx_fly_machines_status", ["status"], unique=False)
        batch_op.create_index("idx_fly_machines_user_id", ["user_id"], unique=False)

    op.create_table(
        "traders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("signal_code", sa.Text(), nullable=False),
        sa.Column("ai_instructions", sa.Text(), nullable=False),
        sa.Column("timeframes", tradeengine.store.types.StrList(), nullable=False),
        sa.Column("check_interval", sa.Text(), nullable=False),
        sa.Column("reanalysis_interval", sa.Text(), nullable=False),
        sa.Column("symbols", tradeengine.store.types.StrList(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("trade_type", sa.Text(), nullable=False),
        sa.Column("position_size_pct", tradeengine.store.types.Money(precision=10, scale=4), nullable=False),
        sa.Column("max_open_positions", sa.Integer(), nullable=False),
        sa.Column("stop_loss_pct", tradeengine.store.types.Money(precision=10, scale=4), nullable=True),
        sa.Column("take_profit_pct", tradeengine.store.types.Money(precision=10, scale=4), nullable=True),
        sa.Column("trailing_stop_pct", tradeengine.store.types.Money(precision=10, scale=4), nullable=True),
        sa.Column(
            "settings",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('active', 'paused', 'error')", name=op.f("ck_traders_status")),
        sa.CheckConstraint("trade_type IN ('paper', 'real')", name=op.f("ck_traders_trade_type")),
        sa.CheckConstraint("max_open_positions >= 1", name=op.f("ck_traders_max_open_positions")),
        sa.CheckConstraint(
            "CAST(position_size_pct AS NUMERIC) > 0 AND CAST(position_size_pct AS NUMERIC) <= 100",
            name=op.f("ck_traders_position_size_pct"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_traders_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_traders")),
    )
    with op.batch_alter_table("traders", schema=None) as batch_op:
        batch_op.create_index("idx_traders_status", ["status"], unique=False)
        batch_op.create_index("idx_traders_user_id", ["user_id"], unique=False)

    op.create_table(
        "machine_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("machine_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["machine_id"],
            ["fly_machines.id"],
            name=op.f("fk_machine_events_machine_id_fly_machines"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_machine_events_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_machine_events")),
    )
    with op.batch_alter_table("machine_events", schema=None) as batch_op:
        batch_op.create_index("idx_machine_events_kind", ["kind"], unique=False)
        batch_op.create_index("idx_machine_events_machine_id_created_at", ["machine_id", "created_at"], unique=False)
        batch_op.create_index("idx_machine_events_user_id_created_at", ["user_id", "created_at"], unique=False)

    op.create_table(
        "signals",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("trader_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("timestamp", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("trigger_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("current_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("timeframe", sa.Text(), nullable=True),
        sa.Column("closed_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "close_reason IN ('no_trade', 'stop_loss', 'take_profit', 'trailing_stop', 'manual', 'ai_close', 'flip', 'expired', 'trader_deleted', 'liquidation', 'error')",
            name=op.f("ck_signals_close_reason"),
        ),
        sa.CheckConstraint("status IN ('new', 'watching', 'position_open', 'closed')", name=op.f("ck_signals_status")),
        sa.ForeignKeyConstraint(
            ["trader_id"], ["traders.id"], name=op.f("fk_signals_trader_id_traders"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_signals_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signals")),
    )
    with op.batch_alter_table("signals", schema=None) as batch_op:
        batch_op.create_index("idx_signals_status", ["status"], unique=False)
        batch_op.create_index("idx_signals_symbol", ["symbol"], unique=False)
        batch_op.create_index("idx_signals_timestamp", ["timestamp"], unique=False)
        batch_op.create_index("idx_signals_trader_id", ["trader_id"], unique=False)
        batch_op.create_index("idx_signals_trader_symbol_status", ["trader_id", "symbol", "status"], unique=False)
        batch_op.create_index("idx_signals_user_id", ["user_id"], unique=False)

    op.create_table(
        "analysis_history",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("signal_id", sa.Uuid(), nullable=False),
        sa.Column("trader_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("timestamp", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Integer(), nullable=True),
        sa.Column(
            "market_data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("model_name", sa.Text(), nullable=True),
        sa.Column("tokens_used", sa.Integer(), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "decision IN ('no_trade', 'watch', 'open_long', 'open_short', 'close', 'partial_close', 'scale_in', 'scale_out', 'update_stop_loss', 'update_take_profit', 'flip_position')",
            name=op.f("ck_analysis_history_decision"),
        ),
        sa.CheckConstraint("confidence >= 0 AND confidence <= 100", name=op.f("ck_analysis_history_confidence")),
        sa.ForeignKeyConstraint(
            ["signal_id"],
            ["signals.id"],
            name=op.f("fk_analysis_history_signal_id_signals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trader_id"],
            ["traders.id"],
            name=op.f("fk_analysis_history_trader_id_traders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_analysis_history_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_analysis_history")),
    )
    with op.batch_alter_table("analysis_history", schema=None) as batch_op:
        batch_op.create_index("idx_analysis_history_signal_id", ["signal_id"], unique=False)
        batch_op.create_index("idx_analysis_history_timestamp", ["timestamp"], unique=False)
        batch_op.create_index("idx_analysis_history_trader_id", ["trader_id"], unique=False)
        batch_op.create_index("idx_analysis_history_user_id", ["user_id"], unique=False)

    op.create_table(
        "positions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("signal_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("trader_id", sa.Uuid(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("trade_type", sa.Text(), nullable=False),
        sa.Column("entry_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("size", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("stop_loss", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("stop_loss_order_id", sa.Text(), nullable=True),
        sa.Column("take_profit", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("take_profit_order_id", sa.Text(), nullable=True),
        sa.Column("trailing_stop_pct", tradeengine.store.types.Money(precision=10, scale=4), nullable=True),
        sa.Column("highest_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("lowest_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("exit_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("fees", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("pnl", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("pnl_percent", tradeengine.store.types.Money(precision=10, scale=4), nullable=True),
        sa.Column("opened_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "close_reason IN ('no_trade', 'stop_loss', 'take_profit', 'trailing_stop', 'manual', 'ai_close', 'flip', 'expired', 'trader_deleted', 'liquidation', 'error')",
            name=op.f("ck_positions_close_reason"),
        ),
        sa.CheckConstraint("side IN ('long', 'short')", name=op.f("ck_positions_side")),
        sa.CheckConstraint("status IN ('open', 'closed')", name=op.f("ck_positions_status")),
        sa.CheckConstraint("trade_type IN ('paper', 'real')", name=op.f("ck_positions_trade_type")),
        sa.CheckConstraint("CAST(size AS NUMERIC) >= 0", name=op.f("ck_positions_size")),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signals.id"], name=op.f("fk_positions_signal_id_signals"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["trader_id"], ["traders.id"], name=op.f("fk_positions_trader_id_traders"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_positions_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_positions")),
    )
    with op.batch_alter_table("positions", schema=None) as batch_op:
        batch_op.create_index("idx_positions_signal_id", ["signal_id"], unique=False)
        batch_op.create_index("idx_positions_status", ["status"], unique=False)
        batch_op.create_index("idx_positions_symbol", ["symbol"], unique=False)
        batch_op.create_index("idx_positions_trader_id", ["trader_id"], unique=False)
        batch_op.create_index("idx_positions_user_id", ["user_id"], unique=False)

    op.create_table(
        "signal_analyses",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("signal_id", sa.Uuid(), nullable=False),
        sa.Column("trader_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("decision", sa.Text(), nullable=False),
        sa.Column("confidence", tradeengine.store.types.Money(precision=5, scale=2), nullable=False),
        sa.Column("reasoning", sa.Text(), nullable=False),
        sa.Column(
            "key_levels",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "trade_plan",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "technical_indicators",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("raw_ai_response", sa.Text(), nullable=True),
        sa.Column("analysis_latency_ms", sa.Integer(), nullable=True),
        sa.Column("gemini_tokens_used", sa.Integer(), nullable=True),
        sa.Column("model_name", sa.Text(), nullable=True),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "decision IN ('enter_trade', 'bad_setup', 'wait')", name=op.f("ck_signal_analyses_decision")
        ),
        sa.CheckConstraint(
            "CAST(confidence AS NUMERIC) >= 0 AND CAST(confidence AS NUMERIC) <= 100",
            name=op.f("ck_signal_analyses_confidence"),
        ),
        sa.ForeignKeyConstraint(
            ["signal_id"],
            ["signals.id"],
            name=op.f("fk_signal_analyses_signal_id_signals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["trader_id"],
            ["traders.id"],
            name=op.f("fk_signal_analyses_trader_id_traders"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_signal_analyses_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signal_analyses")),
    )
    with op.batch_alter_table("signal_analyses", schema=None) as batch_op:
        batch_op.create_index("idx_signal_analyses_created_at", ["created_at"], unique=False)
        batch_op.create_index("idx_signal_analyses_decision", ["decision"], unique=False)
        batch_op.create_index("idx_signal_analyses_signal_id", ["signal_id"], unique=False)
        batch_op.create_index("idx_signal_analyses_trader_id", ["trader_id"], unique=False)
        batch_op.create_index("idx_signal_analyses_user_id", ["user_id"], unique=False)

    op.create_table(
        "orders",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("client_order_id", sa.Text(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("trader_id", sa.Uuid(), nullable=True),
        sa.Column("position_id", sa.Uuid(), nullable=True),
        sa.Column("signal_id", sa.Uuid(), nullable=True),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("trade_type", sa.Text(), nullable=False),
        sa.Column("price", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("stop_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("quantity", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("filled_quantity", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("average_price", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("fee", tradeengine.store.types.Money(precision=20, scale=8), nullable=True),
        sa.Column("fee_asset", sa.Text(), nullable=True),
        sa.Column("exchange_order_id", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "purpose IN ('entry', 'exit', 'stop_loss', 'take_profit', 'trailing_stop', 'scale_in', 'scale_out', 'partial_close', 'flip', 'manual')",
            name=op.f("ck_orders_purpose"),
        ),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name=op.f("ck_orders_side")),
        sa.CheckConstraint(
            "status IN ('pending', 'open', 'partially_filled', 'filled', 'cancelled', 'rejected', 'expired', 'failed')",
            name=op.f("ck_orders_status"),
        ),
        sa.CheckConstraint("trade_type IN ('paper', 'real')", name=op.f("ck_orders_trade_type")),
        sa.CheckConstraint(
            "type IN ('market', 'limit', 'stop_market', 'stop_limit', 'take_profit_limit', 'trailing_stop')",
            name=op.f("ck_orders_type"),
        ),
        sa.CheckConstraint("CAST(filled_quantity AS NUMERIC) >= 0", name=op.f("ck_orders_filled_quantity")),
        sa.CheckConstraint("CAST(quantity AS NUMERIC) > 0", name=op.f("ck_orders_quantity")),
        sa.ForeignKeyConstraint(
            ["position_id"],
            ["positions.id"],
            name=op.f("fk_orders_position_id_positions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["signal_id"], ["signals.id"], name=op.f("fk_orders_signal_id_signals"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["trader_id"], ["traders.id"], name=op.f("fk_orders_trader_id_traders"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_orders_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        sa.UniqueConstraint("client_order_id", name=op.f("uq_orders_client_order_id")),
    )
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("idx_orders_created_at", ["created_at"], unique=False)
        batch_op.create_index("idx_orders_position_id", ["position_id"], unique=False)
        batch_op.create_index("idx_orders_signal_id", ["signal_id"], unique=False)
        batch_op.create_index("idx_orders_user_id_status", ["user_id", "status"], unique=False)
        batch_op.create_index(batch_op.f("ix_orders_trader_id"), ["trader_id"], unique=False)

    op.create_table(
        "trades",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("position_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("side", sa.Text(), nullable=False),
        sa.Column("symbol", sa.Text(), nullable=False),
        sa.Column("price", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("quantity", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("fee", tradeengine.store.types.Money(precision=20, scale=8), nullable=False),
        sa.Column("fee_asset", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("exchange_order_id", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("executed_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("side IN ('BUY', 'SELL')", name=op.f("ck_trades_side")),
        sa.CheckConstraint("status IN ('pending', 'filled', 'cancelled', 'failed')", name=op.f("ck_trades_status")),
        sa.CheckConstraint("type IN ('paper', 'real')", name=op.f("ck_trades_type")),
        sa.ForeignKeyConstraint(
            ["order_id"], ["orders.id"], name=op.f("fk_trades_order_id_orders"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["position_id"],
            ["positions.id"],
            name=op.f("fk_trades_position_id_positions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_trades_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trades")),
    )
    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.create_index("idx_trades_executed_at", ["executed_at"], unique=False)
        batch_op.create_index("idx_trades_position_id", ["position_id"], unique=False)
        batch_op.create_index("idx_trades_type", ["type"], unique=False)
        batch_op.create_index("idx_trades_user_id", ["user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_trades_order_id"), ["order_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("trades", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_trades_order_id"))
        batch_op.drop_index("idx_trades_user_id")
        batch_op.drop_index("idx_trades_type")
        batch_op.drop_index("idx_trades_position_id")
        batch_op.drop_index("idx_trades_executed_at")

    op.drop_table("trades")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_orders_trader_id"))
        batch_op.drop_index("idx_orders_user_id_status")
        batch_op.drop_index("idx_orders_signal_id")
        batch_op.drop_index("idx_orders_position_id")
        batch_op.drop_index("idx_orders_created_at")

    op.drop_table("orders")
    with op.batch_alter_table("signal_analyses", schema=None) as batch_op:
        batch_op.drop_index("idx_signal_analyses_user_id")
        batch_op.drop_index("idx_signal_analyses_trader_id")
        batch_op.drop_index("idx_signal_analyses_signal_id")
        batch_op.drop_index("idx_signal_analyses_decision")
        batch_op.drop_index("idx_signal_analyses_created_at")

    op.drop_table("signal_analyses")
    with op.batch_alter_table("positions", schema=None) as batch_op:
        batch_op.drop_index("idx_positions_user_id")
        batch_op.drop_index("idx_positions_trader_id")
        batch_op.drop_index("idx_positions_symbol")
        batch_op.drop_index("idx_positions_status")
        batch_op.drop_index("idx_positions_signal_id")

    op.drop_table("positions")
    with op.batch_alter_table("analysis_history", schema=None) as batch_op:
        batch_op.drop_index("idx_analysis_history_user_id")
        batch_op.drop_index("idx_analysis_history_trader_id")
        batch_op.drop_index("idx_analysis_history_timestamp")
        batch_op.drop_index("idx_analysis_history_signal_id")

    op.drop_table("analysis_history")
    with op.batch_alter_table("signals", schema=None) as batch_op:
        batch_op.drop_index("idx_signals_user_id")
        batch_op.drop_index("idx_signals_trader_symbol_status")
        batch_op.drop_index("idx_signals_trader_id")
        batch_op.drop_index("idx_signals_timestamp")
        batch_op.drop_index("idx_signals_symbol")
        batch_op.drop_index("idx_signals_status")

    op.drop_table("signals")
    with op.batch_alter_table("machine_events", schema=None) as batch_op:
        batch_op.drop_index("idx_machine_events_user_id_created_at")
        batch_op.drop_index("idx_machine_events_machine_id_created_at")
        batch_op.drop_index("idx_machine_events_kind")

    op.drop_table("machine_events")
    with op.batch_alter_table("traders", schema=None) as batch_op:
        batch_op.drop_index("idx_traders_user_id")
        batch_op.drop_index("idx_traders_status")

    op.drop_table("traders")
    with op.batch_alter_table("fly_machines", schema=None) as batch_op:
        batch_op.drop_index("idx_fly_machines_user_id")
        batch_op.drop_index("idx_fly_machines_status")

    op.drop_table("fly_machines")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_index("idx_users_tier")

    op.drop_table("users")
    with op.batch_alter_table("ai_prompts", schema=None) as batch_op:
        batch_op.drop_index("idx_ai_prompts_type_active")

    op.drop_table("ai_prompts")
