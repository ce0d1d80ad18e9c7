"""Accounts, API keys and dashboard sessions in SQLite. Runs in the worker thread; a writer
is called inside the write transaction (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Sequence

from omixa.storage._common import KEY_COLUMNS, SESSION_KEY_SELECT, contains_pattern
from omixa.storage.errors import NotFound
from omixa.storage.records import Account, ApiKeyRecord, SigningSummary, StoredResponse
from omixa.storage.sqlite.rows import from_us, now_us, records, to_us

FIND_API_KEY = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE key_hash = ?"
LIST_API_KEYS = f"SELECT {KEY_COLUMNS} FROM api_keys WHERE account_id = ? ORDER BY created_at DESC, id DESC"
SESSION_KEY = f"{SESSION_KEY_SELECT} WHERE s.id = ? AND s.expires_at > ?"
# Each key's newest log: one seek into request_logs_account_key_time per key.
KEY_LAST_USED = (
    "SELECT k.id, (SELECT r.created_at FROM request_logs AS r WHERE r.account_id = k.account_id"
    " AND r.key_id = k.id ORDER BY r.created_at DESC LIMIT 1) FROM api_keys AS k WHERE k.account_id = ?"
)
ADMIN_SESSION_LIVE = "SELECT 1 FROM admin_sessions WHERE id = ? AND expires_at > ?"


def insert_account(conn: sqlite3.Connection, account: Account) -> None:
    conn.execute(
        "INSERT INTO accounts (id, email, created_at) VALUES (?, ?, ?)",
        (account.id, account.email, to_us(account.created_at, "created_at")),
    )


def insert_api_key(conn: sqlite3.Connection, key: ApiKeyRecord, key_hash: str) -> None:
    if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (key.account_id,)).fetchone() is None:
        raise NotFound(f"no account {key.account_id!r}")
    conn.execute(
        "INSERT INTO api_keys (id, account_id, key_hash, prefix, rpm, tpm, created_at,"
        " signature_required, signing_secret_enc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key.id,
            key.account_id,
            key_hash,
            key.prefix,
            key.rpm,
            key.tpm,
            to_us(key.created_at, "created_at"),
            int(key.signature_required),
            key.signing_secret_enc,
        ),
    )


def rotate_signing_secret(
    conn: sqlite3.Connection, key_id: str, secret_enc: str, expires_us: int | None
) -> ApiKeyRecord | None:
    # With no grace the replaced secret goes at once; with grace it becomes the previous one
    # (a key that had no secret yet has no previous one).
    conn.execute(
        "UPDATE api_keys SET"
        " previous_secret_enc = CASE WHEN ? IS NULL THEN NULL ELSE signing_secret_enc END,"
        " previous_secret_expires_at = CASE WHEN ? IS NULL OR signing_secret_enc IS NULL"
        "   THEN NULL ELSE ? END,"
        " signing_secret_enc = ?"
        " WHERE id = ?",
        (expires_us, expires_us, expires_us, secret_enc, key_id),
    )
    found = records(conn, ApiKeyRecord, f"SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
    return found[0] if found else None


def signing_summary(conn: sqlite3.Connection) -> SigningSummary:
    required = conn.execute(
        "SELECT count(*) FROM api_keys WHERE signature_required = 1 AND revoked_at IS NULL"
    ).fetchone()[0]
    sample = conn.execute(
        "SELECT signing_secret_enc FROM api_keys WHERE signing_secret_enc IS NOT NULL"
        " AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1"
    ).fetchone()
    return SigningSummary(required_keys=required, sample_secret_enc=sample[0] if sample else None)


def revoke_api_key(conn: sqlite3.Connection, key_id: str, revoked_us: int) -> bool:
    cursor = conn.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (revoked_us, key_id))
    return cursor.rowcount > 0


def create_dashboard_session(conn: sqlite3.Connection, session_id: str, key_id: str, expires_us: int) -> bool:
    now = now_us()
    conn.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (now,))
    cursor = conn.execute(
        "INSERT INTO dashboard_sessions (id, key_id, created_at, expires_at)"
        " SELECT ?, id, ?, ? FROM api_keys WHERE id = ?",
        (session_id, now, expires_us, key_id),
    )
    return cursor.rowcount > 0


def end_dashboard_session(conn: sqlite3.Connection, session_id: str) -> None:
    conn.execute("DELETE FROM dashboard_sessions WHERE id = ?", (session_id,))


def list_accounts_query(email_contains: str | None, limit: int, after: str | None) -> tuple[str, tuple]:
    """The SELECT of Storage.list_accounts and its parameters."""
    where, params = [], []
    if email_contains:
        where.append("lower(email) LIKE lower(?) ESCAPE '\\'")
        params.append(contains_pattern(email_contains))
    if after is not None:
        where.append("(created_at, id) < (SELECT created_at, id FROM accounts WHERE id = ?)")
        params.append(after)
    sql = "SELECT id, email, created_at, balance, locked FROM accounts"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*params, limit)


def key_last_used(conn: sqlite3.Connection, account_id: str) -> dict[str, dt.datetime]:
    rows = conn.execute(KEY_LAST_USED, (account_id,)).fetchall()
    return {key_id: from_us(used) for key_id, used in rows if used is not None}


def admin_session_live(conn: sqlite3.Connection, session_id: str) -> bool:
    return conn.execute(ADMIN_SESSION_LIVE, (session_id, now_us())).fetchone() is not None


def create_admin_session(conn: sqlite3.Connection, session_id: str, expires_us: int) -> None:
    now = now_us()
    conn.execute("DELETE FROM admin_sessions WHERE expires_at <= ?", (now,))
    conn.execute(
        "INSERT INTO admin_sessions (id, created_at, expires_at) VALUES (?, ?, ?)", (session_id, now, expires_us)
    )


def end_admin_session(conn: sqlite3.Connection, session_id: str) -> None:
    conn.execute("DELETE FROM admin_sessions WHERE id = ?", (session_id,))


def save_stored_response(conn: sqlite3.Connection, response: StoredResponse, item_ids: Sequence[str]) -> None:
    cursor = conn.execute(
        "INSERT INTO stored_responses (id, account_id, key_id, model, deployment, endpoint, context_tokens,"
        " output_tokens, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING",
        (
            response.id,
            response.account_id,
            response.key_id,
            response.model,
            response.deployment,
            response.endpoint,
            response.context_tokens,
            response.output_tokens,
            to_us(response.created_at, "created_at"),
        ),
    )
    if cursor.rowcount != 1:
        return  # saved already, with its items
    conn.executemany(
        "INSERT INTO stored_response_items (id, response_id, account_id) VALUES (?, ?, ?) ON CONFLICT (id) DO NOTHING",
        [(item_id, response.id, response.account_id) for item_id in item_ids],
    )


def delete_stored_response(conn: sqlite3.Connection, account_id: str, response_id: str) -> bool:
    # The items go with it (ON DELETE CASCADE).
    cursor = conn.execute("DELETE FROM stored_responses WHERE id = ? AND account_id = ?", (response_id, account_id))
    return cursor.rowcount > 0
