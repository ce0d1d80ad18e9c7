"""The web console: sign-in with an API key, /catalog and /playground here; /usage,
/requests, /wallet, /keys and /admin in the ``console_*`` modules, registered from here.

Pages are server-rendered HTML (Jinja templates in ``web/http/templates``) with the shared
stylesheet and script and one of each per page (``web/http/static``), all served by Omixa
itself: no CDN, works offline. The scripts poll JSON feeds (``/usage/data``,
``/requests/data``, ...) built from the same engine calls and renderings as the ``/api/v1``
wallet and usage routes, so the console shows the API's numbers exactly. Every console
answer (pages, feeds, CSV exports) is sent ``Cache-Control: no-store``.

Sessions, CSRF and page rendering live in ``console`` (``Console``); this module registers
sign-in, sign-out and the catalog and playground pages, and hands the ``Console`` to
the other pages' modules. The session secret comes from ``OMIXA_SESSION_SECRET``; without it
each process draws a random one (sessions then end at restart and do not cross processes).
Pages send ``Content-Security-Policy: default-src 'self'`` and refuse framing.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from itsdangerous import URLSafeTimedSerializer
from quart import Response, g, request
from quart_trio import QuartTrio

from omixa.engine.access import SigningKeyRefused
from omixa.engine.chat_request import takes_sampling
from omixa.engine.errors import InvalidApiKey
from omixa.engine.runtime import Engine
from omixa.storage import ApiKeyRecord
from omixa.web.http import console_admin, console_keys, console_requests, console_usage, console_wallet
from omixa.web.http.catalog_routes import model_object
from omixa.web.http.console import CSRF_HEADER, SESSION_COOKIE, Console, redirect, safe_next

log = logging.getLogger("omixa.dashboard")

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SIGNIN_COOKIE = "omixa_signin"
CONSOLE_PATHS = ("/usage", "/requests", "/wallet", "/keys", "/playground", "/signin", "/signout", "/admin")


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
    if not config.enabled and not os.environ.get(console_admin.ADMIN_TOKEN_ENV):
        return  # no page at all (so no session secret to draw)
    app.template_folder = str(TEMPLATES)
    app.static_folder = str(STATIC)  # Quart's own /static/<path> route serves it
    serializer = URLSafeTimedSerializer(session_secret(), salt="omixa-dashboard-session")
    console = Console(engine, config, serializer, int(config.session_hours * 3600))
    # The operators' page follows OMIXA_ADMIN_TOKEN alone (404 without it), like the admin
    # API; dashboard.enabled turns off the developers' pages.
    console_admin.register(app, console)

    @app.after_request
    async def no_store(response: Response) -> Response:
        # The pages, their JSON feeds and CSV exports carry an account's money, requests and
        # keys (and /admin, every account's): no shared or browser cache keeps a copy.
        if request.path.startswith(CONSOLE_PATHS):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    icon = (STATIC / "favicon.svg").read_bytes()

    @app.get("/favicon.svg")
    async def favicon() -> Response:
        # From memory, not the static route: browsers drop this request whenever the page
        # navigates on, which would leave a static file's handle open until collected.
        return Response(icon, content_type="image/svg+xml", headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/favicon.ico")
    async def favicon_ico() -> Response:
        return redirect("/favicon.svg")  # for browsers and tools that ask without reading the page

    if not config.enabled:
        return
    console_usage.register(app, console)
    console_requests.register(app, console)
    console_wallet.register(app, console)
    console_keys.register(app, console)

    @app.get("/")
    async def home() -> Response:
        return redirect("/usage")

    @app.get("/signin")
    async def signin_form() -> Response:
        token = secrets.token_urlsafe(24)
        response = await console.page("signin.html", None, csrf=token, error=None, next=safe_next())
        console.set_cookie(response, SIGNIN_COOKIE, token, 3600)
        return response

    @app.post("/signin")
    async def signin() -> Response:
        form = await request.form
        console.check_csrf(request.cookies.get(SIGNIN_COOKIE, ""), form.get("csrf"))
        try:
            key = await engine.access.sign_in(form.get("api_key", ""))
        except InvalidApiKey as exc:
            token = secrets.token_urlsafe(24)
            message = exc.message if isinstance(exc, SigningKeyRefused) else "That key is not valid or was revoked."
            back = safe_next(form.get("next"))
            response = await console.page("signin.html", None, csrf=token, error=message, next=back)
            response.status_code = 401
            console.set_cookie(response, SIGNIN_COOKIE, token, 3600)
            return response
        session_id = await engine.accounts.start_session(key, console.max_age)
        data = {"sid": session_id, "csrf": secrets.token_urlsafe(24)}
        response = redirect(safe_next(form.get("next")))
        console.set_cookie(response, SESSION_COOKIE, serializer.dumps(data), console.max_age)
        response.delete_cookie(SIGNIN_COOKIE, path="/")
        log.info("dashboard sign-in key=%s account=%s", key.id, key.account_id)
        return response

    @app.post("/signout")
    async def signout() -> Response:
        found = await console.session()
        if found is not None:
            console.check_csrf(found[1], (await request.form).get("csrf"))
            await engine.accounts.end_session(g.session_id)
        response = redirect("/signin")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.get("/catalog")
    async def catalog_page() -> Response:
        return await console.signed_in_page("catalog.html", "catalog", models=_catalog_rows(engine))

    @app.get("/playground")
    async def playground_page() -> Response:
        return await console.signed_in_page("playground.html", "playground", models=_playground_rows(engine))

    @app.post("/playground/chat/completions")
    async def playground_chat() -> Response:
        key, csrf = await console.require()
        console.check_csrf(csrf, request.headers.get(CSRF_HEADER))
        return await serve_chat(key)


def _playground_rows(engine: Engine) -> list[dict[str, Any]]:
    """The enabled chat models as the API lists them, plus what the playground's controls
    need: the output cap's parameter (reasoning models take ``max_completion_tokens``, which
    also bounds their reasoning tokens), whether ``temperature`` reaches the model, and
    whether ``service_tier: "priority"`` (Fast mode) can be served (an enabled deployment
    with priority processing)."""
    priority = engine.router.priority_models()
    rows = []
    for row in _catalog_rows(engine):
        model = engine.catalog.models[row["id"]]
        if model.modality != "chat":
            continue
        row["cap_param"] = "max_completion_tokens" if model.reasoning else "max_tokens"
        row["temperature"] = takes_sampling(model)
        row["fast_mode"] = model.id in priority and model.priority_prices is not None
        rows.append(row)
    return rows


def _catalog_rows(engine: Engine) -> list[dict[str, Any]]:
    """The enabled models exactly as ``GET /api/v1/models`` shows them."""
    enabled = engine.router.models()
    return [model_object(m) for m in engine.catalog.models.values() if m.id in enabled]
