"""Tenant isolation on Postgres: row-level security on every tenant-owned table.

Revision ID: 0003
Revises: 0002

A tenant connects as its own role ``tenant_<user id hex>`` (created at provisioning, member of
``tradeengine_tenant``). ``tradeengine_tenant_user_id()`` turns that role name back into the user
id; every policy compares a row's owner with it, so a tenant sees and writes only its own rows.
Any other role gets NULL from the function and therefore no rows, unless it bypasses RLS (the
table owner, superusers: the control plane). SQLite has no RLS; this migration does nothing there.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GROUP = "tradeengine_tenant"
# table -> the column naming the owning user
OWNED: dict[str, str] = {
    "users": "id",
    "fly_machines": "user_id",
    "traders": "user_id",
    "signals": "user_id",
    "positions": "user_id",
    "orders": "user_id",
    "trades": "user_id",
    "analysis_history": "user_id",
    "signal_analyses": "user_id",
    "machine_events": "user_id",
}
READ_ONLY: tuple[str, ...] = ("ai_prompts",)
# What a tenant runtime may do with its own rows. It manages its trading state, but cannot change
# its account (tier, keys), create traders, or rewrite machine records beyond liveness.
PRIVILEGES: dict[str, str] = {
    "users": "SELECT, UPDATE (paper_balance, updated_at)",
    "fly_machines": "SELECT, UPDATE (status, last_heartbeat, final_state, updated_at)",
    "traders": "SELECT, UPDATE (status, error_message, updated_at)",
    "machine_events": "SELECT, INSERT",
}
DEFAULT_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # Roles are cluster-wide; several databases (tests, staging) share one cluster.
    op.execute(
        """
        DO $$ BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tradeengine_tenant') THEN
                CREATE ROLE tradeengine_tenant NOLOGIN;
            END IF;
        END $$;
        """
    )
    op.execute(
        """
        CREATE OR REPLACE FUNCTION tradeengine_tenant_user_id() RETURNS uuid
        LANGUAGE sql STABLE AS $$
            SELECT CASE WHEN current_user ~ '^tenant_[0-9a-f]{32}$'
                        THEN substr(current_user, 8)::uuid END
        $$;
        """
    )
    op.execute(f"GRANT USAGE ON SCHEMA public TO {GROUP}")
    op.execute(f"GRANT EXECUTE ON FUNCTION tradeengine_tenant_user_id() TO {GROUP}")
    for table, column in OWNED.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(
            f"CREATE POLICY tenant_isolation ON {table} "
            f"USING ({column} = tradeengine_tenant_user_id()) "
            f"WITH CHECK ({column} = tradeengine_tenant_user_id())"
        )
        op.execute(f"GRANT {PRIVILEGES.get(table, DEFAULT_PRIVILEGES)} ON {table} TO {GROUP}")
    for table in READ_ONLY:
        op.execute(f"GRANT SELECT ON {table} TO {GROUP}")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in READ_ONLY:
        op.execute(f"REVOKE ALL ON {table} FROM {GROUP}")
    for table in OWNED:
        op.execute(f"REVOKE ALL ON {table} FROM {GROUP}")
        op.execute(f"DROP POLICY IF EXISTS tenant_isolation ON {table}")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
    op.execute(f"REVOKE ALL ON FUNCTION tradeengine_tenant_user_id() FROM {GROUP}")
    op.execute("DROP FUNCTION IF EXISTS tradeengine_tenant_user_id()")
    op.execute(f"REVOKE USAGE ON SCHEMA public FROM {GROUP}")
    # The group role stays: other databases in the cluster may still use it.
