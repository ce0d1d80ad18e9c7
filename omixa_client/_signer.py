"""``OmixaSigner``: one ``auth=`` object for httpx and httpx2 clients, sync and async.

The ``openai`` SDK runs on httpx2 since its 3.x releases and still accepts an httpx client;
users hold one or the other, so the signer is an ``Auth`` of each library that is installed.
Neither import is required: with only one of them installed, the other base is a stand-in
and this module still imports.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable, Generator, MutableMapping
from typing import Protocol, TypeVar

from omixa_client._message import request_target, signature_headers

try:
    from httpx import Auth as _HttpxAuth
except ImportError:  # omixa depends on httpx, but a copy of this package may travel alone

    class _HttpxAuth:  # type: ignore[no-redef]
        """Stands in for ``httpx.Auth`` where httpx is not installed."""


try:
    from httpx2 import Auth as _Httpx2Auth
except ImportError:  # httpx2 comes with openai 3.x, and omixa does not need it

    class _Httpx2Auth:  # type: ignore[no-redef]
        """Stands in for ``httpx2.Auth`` where httpx2 is not installed."""


class _URL(Protocol):
    @property
    def raw_path(self) -> bytes: ...


class _Request(Protocol):
    """What the signer uses of an ``httpx.Request`` or an ``httpx2.Request``."""

    @property
    def method(self) -> str: ...
    @property
    def url(self) -> _URL: ...
    @property
    def headers(self) -> MutableMapping[str, str]: ...
    @property
    def content(self) -> bytes: ...
    def read(self) -> bytes: ...
    async def aread(self) -> bytes: ...


R = TypeVar("R", bound=_Request)


class OmixaSigner(_HttpxAuth, _Httpx2Auth):
    """Signs every request with a key's signing secret, always with a fresh nonce, so a
    retry or two identical polls in the same second are never taken for a replay.

    Pass it as ``auth=`` to ``httpx.Client``, ``httpx.AsyncClient``, ``httpx2.Client``,
    ``httpx2.AsyncClient``, or the ``openai`` SDK's ``DefaultHttpxClient``,
    ``DefaultAsyncHttpxClient`` and ``DefaultAioHttpClient``. It does not set
    ``Authorization``: the API key is sent as usual (the ``openai`` SDK does it).

    A body that is a stream (an iterator or an async iterator) is read into memory before
    it is signed, since the signature covers its bytes; it is then sent from memory.

    Args:
        signing_secret: The key's signing secret, ``omx_sig_...``.
        clock: Unix time in seconds; tests pass a fixed one.
    """

    # Tells either library's base flow to read the body first; the flows below do it too.
    requires_request_body = True

    def __init__(self, signing_secret: str, *, clock: Callable[[], float] = time.time) -> None:
        self._secret = signing_secret
        self._clock = clock

    def __repr__(self) -> str:  # never show the secret
        return "OmixaSigner(<secret>)"

    def sign(self, request: R) -> R:
        """Set the signature headers on ``request``, whose body must have been read."""
        request.headers.update(
            signature_headers(
                self._secret,
                request.method,
                request_target(request.url.raw_path),
                request.content,
                timestamp=int(self._clock()),
            )
        )
        return request

    def auth_flow(self, request: R) -> Generator[R, object, None]:
        yield self.sign(request)

    def sync_auth_flow(self, request: R) -> Generator[R, object, None]:
        request.read()
        yield self.sign(request)

    async def async_auth_flow(self, request: R) -> AsyncGenerator[R, object]:
        await request.aread()
        yield self.sign(request)
