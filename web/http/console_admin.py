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

Guessing is throttled: after ``SignInThrottle.limit`` refused sign-ins from one client address
within ``window`` seconds, that address is refused (429, ``Retry-After``) until the oldest
leaves the window, right token or not. The count is per process and per address as this
process sees it (behind a proxy, the proxy's: every client behind it shares the count).

Every post carries the session's CSRF token (form field ``csrf`` or ``X-CSRF-Token``). The
feeds answer errors in the API's envelope: 401 without an operator session.

What the page shows: the deployments as ``GET /admin/deployments`` renders them (polled from
``/admin/data/deployments``), the accounts with their wallets (``/admin/data/accounts``,
newest first, searchable by email, paged), and a top-up form per account that credits through
``Operators.top_up`` (a ``top_up`` ledger row, idempotent per the form's key).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import math
import os
import secrets
import time
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


class SignInThrottle:
    """Refused sign-ins per client address, over a sliding window (bounded: at most
    ``addresses`` are remembered; the stalest is forgotten first)."""

    def __init__(self, *, limit: int = 5, window: float = 900.0, addresses: int = 10_000) -> None:
        self.limit, self.window, self.addresses = limit, window, addresses
        self._refused: dict[str, collections.deque[float]] = {}

    def wait(self, address: str, now: float) -> float:
        """Seconds ``address`` must wait before it may try again (0: it may now)."""
        times = self._refused.get(address)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._refused[address]
            return 0.0
        return times[0] + self.window - now if len(times) >= self.limit else 0.0

    def refused(self, address: str, now: float) -> None:
        times = self._refused.pop(address, None) or collections.deque(maxlen=self.limit)
        times.append(now)
        self._refused[address] = times  # re-inserted: the dict's order is staleness
        while len(self._refused) > self.addresses:
            del self._refused[next(iter(self._refused))]


class NotSignedInAsOperator(InvalidApiKey):
    default_message = "Sign in to /admin first: the operator session is missing or has expired."


def register(app: QuartTrio, console: Console) -> None:
    token = os.environ.get(ADMIN_TOKEN_ENV, "")
    engine = console.engine
    operators = Operators(engine.storage, max_top_up=parse_usd(console.config.operator_top_up_max_usd))
    secret = console.serializer.secret_keys[-1]
    serializer = URLSafeTimedSerializer(secret, salt="omixa-admin-session")
    fingerprint = hmac.new(secret, token.encode(), hashlib.sha256).hexdigest()
    throttle = SignInThrottle()
    if token and len(token) < 24:
        log.warning("%s is %d characters: use a long random one (32 or more)", ADMIN_TOKEN_ENV, len(token))

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
        address, now = request.remote_addr or "", time.monotonic()
        wait = throttle.wait(address, now)
        if wait > 0:
            log.warning("operator sign-in from %s not tried: too many refused", address)
            minutes = math.ceil(wait / 60)
            response = await signin_page(
                f"Too many refused sign-ins from this address: try again in {minutes} minute(s).", status=429
            )
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        given = form.get("token", "").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            throttle.refused(address, now)
            log.warning("operator sign-in refused from %s", address)
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
