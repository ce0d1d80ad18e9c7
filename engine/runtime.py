"""The engine's tree: every actor started, supervised and stopped in order.

``open_engine`` starts, under one nursery and each with ``await nursery.start(...)`` (ready
only after ``task_status.started()``):
- one deployment actor per configured deployment,
- the wallet pool (wallet actors spawned per account on demand, plus the hold sweeper),
- the usage aggregator.
On exit the mailboxes are closed, so every actor serves what is queued (the aggregator
flushes its last batch) and returns; then the upstream connection pools are closed.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator

import attrs
import trio

from engine.accounts import Accounts
from engine.catalog import Catalog, load_catalog
from engine.chat import ChatService
from engine.config import Config, resolve_path
from engine.deployment import DeploymentActor
from engine.keylimits import KeyLimiter
from engine.providers import HttpClients, build_provider, set_read_size
from engine.router import Router
from engine.supervise import supervised
from engine.tokens import warm_up
from engine.usage import UsageAggregator
from engine.wallet import WalletPool
from storage import Storage

log = logging.getLogger("omixa.runtime")

# Bound on draining the actors at shutdown (the aggregator may be retrying a write).
DRAIN_TIMEOUT = 15.0


@attrs.frozen(kw_only=True)
class Engine:
    config: Config
    catalog: Catalog
    storage: Storage
    accounts: Accounts
    deployments: tuple[DeploymentActor, ...]
    router: Router
    wallets: WalletPool
    usage: UsageAggregator
    limits: KeyLimiter
    chat: ChatService


def catalog_for(config: Config) -> Catalog:
    return load_catalog(resolve_path(config, config.catalog) if config.catalog else None)


@asynccontextmanager
async def open_engine(config: Config, storage: Storage, catalog: Catalog | None = None) -> AsyncIterator[Engine]:
    """Start every actor; yield the engine; stop them in order.

    Errors: catalog.CatalogError if the catalog is invalid; ValueError if a deployment
    names a model the catalog lacks.
    """
    catalog = catalog or catalog_for(config)
    for dep in config.deployments:
        if catalog.get(dep.model) is None:
            raise ValueError(f"deployment {dep.name!r}: model {dep.model!r} is not in the catalog")
    # Load the tokenizers now, so the first request does not pay for it.
    await trio.to_thread.run_sync(
        warm_up, [catalog.get(dep.model).encoding for dep in config.deployments]
    )
    set_read_size(config.streaming.chunk_bytes)
    # Deployments on one Azure resource share a pooled client (and its connection limit).
    clients = HttpClients(config.upstream)
    actors = tuple(
        DeploymentActor(dep, build_provider(dep, config.upstream, clients), config.breaker)
        for dep in config.deployments
    )
    wallets = WalletPool(storage, config.wallet)
    usage = UsageAggregator(storage, config.usage)
    router = Router(actors)
    limits = KeyLimiter(config.limits)
    engine = Engine(
        config=config,
        catalog=catalog,
        storage=storage,
        accounts=Accounts(storage),
        deployments=actors,
        router=router,
        wallets=wallets,
        usage=usage,
        limits=limits,
        chat=ChatService(
            catalog=catalog,
            router=router,
            wallets=wallets,
            usage=usage,
            wallet_config=config.wallet,
            streaming=config.streaming,
            upstream=config.upstream,
            limits=limits,
        ),
    )
    try:
        async with trio.open_nursery() as nursery:
            for actor in actors:
                await nursery.start(supervised, f"deployment-{actor.config.name}", actor.run, name=f"deployment-{actor.config.name}")
            await nursery.start(supervised, "wallets", wallets.run, name="wallets")
            await nursery.start(supervised, "usage", usage.run, name="usage-aggregator")
            try:
                yield engine
            finally:
                # Every actor returns once its mailbox is closed and drained.
                wallets.close()
                usage.close()
                for actor in actors:
                    actor.close()
                nursery.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT
    finally:
        with trio.move_on_after(5, shield=True):
            for actor in actors:
                await actor.provider.aclose()
            await clients.aclose()
