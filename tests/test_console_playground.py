"""/signin, /catalog and /playground in a real browser, on both storage backends.

A real Omixa in front of the fake Azure upstream; headless Chromium driven by Playwright in
its own process (tests/console_playground_driver.py lists the steps it checks on the pages).
Here, after the driver: what the upstream received (the whole conversation on the second
turn, the max tokens and temperature set on the page, service_tier "priority" on the
priority deployment) and what the ledger charged for the stopped turn.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from browser_kit import CHROMIUM, backend_of, run_driver
from fake_azure import content_filter_error, open_fake_azure
from harness import azure_deployment, open_gateway

from omixa.engine.money import parse_usd

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)"),
]
DRIVER = Path(__file__).resolve().parent / "console_playground_driver.py"
# Chat models with and without temperature, priority prices and a priority deployment; an
# embedding and an image model, so the catalog has modalities to filter.
DEPLOYED = ("gpt-4o-mini", "gpt-4.1", "text-embedding-3-small", "gpt-image-1")


async def test_playground_conversation_controls_and_stop(database_url):
    reply = " ".join(f"word{i}" for i in range(400))
    async with (
        open_fake_azure(reply=reply, chunk_delay=0.03, cached_tokens=8) as fake,
        open_gateway(
            database_url,
            fake,
            deployments=[
                *(azure_deployment(fake, name=f"d-{m}", model=m) for m in DEPLOYED),
                azure_deployment(fake, name="d-gpt-5.1-fast", model="gpt-5.1", deployment="fast-dz", priority=True),
            ],
        ) as gw,
    ):
        account, key = await gw.funded_account("10.00")
        _, key_poor = await gw.funded_account("0.00")
        fake.fail_next(400, content_filter_error())  # the page's first message
        args = {"root": gw.root_url, "key": key, "key_poor": key_poor, "backend": backend_of(database_url)}
        seen = await run_driver(DRIVER, args)

        # Each turn's request, found by the upstream id its log names.
        by_upstream_id = {r.upstream_id: r for r in fake.requests}
        first, second = (by_upstream_id[t["upstream_id"]].json for t in seen["turns"])
        system = {"role": "system", "content": "You are terse."}
        assert first["messages"] == [system, {"role": "user", "content": "First question"}]
        assert second["messages"] == [
            system,
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": seen["first_text"]},
            {"role": "user", "content": "Second question"},
        ]
        for sent in (first, second):
            assert sent["max_tokens"] == 12 and sent["temperature"] == 0.3
            assert "max_completion_tokens" not in sent

        # After New conversation, only the new turn is sent.
        fresh = by_upstream_id[seen["fresh"]["upstream_request_id"]].json
        assert fresh["messages"] == [system, {"role": "user", "content": "Fresh start"}]

        # Fast mode reached the priority deployment as service_tier "priority".
        fast = by_upstream_id[seen["fast"]["upstream_request_id"]]
        assert fast.deployment == "fast-dz"
        assert fast.json["service_tier"] == "priority"
        assert fast.json["max_completion_tokens"] == 40 and "temperature" not in fast.json

        # The stopped stream closed the upstream and was charged what the turn shows.
        with trio.fail_after(10):
            while fake.streams_disconnected < 2:  # the stopped turn and the one cleared
                await trio.sleep(0.05)
        await gw.flushed()
        stopped = seen["stopped"]
        log = await gw.request_log(stopped["id"])
        assert log.status == stopped["status"] == "client_closed"
        assert log.completion_tokens > 0
        charges = [e for e in await gw.settled_entries(account) if e.type == "charge"]
        charge = next(e for e in charges if e.request_id == stopped["id"])
        assert charge.amount == parse_usd(stopped["cost"]) > 0
        assert await gw.storage.verify_ledger() == []
