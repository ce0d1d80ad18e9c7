"""The wallet page, /wallet: balance, locked and available; the balance over time; the
transactions (every ledger row), paged; and a top-up form when self top-up is enabled
(``wallet.self_top_up``).

Numbers come from the engine calls and renderings of the ``/api/v1/wallet`` routes. The
top-up form posts to ``POST /wallet/top-up`` (session and CSRF checked), which credits through
the same call as ``POST /api/v1/wallet/top-up`` (``Reports.top_up``) with the idempotency key
the form carries: each rendering of the form draws a new one, so a form sent twice (a double
click, a resent POST) credits once. A credited top-up redirects to ``/wallet?top_up=<txn id>``,
which names it.

Feeds (session-authenticated, errors in the API's envelope):
    GET /wallet/data?granularity=hour|day     the wallet and its balance at the end of each
        hour of the last 24 (or day of the last 30)
    GET /wallet/data/transactions?after&limit the API's transactions list
"""

from __future__ import annotations

import secrets
from typing import Any

from quart import Response, request
from quart_trio import QuartTrio

from omixa.engine.errors import IdempotencyKeyReused, InvalidRequest, NotFoundError, TopUpDisabled
from omixa.engine.money import format_usd, parse_usd
from omixa.storage import ApiKeyRecord
from omixa.web.http.console import Console, redirect
from omixa.web.http.envelope import json_response
from omixa.web.http.wallet_api import (
    _limit,
    _transaction_id,
    iso,
    list_view,
    query_params,
    transaction_view,
)


def register(app: QuartTrio, console: Console) -> None:
    engine = console.engine
    reports = engine.reports
    settings = engine.config.wallet

    async def wallet_page(
        key: ApiKeyRecord,
        csrf: str,
        *,
        error: str | None = None,
        amount: str = "",
        idempotency_key: str | None = None,
        status: int = 200,
    ) -> Response:
        notice: dict[str, Any] | None = None
        chosen = request.args.get("top_up", "")
        if chosen:
            try:
                entry = await reports.transaction(key.account_id, _transaction_id(chosen))
            except (NotFoundError, InvalidRequest):  # a link edited by hand: no notice
                entry = None
            if entry is not None and entry.type == "top_up":
                notice = {**transaction_view(entry), "replayed": request.args.get("replayed") == "true"}
        response = await console.page(
            "wallet.html",
            key,
            csrf,
            active="wallet",
            self_top_up=settings.self_top_up,
            top_up_min=format_usd(parse_usd(settings.top_up_min_usd)),
            top_up_max=format_usd(parse_usd(settings.top_up_max_usd)),
            idempotency_key=idempotency_key or secrets.token_urlsafe(24),
            notice=notice,
            error=error,
            amount=amount,
        )
        response.status_code = status
        return response

    @app.get("/wallet")
    async def console_wallet_page() -> Response:
        found = await console.session()
        if found is None:
            return console.to_signin()
        return await wallet_page(*found)

    @app.post("/wallet/top-up")
    async def console_top_up() -> Response:
        key, form = await console.require_form()
        amount = form.get("amount", "").strip()
        # The page's form always carries one (drawn when it was rendered): one without it is
        # not this page's, and would credit again on every resend.
        idempotency_key = form.get("idempotency_key", "")
        try:
            if not 1 <= len(idempotency_key) <= 255:
                raise InvalidRequest("The form has no idempotency key; reload the page and retry.")
            result = await reports.top_up(key.account_id, amount, idempotency_key)
        except (InvalidRequest, IdempotencyKeyReused, TopUpDisabled) as exc:
            # The page again, with what went wrong; a refused amount left the key unused, so the
            # corrected form keeps it.
            _, csrf = await console.require()
            if isinstance(exc, IdempotencyKeyReused):
                message = "This form was already used for a top-up of another amount; enter the amount again."
                return await wallet_page(key, csrf, error=message, status=exc.status)
            return await wallet_page(
                key, csrf, error=exc.message, amount=amount, idempotency_key=idempotency_key or None, status=exc.status
            )
        target = f"/wallet?top_up={transaction_view(result.entry)['id']}"
        return redirect(target + ("&replayed=true" if result.replayed else ""))

    @app.get("/wallet/data")
    async def console_wallet_data() -> Response:
        key, _ = await console.require()
        params = query_params(("granularity",))
        granularity = params.get("granularity", "hour")
        state = await engine.accounts.wallet(key.account_id)
        since, until, points = await reports.balance_history(
            key.account_id, granularity=granularity, since=None, until=None
        )
        return json_response(
            {
                "wallet": {
                    "balance": format_usd(state.balance),
                    "locked_balance": format_usd(state.locked),
                    "available": format_usd(state.available),
                    "currency": "USD",
                },
                "granularity": granularity,
                "since": iso(since),
                "until": iso(until),
                "balance_history": [{"start": iso(p.start), "balance": format_usd(p.balance)} for p in points],
            }
        )

    @app.get("/wallet/data/transactions")
    async def console_wallet_transactions() -> Response:
        key, _ = await console.require()
        params = query_params(("limit", "after"))
        after = _transaction_id(params["after"]) if "after" in params else None
        page = await reports.transactions(key.account_id, limit=_limit(params), after=after)
        return json_response(list_view(page, transaction_view))
