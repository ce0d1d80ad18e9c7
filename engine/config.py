"""Typed configuration: TOML -> cattrs -> frozen attrs classes.

Unknown keys and bad values stop start-up with the path of the offending key
(``ConfigError("deployments[1].rpm: must be > 0, got -5")``). Relative paths resolve
against the config file's folder; ``OMIXA_DATABASE_URL`` overrides ``[storage] url``.
Upstream API keys may be written ``env:NAME`` and are resolved when the config is loaded.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import cattrs.v

from omixa.engine.money import parse_usd

DEFAULT_CONFIG_PATH = Path("config/omixa.toml")
DEFAULT_AZURE_API_VERSION = "2024-10-21"


class ConfigError(Exception):
    """The configuration cannot be used; the message names the offending key."""


class _FieldError(ValueError):
    """A validator's complaint about one field, so the message can name its full path."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _positive(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value <= 0:
        raise _FieldError(attribute.name, f"must be > 0, got {value!r}")


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and value < 0:
        raise _FieldError(attribute.name, f"must be >= 0, got {value!r}")


def _usd(_inst: Any, attribute: attrs.Attribute, value: Any) -> None:
    try:
        amount = parse_usd(value, field=attribute.name)
    except ValueError as exc:
        raise _FieldError(attribute.name, str(exc)) from None
    if amount <= 0:
        raise _FieldError(attribute.name, f"must be > 0, got {value!r}")


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
            raise _FieldError(
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


@attrs.frozen(kw_only=True)
class DashboardConfig:
    """The developer dashboard (/usage, /catalog, /playground)."""

    enabled: bool = True
    # How often /usage refreshes its numbers, seconds.
    poll_seconds: float = attrs.field(default=5.0, validator=_positive)
    # A dashboard session lasts this long after sign-in.
    session_hours: float = attrs.field(default=12.0, validator=_positive)
    # Mark the session cookie Secure even when the request reached Omixa over plain HTTP
    # (set it behind a TLS-terminating proxy); requests over HTTPS always get Secure.
    secure_cookie: bool = False


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
class Config:
    server: ServerConfig = ServerConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    breaker: BreakerConfig = BreakerConfig()
    limits: LimitsConfig = LimitsConfig()
    storage: StorageConfig = StorageConfig()
    wallet: WalletConfig = WalletConfig()
    usage: UsageConfig = UsageConfig()
    streaming: StreamingConfig = StreamingConfig()
    dashboard: DashboardConfig = DashboardConfig()
    security: SecurityConfig = SecurityConfig()
    # Path of the model catalog; empty means the shipped config/models.toml.
    catalog: str = ""
    deployments: tuple[DeploymentConfig, ...] = ()
    # Folder of the config file; relative paths resolve against it.
    base_dir: str = "."


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True)

    def _strict_int(value: Any, _t: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        return value

    def _strict_float(value: Any, _t: type) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected a number, got {value!r}")
        return float(value)

    def _strict_str(value: Any, _t: type) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        return value

    def _strict_bool(value: Any, _t: type) -> bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value

    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    return conv


_converter = _make_converter()


_FIELD_MARK = "\x00"


def _format_exception(exc: BaseException, type_: Any) -> str:
    if isinstance(exc, _FieldError):
        return f"{_FIELD_MARK}{exc.field}{_FIELD_MARK}{exc.problem}"
    if isinstance(exc, ValueError) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def _describe(exc: Exception) -> list[str]:
    """cattrs' ``"<problem> @ $.path"`` messages as ``"path: problem"`` lines."""
    lines = []
    for message in cattrs.transform_error(exc, path="$", format_exception=_format_exception):
        problem, _, where = message.rpartition(" @ ")
        where = where.removeprefix("$").removeprefix(".")
        if problem.startswith(_FIELD_MARK):
            _, field, problem = problem.split(_FIELD_MARK, 2)
            where = f"{where}.{field}" if where else field
        if problem.startswith("extra fields found (") and problem.endswith(")"):
            for key in problem[len("extra fields found (") : -1].split(", "):
                lines.append(f"{where + '.' if where else ''}{key}: unknown key")
        else:
            lines.append(f"{where or 'config'}: {problem}")
    return lines


def _resolve_secret(value: str, where: str) -> str:
    if value.startswith("env:"):
        name = value[4:]
        if name not in os.environ:
            raise ConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]
    return value


def _check(config: Config, *, resolve_secrets: bool) -> Config:
    seen: set[str] = set()
    deployments = []
    for i, dep in enumerate(config.deployments):
        where = f"deployments[{i}]"
        if dep.name in seen:
            raise ConfigError(f"{where}.name: duplicate deployment name {dep.name!r}")
        seen.add(dep.name)
        if dep.provider == "azure":
            for key in ("endpoint", "deployment", "api_key"):
                if not getattr(dep, key):
                    raise ConfigError(f"{where}.{key}: required for an azure deployment")
            if not dep.endpoint.startswith(("https://", "http://")):
                raise ConfigError(f"{where}.endpoint: must start with https:// or http://")
            if resolve_secrets:
                dep = attrs.evolve(dep, api_key=_resolve_secret(dep.api_key, f"{where}.api_key"))
        elif dep.provider == "vertex":
            dep = _check_vertex(dep, where, config, resolve_secrets=resolve_secrets)
        deployments.append(dep)
    return attrs.evolve(config, deployments=tuple(deployments))


_LOCATION = re.compile(r"[a-z0-9-]+")


def _check_vertex(dep: DeploymentConfig, where: str, config: Config, *, resolve_secrets: bool) -> DeploymentConfig:
    if not dep.location:
        raise ConfigError(f"{where}.location: required for a vertex deployment (e.g. us-central1 or global)")
    if not _LOCATION.fullmatch(dep.location):
        raise ConfigError(f"{where}.location: not a Vertex location: {dep.location!r}")
    if bool(dep.api_key) == bool(dep.service_account_file):
        raise ConfigError(f"{where}: a vertex deployment needs exactly one of api_key and service_account_file")
    if dep.endpoint and not dep.endpoint.startswith(("https://", "http://")):
        raise ConfigError(f"{where}.endpoint: must start with https:// or http://")
    changes: dict[str, Any] = {"deployment": dep.deployment or dep.model, "region": dep.region or dep.location}
    if dep.service_account_file:
        # Only the path is settled here; the adapter reads the file (and takes its project
        # when none is configured) when the deployment is checked at start-up or reload.
        changes["service_account_file"] = str(resolve_path(config, dep.service_account_file))
    elif resolve_secrets:
        changes["api_key"] = _resolve_secret(dep.api_key, f"{where}.api_key")
    return attrs.evolve(dep, **changes)


def structure_config(raw: dict[str, Any], *, base_dir: Path, resolve_secrets: bool = True) -> Config:
    """Build a Config from parsed TOML. Errors: ConfigError naming the offending key.

    ``resolve_secrets`` False leaves ``env:NAME`` upstream keys unresolved, for commands that
    never call an upstream (the variable may only exist where the server runs).
    """
    raw = dict(raw)
    if "base_dir" in raw:
        raise ConfigError("base_dir: not a configuration key")
    raw["base_dir"] = str(base_dir)
    try:
        config = _converter.structure(raw, Config)
    except Exception as exc:  # cattrs raises ClassValidationError groups
        raise ConfigError("; ".join(_describe(exc))) from None
    db_url = os.environ.get("OMIXA_DATABASE_URL")
    if db_url:
        config = attrs.evolve(config, storage=StorageConfig(url=db_url))
    return _check(_security_from_env(_streaming_from_env(config)), resolve_secrets=resolve_secrets)


def _streaming_from_env(config: Config) -> Config:
    changes: dict[str, Any] = {}
    for name, (field, kind) in STREAM_ENV.items():
        text = os.environ.get(name)
        if text is None or not text.strip():
            continue
        try:
            changes[field] = kind(text.strip())
        except ValueError:
            raise ConfigError(f"{name}: expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if not changes:
        return config
    try:
        return attrs.evolve(config, streaming=attrs.evolve(config.streaming, **changes))
    except _FieldError as exc:
        env = next(n for n, (f, _) in STREAM_ENV.items() if f == exc.field)
        raise ConfigError(f"{env}: {exc.problem}") from None


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _security_from_env(config: Config) -> Config:
    changes: dict[str, Any] = {}
    for name, field in SECURITY_ENV.items():
        text = (os.environ.get(name) or "").strip()
        if not text:
            continue
        if field in ("require_signature", "one_time_signatures"):
            if text.lower() not in _TRUE + _FALSE:
                raise ConfigError(f"{name}: expected true or false, got {text!r}")
            changes[field] = text.lower() in _TRUE
        else:
            try:
                changes[field] = int(text)
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {text!r}") from None
    if not changes:
        return config
    try:
        return attrs.evolve(config, security=attrs.evolve(config.security, **changes))
    except _FieldError as exc:
        env = next(n for n, f in SECURITY_ENV.items() if f == exc.field)
        raise ConfigError(f"{env}: {exc.problem}") from None


def resolve_config_path(path: str | os.PathLike[str] | None) -> Path:
    """``--config``, else ``$OMIXA_CONFIG``, else ``config/omixa.toml``."""
    if path:
        return Path(path)
    env = os.environ.get("OMIXA_CONFIG")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str] | None = None, *, resolve_secrets: bool = True) -> Config:
    """Read and check the config file. Errors: ConfigError."""
    file = resolve_config_path(path)
    try:
        raw = tomllib.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return structure_config(raw, base_dir=file.resolve().parent, resolve_secrets=resolve_secrets)


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
