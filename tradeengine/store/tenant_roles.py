"""Per-tenant Postgres roles: a tenant's own credentials can only touch its own user's rows.

Migration 0003 enables row-level security on every tenant-owned table with policies keyed on
``tradeengine_tenant_user_id()``, which reads the user id out of the connected role's name
(``tenant_<32 hex>``). Provisioning creates that role (LOGIN, member of ``tradeengine_tenant``, which
holds the table grants) and hands the tenant a database URL with it. SQLite has no roles and no
RLS: there every process that can open the file sees every row.
"""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

TENANT_GROUP_ROLE = "tradeengine_tenant"
ROLE_PREFIX = "tenant_"


def tenant_role_name(user_id: uuid.UUID) -> str:
    """``tenant_<hex>``: the policies parse the user id back out of this name."""
    return f"{ROLE_PREFIX}{user_id.hex}"


def _literal(value: str) -> str:
    # DDL can't take bind parameters; the password is ours (urlsafe base64), quoting is belt and braces.
    return "'" + value.replace("'", "''") + "'"


async def ensure_tenant_role(session: AsyncSession, user_id: uuid.UUID, password: str) -> str:
    """Create (or re-password) the tenant's login role; return its name. Postgres only."""
    role = tenant_role_name(user_id)
    exists = (
        await session.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    ).scalar_one_or_none()
    if exists:
        await session.execute(text(f'ALTER ROLE "{role}" WITH LOGIN PASSWORD {_literal(password)}'))
    else:
        await session.execute(text(f'CREATE ROLE "{role}" WITH LOGIN INHERIT PASSWORD {_literal(password)}'))
    await session.execute(text(f'GRANT "{TENANT_GROUP_ROLE}" TO "{role}"'))
    return role


async def disable_tenant_role(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Revoke the tenant's ability to log in (rows stay; the role may own nothing)."""
    role = tenant_role_name(user_id)
    exists = (
        await session.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    ).scalar_one_or_none()
    if exists:
        await session.execute(text(f'ALTER ROLE "{role}" WITH NOLOGIN PASSWORD NULL'))


def tenant_database_url(database_url: str, role: str, password: str) -> str:
    """The control plane's database URL with the tenant's credentials instead."""
    url = make_url(database_url).set(username=role, password=password)
    return url.render_as_string(hide_password=False)


def new_role_password() -> str:
    return uuid.uuid4().hex + uuid.uuid4().hex
