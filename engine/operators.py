"""What the operator console (/admin) asks of the store: operator sessions, the accounts with
their wallets, and crediting an account.

Operators sign in with ``OMIXA_ADMIN_TOKEN``; each sign-in is a row (``admin_sessions``) so
that signing out ends the session in every process, as developers' dashboard sessions do.

A credit goes through the same ledger path as ``omixa wallet top-up``: one ``top_up`` ledger
row in the transaction that raises the balance (``Storage.credit_top_up``), here with an
idempotency key so that a form sent twice credits once, and a note saying an operator
credited it from the console.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

import attrs

from omixa.engine.errors import IdempotencyKeyReused, InvalidRequest, NotFoundError, storage_failures
from omixa.engine.money import format_usd, parse_usd
from omixa.storage import AccountSummary, IdempotencyConflict, NotFound, Storage, TopUpResult

OPERATOR_NOTE = "operator top-up (console)"
MAX_IDEMPOTENCY_KEY = 255
MAX_PAGE = 100
MAX_SEARCH = 320  # an email address's longest


@attrs.frozen(kw_only=True)
class AccountPage:
    data: Sequence[AccountSummary]
    has_more: bool


class Operators:
    def __init__(self, storage: Storage, *, max_top_up: int) -> None:
        self.storage = storage
        self.max_top_up = max_top_up  # nano-USD: the largest credit one top-up may make

    async def start_session(self, seconds: float) -> str:
        """Record an operator sign-in lasting ``seconds``; the session id.
        Errors: ServiceUnavailable."""
        session_id = secrets.token_urlsafe(24)
        expires = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
        with storage_failures("key"):
            await self.storage.create_admin_session(session_id, expires)
        return session_id

    async def session_live(self, session_id: str) -> bool:
        with storage_failures("key"):
            return await self.storage.admin_session_live(session_id)

    async def end_session(self, session_id: str) -> None:
        with storage_failures("key"):
            await self.storage.end_admin_session(session_id)

    async def accounts(self, *, email_contains: str, limit: int, after: str | None) -> AccountPage:
        """A page of accounts with their wallets, newest first; ``email_contains`` ("" for
        all) filters by email, case-insensitive. Errors: InvalidRequest; ServiceUnavailable."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}.", param="limit")
        if len(email_contains) > MAX_SEARCH:
            raise InvalidRequest(f"The search is longer than {MAX_SEARCH} characters.", param="q")
        with storage_failures("wallet"):
            rows = await self.storage.list_accounts(
                email_contains=email_contains.strip() or None, limit=limit + 1, after=after
            )
        return AccountPage(data=rows[:limit], has_more=len(rows) > limit)

    async def top_up(self, account_id: str, amount: str, idempotency_key: str) -> TopUpResult:
        """Credit ``amount`` (USD, a decimal string > 0) once per ``idempotency_key``.

        Errors: InvalidRequest (amount, key); NotFoundError (account); IdempotencyKeyReused
        (the key was first used with another amount); ServiceUnavailable.
        """
        if not 1 <= len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            raise InvalidRequest(
                f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY} characters.", param="idempotency_key"
            )
        try:
            nano = parse_usd(amount.strip(), field="amount")
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="amount") from None
        if nano <= 0:
            raise InvalidRequest("amount must be more than 0 USD.", param="amount")
        if nano > self.max_top_up:
            raise InvalidRequest(
                f"amount is above this console's limit of {format_usd(self.max_top_up)} USD per top-up "
                "([dashboard] operator_top_up_max_usd); larger credits go through omixa wallet top-up.",
                param="amount",
            )
        with storage_failures("wallet"):
            try:
                return await self.storage.credit_top_up(
                    account_id, nano, idempotency_key=idempotency_key, note=OPERATOR_NOTE
                )
            except IdempotencyConflict:
                raise IdempotencyKeyReused("This form was already sent with another amount.") from None
            except NotFound:
                raise NotFoundError("No such account.") from None
            except ValueError as exc:  # beyond what a wallet can hold
                raise InvalidRequest(str(exc), param="amount") from None
