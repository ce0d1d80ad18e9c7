"""The engine's tree: every actor started, supervised and stopped in order.

``open_engine`` starts, under one nursery and each with ``await nursery.start(...)`` (ready
only after ``task_status.started()``):
- the fleet: one deployment actor per configured deployment (reload changes the set),
- the wallet pool (wallet actors spawned per account on demand, plus the hold sweeper),
- the usage aggregator,
- the instance monitor (registers this process, releases the holds of dead ones before the
  engine is ready, heartbeats, and deregisters once the wallets drained),
- with ``[cluster] redis_url``, the key limiter's task that batches the keys' admissions to
  Redis (the deployment actors talk to Redis themselves, :mod:`engine.cluster`).
With ``[tracing] otlp_endpoint`` (or a span processor handed in), it also sets up tracing
(:mod:`engine.tracing`, imported only then).
On exit the mailboxes are closed, so every actor serves what is queued (the aggregator
flushes its last batch) and returns; then the upstream connection pools are closed and the
spans still queued for the collector are sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import version
from typing import TYPE_CHECKING

import attrs
import trio

from omixa.engine.access import Access
from omixa.engine.accounts import Accounts
from omixa.engine.catalog import Catalog, load_catalog
from omixa.engine.chat import ChatService
from omixa.engine.cluster import WHOLE, ClusterLink, Share
from omixa.engine.config import Config, ConfigError, DeploymentConfig, resolve_path
from omixa.engine.deployment import DeploymentActor
from omixa.engine.fleet import Fleet
from omixa.engine.instances import InstanceMonitor, new_instance_id
from omixa.engine.intake import Intake
from omixa.engine.keylimits import KeyLimiter
from omixa.engine.metrics import Metrics
from omixa.engine.metrics_sampler import MetricsSampler
from omixa.engine.reports import Reports
from omixa.engine.router import Router
from omixa.engine.secretbox import secret_box_from_env
from omixa.engine.signatures import SignatureVerifier, check_signing_setup
from omixa.engine.stored_responses import StoredResponses
from omixa.engine.supervise import Supervision, supervised
from omixa.engine.tokens import warm_up
from omixa.engine.usage import UsageAggregator
from omixa.engine.wallet import WalletPool
from omixa.storage import Storage, StorageError
from omixa.storage.coordination import Coordinator, CoordinatorError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor

    from omixa.engine.tracing import Tracing

log = logging.getLogger("omixa.runtime")

# Bound on draining the actors at shutdown (the aggregator may be retrying a write).
DRAIN_TIMEOUT = 15.0
# Bound on each dependency's answer to a readiness check.
READY_TIMEOUT = 2.0


@attrs.frozen(kw_only=True)
class Engine:
    config: Config
    catalog: Catalog
    storage: Storage
    accounts: Accounts
    access: Access
    fleet: Fleet
    router: Router
    wallets: WalletPool
    usage: UsageAggregator
    monitor: InstanceMonitor
    reports: Reports
    limits: KeyLimiter
    intake: Intake
    chat: ChatService
    signatures: SignatureVerifier
    supervision: Supervision
    coordinator: Coordinator | None = None
    metrics: Metrics | None = None  # None: [metrics] enabled = false
    sampler: MetricsSampler | None = None
    tracing: Tracing | None = None  # None: tracing is off

    @property
    def deployments(self) -> list[DeploymentActor]:
        """The running deployment actors (the set changes on reload)."""
        return self.fleet.actors

    async def readiness(self) -> list[str]:
        """What keeps this process from serving now, in words; empty when it is ready: every
        supervised task running (none starting or waiting to restart after a crash), the
        database and Redis (when configured) answering within :data:`READY_TIMEOUT`, and
        shutdown not begun."""
        problems = [f"task {name} is not running" for name in self.supervision.not_running()]
        if self.chat.draining:
            problems.append("shutting down")
        checks: list[tuple[str, Callable[[], Awaitable[object]], type[Exception]]] = [
            ("the database", lambda: self.storage.get_account("acct_readiness_check"), StorageError)
        ]
        if self.coordinator is not None:
            checks.append(("Redis", self.coordinator.ping, CoordinatorError))
        for what, check, failure in checks:
            with trio.move_on_after(READY_TIMEOUT) as scope:
                try:
                    await check()
                except failure as exc:  # the details go to the log, not to whoever asks
                    log.warning("readiness: %s is not answering: %s", what, exc)
                    problems.append(f"{what} is not answering")
            if scope.cancelled_caught:
                problems.append(f"{what} did not answer within {READY_TIMEOUT:g} s")
        return problems


def deployed_encodings(catalog: Catalog, deployments: Iterable[DeploymentConfig]) -> set[str]:
    """The tokenizer encodings of the models these deployments serve. Only those are loaded
    at start: each costs memory for the process's life (o200k_base about 48 MB,
    cl100k_base about 26 MB)."""
    return {model.encoding for dep in deployments if (model := catalog.get(dep.model)) is not None}


def catalog_for(config: Config) -> Catalog:
    return load_catalog(resolve_path(config, config.catalog) if config.catalog else None)


@asynccontextmanager
async def open_engine(
    config: Config,
    storage: Storage,
    catalog: Catalog | None = None,
    *,
    coordinator: Coordinator | None = None,
    share: Share = WHOLE,
    span_processor: SpanProcessor | None = None,
) -> AsyncIterator[Engine]:
    """Start every actor; yield the engine; stop them in order. With ``coordinator`` (Redis,
    ``[cluster] redis_url``), the deployments' and keys' windows, the deployments' health
    and the replay cache are shared through it; without, this process admits ``share`` of
    every limit (one of several workers). Requests are traced with ``[tracing]
    otlp_endpoint``, or into ``span_processor`` when given (instead of the OTLP exporter).

    Errors: catalog.CatalogError if the catalog is invalid; ValueError if a deployment
    names a model the catalog lacks; secretbox.SecretKeyError (a ValueError) if signatures
    are enforced without a usable ``OMIXA_SECRET_KEY``; ConfigError if tracing is on and
    OpenTelemetry is not installed.
    """
    catalog = catalog or catalog_for(config)
    box = secret_box_from_env()
    check_signing_setup(config.security, box, await storage.signing_summary())
    router = Router()
    instance_id = new_instance_id()
    wallets = WalletPool(storage, config.wallet, instance_id=instance_id)
    usage = UsageAggregator(storage, config.usage)
    monitor = InstanceMonitor(
        storage, config.wallet, instance_id, wallets_drained=wallets.drained, usage_drained=usage.drained
    )
    cluster = (
        None
        if coordinator is None
        else ClusterLink(coordinator, config.cluster, lambda: monitor.live, instance_id=instance_id)
    )
    supervision = Supervision()
    metrics = Metrics(shared_limits=cluster is not None) if config.metrics.enabled else None
    fleet = Fleet(
        supervision=supervision,
        catalog=catalog,
        upstream=config.upstream,
        breaker=config.breaker,
        router=router,
        read_size=config.streaming.chunk_bytes,
        cluster=cluster,
        share=share,
    )
    await trio.to_thread.run_sync(fleet.check, config.deployments)
    # Load the tokenizers of the deployed models now, so the first request does not pay for
    # it (a reload that deploys another model loads its encoding before applying).
    await trio.to_thread.run_sync(warm_up, deployed_encodings(catalog, config.deployments))
    limits = KeyLimiter(config.limits, cluster, share=share)
    accounts = Accounts(storage, box)
    verifier = SignatureVerifier(config.security, box, started_at=time.time(), cluster=cluster)
    tracing = start_tracing(config, instance_id, span_processor)  # last: nothing to stop if a check fails
    engine = Engine(
        config=config,
        catalog=catalog,
        storage=storage,
        accounts=accounts,
        access=Access(accounts, verifier),
        fleet=fleet,
        router=router,
        wallets=wallets,
        usage=usage,
        monitor=monitor,
        reports=Reports(storage, config.wallet),
        limits=limits,
        intake=Intake(limits, accounts),
        chat=ChatService(
            catalog=catalog,
            router=router,
            wallets=wallets,
            usage=usage,
            wallet_config=config.wallet,
            streaming=config.streaming,
            upstream=config.upstream,
            limits=limits,
            stored=StoredResponses(storage, router),
            metrics=metrics,
        ),
        signatures=verifier,
        supervision=supervision,
        coordinator=coordinator,
        metrics=metrics,
        sampler=None
        if metrics is None
        else MetricsSampler(
            metrics,
            deployments=lambda: fleet.actors,
            wallets=wallets,
            usage=usage,
            storage=storage,
            readiness=lambda: engine.readiness(),
            cluster=cluster,
            interval=config.metrics.sample_seconds,
        ),
        tracing=tracing,
    )
    if metrics is not None:
        metrics.build_info.labels(version("omixa")).set(1)
        storage.observe_call = metrics.storage_call
        if coordinator is not None:
            coordinator.observe_call = metrics.redis_call
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(fleet.run, config.deployments, name="deployments")
            watch = partial(supervised, supervision=supervision)
            await nursery.start(watch, "wallets", wallets.run, name="wallets")
            await nursery.start(watch, "usage", usage.run, name="usage-aggregator")
            await nursery.start(watch, "instances", monitor.run, name="instance-monitor")
            await nursery.start(watch, "key-limits", limits.run, name="key-limits")
            if coordinator is None and share == WHOLE and monitor.live > 1:
                log.warning(
                    "%d processes share this database without [cluster] redis_url: each admits every "
                    "deployment's and key's limit in full. Set redis_url, or run one omixa serve "
                    "--workers N per database",
                    monitor.live,
                )
            upkeep = trio.CancelScope()

            async def maintain_storage(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                task_status.started()
                await storage.maintain()

            async def run_upkeep(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                with upkeep:  # around the restarts too: one cancel ends them all
                    await supervised("storage", maintain_storage, supervision=supervision, task_status=task_status)

            await nursery.start(run_upkeep, name="storage-maintenance")
            sampling = trio.CancelScope()
            if engine.sampler is not None:
                sample = engine.sampler.run

                async def run_sampler(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                    with sampling:
                        await supervised("metrics", sample, supervision=supervision, task_status=task_status)

                await nursery.start(run_sampler, name="metrics-sampler")
            try:
                yield engine
            finally:
                upkeep.cancel()
                sampling.cancel()
                # Every actor returns once its mailbox is closed and drained.
                wallets.close()
                usage.close()
                limits.close()
                fleet.close()
                monitor.close()
                nursery.cancel_scope.deadline = trio.current_time() + DRAIN_TIMEOUT
    finally:
        storage.observe_call = None
        if coordinator is not None:
            coordinator.observe_call = None
        with trio.move_on_after(5, shield=True):
            await fleet.clients.aclose()
        if tracing is not None:  # the last spans to the collector, bounded like the clients
            with trio.move_on_after(5, shield=True):
                await trio.to_thread.run_sync(tracing.shutdown, abandon_on_cancel=True)


def start_tracing(config: Config, instance_id: str, processor: SpanProcessor | None) -> Tracing | None:
    """This process's tracing, or None when it is off (no ``otlp_endpoint``, no
    ``processor``): OpenTelemetry is imported only when it is on.

    Errors: ConfigError when it is on and OpenTelemetry cannot be imported."""
    if not config.tracing.otlp_endpoint and processor is None:
        return None
    try:
        from omixa.engine.tracing import open_tracing
    except ImportError as exc:
        raise ConfigError(
            f"tracing.otlp_endpoint: tracing needs OpenTelemetry ({exc}): pip install 'omixa[otel]'"
        ) from None
    return open_tracing(config.tracing, instance_id=instance_id, processor=processor)
