"""Wallets in SQLite: the ledger, top-ups, and holds with their settles and voids. Runs in the
worker thread; a writer is called inside the write transaction (BEGIN IMMEDIATE), which
serializes every writer to the file, so a read followed by a write here is never raced.

The hold, settle and void steps are Python around one statement at a time, where PostgreSQL
runs each as a single statement of data-modifying CTEs (and a batch of them in its
``omixa_wallet_ops`` function, migration 0005): SQLite has neither data-modifying CTEs nor
stored functions. Both write the same rows in the same order; a change to one is a change to
the other.
"""

from __future__ import annotations

import sqlite3

from omixa.storage._common import LEDGER_SELECT, WalletStep, already_final, finalize_args
from omixa.storage.errors import IdempotencyConflict, KeyRevoked, NotFound
from omixa.storage.records import (
    FinalizeHold,
    Hold,
    HoldContext,
    LedgerEntry,
    NewHold,
    Settlement,
    TopUpResult,
    WalletState,
)
from omixa.storage.sqlite.rows import from_us, now_us, records, to_us

MAX_ROW_ID = 2**63 - 1  # list_ledger's cursor when none is given: above every row id
# ledger_balances: the last row before since (?2: one seek down ledger_account_time, migration
# 0014), then the last of each bucket (?4 µs) in [since, until).
LEDGER_BALANCES = f"""{LEDGER_SELECT} WHERE id IN (
    SELECT (SELECT id FROM ledger WHERE account_id = ?1 AND created_at < ?2
            ORDER BY created_at DESC, id DESC LIMIT 1)
    UNION ALL
    SELECT max(id) FROM ledger WHERE account_id = ?1 AND created_at >= ?2 AND created_at < ?3
    GROUP BY created_at / ?4
) ORDER BY id"""


def wallet(conn: sqlite3.Connection, account_id: str) -> WalletState | None:
    row = conn.execute("SELECT balance, locked FROM accounts WHERE id = ?", (account_id,)).fetchone()
    if row is None:
        return None
    return WalletState(account_id=account_id, balance=row[0], locked=row[1])


def _ledger(
    conn: sqlite3.Connection,
    account_id: str,
    type_: str,
    amount: int,
    balance_after: int,
    locked_after: int,
    request_id: str | None = None,
    hold_id: str | None = None,
    note: str | None = None,
    at_us: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO ledger (account_id, type, amount, balance_after, locked_after,"
        " request_id, hold_id, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            account_id,
            type_,
            amount,
            balance_after,
            locked_after,
            request_id,
            hold_id,
            note,
            now_us() if at_us is None else at_us,
        ),
    )


# -- top-ups -----------------------------------------------------------------------------------


def top_up(conn: sqlite3.Connection, account_id: str, amount: int, note: str | None) -> WalletState:
    rows = conn.execute(
        "UPDATE accounts SET balance = balance + ? WHERE id = ? RETURNING balance, locked",
        (amount, account_id),
    ).fetchall()  # fetchall: a RETURNING statement must run to completion before COMMIT
    if not rows:
        raise NotFound(f"no account {account_id!r}")
    balance, locked = rows[0]
    _ledger(conn, account_id, "top_up", amount, balance, locked, note=note)
    return WalletState(account_id=account_id, balance=balance, locked=locked)


def credit_top_up(
    conn: sqlite3.Connection,
    account_id: str,
    amount: int,
    idempotency_key: str | None,
    note: str | None,
) -> TopUpResult:
    if idempotency_key is not None:
        # The write lock (BEGIN IMMEDIATE) is held: no other process can insert this key now.
        first = conn.execute(
            "SELECT amount, ledger_id FROM top_up_requests WHERE account_id = ? AND idempotency_key = ?",
            (account_id, idempotency_key),
        ).fetchone()
        if first is not None:
            if first[0] != amount:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was used for a top-up of another amount"
                )
            entry = records(conn, LedgerEntry, f"{LEDGER_SELECT} WHERE id = ?", (first[1],))[0]
            current = wallet(conn, account_id)
            assert current is not None
            return TopUpResult(entry=entry, wallet=current, replayed=True)
    current = top_up(conn, account_id, amount, note)
    entry = records(
        conn,
        LedgerEntry,
        f"{LEDGER_SELECT} WHERE account_id = ? ORDER BY id DESC LIMIT 1",
        (account_id,),
    )[0]
    if idempotency_key is not None:
        conn.execute(
            "INSERT INTO top_up_requests (account_id, idempotency_key, amount, ledger_id, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (account_id, idempotency_key, amount, entry.id, to_us(entry.created_at, "created_at")),
        )
    return TopUpResult(entry=entry, wallet=current, replayed=False)


# -- holds, settles and voids ------------------------------------------------------------------


def _hold_record(hold_id: str, op: NewHold) -> Hold:
    """The hold ``op`` asks for, as it will be stored (its times to the microsecond)."""
    return Hold(
        id=hold_id,
        account_id=op.account_id,
        request_id=op.request_id,
        amount=op.amount,
        created_at=from_us(now_us()),
        expires_at=from_us(to_us(op.expires_at, "expires_at")),
    )


def hold_steps(steps: list[WalletStep]) -> list[tuple[Hold, HoldContext] | FinalizeHold]:
    """Checked steps as :func:`apply_wallet_ops` takes them: each new hold as its record."""
    return [step if isinstance(step, FinalizeHold) else (_hold_record(*step), step[1].context) for step in steps]


def apply_wallet_ops(
    conn: sqlite3.Connection, steps: list[tuple[Hold, HoldContext] | FinalizeHold]
) -> list[Hold | Settlement | None]:
    """The steps of one group commit, in order; the caller holds the write lock."""
    results: list[Hold | Settlement | None] = []
    for step in steps:
        if isinstance(step, FinalizeHold):
            state, charge, log = finalize_args(step)
            results.append(finalize(conn, step.hold_id, charge, state, now_us(), log))
        else:
            hold, context = step
            results.append(hold if _create_hold(conn, hold, context) else None)
    return results


def _create_hold(conn: sqlite3.Connection, hold: Hold, context: HoldContext) -> bool:
    if context.key_id is not None:
        key = conn.execute("SELECT revoked_at FROM api_keys WHERE id = ?", (context.key_id,)).fetchone()
        if key is not None and key[0] is not None:
            raise KeyRevoked(f"key {context.key_id!r} is revoked")
    # The conditional update is the arbiter: it succeeds only if the funds are available.
    rows = conn.execute(
        "UPDATE accounts SET locked = locked + ?1 WHERE id = ?2 AND balance - locked >= ?1 RETURNING balance, locked",
        (hold.amount, hold.account_id),
    ).fetchall()
    if not rows:
        if conn.execute("SELECT 1 FROM accounts WHERE id = ?", (hold.account_id,)).fetchone():
            return False
        raise NotFound(f"no account {hold.account_id!r}")
    balance, locked = rows[0]
    created_us = to_us(hold.created_at, "created_at")
    conn.execute(
        "INSERT INTO holds (id, account_id, request_id, amount, created_at, expires_at,"
        " instance_id, key_id, model, provider, stream) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            hold.id,
            hold.account_id,
            hold.request_id,
            hold.amount,
            created_us,
            to_us(hold.expires_at, "expires_at"),
            context.instance_id,
            context.key_id,
            context.model,
            context.provider,
            context.stream,
        ),
    )
    _ledger(
        conn,
        hold.account_id,
        "hold",
        hold.amount,
        balance,
        locked,
        request_id=hold.request_id,
        hold_id=hold.id,
        at_us=created_us,
    )
    return True


def finalize(
    conn: sqlite3.Connection,
    hold_id: str,
    charge: int,
    state: str,
    at_us: int,
    log: str | None = None,
) -> Settlement:
    """Post (``state='posted'``) or void a hold, keeping the request's ``log`` (JSON) with it;
    the caller holds the write lock."""
    rows = conn.execute(
        "UPDATE holds SET state = ?, charged = MIN(?, amount), finalized_at = ?, log = ?"
        " WHERE id = ? AND state = 'pending' RETURNING account_id, request_id, amount, charged",
        (state, charge, at_us, log, hold_id),
    ).fetchall()
    if not rows:
        # Already posted or voided (or no such hold): change nothing, report the wallet.
        row = conn.execute(
            "SELECT a.balance, a.locked, a.id FROM holds h JOIN accounts a ON a.id = h.account_id WHERE h.id = ?",
            (hold_id,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no hold {hold_id!r}")
        return already_final(hold_id, WalletState(account_id=row[2], balance=row[0], locked=row[1]))
    account_id, request_id, amount, charged = rows[0]
    released = amount - charged
    balance, locked = conn.execute(
        "UPDATE accounts SET balance = balance - ?, locked = locked - ? WHERE id = ? RETURNING balance, locked",
        (charged, amount, account_id),
    ).fetchall()[0]
    # Each ledger row carries the wallet as it stands after that row: charge, then release.
    if charged:
        _ledger(
            conn,
            account_id,
            "charge",
            charged,
            balance,
            locked + released,
            request_id=request_id,
            hold_id=hold_id,
            at_us=at_us,
        )
    if released:
        _ledger(
            conn,
            account_id,
            "release",
            released,
            balance,
            locked,
            request_id=request_id,
            hold_id=hold_id,
            at_us=at_us,
        )
    after = WalletState(account_id=account_id, balance=balance, locked=locked)
    return Settlement(hold_id=hold_id, charged=charged, released=released, already_final=False, wallet=after)


def expire_holds(conn: sqlite3.Connection, at_us: int) -> int:
    # Each hold voided on its own, as void_hold would: the write lock keeps every settler
    # out, so there is no hold in use to skip (PostgreSQL's sweeper skips those and batches).
    ids = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM holds WHERE state = 'pending' AND expires_at < ? ORDER BY expires_at, id",
            (at_us,),
        )
    ]
    for hold_id in ids:
        finalize(conn, hold_id, 0, "voided", now_us())
    return len(ids)
