"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) against
a real Omixa in front of the fake Azure upstream.

The browser runs in its own process (tests/browser_driver.py) while the gateway runs in
this one; the driver's steps and checks are listed there. Each step saves a screenshot
under ``test-output/screenshots`` (or ``$OMIXA_TEST_OUTPUT/screenshots``).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import trio
from fake_azure import open_fake_azure
from harness import azure_deployment, open_gateway

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium not found (apt-get install chromium)"),
]
DRIVER = Path(__file__).resolve().parent / "browser_driver.py"
POLL_SECONDS = 1.0
# A chat, a reasoning, an embedding and an image model: the usage page's model filter lists them.
DEPLOYED = ("gpt-4o-mini", "gpt-5.1", "text-embedding-3-small", "gpt-image-1")


async def test_dashboard_in_a_real_browser(tmp_path):
    database_url = f"sqlite:///{tmp_path / 'omixa.db'}"
    reply = " ".join(f"word{i}" for i in range(400))
    async with (
        open_fake_azure(reply=reply, chunk_delay=0.03) as fake,
        open_gateway(
            database_url,
            fake,
            deployments=[azure_deployment(fake, name=f"d-{m}", model=m) for m in DEPLOYED],
            dashboard={"poll_seconds": POLL_SECONDS},
        ) as gw,
    ):
        account_a, key_a = await gw.funded_account("10.00")
        _, key_b = await gw.funded_account("3.00")
        key_b_id = (await gw.engine.accounts.authenticate(f"Bearer {key_b}")).id
        config = tmp_path / "omixa.toml"
        config.write_text(f'[storage]\nurl = "{database_url}"\n')
        args = {
            "root": gw.root_url,
            "chromium": CHROMIUM,
            "key_a": key_a,
            "key_b": key_b,
            "key_b_id": key_b_id,
            "config": str(config),
            "poll_seconds": POLL_SECONDS,
        }
        with trio.fail_after(240):
            driven = await trio.run_process(
                [sys.executable, str(DRIVER)],
                stdin=json.dumps(args).encode(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        assert driven.returncode == 0, driven.stderr.decode()[-4000:]
        seen = json.loads(driven.stdout)
        await gw.flushed()
        charged = [e.request_id for e in await gw.storage.ledger_entries(account_a) if e.type == "charge"]
        assert charged[0] == seen["request_id"]
        assert await gw.storage.verify_ledger() == []
