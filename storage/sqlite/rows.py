"""How SQLite holds our values, and rows back as records.

Times are stored as INTEGER microseconds since the Unix epoch (exact, sortable, and
comparable in SQL) and come back as timezone-aware UTC datetimes; booleans are stored as 0/1.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any, TypeVar, overload

from omixa.storage._common import require_aware

T = TypeVar("T")

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_US = dt.timedelta(microseconds=1)
# Columns stored as microseconds (or 0/1) that records want as datetimes (or bools).
_TIME_COLUMNS = frozenset(
    {
        "created_at",
        "revoked_at",
        "expires_at",
        "bucket_start",
        "started_at",
        "heartbeat_at",
        "previous_secret_expires_at",
    }
)
_BOOL_COLUMNS = ("stream", "signature_required")


def to_us(value: dt.datetime, name: str) -> int:
    return (require_aware(value, name) - _EPOCH) // _US


@overload
def from_us(value: int) -> dt.datetime: ...
@overload
def from_us(value: None) -> None: ...
def from_us(value: int | None) -> dt.datetime | None:
    return None if value is None else _EPOCH + dt.timedelta(microseconds=value)


def now_us() -> int:
    return to_us(dt.datetime.now(dt.UTC), "now")


def records(conn: sqlite3.Connection, cls: type[T], sql: str, params: tuple) -> list[T]:
    """Rows of ``sql`` as ``cls`` records; the query's column names are the field names."""
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    times = [i for i, name in enumerate(names) if name in _TIME_COLUMNS]
    found = []
    for row in cursor:
        values = dict(zip(names, row, strict=True))
        for i in times:
            values[names[i]] = from_us(row[i])
        for name in _BOOL_COLUMNS:
            if name in values:
                values[name] = bool(values[name])
        found.append(cls(**values))
    return found


def dicts(conn: sqlite3.Connection, sql: str, params: tuple) -> list[dict[str, Any]]:
    """Rows of ``sql`` as dicts by column name, times as datetimes (booleans stay 0/1)."""
    cursor = conn.execute(sql, params)
    names = [d[0] for d in cursor.description]
    rows = []
    for row in cursor:
        values = dict(zip(names, row, strict=True))
        for name in _TIME_COLUMNS.intersection(values):
            values[name] = from_us(values[name])
        rows.append(values)
    return rows
