"""/admin: the operator console, for whoever holds ``OMIXA_ADMIN_TOKEN``.

Without that token set, every route here answers 404, as ``GET /admin/deployments`` does.

Sign-in. The form (/admin/signin) takes the token, compared in constant time; a wrong one gets
the same refusal whatever was wrong. A sign-in is a row in ``admin_sessions`` (``Operators``)
and a cookie of its own, ``omixa_admin``, scoped to /admin: the row's id, a CSRF token and a
fingerprint of the admin token (an HMAC under the session secret, so a process restarted with
a new token refuses every operator session made under the old one; the token is read when
the process starts), signed with itsdangerous under the session secret with a salt of its
own (a developer's session cookie is not an operator's). It is HttpOnly, SameSite=Strict,
Secure as the developers' cookie is, and expires after ``dashboard.session_hours``, on the
server too. Signing out deletes the row, so copies of the cookie stop working everywhere.

Every post carries the session's CSRF token (form field ``csrf`` or ``X-CSRF-Token``). The
feeds answer errors in the API's envelope: 401 without an operator session.

What the page shows: the deployments as ``GET /admin/deployments`` renders them (polled from
``/admin/data/deployments``), the accounts with their wallets (``/admin/data/accounts``,
newest first, searchable by email, paged), and a top-up form per account that credits through
``Operators.top_up`` (a ``top_up`` ledger row, idempotent per the form's key).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from typing import Any

import trio
from itsdangerous import BadSignature, URLSafeTimedSerializer
from quart import Response, request
from quart_trio import QuartTrio

from omixa.engine.errors import InvalidApiKey, InvalidRequest, NotFoundError
from omixa.engine.money import format_usd, parse_usd
from omixa.engine.operators import Operators
from omixa.storage import AccountSummary
from omixa.web.http.console import CSRF_HEADER, Console, redirect
from omixa.web.http.deployment_view import deployment_view
from omixa.web.http.envelope import json_response
from omixa.web.http.wallet_api import iso, transaction_view

log = logging.getLogger("omixa.admin")

ADMIN_COOKIE = "omixa_admin"
ADMIN_SIGNIN_COOKIE = "omixa_admin_signin"
ADMIN_PATH = "/admin"
ADMIN_TOKEN_ENV = "OMIXA_ADMIN_TOKEN"
PAGE_SIZE = 20


class NotSignedInAsOperator(InvalidApiKey):
    default_message = "Sign in to /admin first: the operator session is missing or has expired."


def register(app: QuartTrio, console: Console) -> None:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    engine = console.engine
    operators = Operators(engine.storage, max_top_up=parse_usd(console.config.operator_top_up_max_usd))
    secret = console.serializer.secret_keys[-1]
    serializer = URLSafeTimedSerializer(secret, salt="omixa-admin-session")
    fingerprint = hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()

    def configured() -> None:
        if not token:
            raise NotFoundError(f"No route for {request.method} {request.path}.")

    def set_cookie(response: Response, name: str, value: str, age: int) -> None:
        response.set_cookie(
            name, value, max_age=age, httponly=True, samesite="Strict", secure=console.secure(), path=ADMIN_PATH
        )

    async def session() -> tuple[str, str] | None:
        """(session id, CSRF token) of a live operator session, or None."""
        raw = request.cookies.get(ADMIN_COOKIE)
        if not raw:
            return None
        try:
            data = serializer.loads(raw, max_age=console.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("sid", "csrf", "tok")):
            return None
        if not hmac.compare_digest(data["tok"], fingerprint):
            return None  # signed in with an admin token that is no longer the server's
        if not await operators.session_live(data["sid"]):
            return None
        return data["sid"], data["csrf"]

    async def require() -> tuple[str, str]:
        configured()
        found = await session()
        if found is None:
            raise NotSignedInAsOperator()
        return found

    async def require_post() -> dict[str, str]:
        """The fields of a post from a signed-in operator with the session's CSRF token."""
        _, csrf = await require()
        form = {name: value for name, value in (await request.form).items()}
        console.check_csrf(csrf, form.get("csrf") or request.headers.get(CSRF_HEADER))
        return form

    async def signin_page(error: str | None = None, status: int = 200) -> Response:
        csrf = secrets.token_urlsafe(24)
        response = await console.page("admin_signin.html", None, csrf=csrf, active="admin-signin", error=error)
        response.status_code = status
        set_cookie(response, ADMIN_SIGNIN_COOKIE, csrf, 3600)
        return response

    @app.get("/admin/signin")
    async def admin_signin_form() -> Response:
        configured()
        return await signin_page()

    @app.post("/admin/signin")
    async def admin_signin() -> Response:
        configured()
        form = await request.form
        console.check_csrf(request.cookies.get(ADMIN_SIGNIN_COOKIE, ""), form.get("csrf"))
        given = form.get("token", "").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            log.warning("operator sign-in refused from %s", request.remote_addr)
            return await signin_page("Sign-in refused.", status=401)
        session_id = await operators.start_session(console.max_age)
        cookie = serializer.dumps({"sid": session_id, "csrf": secrets.token_urlsafe(24), "tok": fingerprint})
        response = redirect(ADMIN_PATH)
        set_cookie(response, ADMIN_COOKIE, cookie, console.max_age)
        response.delete_cookie(ADMIN_SIGNIN_COOKIE, path=ADMIN_PATH)
        log.info("operator sign-in from %s", request.remote_addr)
        return response

    @app.post("/admin/signout")
    async def admin_signout() -> Response:
        configured()
        found = await session()
        if found is not None:
            console.check_csrf(found[1], (await request.form).get("csrf"))
            await operators.end_session(found[0])
        response = redirect("/admin/signin")
        response.delete_cookie(ADMIN_COOKIE, path=ADMIN_PATH)
        return response

    @app.get("/admin")
    async def admin_page() -> Response:
        configured()
        found = await session()
        if found is None:
            return redirect("/admin/signin")
        return await console.page("admin.html", None, csrf=found[1], active="admin", page_size=PAGE_SIZE)

    @app.get("/admin/data/deployments")
    async def admin_deployments_feed() -> Response:
        await require()
        now = trio.current_time()
        return json_response({"object": "list", "data": [deployment_view(actor, now) for actor in engine.deployments]})

    @app.get("/admin/data/accounts")
    async def admin_accounts_feed() -> Response:
        await require()
        try:
            limit = int(request.args.get("limit", PAGE_SIZE))
        except ValueError:
            raise InvalidRequest("limit must be a whole number.", param="limit") from None
        page = await operators.accounts(
            email_contains=request.args.get("q", ""), limit=limit, after=request.args.get("after") or None
        )
        return json_response(
            {
                "object": "list",
                "data": [account_view(a) for a in page.data],
                "has_more": page.has_more,
            }
        )

    @app.post("/admin/top-up")
    async def admin_top_up() -> Response:
        form = await require_post()
        account_id = form.get("account_id", "")
        result = await operators.top_up(account_id, form.get("amount", ""), form.get("idempotency_key", ""))
        if not result.replayed:
            log.info(
                "operator top-up account=%s amount=%s entry=%s",
                account_id,
                format_usd(result.entry.amount),
                result.entry.id,
            )
        wallet = result.wallet
        return json_response(
            {
                "object": "admin.top_up",
                "account_id": account_id,
                "replayed": result.replayed,
                "transaction": transaction_view(result.entry),
                "wallet": {
                    "balance": format_usd(wallet.balance),
                    "locked_balance": format_usd(wallet.locked),
                    "available": format_usd(wallet.available),
                    "currency": "USD",
                },
            },
            status=200 if result.replayed else 201,
        )


def account_view(account: AccountSummary) -> dict[str, Any]:
    return {
        "id": account.id,
        "email": account.email,
        "created_at": iso(account.created_at),
        "balance": format_usd(account.balance),
        "locked_balance": format_usd(account.locked),
        "available": format_usd(account.available),
    }
