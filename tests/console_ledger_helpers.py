"""What the request log and wallet pages' tests share: a signed-in HTTP client and a burst of
real requests through the API."""

from __future__ import annotations

import re

import httpx
import trio
from test_dashboard_http import signin_form


async def signed_in(client: httpx.AsyncClient, key: str) -> str:
    """Signs ``client`` in with ``key``; the session's CSRF token."""
    token = await signin_form(client)
    assert (await client.post("/signin", data={"api_key": key, "csrf": token})).status_code == 302
    page = await client.get("/usage")
    found = re.search(r'data-csrf="([^"]+)"', page.text)
    assert found is not None
    return found[1]


async def chat(base_url: str, key: str, *, model: str, stream: bool = False, limit: int = 8) -> int:
    """One small chat completion through the API; its HTTP status."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": limit, "stream": stream}
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30) as api:
        response = await api.post("/chat/completions", json=body)
        await response.aread()
        return response.status_code


async def chats(base_url: str, plan: list[tuple[str, str, bool]], concurrency: int = 8) -> list[int]:
    """``plan`` (key, model, stream) run through the API, ``concurrency`` at a time, in order of
    starting; their statuses."""
    statuses: list[int] = [0] * len(plan)
    limiter = trio.CapacityLimiter(concurrency)

    async def one(i: int) -> None:
        async with limiter:
            key, model, stream = plan[i]
            statuses[i] = await chat(base_url, key, model=model, stream=stream)

    async with trio.open_nursery() as nursery:
        for i in range(len(plan)):
            nursery.start_soon(one, i)
    return statuses
