"""The httpx side of the HTTP adapters: pooled client construction and the one exception seam.

httpx exception tree, and what each becomes here::

    httpx.HTTPError
     +-- httpx.RequestError
     |    +-- httpx.TransportError
     |    |    +-- httpx.TimeoutException (Connect/Read/Write/PoolTimeout) -> UpstreamTimeout
     |    |    +-- NetworkError, ProtocolError, ProxyError, ...          -> UpstreamError(None)
     |    +-- DecodingError, TooManyRedirects                            -> UpstreamError(None)
     +-- httpx.HTTPStatusError (never raised: we read status codes ourselves)

``upstream_status=None`` tells the router the upstream was not reached (or the connection broke),
which it treats like a 5xx for failover.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import attrs
import httpcore
import httpx

from engine.config import UpstreamConfig
from engine.errors import OmixaError, UpstreamError, UpstreamTimeout


def make_client(upstream: UpstreamConfig) -> httpx.AsyncClient:
    """A pooled HTTP/1.1 client sized and timed from the ``[upstream]`` config.

    HTTP/2 stays off: httpcore does not reset a cancelled HTTP/2 stream, so the upstream would
    keep generating billed tokens (STACK-NOTES). The adapter bounds a stream's head by
    ``timeout_seconds`` and a whole non-streaming call by ``request_timeout_seconds``; the read
    timeout here (the larger of that and ``idle_timeout_seconds``) is only a backstop for each
    wait for bytes. ``trust_env=False``: stray proxy environment variables are ignored;
    upstream traffic goes out directly.
    """
    size = upstream.max_connections
    return httpx.AsyncClient(
        http1=True,
        http2=False,
        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
        timeout=httpx.Timeout(
            max(upstream.idle_timeout_seconds, upstream.request_timeout_seconds),
            connect=upstream.connect_timeout_seconds,
        ),
        follow_redirects=False,
        trust_env=False,
    )


def set_read_size(size: int) -> None:
    """Bound each upstream socket read to ``size`` bytes (``streaming.chunk_bytes``).

    httpcore reads whatever has arrived, up to this bound, and never waits to fill it, so a
    complete SSE frame is parsed and relayed as soon as its bytes are in. httpcore keeps the
    bound as a class attribute of its HTTP/1.1 connection: the setting is process-wide, which
    matches the knob (one environment variable per process).
    """
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = size


def translate(exc: httpx.HTTPError) -> OmixaError:
    """The adapter error for an httpx exception (see the module docstring)."""
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeout(f"The upstream did not answer in time ({type(exc).__name__}).")
    return UpstreamError(f"Upstream connection failed ({type(exc).__name__}).")


@contextlib.contextmanager
def map_errors() -> Iterator[None]:
    """Translate httpx exceptions raised inside the block (``raise ... from exc``)."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise translate(exc) from exc


@attrs.define
class HttpClients:
    """One pooled client per upstream origin, shared by every adapter that calls it.

    Deployments on the same Azure resource share connections (and one pool limit) this way.
    The owner closes them all with :meth:`aclose`.
    """

    upstream: UpstreamConfig
    _clients: dict[str, httpx.AsyncClient] = attrs.field(factory=dict, init=False)

    def for_endpoint(self, endpoint: str) -> httpx.AsyncClient:
        """The client for ``endpoint``'s origin (scheme, host and port), created on first use."""
        url = httpx.URL(endpoint)
        key = f"{url.scheme}://{url.host}:{url.port}"
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = make_client(self.upstream)
        return client

    async def aclose(self) -> None:
        """Close every client (each closes its pooled connections)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
