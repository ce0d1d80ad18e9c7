"""A request that ended in an error keeps, in its log, the message its client was given
(``error_message`` in ``GET /usage/requests/{id}`` and its CSV), on both backends: an error
the client caused upstream (a content filter, with Azure's code and words), a mid-stream
failure (the error event's message), an upstream failure answered with Omixa's own words;
none for a request that succeeded. A message a spreadsheet would run as a formula is
defused in the CSV only."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import httpx
from fake_azure import CONTENT_FILTER_MESSAGE, content_filter_error, open_fake_azure
from harness import MODEL, open_gateway

from omixa.storage import RequestLog

MESSAGES = [{"role": "user", "content": "Say something about foxes."}]


async def usage_row(client: httpx.AsyncClient, request_id: str) -> dict[str, Any]:
    response = await client.get(f"/usage/requests/{request_id}")
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_failed_request_keeps_the_message_its_client_got(database_url):
    async with open_fake_azure(break_after=3) as fake, open_gateway(database_url, fake) as gw:
        _, key = await gw.funded_account("10.00")
        async with httpx.AsyncClient(base_url=gw.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
            # The client's fault upstream: Azure's code and message reach the client and the log.
            fake.fail_next(400, content_filter_error())
            refused = await client.post("/chat/completions", json={"model": MODEL, "messages": MESSAGES})
            assert refused.status_code == 400
            told = refused.json()["error"]
            assert told["code"] == "content_filter" and CONTENT_FILTER_MESSAGE in told["message"]
            await gw.request_log(refused.headers["x-request-id"])
            row = await usage_row(client, refused.headers["x-request-id"])
            assert (row["status"], row["error_message"]) == ("content_filter", told["message"])

            # A request that succeeded has none (break_after concerns streams only).
            ok = await client.post("/chat/completions", json={"model": MODEL, "messages": MESSAGES})
            assert ok.status_code == 200
            await gw.request_log(ok.headers["x-request-id"])
            assert (await usage_row(client, ok.headers["x-request-id"]))["error_message"] is None

            # A stream broken after its first frames: the error event's message.
            async with client.stream(
                "POST", "/chat/completions", json={"model": MODEL, "messages": MESSAGES, "stream": True}
            ) as response:
                events = [line.removeprefix("data: ") async for line in response.aiter_lines()]
                streamed = response.headers["x-request-id"]
            errors = [json.loads(e)["error"] for e in events if e.startswith("{") and '"error"' in e]
            assert len(errors) == 1
            await gw.request_log(streamed)
            row = await usage_row(client, streamed)
            assert row["error_message"] == errors[0]["message"] and row["status"] != "ok"

            # Upstream failures on every attempt: Omixa's own words, as the client got them.
            fake.fail_next(500, {"error": {"code": "InternalServerError", "message": "boom"}}, count=10)
            failed = await client.post("/chat/completions", json={"model": MODEL, "messages": MESSAGES})
            assert failed.status_code >= 500
            await gw.request_log(failed.headers["x-request-id"])
            row = await usage_row(client, failed.headers["x-request-id"])
            assert row["status"] == failed.json()["error"]["code"]
            assert row["error_message"] == failed.json()["error"]["message"]


async def test_a_message_that_looks_like_a_formula_is_defused_in_the_csv_only(database_url):
    async with open_fake_azure() as fake, open_gateway(database_url, fake) as gw:
        account, key = await gw.funded_account("1.00")
        log = RequestLog(
            id="req_formula000000000000000", account_id=account, key_id="", model=MODEL, provider="azure",
            deployment=None, region=None, status="invalid_request", stream=False, prompt_tokens=0,
            completion_tokens=0, reasoning_tokens=0, cached_tokens=0, cost=0, latency_ms=5, ttft_ms=None,
            created_at=dt.datetime.now(dt.UTC),
            error_message='=HYPERLINK("http://x.example","click")',
        )  # fmt: skip
        await gw.storage.insert_request_logs([log])
        async with httpx.AsyncClient(base_url=gw.base_url, headers={"Authorization": f"Bearer {key}"}) as client:
            assert (await usage_row(client, log.id))["error_message"] == log.error_message  # JSON: as it is
            exported = await client.get("/usage/requests", params={"format": "csv"})
            rows = list(csv.DictReader(io.StringIO(exported.text)))
            assert [r["error_message"] for r in rows] == ["'" + log.error_message]
