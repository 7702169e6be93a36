"""Portable column types: the same model works on Postgres and SQLite.

- ``Money``: NUMERIC(p, s) on Postgres; on SQLite a TEXT column holding the exact decimal string,
  because SQLite's NUMERIC affinity keeps only ~15 significant digits.
- ``UTCDateTime``: TIMESTAMPTZ on Postgres; on SQLite a naive UTC value. Always returns aware UTC.
- ``StrList``: TEXT[] on Postgres, a JSON array on SQLite.
- ``JSONType``: JSONB on Postgres, JSON elsewhere.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from sqlalchemy import JSON, DateTime, Dialect, Numeric, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.types import TypeDecorator, TypeEngine

JSONType = JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> datetime:
    """Default for timestamp columns when the caller gives none (callers with a Clock pass one)."""
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Money(TypeDecorator[Decimal]):
    """Exact decimal: NUMERIC(precision, scale) on Postgres, decimal text on SQLite."""

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 20, scale: int = 8) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale
        self._quantum = Decimal(1).scaleb(-scale)

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            # Floats are not money; refusing them catches precision bugs at the boundary.
            raise TypeError(f"Money column got float {value!r}; use decimal.Decimal")
        try:
            dec = Decimal(value) if not isinstance(value, Decimal) else value
            q = dec.quantize(self._quantum, rounding=ROUND_HALF_UP)
        except (InvalidOperation, ValueError, TypeError) as exc:
            raise ValueError(f"not a decimal amount: {value!r}") from exc
        if not q.is_finite() or q.adjusted() >= self.precision - self.scale:
            raise ValueError(f"amount {value!r} does not fit NUMERIC({self.precision},{self.scale})")
        if dialect.name == "sqlite":
            return str(q)
        return q

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        # Quantize so both backends return the same representation (e.g. 1.50000000).
        return Decimal(str(value)).quantize(self._quantum)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend; naive input is refused."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected datetime, got {type(value).__name__}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}; pass a timezone-aware UTC datetime")
        utc = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return utc.replace(tzinfo=None)
        return utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StrList(TypeDecorator[list[str]]):
    """A list of strings: TEXT[] on Postgres, JSON array on SQLite."""

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(ARRAY(Text()))
        return dialect.type_descriptor(JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if isinstance(value, str) or not all(isinstance(v, str) for v in value):
            raise TypeError(f"expected a list of str, got {value!r}")
        return list(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> list[str] | None:
        if value is None:
            return None
        return [str(v) for v in value]
