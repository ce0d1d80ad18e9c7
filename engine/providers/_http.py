"""The httpx side of the HTTP adapters: pooled client construction and the one exception seam.

httpx exception tree, and what each becomes here::

    httpx.HTTPError
     +-- httpx.RequestError
     |    +-- httpx.TransportError
     |    |    +-- httpx.TimeoutException (Connect/Read/WriteTimeout)    -> UpstreamTimeout
     |    |    |    +-- httpx.PoolTimeout (no free pooled connection)    -> UpstreamBusy
     |    |    +-- NetworkError, ProtocolError, ProxyError, ...          -> UpstreamError(None)
     |    +-- DecodingError, TooManyRedirects                            -> UpstreamError(None)
     +-- httpx.HTTPStatusError (never raised: we read status codes ourselves)

Calls (:func:`post_answer`, :func:`open_streamed`) go to httpcore's pool directly; its
exceptions map the same way: ``httpcore.PoolTimeout`` -> UpstreamBusy, the other
``httpcore.TimeoutException`` (Connect/Read/WriteTimeout) -> UpstreamTimeout, every other
httpcore exception (NetworkError, ProtocolError, ProxyError, UnsupportedProtocol) ->
UpstreamError(None).

``upstream_status=None`` tells the router the upstream was not reached (or the connection broke),
which it treats like a 5xx for failover.
"""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import attrs
import httpcore
import httpx
import trio

from omixa.engine.config import UpstreamConfig
from omixa.engine.errors import OmixaError, UpstreamBusy, UpstreamError, UpstreamTimeout
from omixa.engine.providers._reads import DEFAULT_READ_SIZE, StreamReadBackend, stream_reads
from omixa.engine.upstream import CallIds, plain_upstream_id

# An upstream's error body is read up to this many bytes (the message is what matters).
MAX_ERROR_BODY_BYTES = 64 * 1024
KEEPALIVE_EXPIRY = httpx.Limits().keepalive_expiry
_CLOSE_SECONDS = 5.0

ErrorFromResponse = Callable[[httpx.Response, bytes], UpstreamError]


@attrs.frozen
class IdHeaders:
    """How an upstream's HTTP heads carry the ids of a call (:class:`~engine.upstream.CallIds`):
    ``send``, the header our request id goes out in (None: not sent); ``read``, the response
    headers the upstream's id is read from (lower case), the first one present winning."""

    send: bytes | None
    read: tuple[bytes, ...]


# What the calls of :func:`post_answer` and :func:`open_streamed` do with ids when the
# adapter says nothing: neither send nor read any.
NO_ID_HEADERS = IdHeaders(None, ())


def make_client(
    upstream: UpstreamConfig, *, read_size: int = DEFAULT_READ_SIZE, verify: ssl.SSLContext | bool = True
) -> UpstreamClient:
    """A pooled HTTP/1.1 client sized and timed from the ``[upstream]`` config.

    HTTP/2 stays off: httpcore does not reset a cancelled HTTP/2 stream, so the upstream would
    keep generating billed tokens, and after 100 abandoned streams the connection refuses new
    ones (encode/httpcore#1022). The adapter bounds a stream's head by ``timeout_seconds``
    and a whole non-streaming call by ``request_timeout_seconds``; the read
    timeout here (the larger of that and ``idle_timeout_seconds``) is only a backstop for each
    wait for bytes. Waiting for a free connection when all ``max_connections`` to the origin
    are in use is bounded like connecting (``connect_timeout_seconds``), then fails as
    UpstreamBusy: a request does not sit silently behind a full pool until its own deadline,
    and the router can send it elsewhere. ``trust_env=False``: stray proxy and CA-bundle
    environment variables are ignored; upstream traffic goes out directly. ``read_size``: the bound on
    each socket read of a stream's body (:func:`stream_reads`). ``verify``: httpx's
    (certifi's CAs by default; the tests pass a context that trusts their own CA).

    The pool is httpcore's, built through its public constructor with our network backend;
    the httpx client runs over it through :class:`_PoolTransport`.
    """
    size = upstream.max_connections
    pool = httpcore.AsyncConnectionPool(
        # trust_env=False: certifi's CAs, whatever SSL_CERT_FILE / SSL_CERT_DIR say.
        ssl_context=(
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify, trust_env=False)
        ),
        max_connections=size,
        max_keepalive_connections=size,
        # httpx's default (Limits.keepalive_expiry): an idle connection is closed after 5 s
        # rather than reused when the upstream may be about to close it.
        keepalive_expiry=KEEPALIVE_EXPIRY,
        http1=True,
        http2=False,
        network_backend=StreamReadBackend(httpcore.TrioBackend(), read_size),
    )
    return UpstreamClient(
        pool=pool,
        transport=_PoolTransport(pool),
        timeout=httpx.Timeout(
            max(upstream.idle_timeout_seconds, upstream.request_timeout_seconds),
            connect=upstream.connect_timeout_seconds,
            pool=upstream.connect_timeout_seconds,
        ),
        follow_redirects=False,
        trust_env=False,
    )


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """httpcore's exceptions raised inside the block, as the httpx exceptions of the same
    name (httpx defines one for each; an httpx client's callers catch those)."""
    try:
        yield
    except httpcore.TimeoutException as exc:  # PoolTimeout, ConnectTimeout, ReadTimeout, ...
        raise getattr(httpx, type(exc).__name__, httpx.TimeoutException)(str(exc)) from exc
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError, httpcore.UnsupportedProtocol) as exc:
        raise getattr(httpx, type(exc).__name__, httpx.TransportError)(str(exc)) from exc


class _PoolTransport(httpx.AsyncBaseTransport):
    """httpx's client over an httpcore pool: a request goes to the pool as httpcore's, and
    the answer comes back as httpx's (what httpx's own transport does over the pool it
    makes; that one cannot be given our network backend)."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        self._pool = pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            answer = await self._pool.handle_async_request(core)
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_AnswerStream(answer, httpx_errors=True),
            extensions=answer.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class UpstreamClient(httpx.AsyncClient):
    """httpx's client, plus the httpcore pool under it, which :func:`post_answer` and
    :func:`open_streamed` call directly.

    Model calls skip httpx's request and response models, cookies, auth and redirect layers
    (none of which Omixa uses): 0.2-0.3 ms less CPU per call on the bench machine. The httpx
    client itself serves the rest (a service account's token requests); all share the one
    pool, its limits and connections.
    """

    def __init__(self, *, pool: httpcore.AsyncConnectionPool, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.pool = pool
        # What httpx puts in each request's "timeout" extension, from the client's timeout.
        self.pool_timeouts = self.timeout.as_dict()


_HTTPCORE_ERRORS = (
    httpcore.TimeoutException,
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.ProxyError,
    httpcore.UnsupportedProtocol,
    httpcore.ConnectionNotAvailable,
)


def translate(exc: httpx.HTTPError | Exception) -> OmixaError:
    """The adapter error for an httpx or httpcore exception (see the module docstring)."""
    if isinstance(exc, (httpx.PoolTimeout, httpcore.PoolTimeout)):
        return UpstreamBusy(retry_after=1.0)
    if isinstance(exc, (httpx.TimeoutException, httpcore.TimeoutException)):
        return UpstreamTimeout(f"The upstream did not answer in time ({type(exc).__name__}).")
    return UpstreamError(f"Upstream connection failed ({type(exc).__name__}).")


@contextlib.contextmanager
def map_errors() -> Iterator[None]:
    """Translate httpx and httpcore exceptions raised inside the block (``raise ... from exc``)."""
    try:
        yield
    except (httpx.HTTPError, *_HTTPCORE_ERRORS) as exc:
        raise translate(exc) from exc


@attrs.define
class HttpClients:
    """One pooled client per upstream origin, shared by every adapter that calls it.

    Deployments on the same Azure resource share connections (and one pool limit) this way.
    The owner closes them all with :meth:`aclose`.
    """

    upstream: UpstreamConfig
    read_size: int = DEFAULT_READ_SIZE  # streaming.chunk_bytes
    _clients: dict[str, UpstreamClient] = attrs.field(factory=dict, init=False)

    def for_endpoint(self, endpoint: str) -> UpstreamClient:
        """The client for ``endpoint``'s origin (scheme, host and port), created on first use."""
        url = httpx.URL(endpoint)
        key = f"{url.scheme}://{url.host}:{url.port}"
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = make_client(self.upstream, read_size=self.read_size)
        return client

    async def aclose(self) -> None:
        """Close every client (each closes its pooled connections)."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


_USER_AGENT = f"python-httpx/{httpx.__version__}".encode()  # what httpx sends
# What a stream body iterator may raise for a broken connection (see :func:`translate`).
STREAM_ERRORS = (httpx.HTTPError, *_HTTPCORE_ERRORS)


def _core_request(
    client: UpstreamClient,
    url: str,
    headers: dict[str, str],
    content: bytes,
    *,
    send_once: bool = False,
    method: bytes = b"POST",
    ids: CallIds | None = None,
    id_headers: IdHeaders = NO_ID_HEADERS,
) -> httpcore.Request:
    """The request httpx would send (``Host``, ``Accept``, ``User-Agent``, ``headers``,
    ``Content-Length``), as an httpcore request with the client's timeouts, plus our request
    id in ``id_headers.send``. With ``send_once`` the request lets go of ``content`` once it
    has been sent."""
    head = [(b"Host", _host_header(url)), (b"Accept", b"*/*"), (b"User-Agent", _USER_AGENT)]
    head += [(k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()]
    if ids is not None and id_headers.send is not None:
        head.append((id_headers.send, ids.request_id.encode("ascii")))
    head.append((b"Content-Length", b"%d" % len(content)))
    return httpcore.Request(
        method, httpcore.URL(url), headers=head, content=_SentOnce(content) if send_once else content,
        extensions={"timeout": client.pool_timeouts},
    )  # fmt: skip


class _SentOnce:
    """A request body that is dropped as it is sent. httpcore sends a request's body in full
    before it reads the answer's head, and only once over HTTP/1.1 (the only protocol these
    clients speak): a connection it finds unusable fails before sending anything, and
    another connection then gets the body whole. Asked a second time, it raises rather than
    send nothing under a Content-Length that promised the body."""

    __slots__ = ("_content",)

    def __init__(self, content: bytes) -> None:
        self._content: bytes | None = content

    async def __aiter__(self) -> AsyncIterator[bytes]:
        content, self._content = self._content, None
        if content is None:
            raise RuntimeError("a streamed request's body was asked for twice")
        yield content


def _note_upstream_id(answer: httpcore.Response, ids: CallIds | None, id_headers: IdHeaders) -> None:
    """Keep the upstream's id of the call (the first of ``id_headers.read`` in the answer's
    head that is plain) in ``ids``; a head without one leaves ``ids`` as it was."""
    read = id_headers.read
    if ids is None or not read:
        return
    found, rank = None, len(read)
    for name, value in answer.headers:  # as received: any case
        name = name.lower()
        if name in read and read.index(name) < rank and (upstream_id := plain_upstream_id(value)) is not None:
            found, rank = upstream_id, read.index(name)
    if found is not None:
        ids.upstream_id = found


async def _failure(answer: httpcore.Response, error_from: ErrorFromResponse) -> UpstreamError:
    """The provider's error for a non-2xx answer, its body read up to ``MAX_ERROR_BODY_BYTES``."""
    with map_errors():
        raw = await _read_core(answer, MAX_ERROR_BODY_BYTES)
    return error_from(httpx.Response(answer.status, headers=answer.headers, content=raw), raw)


async def _close_answer(answer: httpcore.Response) -> None:
    """Close an answer: drops the socket (or returns it to the pool). Quick, so a bounded
    shield lets it finish even when we are leaving because of cancellation."""
    with trio.move_on_after(_CLOSE_SECONDS, shield=True):
        await answer.aclose()


async def post_answer(
    client: UpstreamClient,
    url: str,
    headers: dict[str, str],
    content: bytes,
    limit: int,
    error_from: ErrorFromResponse,
    *,
    method: bytes = b"POST",
    ids: CallIds | None = None,
    id_headers: IdHeaders = NO_ID_HEADERS,
) -> tuple[int, bytes]:
    """POST ``content`` (or send it with another ``method``); the status and body (at most
    ``limit`` bytes) of a successful answer,
    else the provider's error for the failed one (``error_from``, its body read up to
    ``MAX_ERROR_BODY_BYTES``). The response is closed either way. ``ids``: our request id
    goes out in ``id_headers.send``, and the upstream's id of the call, read from the answer's
    head (a failed one's too), is kept in ``ids.upstream_id``.

    This calls the client's httpcore pool directly (:func:`_core_request`).

    Errors: UpstreamError, UpstreamTimeout (the client's connect/read/write/pool timeouts;
    the caller bounds the whole call).
    Cancellation: closes the connection; the pool opens a new one next time.
    """
    request = _core_request(client, url, headers, content, method=method, ids=ids, id_headers=id_headers)
    with map_errors():
        answer = await client.pool.handle_async_request(request)
    _note_upstream_id(answer, ids, id_headers)
    try:
        if not 200 <= answer.status < 300:
            raise await _failure(answer, error_from)
        with map_errors():
            return answer.status, await _read_core(answer, limit)
    finally:
        await _close_answer(answer)


@functools.lru_cache(maxsize=256)
def _host_header(url: str) -> bytes:
    """The ``Host`` httpx would send for ``url``: the port only when not the scheme's
    default, an IPv6 address in brackets."""
    return httpx.URL(url).netloc


async def _read_core(answer: httpcore.Response, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in answer.aiter_stream():
        size += len(chunk)
        if size > limit:
            raise UpstreamError(f"Upstream answer larger than {limit} bytes.", upstream_status=answer.status)
        parts.append(chunk)
    return b"".join(parts)


@contextlib.asynccontextmanager
async def open_streamed(
    client: UpstreamClient,
    url: str,
    prepare: Callable[[], Awaitable[tuple[dict[str, str], bytes]]],
    head_timeout: float,
    error_from: ErrorFromResponse,
    *,
    ids: CallIds | None = None,
    id_headers: IdHeaders = NO_ID_HEADERS,
) -> AsyncIterator[AsyncIterator[bytes]]:
    """POST a streaming request (``prepare()`` gives its headers and body) and yield the
    successful answer's body, as an iterator of byte chunks. ``ids`` as in
    :func:`post_answer`: the upstream's id comes from the response head.

    Like :func:`post_answer`, this calls the client's httpcore pool directly. Entering
    (``prepare`` included, e.g. fetching a token) waits at most ``head_timeout`` for the head
    (UpstreamTimeout); a failed status is the provider's error (``error_from``). The answer is
    owned here, never by the body's iterator, so it is closed on every exit path (an
    ``aclose()`` on a generator that never started skips its ``finally``, so a response held by
    one leaks when the client goes early). The body is read in ``streaming.chunk_bytes`` reads
    (:func:`stream_reads`); its iterator raises one of ``STREAM_ERRORS`` when the connection
    breaks. A body the upstream compressed although we asked for none is decoded by httpx.
    """
    answer = None
    with trio.move_on_after(head_timeout):
        headers, content = await prepare()
        # httpcore keeps the request until the answer ends; its body goes once sent, so a
        # long stream holds nothing of its prompt.
        request = _core_request(client, url, headers, content, send_once=True, ids=ids, id_headers=id_headers)
        del prepare, content
        with map_errors():
            answer = await client.pool.handle_async_request(request)
    if answer is None:
        raise UpstreamTimeout("The upstream did not start its answer in time.")
    _note_upstream_id(answer, ids, id_headers)
    try:
        if not 200 <= answer.status < 300:
            raise await _failure(answer, error_from)
        with stream_reads(answer.extensions):
            yield _body(answer)
    finally:
        await _close_answer(answer)


def _body(answer: httpcore.Response) -> AsyncIterator[bytes]:
    encoding = b"identity"
    for name, value in answer.headers:
        if name.lower() == b"content-encoding":
            encoding = value.strip().lower()
    if encoding == b"identity":
        return answer.aiter_stream()
    return httpx.Response(answer.status, headers=answer.headers, stream=_AnswerStream(answer)).aiter_bytes()


class _AnswerStream(httpx.AsyncByteStream):
    """An httpcore answer's body, for httpx's decoders (and, with ``httpx_errors``, for an
    httpx client's callers: a broken connection raises httpx's exception)."""

    def __init__(self, answer: httpcore.Response, *, httpx_errors: bool = False) -> None:
        self._answer = answer
        self._httpx_errors = httpx_errors

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if not self._httpx_errors:
            async for chunk in self._answer.aiter_stream():
                yield chunk
            return
        with _as_httpx_errors():
            async for chunk in self._answer.aiter_stream():
                yield chunk

    async def aclose(self) -> None:
        await self._answer.aclose()
