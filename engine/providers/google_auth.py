"""Google service-account auth for Vertex: a signed JWT exchanged for an OAuth access token.

The OAuth 2.0 JWT-bearer flow, as Google's own libraries do it: a JWT signed RS256 with the
service account's private key (``iss`` = its ``client_email``, ``aud`` = its ``token_uri``,
``scope`` = cloud-platform, one hour) is POSTed to ``token_uri`` as
``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>``; the answer's
``access_token`` is sent as ``Authorization: Bearer`` until ``REFRESH_MARGIN`` seconds before
its ``expires_in`` (a token living less than twice that: for half its life). Signing uses
PyJWT with ``cryptography`` (both pinned).

Cancellation and concurrency: one refresh at a time (a trio lock); callers arriving meanwhile
wait for it and take its token. A refresh that fails while the cached token is still valid
keeps that token (logged); otherwise the failure is raised.

Errors: :func:`load_service_account` raises ValueError naming the problem (start-up);
:meth:`ServiceAccountTokens.token` raises UpstreamError (``upstream_status`` 401 when Google
refused the assertion, which the gateway reports as 502: the operator's problem, not the
client's; the token endpoint's 5xx status, or None when unreachable, which counts towards the
deployment's health) or UpstreamTimeout.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import httpx
import jwt
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from omixa.engine.errors import UpstreamError, UpstreamTimeout
from omixa.engine.providers._http import map_errors

log = logging.getLogger("omixa.vertex")

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_SECONDS = 3600
# Refresh this long before the token expires, so no request goes out with a dying token.
REFRESH_MARGIN = 300.0
TOKEN_TIMEOUT = 30.0
MAX_MESSAGE_CHARS = 300


@attrs.frozen(kw_only=True)
class ServiceAccount:
    client_email: str
    private_key: RSAPrivateKey = attrs.field(repr=False)
    private_key_id: str | None
    token_uri: str
    project_id: str | None


def load_service_account(path: str | Path) -> ServiceAccount:
    """Read a service-account JSON key file. Errors: ValueError naming the problem."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the service account file ({exc.strerror})") from None
    except ValueError:
        raise ValueError(f"{path}: the service account file is not JSON") from None
    if not isinstance(raw, dict) or raw.get("type") != "service_account":
        raise ValueError(f'{path}: not a service account key ("type" must be "service_account")')
    for name in ("client_email", "private_key", "token_uri"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise ValueError(f"{path}: {name} is missing")
    try:
        key = serialization.load_pem_private_key(raw["private_key"].encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: private_key is not a PEM private key ({exc})") from None
    if not isinstance(key, RSAPrivateKey):
        raise ValueError(f"{path}: private_key is not an RSA key")
    return ServiceAccount(
        client_email=raw["client_email"],
        private_key=key,
        private_key_id=raw.get("private_key_id") or None,
        token_uri=raw["token_uri"],
        project_id=raw.get("project_id") or None,
    )


def signed_assertion(account: ServiceAccount, now: float) -> str:
    """The RS256-signed JWT that asks ``token_uri`` for a cloud-platform access token."""
    issued = int(now)
    claims = {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": account.token_uri,
        "iat": issued,
        "exp": issued + ASSERTION_SECONDS,
    }
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)


class ServiceAccountTokens:
    """Access tokens for one service account, cached and refreshed before expiry.

    Args:
        account: the loaded key.
        client: the HTTP client for ``token_uri`` (not closed here).
        clock: seconds, monotonic (trio's clock by default; tests may drive their own).
        margin: refresh this many seconds before expiry.
    """

    def __init__(
        self,
        account: ServiceAccount,
        client: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = trio.current_time,
        margin: float = REFRESH_MARGIN,
    ) -> None:
        self.account = account
        self._client = client
        self._clock = clock
        self._margin = margin
        self._lock = trio.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0

    def _fresh(self) -> bool:
        return self._token is not None and self._clock() < self._refresh_at

    async def token(self) -> str:
        """A valid access token, fetched only when the cached one is near its expiry.

        Errors: UpstreamError, UpstreamTimeout (see the module docstring).
        """
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if self._fresh():  # another task refreshed while we waited
                assert self._token is not None
                return self._token
            try:
                token, lifetime = await self._fetch()
            except (UpstreamError, UpstreamTimeout) as exc:
                if self._token is not None and self._clock() < self._expires_at:
                    log.warning("service account %s: token refresh failed (%s); using the current token",
                                self.account.client_email, exc.message)  # fmt: skip
                    return self._token
                raise
            now = self._clock()
            # A token shorter-lived than twice the margin is still used for half its life.
            self._token, self._expires_at = token, now + lifetime
            self._refresh_at = now + max(lifetime - self._margin, lifetime / 2)
            return token

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": GRANT_TYPE, "assertion": signed_assertion(self.account, time.time())}
        with trio.move_on_after(TOKEN_TIMEOUT):
            with map_errors():
                response = await self._client.post(self.account.token_uri, data=form)
            return _read_token(response)
        raise UpstreamTimeout("The Google token endpoint did not answer in time.")


def _read_token(response: httpx.Response) -> tuple[str, float]:
    try:
        data: Any = response.json()
    except ValueError:
        data = None
    if response.is_success and isinstance(data, dict):
        token, lifetime = data.get("access_token"), data.get("expires_in")
        if isinstance(token, str) and token and isinstance(lifetime, (int, float)) and lifetime > 0:
            return token, float(lifetime)
        raise UpstreamError("Vertex auth failed: the token endpoint answered without a token.",
                            upstream_status=502)  # fmt: skip
    reason = ""
    if isinstance(data, dict):
        reason = str(data.get("error_description") or data.get("error") or "")[:MAX_MESSAGE_CHARS]
    status = response.status_code
    message = f"Vertex auth failed: the token endpoint answered HTTP {status}" + (f" ({reason})" if reason else "")
    # A refused assertion (400 invalid_grant, 401) is the operator's key: 401, never the
    # client's 400. Google's 5xx keeps its status so the deployment's breaker counts it.
    raise UpstreamError(message + ".", upstream_status=status if status >= 500 else 401)
