"""Prometheus metrics: what the engine counts and measures, and the exposition of it.

One :class:`Metrics` per engine (``[metrics] enabled``, the default). Components that
observe events hold it, or ``None`` when metrics are off, and check that once per event; the
state the actors own (deployment windows and health, mailboxes, the usage queue, the
database pool, pending holds) is sampled by :class:`engine.metrics_sampler.MetricsSampler`.

Labels are bounded: API, catalog model id, configured deployment name, route template,
status and error code, window and health state names; never a request id, key or account.

Several worker processes (``omixa serve --workers N``) share one exposition through
prometheus-client's multiprocess mode: the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` for
its workers before they start (the library reads it when first imported), each worker
writes its values to memory-mapped files there, and whichever process serves ``/metrics``
reads them all. Counters and histograms sum over the workers (a dead worker's counts stay);
each gauge says how workers combine (``livesum``: this process's share, summed over the live
workers; ``livemax``: a value every worker reads alike, such as the database's pending holds,
or "any worker", such as a model's healthy deployments; ``livemin``: readiness, so that
one unready worker shows).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import attrs
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Metric,
    generate_latest,
    multiprocess,
    start_http_server,
    values,
)
from prometheus_client.registry import Collector

from omixa.engine.errors import OmixaError
from omixa.engine.metric_labels import attempt_outcome, bounded_code
from omixa.storage import RequestLog

log = logging.getLogger("omixa.metrics")

# Exposition format of generate_latest (text, version 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Whole requests and time to first token: seconds to minutes (reasoning models think long).
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
# The upstream's answer or head.
UPSTREAM_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Waits on the engine's own actors and the database: milliseconds, unless something is wrong.
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
ATTEMPT_BUCKETS = (1.0, 2.0, 3.0, 4.0, 5.0, 8.0)

GaugeMode = Literal["livesum", "livemax", "livemin"]
HEALTH_STATES = ("closed", "cooling", "open", "half_open")
TOKEN_KINDS = ("prompt", "completion", "cached", "reasoning")


def multiprocess_dir() -> str | None:
    """The shared folder of the workers' metric files, when this process is one of them."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def is_multiprocess() -> bool:
    """Whether prometheus-client writes its values to files (it decided on first import)."""
    return values.ValueClass is not values.MutexValue


def exposition_registry(path: str | None = None) -> CollectorRegistry:
    """A registry that reads every process's metric files in ``path`` (the multiprocess
    folder), for whoever serves ``/metrics`` there."""
    registry = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(registry, path=path or multiprocess_dir())
    return registry


def mark_process_dead(pid: int, path: str) -> None:
    """Forget a dead worker's live gauges in ``path`` (its counters and histograms stay
    counted)."""
    multiprocess.mark_process_dead(pid, path)


class _Refreshed(Collector):
    """A registry that runs ``before`` (bounded, errors logged) ahead of each collection."""

    def __init__(self, registry: CollectorRegistry, before: Callable[[], None]) -> None:
        self._registry, self._before = registry, before

    def collect(self) -> Iterable[Metric]:
        try:
            self._before()
        except Exception as exc:  # the loop is stopping, or the sample failed: serve what is there
            log.debug("metrics: not sampled before the scrape: %s", exc)
        return self._registry.collect()


@contextlib.contextmanager
def serving(bind: str, registry: CollectorRegistry, before: Callable[[], None] | None = None) -> Iterator[str]:
    """Serve ``registry`` on ``bind`` (host:port; port 0 picks a free one) from a thread of
    prometheus-client's own (any path answers with the exposition), for the block; yields
    its URL. ``before``: called in that thread ahead of each scrape (to sample the engine).
    Errors: OSError (the address is taken)."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    source: Collector = registry if before is None else _Refreshed(registry, before)
    server, thread = start_http_server(int(port), host, registry=source)
    try:
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@attrs.define(slots=True)
class CallMetrics:
    """One (API, model, stream) combination's children, resolved once: the request path
    observes them without a label lookup."""

    duration: Histogram
    ttft: Histogram
    attempts: Histogram
    hold_wait: Histogram
    settle_wait: Histogram
    tokens: tuple[Counter, Counter, Counter, Counter]  # TOKEN_KINDS
    charged: Counter
    statuses: dict[str, Counter]


class Metrics:
    """Every metric of one engine, registered in its own registry (or, under the workers'
    multiprocess mode, in none: the files are the registry)."""

    def __init__(self, *, shared_limits: bool = False) -> None:
        self.multiprocess = is_multiprocess()
        self.registry = None if self.multiprocess else CollectorRegistry(auto_describe=False)
        # With shared limits (Redis), every worker reads the same windows: the max is the
        # fleet's. Without, each worker admits its own share: the sum is the fleet's.
        window_mode: GaugeMode = "livemax" if shared_limits else "livesum"
        # Children resolved once per label set (labels() costs a dozen calls each time).
        self._calls: dict[tuple[str, str, bool], CallMetrics] = {}
        self._attempts: dict[tuple[str, str, str], Counter] = {}
        self._upstream: dict[tuple[str, str], Histogram] = {}
        self._http: dict[tuple[str, str, str, str], Counter] = {}
        self._db: dict[str, Histogram] = {}

        # -- requests -----------------------------------------------------------------------
        self.http_requests = self._counter(
            "omixa_http_requests",
            "HTTP requests answered, by route template, method, status and error code ('' on success).",
            ("route", "method", "status", "code"),
        )
        self.requests = self._counter(
            "omixa_requests",
            "Model calls finished (after their hold), by API, model, stream flag and status: ok, an "
            "error code, client_closed or interrupted.",
            ("api", "model", "stream", "status"),
        )
        self.request_duration = self._histogram(
            "omixa_request_duration_seconds",
            "A model call from its arrival to its settle (a stream: to its end).",
            ("api", "model", "stream"),
            REQUEST_BUCKETS,
        )
        self.ttft = self._histogram(
            "omixa_time_to_first_token_seconds",
            "A stream's time from arrival to its first content sent to the client.",
            ("api", "model"),
            REQUEST_BUCKETS,
        )
        self.attempts = self._histogram(
            "omixa_request_attempts",
            "Upstream attempts per model call that reached a deployment (more than one: failovers).",
            ("api", "model"),
            ATTEMPT_BUCKETS,
        )
        self.failovers = self._counter(
            "omixa_failovers",
            "Attempts that failed over to another deployment, by model and the deployment that failed.",
            ("model", "deployment"),
        )
        self.upstream_attempts = self._counter(
            "omixa_upstream_attempts",
            "Upstream attempts by model, deployment and outcome: ok, rate_limited (429), server_error "
            "(5xx), timeout, connection, client_error (another 4xx), busy (no pooled connection), "
            "cancelled (the client left), error (ended by Omixa's own failure).",
            ("model", "deployment", "outcome"),
        )
        self.upstream_duration = self._histogram(
            "omixa_upstream_duration_seconds",
            "An upstream attempt until it answered (JSON: the whole answer; a stream: its response head) or failed.",
            ("model", "deployment"),
            UPSTREAM_BUCKETS,
        )
        self.hold_wait = self._histogram(
            "omixa_hold_wait_seconds",
            "Waiting for the key's token limit and the wallet's hold.",
            ("model",),
            WAIT_BUCKETS,
        )
        self.settle_wait = self._histogram(
            "omixa_settle_wait_seconds",
            "Waiting for the wallet's settle (or release) of a finished call.",
            ("model",),
            WAIT_BUCKETS,
        )
        self.tokens = self._counter(
            "omixa_tokens",
            "Tokens of finished model calls as charged, by model and kind (prompt, completion; of "
            "those, cached prompt and reasoning completion tokens).",
            ("model", "kind"),
        )
        self.charged = self._counter(
            "omixa_charged_nano_usd",
            "Money charged, in nano-USD (1e-9 USD), by model.",
            ("model",),
        )

        # -- deployments --------------------------------------------------------------------
        dep = ("deployment", "model")
        self.window_used = self._gauge(
            "omixa_deployment_window_used",
            "A deployment's window use (rpm, tpm, hourly_tokens).",
            (*dep, "window"),
            window_mode,
        )
        self.window_limit = self._gauge(
            "omixa_deployment_window_limit",
            "A deployment's window limit as this fleet admits it.",
            (*dep, "window"),
            window_mode,
        )
        self.in_flight = self._gauge(
            "omixa_deployment_in_flight", "Requests in flight on a deployment.", dep, "livesum"
        )
        self.health = self._gauge(
            "omixa_deployment_health",
            "1 for a deployment's health state (closed, cooling after a 429, open breaker, half_open).",
            (*dep, "state"),
            "livemax",
        )
        self.healthy = self._gauge(
            "omixa_model_healthy_deployments",
            "Enabled deployments of a model whose health lets requests through now.",
            ("model",),
            "livemax",
        )
        self.enabled = self._gauge(
            "omixa_model_enabled_deployments",
            "Enabled deployments of a model (0: the operator switched every one off).",
            ("model",),
            "livemax",
        )
        self.breaker_opens = self._counter(
            "omixa_deployment_breaker_opens", "Times a deployment's breaker opened (in this fleet's processes).", dep
        )
        self.cooldowns = self._counter(
            "omixa_deployment_cooldowns", "Times a deployment cooled down after an upstream 429.", dep
        )
        self.deployment_mailbox = self._gauge(
            "omixa_deployment_mailbox_depth",
            "Messages waiting in a deployment actor's mailbox.",
            dep,
            "livesum",
        )

        # -- money --------------------------------------------------------------------------
        self.holds_pending = self._gauge("omixa_holds_pending", "Pending holds (every account).", (), "livemax")
        self.hold_oldest_age = self._gauge(
            "omixa_holds_oldest_age_seconds", "Age of the oldest pending hold (0: none).", (), "livemax"
        )
        self.money_locked = self._gauge(
            "omixa_money_locked_nano_usd", "Money locked by pending holds, in nano-USD.", (), "livemax"
        )
        self.holds_expired = self._counter(
            "omixa_holds_expired", "Pending holds past their expiry voided by the hold sweeper.", ()
        )

        # -- engine -------------------------------------------------------------------------
        self.open_streams = self._gauge("omixa_open_streams", "Streams being relayed to clients.", (), "livesum")
        self.wallet_actors = self._gauge(
            "omixa_wallet_actors", "Wallet actors alive (accounts with recent traffic).", (), "livesum"
        )
        self.wallet_mailbox = self._gauge(
            "omixa_wallet_mailbox_depth_max", "The deepest wallet actor mailbox now.", (), "livemax"
        )
        self.usage_queue = self._gauge(
            "omixa_usage_queue_depth", "Request logs waiting in the usage aggregator's mailbox.", (), "livesum"
        )
        self.usage_overflow = self._gauge(
            "omixa_usage_overflow_depth", "Request logs waiting in the usage overflow buffer.", (), "livesum"
        )
        self.usage_written = self._counter("omixa_usage_logs_written", "Request logs written to the database.", ())
        self.usage_dropped = self._counter(
            "omixa_usage_logs_dropped", "Request logs dropped (the overflow buffer was full).", ()
        )
        self.db_connections = self._gauge(
            "omixa_db_connections",
            "Database connections of this process by state (in_use, idle, max).",
            ("state",),
            "livesum",
        )
        self.db_waiting = self._gauge("omixa_db_waiting", "Calls waiting for a database connection now.", (), "livesum")
        self.db_waits = self._counter("omixa_db_pool_waits", "Calls that found every database connection in use.", ())
        self.db_calls = self._histogram(
            "omixa_db_call_seconds", "Database calls by the storage method that made them.", ("call",), WAIT_BUCKETS
        )
        self.redis_calls = self._histogram(
            "omixa_redis_call_seconds",
            "Calls to Redis (shared limits) by script and outcome (ok, error).",
            ("script", "outcome"),
            WAIT_BUCKETS,
        )
        self.redis_fallbacks = self._counter(
            "omixa_redis_fallbacks",
            "Times a deployment or the key limiter went on alone (its share of each limit) because Redis "
            "failed or was late.",
            ("actor",),
        )
        self.ready = self._gauge(
            "omixa_ready", "1 while this process is ready (GET /readyz answers 200).", (), "livemin"
        )
        self.build_info = self._gauge(
            "omixa_build_info", "1, labelled with the running version.", ("version",), "livemax"
        )

    # -- definitions ----------------------------------------------------------------------

    def _counter(self, name: str, doc: str, labels: tuple[str, ...]) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: tuple[str, ...], mode: GaugeMode) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)

    def _histogram(self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]) -> Histogram:
        return Histogram(name, doc, labels, registry=self.registry, buckets=buckets)

    # -- the request path -----------------------------------------------------------------

    def call(self, api: str, model: str, stream: bool) -> CallMetrics:
        """The children of one (API, model, stream), made on first use."""
        key = (api, model, stream)
        found = self._calls.get(key)
        if found is None:
            flag = "true" if stream else "false"
            found = self._calls[key] = CallMetrics(
                duration=self.request_duration.labels(api, model, flag),
                ttft=self.ttft.labels(api, model),
                attempts=self.attempts.labels(api, model),
                hold_wait=self.hold_wait.labels(model),
                settle_wait=self.settle_wait.labels(model),
                tokens=(
                    self.tokens.labels(model, "prompt"),
                    self.tokens.labels(model, "completion"),
                    self.tokens.labels(model, "cached"),
                    self.tokens.labels(model, "reasoning"),
                ),
                charged=self.charged.labels(model),
                statuses={},
            )
        return found

    def status(self, call: CallMetrics, api: str, model: str, stream: bool, status: str) -> Counter:
        counter = call.statuses.get(status)
        if counter is None:
            label = bounded_code(status)
            counter = call.statuses[status] = self.requests.labels(api, model, "true" if stream else "false", label)
        return counter

    def finished(self, api: str, entry: RequestLog, attempts: int, settle_seconds: float | None) -> None:
        """A model call is over (its log, as recorded, with what it was charged)."""
        call = self.call(api, entry.model, entry.stream)
        self.status(call, api, entry.model, entry.stream, entry.status).inc()
        call.duration.observe(entry.latency_ms / 1000)
        if entry.stream and entry.ttft_ms is not None:
            call.ttft.observe(entry.ttft_ms / 1000)
        if attempts:
            call.attempts.observe(attempts)
        if settle_seconds is not None:
            call.settle_wait.observe(settle_seconds)
        for counter, amount in zip(
            call.tokens,
            (entry.prompt_tokens, entry.completion_tokens, entry.cached_tokens, entry.reasoning_tokens),
            strict=True,
        ):
            if amount:
                counter.inc(amount)
        if entry.cost:
            call.charged.inc(entry.cost)

    def attempt_ended(self, model: str, deployment: str, status: str, failure: OmixaError | None) -> None:
        """An upstream attempt gave its slot back (``status``: the request's, when it ended it)."""
        key = (model, deployment, attempt_outcome(status, failure))
        counter = self._attempts.get(key)
        if counter is None:
            counter = self._attempts[key] = self.upstream_attempts.labels(*key)
        counter.inc()

    def upstream_answered(self, model: str, deployment: str, seconds: float) -> None:
        """An upstream attempt answered (or a stream's head came), or failed, after ``seconds``."""
        key = (model, deployment)
        histogram = self._upstream.get(key)
        if histogram is None:
            histogram = self._upstream[key] = self.upstream_duration.labels(*key)
        histogram.observe(seconds)

    def http_answered(self, route: str, method: str, status: int, code: str) -> None:
        key = (route, method, str(status), code)
        counter = self._http.get(key)
        if counter is None:
            counter = self._http[key] = self.http_requests.labels(route, method, str(status), bounded_code(code))
        counter.inc()

    def storage_call(self, name: str, seconds: float) -> None:
        """The storage's ``observe_call`` hook."""
        histogram = self._db.get(name)
        if histogram is None:
            histogram = self._db[name] = self.db_calls.labels(name)
        histogram.observe(seconds)

    def redis_call(self, script: str, ok: bool, seconds: float) -> None:
        self.redis_calls.labels(script, "ok" if ok else "error").observe(seconds)

    # -- exposition -----------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text exposition of every process's metrics (this one's alone, outside the
        workers' multiprocess mode)."""
        if self.multiprocess:
            return generate_latest(exposition_registry())
        assert self.registry is not None
        return generate_latest(self.registry)


def forget(gauge: Gauge, *labels: str) -> None:
    """Zero a gauge's child and drop it (a deployment a reload removed). Under the workers'
    multiprocess mode its file keeps the zero until the process ends."""
    gauge.labels(*labels).set(0)
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
