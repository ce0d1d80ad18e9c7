"""``omixa demo``: the whole product on one machine with no Azure account.

Embedded SQLite in a data folder (a new temporary one unless ``--data-dir`` is given), one
simulated deployment per model of the catalog (chat, embeddings, images), and a seeded
account with $10.00 and a
fresh API key. Prints ``OMIXA_BASE_URL=...`` and
``OMIXA_API_KEY=...``, then serves until interrupted.
"""

from __future__ import annotations

import sys
import tempfile
from functools import partial
from pathlib import Path

import attrs
import trio

from omixa.engine.catalog import load_catalog
from omixa.engine.config import StorageConfig
from omixa.engine.config_loader import structure_config
from omixa.engine.money import parse_usd
from omixa.web.logs import configure_logging
from omixa.web.server import Gateway, run_gateway

DEMO_EMAIL = "demo@omixa.local"
DEMO_BALANCE = "10.00"
ACCOUNT_FILE = "demo-account-id"


def demo_config(port: int, data_dir: Path):
    models = list(load_catalog().models)
    config = structure_config(
        {
            "server": {"port": port},
            # The demo's developer may top up their own wallet (POST /api/v1/wallet/top-up).
            "wallet": {"self_top_up": True},
            "deployments": [
                {"name": f"simulated-{m}", "model": m, "provider": "simulator", "region": "local"} for m in models
            ],
        },
        base_dir=data_dir,
    )
    # The demo is embedded SQLite whatever OMIXA_DATABASE_URL says.
    return attrs.evolve(config, storage=StorageConfig(url=f"sqlite:///{data_dir / 'omixa-demo.db'}"))


async def run_demo(port: int, data_dir: str | None) -> int:
    folder = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="omixa-demo-"))
    folder.mkdir(parents=True, exist_ok=True)
    config = demo_config(port, folder)
    configure_logging(config.logging)  # the defaults, or OMIXA_LOG_FORMAT / OMIXA_LOG_LEVEL
    async with trio.open_nursery() as nursery:
        gateway: Gateway = await nursery.start(partial(run_gateway, config))
        accounts = gateway.engine.accounts
        account_file = folder / ACCOUNT_FILE
        if account_file.exists():
            account_id = account_file.read_text().strip()
        else:
            account = await accounts.create_account(DEMO_EMAIL)
            await accounts.storage.top_up(account.id, parse_usd(DEMO_BALANCE), note="demo seed")
            account_file.write_text(account.id)
            account_id = account.id
        key = await accounts.create_key(account_id)
        print(f"OMIXA_BASE_URL={gateway.base_url}", flush=True)
        print(f"OMIXA_API_KEY={key.secret}", flush=True)
        if key.signing_secret is not None:  # only when OMIXA_SECRET_KEY is set
            print(f"OMIXA_SIGNING_SECRET={key.signing_secret}", flush=True)
        print(
            f"Omixa demo: data in {folder}; try\n"
            f'  curl {gateway.base_url}/chat/completions -H "Authorization: Bearer $OMIXA_API_KEY" '
            "-H 'Content-Type: application/json' "
            '-d \'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}\'\n'
            "Press Ctrl+C to stop.",
            file=sys.stderr,
            flush=True,
        )
    return 0
