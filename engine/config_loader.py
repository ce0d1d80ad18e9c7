"""Loading the configuration: TOML -> cattrs -> :class:`engine.config.Config`, checked.

Unknown keys and bad values stop start-up with the path of the offending key
(``ConfigError("deployments[1].rpm: must be > 0, got -5")``). Relative paths resolve
against the config file's folder; ``OMIXA_DATABASE_URL`` overrides ``[storage] url``,
``OMIXA_REDIS_URL`` overrides ``[cluster] redis_url``, and
the streaming, security and logging environment variables override their keys. Upstream API keys
may be written ``env:NAME`` and are resolved when the config is loaded.
"""

from __future__ import annotations

import os
import re
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import cattrs
import cattrs.v

from omixa.engine.config import (
    DEFAULT_CONFIG_PATH,
    SECURITY_ENV,
    STREAM_ENV,
    Config,
    ConfigError,
    DeploymentConfig,
    FieldError,
    StorageConfig,
    resolve_path,
)


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
    if isinstance(exc, FieldError):
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
    return _check_tracing(attrs.evolve(config, deployments=tuple(deployments)), resolve_secrets=resolve_secrets)


# The distributions of the ``otel`` extra (pyproject.toml) that tracing imports.
OTEL_DISTRIBUTIONS = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http")


def _check_tracing(config: Config, *, resolve_secrets: bool) -> Config:
    """``[tracing]``: the endpoint's scheme; when serving (``resolve_secrets``), the header
    values written ``env:NAME`` read and the ``otel`` extra installed (looked up in the
    installed distributions' metadata: nothing of OpenTelemetry is imported here)."""
    tracing = config.tracing
    if not tracing.otlp_endpoint:
        return config
    if not tracing.otlp_endpoint.startswith(("https://", "http://")):
        raise ConfigError("tracing.otlp_endpoint: must start with https:// or http://")
    if not tracing.service_name.strip():
        raise ConfigError("tracing.service_name: must not be empty")
    if not resolve_secrets:
        return config
    for name in OTEL_DISTRIBUTIONS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            raise ConfigError(
                f"tracing.otlp_endpoint: tracing needs OpenTelemetry ({name} is not installed): "
                "pip install 'omixa[otel]'"
            ) from None
    headers = {key: _resolve_secret(value, f"tracing.headers.{key}") for key, value in tracing.headers.items()}
    return attrs.evolve(config, tracing=attrs.evolve(tracing, headers=headers))


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
    redis_url = os.environ.get("OMIXA_REDIS_URL")
    if redis_url is not None:
        config = attrs.evolve(config, cluster=attrs.evolve(config.cluster, redis_url=redis_url.strip()))
    config = _logging_from_env(_security_from_env(_streaming_from_env(config)))
    return _check(config, resolve_secrets=resolve_secrets)


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
    except FieldError as exc:
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
    return _with_env(config, "security", changes, SECURITY_ENV)


LOGGING_ENV = {"OMIXA_LOG_FORMAT": "format", "OMIXA_LOG_LEVEL": "level"}


def _logging_from_env(config: Config) -> Config:
    changes = {field: text.strip() for name, field in LOGGING_ENV.items() if (text := os.environ.get(name, "")).strip()}
    return _with_env(config, "logging", changes, LOGGING_ENV)


def _with_env(config: Config, section: str, changes: dict[str, Any], names: dict[str, str]) -> Config:
    """``config`` with ``changes`` (read from the variables ``names``: variable -> field) applied
    to ``section``. Errors: ConfigError naming the variable whose value a field refused."""
    if not changes:
        return config
    try:
        return attrs.evolve(config, **{section: attrs.evolve(getattr(config, section), **changes)})
    except FieldError as exc:
        env = next(n for n, f in names.items() if f == exc.field)
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
