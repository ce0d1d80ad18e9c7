"""The developer dashboard: sign-in with an API key, /usage, /catalog and /playground.

Pages are server-rendered HTML (Jinja templates in ``web/http/templates``) with one stylesheet and
one script (``web/http/static``), all served by Omixa itself: no CDN, works offline. The script
polls JSON feeds under ``/usage/data`` that are built from the same engine calls and the same
renderings as the ``/api/v1`` wallet and usage routes, so the dashboard shows the API's
numbers exactly.

Sessions. Signing in with an API key records a session in the database (a random id, the key,
an expiry ``dashboard.session_hours`` ahead) and sets one cookie, ``omixa_session``: that id
and a CSRF token, signed with itsdangerous (HMAC-SHA1 over the server's session secret) and
timestamped. It is HttpOnly, SameSite=Strict, Secure when the request came over HTTPS (or
``dashboard.secure_cookie``), and expires with the session. Every request looks the session and
its key up again: signing out deletes the session, so its cookie stops working at once in every
process (also a copy of it), and a revoked key ends its sessions at once. A key that must sign
its requests (the key's flag or ``OMIXA_REQUIRE_SIGNATURE``) cannot sign in: a session would
let the key alone spend. The secret comes from ``OMIXA_SESSION_SECRET``; without it each
process draws a random one (sessions then end at restart and do not cross processes).

CSRF. Every state-changing request (sign-in, sign-out, the playground's chat call) must carry
a token: the session's, in a form field or the ``X-CSRF-Token`` header; for sign-in, where no
session exists yet, a token in a short-lived cookie set with the form (double submit).
Pages send ``Content-Security-Policy: default-src 'self'`` and refuse framing.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeTimedSerializer
from quart import Response, g, render_template, request
from quart import redirect as quart_redirect
from quart_trio import QuartTrio

from omixa.engine.access import SigningKeyRefused
from omixa.engine.errors import InvalidApiKey, InvalidRequest
from omixa.engine.money import format_usd
from omixa.engine.reports import STEP, Bucket
from omixa.engine.runtime import Engine
from omixa.storage import ApiKeyRecord, RequestLogFilter
from omixa.web.http.catalog_routes import model_object
from omixa.web.http.envelope import json_response
from omixa.web.http.wallet_api import bucket_view, iso, request_view

log = logging.getLogger("omixa.dashboard")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SESSION_COOKIE = "omixa_session"
SIGNIN_COOKIE = "omixa_signin"
CSRF_HEADER = "X-CSRF-Token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LATEST_REQUESTS = 10


class NotSignedIn(InvalidApiKey):
    default_message = "Sign in first: your dashboard session is missing or has expired."


def session_secret() -> str:
    secret = os.environ.get("OMIXA_SESSION_SECRET", "")
    if secret:
        return secret
    log.warning(
        "OMIXA_SESSION_SECRET is not set: dashboard sessions use a random secret of this "
        "process and end when it restarts"
    )
    return secrets.token_urlsafe(32)


def register(app: QuartTrio, engine: Engine, serve_chat: Callable[[ApiKeyRecord], Awaitable[Response]]) -> None:
    config = engine.config.dashboard
    if not config.enabled:
        return
    app.template_folder = str(TEMPLATES)
    app.static_folder = str(STATIC)  # Quart's own /static/<path> route serves it
    serializer = URLSafeTimedSerializer(session_secret(), salt="omixa-dashboard-session")
    max_age = int(config.session_hours * 3600)

    def secure() -> bool:
        return config.secure_cookie or request.scheme == "https"

    def set_cookie(response: Response, name: str, value: str, age: int) -> None:
        response.set_cookie(name, value, max_age=age, httponly=True, samesite="Strict", secure=secure(), path="/")

    async def session() -> tuple[ApiKeyRecord, str] | None:
        """The signed-in key and the session's CSRF token, or None."""
        found = _cookie_session()
        if found is None:
            return None
        session_id, csrf = found
        record = await engine.access.session_key(session_id)
        if record is None:
            return None
        g.key = record
        g.session_id = session_id
        return record, csrf

    def _cookie_session() -> tuple[str, str] | None:
        """(session id, CSRF token) from a cookie signed by this server and not too old."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = serializer.loads(raw, max_age=max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not isinstance(data.get("csrf"), str):
            return None  # e.g. a cookie from before sessions were kept on the server
        return data["sid"], data["csrf"]

    async def require() -> tuple[ApiKeyRecord, str]:
        found = await session()
        if found is None:
            raise NotSignedIn()
        return found

    def check_csrf(expected: str, given: str | None) -> None:
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise InvalidRequest("The form has expired or did not come from this site; reload the page and retry.")

    async def page(template: str, key: ApiKeyRecord | None, csrf: str = "", **context: Any) -> Response:
        html = await render_template(
            template,
            csrf=csrf,
            signed_in=key is not None,
            key_prefix=key.prefix if key else "",
            poll_seconds=config.poll_seconds,
            **context,
        )
        return Response(html, content_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    def to_signin() -> Response:
        target = request.full_path.rstrip("?")
        return _redirect("/signin?" + urlencode({"next": target}) if target.startswith("/") else "/signin")

    @app.get("/")
    async def home() -> Response:
        return _redirect("/usage")

    @app.get("/signin")
    async def signin_form() -> Response:
        token = secrets.token_urlsafe(24)
        response = await page("signin.html", None, csrf=token, error=None, next=_safe_next())
        set_cookie(response, SIGNIN_COOKIE, token, 3600)
        return response

    @app.post("/signin")
    async def signin() -> Response:
        form = await request.form
        check_csrf(request.cookies.get(SIGNIN_COOKIE, ""), form.get("csrf"))
        try:
            key = await engine.access.sign_in(form.get("api_key", ""))
        except InvalidApiKey as exc:
            token = secrets.token_urlsafe(24)
            message = exc.message if isinstance(exc, SigningKeyRefused) else "That key is not valid or was revoked."
            response = await page("signin.html", None, csrf=token, error=message, next=_safe_next(form.get("next")))
            response.status_code = 401
            set_cookie(response, SIGNIN_COOKIE, token, 3600)
            return response
        session_id = await engine.accounts.start_session(key, max_age)
        data = {"sid": session_id, "csrf": secrets.token_urlsafe(24)}
        response = _redirect(_safe_next(form.get("next")))
        set_cookie(response, SESSION_COOKIE, serializer.dumps(data), max_age)
        response.delete_cookie(SIGNIN_COOKIE, path="/")
        log.info("dashboard sign-in key=%s account=%s", key.id, key.account_id)
        return response

    @app.post("/signout")
    async def signout() -> Response:
        found = await session()
        if found is not None:
            check_csrf(found[1], (await request.form).get("csrf"))
            await engine.accounts.end_session(g.session_id)
        response = _redirect("/signin")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/usage")
    async def usage_page() -> Response:
        found = await session()
        if found is None:
            return to_signin()
        return await page("usage.html", found[0], found[1], active="usage")

    @app.get("/catalog")
    async def catalog_page() -> Response:
        found = await session()
        if found is None:
            return to_signin()
        return await page("catalog.html", found[0], found[1], active="catalog", models=_catalog_rows(engine))

    @app.get("/playground")
    async def playground_page() -> Response:
        found = await session()
        if found is None:
            return to_signin()
        models = [m for m in _catalog_rows(engine) if m["modality"] == "chat"]
        return await page("playground.html", found[0], found[1], active="playground", models=models)

    @app.post("/playground/chat/completions")
    async def playground_chat() -> Response:
        key, csrf = await require()
        check_csrf(csrf, request.headers.get(CSRF_HEADER))
        return await serve_chat(key)

    @app.get("/usage/data")
    async def usage_data() -> Response:
        """Everything /usage shows, in one poll: the numbers of the /api/v1 routes."""
        key, _ = await require()
        granularity = request.args.get("granularity", "hour")
        reports = engine.reports
        wallet = await engine.accounts.wallet(key.account_id)
        since, until, buckets = await reports.rollups(key.account_id, granularity=granularity, since=None, until=None)
        _, _, per_model = await reports.rollups(
            key.account_id, granularity=granularity, since=since, until=until, group_by="model"
        )
        latest = await reports.requests(RequestLogFilter(account_id=key.account_id, limit=LATEST_REQUESTS), after=None)
        by_model: dict[str, list] = {}
        for bucket in per_model:
            by_model.setdefault(bucket.model or "", []).append(bucket)
        models = [{"model": model, **_totals(rows)} for model, rows in sorted(by_model.items())]
        return json_response(
            {
                "wallet": {
                    "balance": format_usd(wallet.balance),
                    "locked_balance": format_usd(wallet.locked),
                    "available": format_usd(wallet.available),
                    "currency": "USD",
                },
                "granularity": granularity,
                "since": iso(since),
                "until": iso(until),
                "buckets": [bucket_view(b, STEP[granularity]) for b in buckets],
                "totals": _totals(buckets),
                "models": sorted(models, key=lambda m: -m["requests"]),
                "latest": [request_view(r) for r in latest.data],
            }
        )

    @app.get("/usage/data/requests/<request_id>")
    async def usage_data_request(request_id: str) -> Response:
        key, _ = await require()
        return json_response(request_view(await engine.reports.request(key.account_id, request_id)))


# A local path: "/" then path characters only. No second "/" or "\\" at the start, and no
# whitespace or control characters anywhere (browsers strip tabs and newlines from URLs, so
# "/\t/evil.example" would become "//evil.example", another site).
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*")


def _redirect(location: str) -> Response:
    """A 302 to ``location``. Quart's ``redirect`` builds the app's own response class; its
    annotation names werkzeug's."""
    return cast(Response, quart_redirect(location))


def _safe_next(value: str | None = None) -> str:
    """Where to go after sign-in: a local dashboard path only (no open redirect)."""
    target = value if value is not None else request.args.get("next", "")
    return target if _LOCAL_PATH.fullmatch(target) else "/usage"


def _totals(buckets: list[Bucket]) -> dict[str, Any]:
    """Sums over a range of buckets; the p95 shown is the worst bucket's."""
    requests_ = sum(b.requests for b in buckets)
    errors = sum(b.errors for b in buckets)
    latency_sum = sum((b.latency_ms_mean or 0) * b.requests for b in buckets)
    return {
        "requests": requests_,
        "errors": errors,
        "error_rate": round(errors / requests_, 4) if requests_ else 0.0,
        "prompt_tokens": sum(b.prompt_tokens for b in buckets),
        "completion_tokens": sum(b.completion_tokens for b in buckets),
        "cost": format_usd(sum(b.cost for b in buckets)),
        "latency_ms_mean": round(latency_sum / requests_, 1) if requests_ else None,
        "latency_ms_p95_max": max((b.latency_ms_p95 for b in buckets if b.latency_ms_p95), default=None),
    }


def _catalog_rows(engine: Engine) -> list[dict[str, Any]]:
    """The enabled models exactly as ``GET /api/v1/models`` shows them."""
    enabled = engine.router.models()
    return [model_object(m) for m in engine.catalog.models.values() if m.id in enabled]
