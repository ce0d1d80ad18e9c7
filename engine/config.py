"""Typed configuration: the frozen attrs classes a config file becomes. Pure data.

Each field's default, bound (validators raise :class:`FieldError`, which the loader turns
into a message naming the key's path) and meaning is stated here. Reading a file, the
environment overrides and the cross-field checks are :mod:`engine.config_loader`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import attrs

from omixa.engine.money import parse_usd

DEFAULT_CONFIG_PATH = Path("config/omixa.toml")
DEFAULT_AZURE_API_VERSION = "2024-10-21"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class FieldError(ValueError):
    """A validator's complaint about one field, so the message can name its full path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _positive(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise FieldError(attribute.name, f"must be > 0, got {value!r}")


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value < 0:
        raise FieldError(attribute.name, f"must be >= 0, got {value!r}")


def _usd(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    try:
        amount = parse_usd(value, field=attribute.name)
    except ValueError as exc:
        raise FieldError(attribute.name, str(exc)) from None
    if amount <= 0:
        raise FieldError(attribute.name, f"must be > 0, got {value!r}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_non_negative)
    max_body_bytes: int = attrs.field(default=4 * 1024 * 1024, validator=_positive)
    # Grace period on SIGINT/SIGTERM before in-flight requests are cancelled (and settled).
    shutdown_grace_seconds: float = attrs.field(default=10.0, validator=_non_negative)
    # How often the config file is checked for changes to [[deployments]] (SIGHUP reloads at
    # once); 0 turns the polling off.
    reload_poll_seconds: float = attrs.field(default=2.0, validator=_non_negative)
    # Gateway processes on this host behind one port (`omixa serve --workers N` wins), each a
    # whole gateway; supervised and restarted when one dies. About one per core.
    workers: int = attrs.field(default=1, validator=_positive)


@attrs.frozen(kw_only=True)
class UpstreamConfig:
    """Calling upstreams: timeouts, failover and connection pools."""

    connect_timeout_seconds: float = attrs.field(default=10.0, validator=_positive)
    # A stream's response head must arrive within this (reasoning models think after it).
    timeout_seconds: float = attrs.field(default=60.0, validator=_positive)
    # A request's whole time with the upstreams: a non-streaming call (its head comes only
    # with the full answer) and every failover attempt together.
    request_timeout_seconds: float = attrs.field(default=600.0, validator=_positive)
    # One attempt of a non-streaming call: past this, the deployment counts as failed (its
    # breaker) and the request fails over while its request_timeout_seconds allow. Generous,
    # for long reasoning calls; a deployment may set its own.
    attempt_timeout_seconds: float = attrs.field(default=300.0, validator=_positive)
    # A stream whose upstream sent nothing for this long ends with an error event.
    idle_timeout_seconds: float = attrs.field(default=300.0, validator=_positive)
    # Attempts per request (first try + failovers) before the content starts, within
    # request_timeout_seconds in all.
    max_attempts: int = attrs.field(default=3, validator=_positive)
    # Pool size per upstream endpoint (the httpx default of 20 churns at 64 concurrent).
    max_connections: int = attrs.field(default=256, validator=_positive)


@attrs.frozen(kw_only=True)
class BreakerConfig:
    """Deployment health: the circuit breaker and the 429 cooldown."""

    # Consecutive 5xx / timeouts / connection errors that open the breaker.
    failures: int = attrs.field(default=3, validator=_positive)
    # How long the breaker stays open before one probe is let through; also the cooldown
    # after a 429 whose answer gives no delay.
    cooldown_seconds: float = attrs.field(default=30.0, validator=_positive)


@attrs.frozen(kw_only=True)
class StreamingConfig:
    """SSE relay knobs. The first three can also be set with the environment variables
    ``AZURE_STREAM_CHUNK_BYTES``, ``AZURE_STREAM_HEARTBEAT_SECONDS`` and
    ``AZURE_STREAM_FLUSH_PADDING_BYTES``, which win over the file."""

    # Upper bound of one upstream read. Reads never wait to fill it: whatever bytes have
    # arrived are parsed, and every complete frame is forwarded at once.
    chunk_bytes: int = attrs.field(default=128, validator=_positive)
    # An SSE comment is sent whenever nothing was sent for this long (also before the first
    # token, while a reasoning model thinks), so proxies do not drop the idle connection.
    heartbeat_seconds: float = attrs.field(default=1.0, validator=_positive)
    # Size of the SSE comment sent first, to push headers through buffering proxies; 0: none.
    flush_padding_bytes: int = attrs.field(default=8192, validator=_non_negative)
    # Forward Azure's filter-only frames (empty choices: prompt_filter_results,
    # content_filter_offsets), which crash many clients; off by default.
    keep_filter_frames: bool = False


STREAM_ENV = {
    "AZURE_STREAM_CHUNK_BYTES": ("chunk_bytes", int),
    "AZURE_STREAM_HEARTBEAT_SECONDS": ("heartbeat_seconds", float),
    "AZURE_STREAM_FLUSH_PADDING_BYTES": ("flush_padding_bytes", int),
}


@attrs.frozen(kw_only=True)
class LimitsConfig:
    """Per-key rate limits; a key's own ``rpm``/``tpm`` (``omixa key create``) win. 0: none."""

    key_rpm: int = attrs.field(default=600, validator=_non_negative)
    key_tpm: int = attrs.field(default=0, validator=_non_negative)


@attrs.frozen(kw_only=True)
class SecurityConfig:
    """Request signatures. ``require_signature`` and ``signature_window_seconds`` can also be
    set with ``OMIXA_REQUIRE_SIGNATURE`` and ``OMIXA_SIGNATURE_WINDOW_SECONDS``, which win over
    the file. The server secret that encrypts signing secrets (``OMIXA_SECRET_KEY``) is only
    ever read from the environment, never from this file."""

    # Every /api/v1 request must be signed (keys created with --require-signature must be
    # signed whatever this says).
    require_signature: bool = False
    # A signed request's X-Omixa-Timestamp must be within this many seconds of the server's
    # clock, either way; it is also how long a seen signature is remembered.
    signature_window_seconds: int = attrs.field(default=300, validator=_positive)
    # Replays. A request signed with an X-Omixa-Nonce is accepted once; one signed without
    # is bounded by the timestamp window only (the same signed request may come again
    # within it, as with AWS SigV4 or Slack's signatures). With one_time_signatures, every
    # signed request must carry a nonce and is accepted once.
    one_time_signatures: bool = False
    # Signatures remembered for replay detection, per key and process. When full, the oldest
    # is forgotten and requests signed at or before its timestamp are refused as stale.
    replay_cache_size: int = attrs.field(default=100_000, validator=_positive)
    # After `omixa key rotate-secret`, the previous signing secret still verifies this long.
    secret_grace_seconds: float = attrs.field(default=86400.0, validator=_non_negative)


SECURITY_ENV = {
    "OMIXA_REQUIRE_SIGNATURE": "require_signature",
    "OMIXA_ONE_TIME_SIGNATURES": "one_time_signatures",
    "OMIXA_SIGNATURE_WINDOW_SECONDS": "signature_window_seconds",
}


@attrs.frozen(kw_only=True)
class StorageConfig:
    url: str = "sqlite:///omixa.db"


@attrs.frozen(kw_only=True)
class ClusterConfig:
    """Many processes as one gateway: the Redis server they share their limits through.

    ``redis_url`` (``redis://host:port/db``, ``rediss://`` for TLS; ``OMIXA_REDIS_URL`` wins
    over the file) makes every deployment's RPM, TPM and hourly-token windows and its health
    (429 cooldowns, the circuit breaker) shared by every process using the same Redis and
    database. Without it, each process keeps its own.
    """

    redis_url: str = ""
    # Bound on one Redis call; past it (or on any Redis error) the process falls back to its
    # share of every limit (the limit divided by the live processes) until Redis answers.
    timeout_seconds: float = attrs.field(default=0.25, validator=_positive)
    # While Redis is unreachable, it is tried again this often.
    retry_seconds: float = attrs.field(default=1.0, validator=_positive)
    # A deployment with no traffic still reads its shared state this often (for routing
    # and the operator's views).
    refresh_seconds: float = attrs.field(default=1.0, validator=_positive)
    # Prefix of every Redis key Omixa writes; gateways that must not share limits on one
    # Redis use different prefixes.
    key_prefix: str = "omixa"


@attrs.frozen(kw_only=True)
class WalletConfig:
    # A wallet actor with no message for this long is retired (respawned on demand).
    idle_seconds: float = attrs.field(default=60.0, validator=_positive)
    # A pending hold older than this is voided by the sweeper (a crashed process's holds).
    hold_timeout_seconds: float = attrs.field(default=3600.0, validator=_positive)
    # When the wallet cannot cover the model's default output cap, the cap is lowered to
    # what it can cover, but never below this; below it the request gets 402.
    min_output_tokens: int = attrs.field(default=16, validator=_positive)
    # POST /api/v1/wallet/top-up credits the caller's own wallet (a demo or a sandbox); off in
    # production, where operators top up with `omixa wallet top-up` or a payment integration.
    self_top_up: bool = False
    # Bounds of one self top-up, USD.
    top_up_min_usd: str = attrs.field(default="1.00", validator=_usd)
    top_up_max_usd: str = attrs.field(default="1000.00", validator=_usd)
    # Each process refreshes its row in `instances` this often; a process whose heartbeat is
    # older than instance_stale_seconds is taken as dead and its pending holds are released.
    instance_heartbeat_seconds: float = attrs.field(default=10.0, validator=_positive)
    instance_stale_seconds: float = attrs.field(default=60.0, validator=_positive)

    @instance_stale_seconds.validator
    def _stale_after_heartbeats(self, attribute: attrs.Attribute, value: float) -> None:
        if value < 3 * self.instance_heartbeat_seconds:
            raise FieldError(
                attribute.name,
                f"must be at least 3 x instance_heartbeat_seconds ({3 * self.instance_heartbeat_seconds:g}), "
                f"got {value!r}: a live process would be taken for dead",
            )


@attrs.frozen(kw_only=True)
class UsageConfig:
    # The aggregator writes a batch when it has this many records or this much time passed.
    batch_size: int = attrs.field(default=256, validator=_positive)
    flush_interval_seconds: float = attrs.field(default=0.2, validator=_positive)
    queue_size: int = attrs.field(default=4096, validator=_positive)
    # Records waiting while the database is unavailable, beyond the queue; past this bound new
    # records are dropped (counted and logged with their request id; money is unaffected:
    # the ledger rows are written on the request's path, not here).
    buffer_limit: int = attrs.field(default=100_000, validator=_positive)


def _host_port(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
    if value == "":
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise FieldError(attribute.name, f"must be host:port (e.g. 127.0.0.1:9464), got {value!r}")


@attrs.frozen(kw_only=True)
class MetricsConfig:
    """GET /metrics, Prometheus's text format (engine/metrics.py)."""

    enabled: bool = True
    # A listener of its own (host:port; port 0 picks a free one) that serves only /metrics,
    # without the admin token; empty: none (/metrics is then served on the API's address to OMIXA_ADMIN_TOKEN only).
    bind: str = attrs.field(default="", validator=_host_port)
    # How often the actors' state (windows, health, queues, pending holds) is sampled.
    sample_seconds: float = attrs.field(default=5.0, validator=_positive)


LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _one_of(*allowed: str) -> Any:
    def check(_inst: Any, attribute: attrs.Attribute, value: str) -> None:
        if value not in allowed:
            raise FieldError(attribute.name, f"must be one of {', '.join(map(repr, allowed))}, got {value!r}")

    return check


def _upper(value: str) -> str:
    return value.upper()


@attrs.frozen(kw_only=True)
class LoggingConfig:
    """The log on stderr (``web/logs.py``); ``OMIXA_LOG_FORMAT`` and ``OMIXA_LOG_LEVEL`` win."""

    # "text": one human line per record; "json": one JSON object per line, with each
    # record's structured fields (the request line's) as keys.
    format: str = attrs.field(default="text", validator=_one_of(*LOG_FORMATS))
    # The least severe level written, any case ("info" is "INFO").
    level: str = attrs.field(default="INFO", converter=_upper, validator=_one_of(*LOG_LEVELS))


@attrs.frozen(kw_only=True)
class DashboardConfig:
    """The web console: the developers' pages (/usage, /requests, /wallet, /keys, /catalog,
    /playground) and the operators' /admin."""

    enabled: bool = True
    # How often /usage refreshes its numbers, seconds.
    poll_seconds: float = attrs.field(default=5.0, validator=_positive)
    # A dashboard session lasts this long after sign-in.
    session_hours: float = attrs.field(default=12.0, validator=_positive)
    # Mark the session cookie Secure even when the request reached Omixa over plain HTTP
    # (set it behind a TLS-terminating proxy); requests over HTTPS always get Secure.
    secure_cookie: bool = False
    # Live keys an account may hold before /keys stops creating more (the CLI is not bound).
    max_keys: int = attrs.field(default=20, validator=_positive)
    # The largest credit one /admin top-up may make; larger ones go through the CLI.
    operator_top_up_max_usd: str = attrs.field(default="10000.00", validator=_usd)


@attrs.frozen(kw_only=True)
class DeploymentConfig:
    """One upstream deployment serving one catalog model.

    ``name`` is the operator's label (unique); ``deployment`` is Azure's deployment name in the
    URL (for Vertex: the publisher model id, default ``model``). Routing is by ``model`` (the
    catalog id), never by the deployment name.

    Vertex (``provider = "vertex"``): ``location`` (a region such as ``us-central1``, or
    ``global``), ``project``, and one of ``api_key`` (express mode; ``project`` may then be
    omitted) or ``service_account_file`` (a JSON key; ``project`` defaults to its
    ``project_id``). ``endpoint`` overrides the base URL derived from the location.
    """

    name: str
    model: str
    provider: Literal["azure", "vertex", "simulator"] = "azure"
    endpoint: str = ""
    deployment: str = ""
    api_key: str = attrs.field(default="", repr=False)  # a secret: never in a repr or a log
    api_version: str = DEFAULT_AZURE_API_VERSION
    region: str | None = None
    rpm: int | None = attrs.field(default=None, validator=_positive)
    tpm: int | None = attrs.field(default=None, validator=_positive)
    hourly_tokens: int | None = attrs.field(default=None, validator=_positive)
    weight: float = attrs.field(default=1.0, validator=_positive)
    priority: bool = False
    enabled: bool = True
    # One attempt of a non-streaming call on this deployment; None: upstream's.
    attempt_timeout_seconds: float | None = attrs.field(default=None, validator=_positive)
    # Simulator only: time to first token, pause between chunks, tokens per chunk.
    sim_first_token_ms: float = attrs.field(default=50.0, validator=_non_negative)
    sim_chunk_interval_ms: float = attrs.field(default=20.0, validator=_non_negative)
    sim_tokens_per_chunk: int = attrs.field(default=3, validator=_positive)
    sim_completion_tokens: int = attrs.field(default=60, validator=_positive)
    # Vertex only (see the class docstring).
    project: str = ""
    location: str = ""
    service_account_file: str = ""


@attrs.frozen(kw_only=True)
class TracingConfig:
    """OpenTelemetry traces of the requests (:mod:`engine.tracing`), sent to a collector over
    OTLP/HTTP. Off while ``otlp_endpoint`` is empty; on, it needs the ``otel`` extra
    (``pip install 'omixa[otel]'``). The loader checks the endpoint's scheme, resolves
    ``env:NAME`` header values and, when serving, that the extra is installed."""

    # The collector's OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces.
    otlp_endpoint: str = ""
    # The resource's service.name.
    service_name: str = "omixa"
    # Share of the traces that start here (a request without a sampled traceparent) kept,
    # 0..1; a request whose traceparent says sampled (or not) follows its parent.
    sample_ratio: float = attrs.field(default=1.0)
    # Headers of every export request (a collector's token: "env:NAME" reads the variable
    # when serving). Empty: the exporter reads OTEL_EXPORTER_OTLP_TRACES_HEADERS (or
    # OTEL_EXPORTER_OTLP_HEADERS) itself. Never in a repr; not part of the hash.
    headers: dict[str, str] = attrs.field(factory=dict, repr=False, hash=False)

    @sample_ratio.validator
    def _a_share(self, attribute: attrs.Attribute, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise FieldError(attribute.name, f"must be between 0 and 1, got {value!r}")


@attrs.frozen(kw_only=True)
class Config:
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    breaker: BreakerConfig = BreakerConfig()
    limits: LimitsConfig = LimitsConfig()
    storage: StorageConfig = StorageConfig()
    wallet: WalletConfig = WalletConfig()
    usage: UsageConfig = UsageConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()
    streaming: StreamingConfig = StreamingConfig()
    dashboard: DashboardConfig = DashboardConfig()
    security: SecurityConfig = SecurityConfig()
    cluster: ClusterConfig = ClusterConfig()
    tracing: TracingConfig = TracingConfig()
    # Path of the model catalog; empty means the shipped config/models.toml.
    catalog: str = ""
    deployments: tuple[DeploymentConfig, ...] = ()
    # Folder of the config file; relative paths resolve against it.
    base_dir: str = "."


def resolve_path(config: Config, path: str) -> Path:
    """A path from the config, relative to the config file's folder."""
    p = Path(path)
    return p if p.is_absolute() else Path(config.base_dir) / p


def storage_url(config: Config) -> str:
    """The storage URL with a relative SQLite path made relative to the config's folder."""
    url = config.storage.url
    prefix = "sqlite:///"
    if url.startswith(prefix):
        path = url[len(prefix) :]
        if path != ":memory:" and not os.path.isabs(path):
            return prefix + str(resolve_path(config, path))
    return url
