"""/keys: the signed-in account's API keys; create one, revoke one.

The list is ``Accounts.keys`` (revoked keys included, newest first). A key's last use is the
time of its newest request log (``Accounts.last_used``: one index seek per key into the
request logs, which carry the key's id), so serving a request writes nothing more for it; a
request appears there once the usage aggregator has written its log.

Creating and revoking are form posts carrying the session's CSRF token
(``Console.require_form``). A new key goes through ``Accounts.create_key``, as ``omixa key
create`` does; its secret (and its signing secret, when the server has ``OMIXA_SECRET_KEY``)
is in the answer to that post only: the page then replaces its history entry with /keys, so
reloading shows the list, not the secret. A key that must sign every request is not created
here: the dashboard cannot sign in with such a key, and the console offers no signing flow
(``omixa key create --require-signature`` makes one). Revoking the key the session was opened
with ends the session: the next page goes to sign-in.

A key made here can only be held tighter than the server's defaults (``[limits] key_rpm`` and
``key_tpm``): a limit from 1 up to the default, or 0 (unlimited) where the default is
unlimited, so a developer's key never outruns what the operator allows; and an account holds
at most ``[dashboard] max_keys`` live keys from here. ``omixa key create`` is not bound by
either.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio

from omixa.engine.errors import InvalidRequest
from omixa.storage import ApiKeyRecord
from omixa.web.http.console import CSRF_HEADER, SESSION_COOKIE, Console, redirect
from omixa.web.http.wallet_api import iso

log = logging.getLogger("omixa.dashboard")

MAX_LIMIT = 10**9


def register(app: QuartTrio, console: Console) -> None:
    engine = console.engine

    async def keys_page(key: ApiKeyRecord, csrf: str, status: int = 200, **context: Any) -> Response:
        records = await engine.accounts.keys(key.account_id)
        used = await engine.accounts.last_used(key.account_id)
        limits = engine.config.limits
        rows = [key_view(k, used.get(k.id), key.id, limits.key_rpm, limits.key_tpm) for k in records]
        defaults = {
            "rpm": limit_text(None, limits.key_rpm),
            "tpm": limit_text(None, limits.key_tpm),
            "rpm_value": limit_text(limits.key_rpm, 0),
            "tpm_value": limit_text(limits.key_tpm, 0),
        }
        response = await console.page(
            "keys.html",
            key,
            csrf,
            active="keys",
            keys=rows,
            defaults=defaults,
            signing=engine.accounts.box is not None,
            **{"created": None, "error": None, "revoked": None, **context},
        )
        response.status_code = status
        return response

    @app.get("/keys")
    async def keys() -> Response:
        found = await console.session()
        if found is None:
            return console.to_signin()
        key, csrf = found
        revoked = request.args.get("revoked")
        return await keys_page(key, csrf, revoked=revoked)

    @app.post("/keys")
    async def create_key() -> Response:
        key, form = await console.require_form()
        csrf = form.get("csrf") or request.headers.get(CSRF_HEADER, "")
        limits, most = engine.config.limits, console.config.max_keys
        try:
            rpm = parse_limit(form, "rpm", limits.key_rpm)
            tpm = parse_limit(form, "tpm", limits.key_tpm)
            live = sum(1 for k in await engine.accounts.keys(key.account_id) if k.revoked_at is None)
            if live >= most:
                raise InvalidRequest(
                    f"This account has {live} live keys, the most the console creates: revoke one first."
                )
        except InvalidRequest as exc:
            return await keys_page(key, csrf, status=400, error=exc.message, form=form)
        new = await engine.accounts.create_key(key.account_id, rpm=rpm, tpm=tpm)
        log.info("dashboard key created key=%s account=%s by=%s", new.record.id, key.account_id, key.id)
        created = {
            "id": new.record.id,
            "prefix": new.record.prefix,
            "secret": new.secret,
            "signing_secret": new.signing_secret,
        }
        return await keys_page(key, csrf, status=201, created=created)

    @app.post("/keys/<key_id>/revoke")
    async def revoke_key(key_id: str) -> Response:
        key, _ = await console.require_form()
        revoked = await engine.accounts.revoke_own_key(key.account_id, key_id)
        log.info("dashboard key revoked key=%s account=%s by=%s", key_id, key.account_id, key.id)
        if revoked.id == key.id:
            # The session's own key: revoked keys end their sessions; the row and cookie go too.
            await engine.accounts.end_session(g.session_id)
            response = redirect("/signin?next=%2Fkeys")
            response.delete_cookie(SESSION_COOKIE, path="/")
            return response
        return redirect(f"/keys?revoked={key_id}")


def parse_limit(form: Mapping[str, str], name: str, default: int) -> int | None:
    """A limit field: empty for the server's ``default``, else a count per minute no looser
    than it (0, unlimited, only when the default is unlimited). Errors: InvalidRequest."""
    text = form.get(name, "").strip().replace(",", "").replace("_", "")
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_LIMIT:
        raise InvalidRequest(f"{name.upper()} must be a whole number, or empty for the default.", param=name)
    value = int(text)
    if default and not 1 <= value <= default:
        raise InvalidRequest(
            f"{name.upper()} must be from 1 to {default:,} (this server's limit per key), or empty for that "
            "default; an operator can set a higher one with omixa key create.",
            param=name,
        )
    return value


def limit_text(value: int | None, default: int) -> str:
    """A key's rpm or tpm spelt out: its own number, "unlimited" (0), or the server's default."""
    if value is None:
        return f"default ({'unlimited' if default == 0 else f'{default:,}'})"
    return "unlimited" if value == 0 else f"{value:,}"


def key_view(
    key: ApiKeyRecord, last_used: dt.datetime | None, session_key_id: str, default_rpm: int, default_tpm: int
) -> dict[str, Any]:
    return {
        "id": key.id,
        "prefix": key.prefix,
        "created_at": iso(key.created_at),
        "last_used": iso(last_used) if last_used else None,
        "rpm": limit_text(key.rpm, default_rpm),
        "tpm": limit_text(key.tpm, default_tpm),
        "signature_required": key.signature_required,
        "has_signing_secret": key.signing_secret_enc is not None,
        "revoked_at": iso(key.revoked_at) if key.revoked_at else None,
        "current": key.id == session_key_id,
    }
