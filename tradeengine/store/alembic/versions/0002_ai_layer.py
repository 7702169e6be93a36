"""AI layer: seed the built-in prompt templates, the shared Gemini quota table, tracing columns.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 02:50:00

Written defensively (checks what exists) so it also applies cleanly if 0001 is regenerated from
the models and already contains these objects.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import tradeengine.store.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The v1 constants are frozen: a changed prompt is a new version (a new row), never an edit.
_SEEDED_NAMES = {
    "structured_analysis": "Built-in: structured signal analysis",
    "signal_analysis": "Built-in: signal analysis (alias of structured analysis)",
    "position_management": "Built-in: open position management",
    "strategy_generation": "Built-in: strategy generation",
}


def _prompts_table() -> sa.TableClause:
    return sa.table(
        "ai_prompts",
        sa.column("id", sa.Uuid()),
        sa.column("type", sa.Text()),
        sa.column("name", sa.Text()),
        sa.column("content", sa.Text()),
        sa.column("version", sa.Integer()),
        sa.column("is_active", sa.Boolean()),
        sa.column("created_at", tradeengine.store.types.UTCDateTime(timezone=True)),
        sa.column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True)),
    )


def upgrade() -> None:
    from tradeengine.ai.prompts import BUILTIN_TEMPLATES

    bind = op.get_bind()
    inspector = sa.inspect(bind)
    columns = {c["name"] for c in inspector.get_columns("signal_analyses")}
    with op.batch_alter_table("signal_analyses", schema=None) as batch_op:
        if "correlation_id" not in columns:
            batch_op.add_column(sa.Column("correlation_id", sa.Text(), nullable=True))
        if "error" not in columns:
            batch_op.add_column(sa.Column("error", sa.Text(), nullable=True))

    if "ai_rate_limits" not in inspector.get_table_names():
        op.create_table(
            "ai_rate_limits",
            sa.Column("name", sa.Text(), nullable=False),
            sa.Column("grants", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
            sa.Column("updated_at", tradeengine.store.types.UTCDateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint("name", name=op.f("pk_ai_rate_limits")),
        )

    prompts = _prompts_table()
    existing = {(row.type, row.version) for row in bind.execute(sa.select(prompts.c.type, prompts.c.version))}
    now = datetime.now(UTC)
    rows = [
        {
            "id": uuid.uuid4(),
            "type": template.type.value,
            "name": _SEEDED_NAMES[template.type.value],
            "content": template.content,
            "version": template.version,
            "is_active": True,
            "created_at": now,
            "updated_at": now,
        }
        for template in BUILTIN_TEMPLATES.values()
        if (template.type.value, template.version) not in existing
    ]
    if rows:
        op.bulk_insert(prompts, rows)


def downgrade() -> None:
    prompts = _prompts_table()
    op.execute(prompts.delete().where(prompts.c.version == 1, prompts.c.name.in_(list(_SEEDED_NAMES.values()))))
    op.drop_table("ai_rate_limits")
    with op.batch_alter_table("signal_analyses", schema=None) as batch_op:
        batch_op.drop_column("error")
        batch_op.drop_column("correlation_id")
