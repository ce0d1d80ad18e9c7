"""What every dashboard page shares: the signed-in session, CSRF checks and page rendering.

``dashboard.register`` builds one ``Console`` and hands it to each page module's own
``register(app, console)`` (usage, catalog and playground in ``dashboard``; the request
log, wallet, keys and operator pages in modules of their own).

Sessions. Signing in with an API key records a session in the database (a random id, the key,
an expiry ``dashboard.session_hours`` ahead) and sets one cookie, ``omixa_session``: that id
and a CSRF token, signed with itsdangerous (HMAC-SHA1 over the server's session secret) and
timestamped. It is HttpOnly, SameSite=Strict, Secure when the request came over HTTPS (or
``dashboard.secure_cookie``), and expires with the session. Every request looks the session and
its key up again: signing out deletes the session, so its cookie stops working at once in every
process (also a copy of it), and a revoked key ends its sessions at once.

CSRF. Every state-changing request must carry a token: the session's, in a form field or the
``X-CSRF-Token`` header; for sign-in, where no session exists yet, a token in a short-lived
cookie set with the form (double submit).
"""

from __future__ import annotations

import hmac
import re
from typing import Any, cast
from urllib.parse import urlencode

import attrs
from itsdangerous import BadSignature, URLSafeTimedSerializer
from quart import Response, g, render_template, request
from quart import redirect as quart_redirect

from omixa.engine.config import DashboardConfig
from omixa.engine.errors import InvalidApiKey, InvalidRequest
from omixa.engine.runtime import Engine
from omixa.storage import ApiKeyRecord

SESSION_COOKIE = "omixa_session"
CSRF_HEADER = "X-CSRF-Token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class NotSignedIn(InvalidApiKey):
    default_message = "Sign in first: your dashboard session is missing or has expired."


@attrs.define(slots=True)
class Console:
    """The pages' shared machinery, bound to one engine and one session secret."""

    engine: Engine
    config: DashboardConfig
    serializer: URLSafeTimedSerializer
    max_age: int

    def secure(self) -> bool:
        return self.config.secure_cookie or request.scheme == "https"

    def set_cookie(self, response: Response, name: str, value: str, age: int) -> None:
        response.set_cookie(name, value, max_age=age, httponly=True, samesite="Strict", secure=self.secure(), path="/")

    async def session(self) -> tuple[ApiKeyRecord, str] | None:
        """The signed-in key and the session's CSRF token, or None."""
        found = self._cookie_session()
        if found is None:
            return None
        session_id, csrf = found
        record = await self.engine.access.session_key(session_id)
        if record is None:
            return None
        g.key = record
        g.session_id = session_id
        return record, csrf

    def _cookie_session(self) -> tuple[str, str] | None:
        """(session id, CSRF token) from a cookie signed by this server and not too old."""
        raw = request.cookies.get(SESSION_COOKIE)
        if not raw:
            return None
        try:
            data = self.serializer.loads(raw, max_age=self.max_age)
        except BadSignature:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("sid"), str) or not isinstance(data.get("csrf"), str):
            return None  # e.g. a cookie from before sessions were kept on the server
        return data["sid"], data["csrf"]

    async def require(self) -> tuple[ApiKeyRecord, str]:
        """The session of a data or action route. Errors: NotSignedIn (401)."""
        found = await self.session()
        if found is None:
            raise NotSignedIn()
        return found

    async def require_form(self) -> tuple[ApiKeyRecord, dict[str, str]]:
        """A signed-in form post whose ``csrf`` field matches the session's; the form's fields.
        Errors: NotSignedIn (401), InvalidRequest (400) for a missing or wrong token."""
        key, csrf = await self.require()
        form = {name: value for name, value in (await request.form).items()}
        self.check_csrf(csrf, form.get("csrf") or request.headers.get(CSRF_HEADER))
        return key, form

    @staticmethod
    def check_csrf(expected: str, given: str | None) -> None:
        if not given or not hmac.compare_digest(given.encode(), expected.encode()):
            raise InvalidRequest("The form has expired or did not come from this site; reload the page and retry.")

    async def page(self, template: str, key: ApiKeyRecord | None, csrf: str = "", **context: Any) -> Response:
        html = await render_template(
            template,
            csrf=csrf,
            signed_in=key is not None,
            key_prefix=key.prefix if key else "",
            poll_seconds=self.config.poll_seconds,
            **context,
        )
        return Response(html, content_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)

    async def signed_in_page(self, template: str, active: str, **context: Any) -> Response:
        """``template`` for the signed-in key (``active`` marks the nav entry), or a redirect
        to the sign-in form that comes back here."""
        found = await self.session()
        if found is None:
            return self.to_signin()
        return await self.page(template, found[0], found[1], active=active, **context)

    def to_signin(self) -> Response:
        target = request.full_path.rstrip("?")
        return redirect("/signin?" + urlencode({"next": target}) if target.startswith("/") else "/signin")


# A local path: "/" then path characters only. No second "/" or "\\" at the start, and no
# whitespace or control characters anywhere (browsers strip tabs and newlines from URLs, so
# "/\t/evil.example" would become "//evil.example", another site).
_LOCAL_PATH = re.compile(r"/(?![/\\])[A-Za-z0-9._~!$&'()*+,;=:@/?%-]*")


def redirect(location: str) -> Response:
    """A 302 to ``location``. Quart's ``redirect`` builds the app's own response class; its
    annotation names werkzeug's."""
    return cast(Response, quart_redirect(location))


def safe_next(value: str | None = None) -> str:
    """Where to go after sign-in: a local dashboard path only (no open redirect)."""
    target = value if value is not None else request.args.get("next", "")
    return target if _LOCAL_PATH.fullmatch(target) else "/usage"
