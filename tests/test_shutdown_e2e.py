"""Graceful shutdown: in-flight requests finish within the grace period; the rest are
cancelled, their upstreams closed and their holds settled; the ledger verifies."""

from __future__ import annotations

import httpx
import trio
from fake_azure import open_fake_azure
from harness import MODEL, open_gateway

from omixa.storage import open_storage

MESSAGES = [{"role": "user", "content": "hi"}]


async def test_shutdown_lets_short_requests_finish_and_settles_long_streams(database_url, aio_loop):
    reply = " ".join(f"w{i}" for i in range(400))
    async with open_fake_azure(reply=reply, chunk_delay=0.02, first_delay=0.3) as fake:
        results: dict[str, object] = {}
        # The long stream needs 8 s; the grace leaves the short request seconds to finish in.
        async with open_gateway(database_url, fake, server={"shutdown_grace_seconds": 3.0}) as gw:
            account, key = await gw.funded_account("5.00")
            auth = {"Authorization": f"Bearer {key}"}
            url = f"{gw.base_url}/chat/completions"

            async def short(client: httpx.AsyncClient) -> None:
                response = await client.post(
                    url, headers=auth, json={"model": MODEL, "messages": MESSAGES, "max_tokens": 5}
                )
                results["short"] = response.status_code

            async def long_stream(client: httpx.AsyncClient) -> None:
                body = b""
                try:
                    async with client.stream(
                        "POST", url, headers=auth, json={"model": MODEL, "messages": MESSAGES, "stream": True}
                    ) as response:
                        async for chunk in response.aiter_raw():
                            body += chunk
                except httpx.HTTPError:
                    pass
                results["long"] = body

            async with httpx.AsyncClient(timeout=30) as client, trio.open_nursery() as nursery:
                nursery.start_soon(short, client)
                nursery.start_soon(long_stream, client)
                with trio.fail_after(5):
                    while fake.streams_started < 1 or len(fake.requests) < 2:
                        await trio.sleep(0.01)
                gw.stop()
        # The gateway is down: its storage closed after the actors drained.
        with trio.fail_after(5):
            await fake.wait_disconnected(1)  # the upstream was closed
    assert results["short"] == 200
    assert b"data: [DONE]" not in results["long"]  # cut by the grace period
    assert fake.streams_disconnected == 1

    async with open_storage(database_url, loop=aio_loop) as storage:
        wallet = await storage.get_wallet(account)
        assert wallet.locked == 0
        assert await storage.verify_ledger() == []
        entries = await storage.ledger_entries(account)
        request_ids = {e.request_id for e in entries if e.type == "hold"}
        statuses = sorted([(await storage.get_request_log(r)).status for r in request_ids])
        assert statuses == ["interrupted", "ok"]
