"""HTTP/1.1 connections over raw sockets: reuse after every early answer, and Connection: close.

An early answer is one sent before the request body has arrived: 401 (a bad key), 404 (no
such route), 405 (a wrong method), 413 (too large). The client sends the request head, pauses,
sends the body, reads the answer, then asks ``GET /healthz`` on the same socket: that second
answer must come at once (web.connection). These tests speak HTTP through plain sockets so
that no client library's own reconnecting can hide a stalled connection. The behaviour
belongs to the web layer, so they run on SQLite only.
"""

from __future__ import annotations

import json
from contextlib import AsyncExitStack

import pytest
import trio
from harness import open_gateway

from omixa.web.server import drain_bytes

SIZES = [2, 64 * 1024, 2 * 1024 * 1024, 4 * 1024 * 1024]
# The server's answers come at once; this only bounds a stall (a loaded machine is far quicker).
ANSWER_TIMEOUT = 10.0


class RawConnection:
    """One TCP connection speaking HTTP/1.1 by hand."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def __aenter__(self) -> RawConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stream.aclose()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _more(self) -> bool:
        data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body (Content-Length framed)."""
        with trio.fail_after(ANSWER_TIMEOUT):
            while b"\r\n\r\n" not in self.buffer:
                assert await self._more(), f"connection closed before a response: {self.buffer!r}"
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                assert await self._more(), "connection closed inside a response body"
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return int(status_line.split()[1]), headers, body

    async def closed_by_server(self, timeout: float) -> bool:
        """Whether the server closes the connection (EOF or reset) within ``timeout``."""
        with trio.move_on_after(timeout):
            try:
                while await self._more():
                    pass
            except trio.BrokenResourceError:
                pass
            return True
        return False


async def connect(gw) -> RawConnection:
    host, port = gw.root_url.removeprefix("http://").rsplit(":", 1)
    return RawConnection(await trio.open_tcp_stream(host, int(port)))


def head(method: str, path: str, length: int | None, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: omixa.test", "Content-Type: application/json", *extra]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def json_body(size: int) -> bytes:
    """A JSON object of exactly ``size`` bytes (at least 2)."""
    if size < 12:
        return b"{}".ljust(size)
    return b'{"x":"' + b"a" * (size - 8) + b'"}'


async def early_answer_then_reuse(gw, method: str, path: str, size: int, *extra: str) -> int:
    """Send head, pause, body; read the answer; then GET /healthz on the same socket."""
    async with await connect(gw) as conn:
        body = json_body(size)
        await conn.send(head(method, path, len(body), *extra))
        await trio.sleep(0.05)
        async with trio.open_nursery() as nursery:
            # A large body is still being sent while the answer comes back.
            nursery.start_soon(conn.send, body)
            status, headers, payload = await conn.response()
        assert json.loads(payload)["error"]["request_id"] == headers["x-request-id"]
        await conn.send(head("GET", "/healthz", None))
        second, _, second_body = await conn.response()
        assert second == 200 and json.loads(second_body)["status"] == "ok"
    return status


@pytest.fixture
async def gateway(tmp_path):
    async with open_gateway(f"sqlite:///{tmp_path / 'omixa.db'}", deployments=[]) as gw:
        yield gw


@pytest.mark.parametrize("size", SIZES)
async def test_the_connection_answers_again_after_an_early_401_404_or_405(gateway, size):
    gw = gateway
    bad_key = "Authorization: Bearer omx_live_not-a-key"
    assert await early_answer_then_reuse(gw, "POST", "/api/v1/chat/completions", size, bad_key) == 401
    assert await early_answer_then_reuse(gw, "POST", "/api/v1/no-such-route", size) == 404
    assert await early_answer_then_reuse(gw, "PUT", "/api/v1/chat/completions", size) == 405


@pytest.mark.parametrize("size", SIZES)
async def test_the_connection_answers_again_after_a_413(tmp_path, size):
    async with open_gateway(f"sqlite:///{tmp_path / 'omixa.db'}", deployments=[], server={"max_body_bytes": 1}) as gw:
        _, key = await gw.funded_account("1.00")
        auth = f"Authorization: Bearer {key}"
        assert await early_answer_then_reuse(gw, "POST", "/api/v1/chat/completions", size, auth) == 413


async def test_a_keep_alive_connection_carries_many_requests(gateway):
    gw = gateway
    _, key = await gw.funded_account("1.00")
    async with await connect(gw) as conn:
        for _ in range(3):
            body = b'{"model": "gpt-4o-mini", "messages": []}'
            await conn.send(head("POST", "/api/v1/chat/completions", len(body), f"Authorization: Bearer {key}") + body)
            assert (await conn.response())[0] == 404  # no deployment serves the model here
            await conn.send(head("GET", "/api/v1/wallet", None, f"Authorization: Bearer {key}"))
            assert (await conn.response())[0] == 200
        assert not await conn.closed_by_server(0.2)


@pytest.mark.parametrize(
    "request_head",
    [
        head("GET", "/healthz", None, "Connection: close"),
        head("GET", "/api/v1/wallet", None, "Connection: close", "Authorization: Bearer omx_live_bad"),
        head("POST", "/api/v1/no-such-route", 2, "Connection: close") + b"{}",
        head("POST", "/api/v1/chat/completions", 2, "Connection: close", "Authorization: Bearer omx_live_bad") + b"{}",
    ],
    ids=["200", "401", "404", "401-with-body"],
)
async def test_the_server_closes_a_connection_close_socket(gateway, request_head):
    async with await connect(gateway) as conn:
        await conn.send(request_head)
        status, headers, _ = await conn.response()
        assert status in (200, 401, 404)
        assert headers.get("connection") == "close"
        assert await conn.closed_by_server(ANSWER_TIMEOUT)


async def test_many_connection_close_sockets_do_not_pile_up(gateway):
    """Each one is closed by the server, so a client cannot hold descriptors by leaving them open."""
    async with AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(await connect(gateway)) for _ in range(50)]
        for conn in conns:
            await conn.send(head("GET", "/healthz", None, "Connection: close"))
        for conn in conns:
            assert (await conn.response())[0] == 200
        with trio.fail_after(ANSWER_TIMEOUT):
            for conn in conns:
                assert await conn.closed_by_server(ANSWER_TIMEOUT)


async def test_a_body_too_large_to_drain_ends_with_the_connection_closed(gateway):
    """Past the drain bound, the early answer says Connection: close and the socket closes."""
    gw = gateway
    declared = drain_bytes(gw.engine.config) + 1
    async with await connect(gw) as conn:
        await conn.send(head("POST", "/api/v1/no-such-route", declared) + b"{" + b" " * 1000)
        status, headers, _ = await conn.response()
        assert status == 404
        assert headers.get("connection") == "close"
        assert await conn.closed_by_server(ANSWER_TIMEOUT)


async def test_a_client_leaving_mid_request_is_still_seen(gateway):
    """The guard passes a real disconnect on: the request's tasks end, and the server serves on."""
    gw = gateway
    async with await connect(gw) as conn:
        await conn.send(head("POST", "/api/v1/chat/completions", 1000, "Authorization: Bearer omx_live_bad"))
    async with await connect(gw) as again:
        await again.send(head("GET", "/healthz", None))
        assert (await again.response())[0] == 200
