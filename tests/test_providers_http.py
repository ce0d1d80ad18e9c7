"""The upstream HTTP client under the adapters: answers read up to their caps, its errors
mapped, one client per endpoint, and stream bodies read in ``chunk_bytes`` and gathered."""

from __future__ import annotations

import json
import socket
import ssl
import struct

import httpcore
import httpx
import pytest
import trio
import trustme
from fake_azure import DEFAULT_REPLY, open_fake_azure
from provider_helpers import BODY, SERVER, azure_deployment, content_of

from omixa.engine.config import UpstreamConfig
from omixa.engine.errors import UpstreamError, UpstreamTimeout
from omixa.engine.providers import HttpClients, SseParser, build_provider
from omixa.engine.tokens import count_text


@pytest.fixture
async def fake():
    async with open_fake_azure() as server:
        yield server


async def test_answers_and_error_bodies_are_read_up_to_their_caps(fake):
    """post_answer (httpcore's pool directly) keeps the caps: the answer's limit, and
    MAX_ERROR_BODY_BYTES for an error body; the connection is closed and the next call works."""
    from omixa.engine.providers._http import MAX_ERROR_BODY_BYTES, make_client, post_answer
    from omixa.engine.providers.azure import error_from_response

    client = make_client(SERVER)
    url = f"{fake.endpoint}/openai/deployments/d/chat/completions?api-version=2024-10-21"
    headers = {"api-key": fake.api_key, "content-type": "application/json"}
    content = json.dumps({"messages": BODY["messages"]}).encode()
    try:
        with pytest.raises(UpstreamError, match="larger than 100 bytes") as info:
            await post_answer(client, url, headers, content, 100, error_from_response)
        assert info.value.upstream_status == 200
        fake.fail_next(500, body="x" * (MAX_ERROR_BODY_BYTES + 1))
        with pytest.raises(UpstreamError, match="larger than") as info:
            await post_answer(client, url, headers, content, 10**6, error_from_response)
        assert info.value.upstream_status == 500
        fake.fail_next(429, body={"error": {"code": "429", "message": "Slow down."}}, headers={"retry-after": "3"})
        with pytest.raises(UpstreamError, match="Slow down.") as info:
            await post_answer(client, url, headers, content, 10**6, error_from_response)
        assert (info.value.upstream_status, info.value.retry_after) == (429, 3.0)
        status, raw = await post_answer(client, url, headers, content, 10**6, error_from_response)
        assert status == 200 and json.loads(raw)["choices"]
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "exc, timeout",
    [(httpcore.ConnectTimeout, True), (httpcore.ReadTimeout, True), (httpcore.WriteTimeout, True),
     (httpcore.PoolTimeout, True), (httpcore.ConnectError, False), (httpcore.ReadError, False),
     (httpcore.WriteError, False), (httpcore.RemoteProtocolError, False),
     (httpcore.LocalProtocolError, False), (httpcore.ProxyError, False),
     (httpcore.UnsupportedProtocol, False)],
)  # fmt: skip
def test_httpcore_exceptions_map_like_their_httpx_twins(exc, timeout):
    from omixa.engine.providers._http import map_errors

    with pytest.raises(UpstreamTimeout if timeout else UpstreamError) as info:
        with map_errors():
            raise exc("boom")
    assert isinstance(info.value.__cause__, exc)
    if not timeout:
        assert info.value.upstream_status is None and exc.__name__ in info.value.message


async def test_build_provider_shares_one_client_per_endpoint(fake):
    clients = HttpClients(SERVER)
    east = build_provider(azure_deployment(fake), SERVER, clients)
    west = build_provider(azure_deployment(fake, name="west", deployment="w"), SERVER, clients)
    assert east._client is west._client
    assert (await west.complete(BODY)).usage.completion_tokens == count_text(DEFAULT_REPLY)
    assert fake.requests[-1].deployment == "w"
    await clients.aclose()


async def read_stream_pieces(client, url: str, headers: dict, body: dict) -> list[bytes]:
    from omixa.engine.providers._reads import stream_reads

    request = client.build_request("POST", url, json={**body, "stream": True}, headers=headers)
    response = await client.send(request, stream=True)
    with stream_reads(response.extensions):
        pieces = [chunk async for chunk in response.aiter_raw()]
    await response.aclose()
    return pieces


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_stream_bodies_are_read_in_chunk_bytes_and_everything_else_in_full(tmp_path, tls):
    """streaming.chunk_bytes bounds each read of a stream's body only; the reads of one wakeup
    are handed up together (each frame in one piece, not in 128-byte slices), over plain TCP
    and TLS. Heads and non-streaming bodies come in full-size reads, and the connection is
    back to them when it serves the next request."""
    from omixa.engine.providers._http import make_client
    from omixa.engine.providers._reads import GATHER_BYTES

    reply = " ".join(f"w{i}" for i in range(200))
    tls_files, verify = {}, True
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
        tls_files = {"certfile": str(tmp_path / "server.pem"), "keyfile": str(tmp_path / "server.pem")}
        verify = ssl.create_default_context()
        ca.configure_trust(verify)
    async with open_fake_azure(reply=reply, chunks=4, **tls_files) as fake:
        assert fake.endpoint.startswith("https://" if tls else "http://")
        client = make_client(UpstreamConfig(max_connections=1), read_size=128, verify=verify)  # one connection
        url = f"{fake.endpoint}/openai/deployments/d/chat/completions?api-version=2024-10-21"
        headers = {"api-key": fake.api_key}
        body = {"messages": [{"role": "user", "content": "hi"}]}
        try:
            for _ in range(2):
                pieces = await read_stream_pieces(client, url, headers, body)
                # Each frame is a 300-odd-byte HTTP chunk sent alone: read in 128-byte reads,
                # then gathered.
                assert max(map(len, pieces)) > 128
                assert max(map(len, pieces)) <= GATHER_BYTES
                events = SseParser().feed(b"".join(pieces))
                assert events[-1].done
                assert content_of(events) == reply

                plain = await client.post(url, json=body, headers=headers)
                assert len(plain.content) > 1000
                request = client.build_request("POST", url, json=body, headers=headers)
                response = await client.send(request, stream=True)
                sizes = [len(chunk) async for chunk in response.aiter_raw()]
                await response.aclose()
                assert max(sizes) > 128  # the same connection, full-size reads again
        finally:
            await client.aclose()


async def test_a_reset_after_gathered_bytes_comes_after_those_bytes():
    """A stream body read gathers what the kernel holds; a connection reset met while
    gathering is raised by the next read, after the bytes that arrived before it, as the
    same error as before (UpstreamError, upstream not reached)."""
    from omixa.engine.providers._http import make_client, translate

    frames = b"".join(
        b"%x\r\n%s\r\n" % (len(f), f) for f in [b'data: {"n":%d,"pad":"%s"}\n\n' % (i, b"x" * 200) for i in range(20)]
    )
    # Padded with a comment to a multiple of 128 bytes: the gathering reads end on the reset,
    # not on a short read.
    for k in range(1, 200):
        pad = b":" + b" " * k + b"\n\n"
        padded = frames + b"%x\r\n%s\r\n" % (len(pad), pad)
        if len(padded) % 128 == 0:
            frames = padded
            break
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    sent = trio.Event()

    async def serve() -> None:
        conn, _ = await listener.accept()
        with conn:
            await conn.recv(65536)  # the request
            await conn.send(head)
            await trio.sleep(0.05)  # the head is read alone, then the body in 128-byte reads
            await conn.send(frames)
            await trio.sleep(0.05)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sent.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = make_client(UpstreamConfig(max_connections=1))
        try:
            request = client.build_request("POST", f"http://127.0.0.1:{port}/", json={})
            response = await client.send(request, stream=True)
            await sent.wait()  # body and reset are both in the kernel before the first body read
            received = []
            from omixa.engine.providers._reads import stream_reads

            with pytest.raises(httpx.ReadError) as caught:
                with stream_reads(response.extensions):
                    async for chunk in response.aiter_raw():
                        received.append(chunk)
            await response.aclose()
        finally:
            await client.aclose()
            listener.close()
    parsed = SseParser().feed(b"".join(received))
    assert [e.data["n"] for e in parsed if e.data] == list(range(20))
    error = translate(caught.value)
    assert isinstance(error, UpstreamError) and error.upstream_status is None
