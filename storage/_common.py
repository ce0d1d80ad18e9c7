"""Checks and ids shared by both backends, so they refuse the same inputs the same way."""

from __future__ import annotations

import datetime as dt
import secrets

MAX_AMOUNT = 2**63 - 1  # the largest nano-dollar amount a BIGINT / INTEGER column holds


def new_id(prefix: str) -> str:
    """``acct_`` / ``key_`` / ``hold_`` + 24 hex characters."""
    return f"{prefix}_{secrets.token_hex(12)}"


def require_aware(value: dt.datetime, name: str) -> dt.datetime:
    """Errors: ValueError for a naive datetime (asyncpg would read it as UTC, SQLite cannot)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")
    return value


def check_amount(value: int, name: str, *, allow_zero: bool = False) -> None:
    """Errors: ValueError for an amount outside 1..MAX_AMOUNT (0.. with ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_AMOUNT:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
